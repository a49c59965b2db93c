"""Kernel benchmark: every strategy's ``sample()`` against one softmax pass and Hugging Face.

Run ``python -m samplerd.sampling.bench`` (or ``samplerd bench kernels``). For each logits case
(B=32, V=128256 fp32 by default: ``randn * 3`` and a peaked, Zipf-like case) and each
device (CPU, and CUDA when present) it prints, per strategy (and for penalties, DRY and logit
bias in front of a truncation, over a 2048-token history), the median time of one
``sample()`` call (statistics included), its ratio to one softmax pass over the same tensor
(into a preallocated output: the memory-speed reference, free of the allocator's page
faults), its ratio to reading the logits once (``logits.amax(-1)``, the memory-bandwidth
floor), and how many times faster it is than the Hugging Face transformers warper for the
same strategy followed by ``torch.multinomial``. The calls are timed round-robin and each
ratio is the median of per-round ratios, so load from other processes that changes over the
run affects both sides alike. Ratios, not absolute times, are the figures to compare.

Each case is warmed (called until a call is no slower than the one before, so compilation
and first-touch page faults are out of the figures), then timed in rounds until the median
ratio to softmax moves by less than 3% between batches of rounds; the spread (the
interquartile range of the per-round ratios, relative to their median) is printed with
every row, and rows whose spread exceeds 25% are flagged as noisy. The process is not
tuned (no allocator settings): the figures are what ``from samplerd.sampling import sample`` gets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from samplerd.sampling import SamplingParams, SequenceState, sample
from samplerd.sampling.allocator import keep_freed_memory

# Strategy name -> (samplerd parameters, Hugging Face warper factory or None).
CASES: dict[str, dict] = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=0.8),
    "top_k": dict(top_k=50),
    "top_p": dict(top_p=0.9),
    "min_p": dict(min_p=0.05),
    "typical": dict(typical_p=0.9),
    "epsilon": dict(epsilon=3e-4),
    "eta": dict(eta=3e-4),
    "top_n_sigma": dict(top_n_sigma=1.0),
    "top_h": dict(top_h=0.4),
    "optimal_k": dict(optimal_k=0.05),
    "entropy_top_k": dict(entropy_top_k=100),
    "statistical_top_k": dict(statistical_top_k=50),
    "mirostat_v1": dict(mirostat=1),
    "mirostat_v2": dict(mirostat=2),
    "xtc": dict(xtc_probability=1.0, xtc_threshold=0.05),
    "dynatemp": dict(dynatemp_range=0.5),
    "top_k+top_p": dict(top_k=50, top_p=0.9),
    # Processors over each row's history (HISTORY_TOKENS tokens), in front of a truncation.
    "repetition+top_p": dict(repetition_penalty=1.2, top_p=0.9),
    "penalties+dry+top_p": dict(repetition_penalty=1.2, frequency_penalty=0.3, presence_penalty=0.3,
                                dry_multiplier=0.8, top_p=0.9),
    "logit_bias+min_p": dict(logit_bias={token: -2.0 for token in range(0, 4096, 4)}, min_p=0.05),
}
# The cases that carry a token history, and its length (a prompt and its continuation).
WITH_HISTORY = {"repetition+top_p", "penalties+dry+top_p"}
HISTORY_TOKENS = 2048
# Targets (issue 16): at most 2x one softmax pass for these, 3x for every other strategy.
WITHIN_2X = {"greedy", "temperature", "top_k", "top_p", "min_p", "top_k+top_p"}
# At least this much faster than Hugging Face's warper + multinomial.
TIMES_FASTER_THAN_HF = 10.0
FASTER_THAN_HF = {"top_k", "top_p", "min_p", "typical", "epsilon", "eta", "top_k+top_p"}
NOISY_SPREAD = 0.25  # interquartile range / median of the per-round ratios above which a row is flagged


def history(vocab: int, seed: int = 0) -> list[int]:
    """A history of :data:`HISTORY_TOKENS` tokens that repeats itself as text does: phrases of a
    few dozen tokens drawn from a small set, each phrase recurring with small changes."""
    generator = torch.Generator().manual_seed(seed)
    phrases = torch.randint(0, vocab, (16, 32), generator=generator)
    picks = torch.randint(0, 16, (HISTORY_TOKENS // 32 + 1,), generator=generator)
    tokens = phrases[picks].flatten()[:HISTORY_TOKENS]
    changed = torch.rand(HISTORY_TOKENS, generator=generator) < 0.05
    tokens[changed] = torch.randint(0, vocab, (int(changed.sum()),), generator=generator)
    return tokens.tolist()


def hf_paths() -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Hugging Face processors + warpers + multinomial for the strategies transformers implements,
    called with the logits and the histories ``[B, L]`` (empty if transformers is absent)."""
    try:
        from transformers.generation import logits_process as hf
    except ImportError:
        return {}

    def draw(*warpers):
        def run(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
            scores = logits
            for warper in warpers:
                scores = warper(input_ids, scores)
            return torch.multinomial(torch.softmax(scores, dim=-1), 1)
        return run

    return {
        "greedy": lambda logits, input_ids: logits.argmax(dim=-1),
        "temperature": draw(hf.TemperatureLogitsWarper(0.8)),
        "top_k": draw(hf.TopKLogitsWarper(50)),
        "top_p": draw(hf.TopPLogitsWarper(0.9)),
        "min_p": draw(hf.MinPLogitsWarper(0.05)),
        "typical": draw(hf.TypicalLogitsWarper(0.9)),
        "epsilon": draw(hf.EpsilonLogitsWarper(3e-4)),
        "eta": draw(hf.EtaLogitsWarper(3e-4)),
        "top_h": draw(hf.TopHLogitsWarper(0.4)),
        "top_k+top_p": draw(hf.TopKLogitsWarper(50), hf.TopPLogitsWarper(0.9)),
        "repetition+top_p": draw(hf.RepetitionPenaltyLogitsProcessor(1.2), hf.TopPLogitsWarper(0.9)),
    }


def make_logits(kind: str, rows: int, vocab: int, device: str, seed: int = 0) -> torch.Tensor:
    """``randn``: N(0, 3^2) logits. ``peaked``: Zipf-like logits (exponent 1.1) in random
    vocabulary order with noise, as a trained model's next-token distribution looks."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "randn":
        logits = torch.randn(rows, vocab, generator=generator) * 3.0
    else:
        ranks = torch.arange(1, vocab + 1, dtype=torch.float32)
        base = -1.1 * ranks.log() * 2.5
        logits = torch.stack([base[torch.randperm(vocab, generator=generator)] for _ in range(rows)])
        logits += 0.3 * torch.randn(rows, vocab, generator=generator)
    return logits.to(device)


def _softmax_pass(logits: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One softmax pass over ``logits`` into a buffer kept across calls. A fresh 16 MB output
    would be mapped anew by the allocator after the Hugging Face rows' larger temporaries were
    unmapped, and its page faults tripled the softmax in those rounds, flattering the ratios."""
    out = torch.empty_like(logits)
    return lambda: torch.ops.aten._softmax.out(logits, -1, False, out=out)


def _timed(fn: Callable[[], object], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _warm(fn: Callable[[], object], device: str, limit: int = 8) -> None:
    """Call ``fn`` until a call is no slower than the one before (at most ``limit`` calls)."""
    before = _timed(fn, device)
    for _ in range(limit - 1):
        now = _timed(fn, device)
        if now >= before * 0.95:
            return
        before = now


def interleaved(fns: list[Callable[[], object]], device: str, rounds: int, max_rounds: int | None = None,
                stable: float = 0.03) -> list[list[float]]:
    """Seconds per call of each function, measured round-robin (one call of each per round)
    after warming each, so that slow drifts of a shared machine hit all alike. ``rounds`` at a
    time, until the median ratio of the second function to the first moves by less than
    ``stable`` (relative) between batches, or ``max_rounds`` (default ``8 * rounds``)."""
    for fn in fns:
        _warm(fn, device)
    times: list[list[float]] = [[] for _ in fns]
    max_rounds = max_rounds or 8 * rounds
    previous = None
    while len(times[0]) < max_rounds:
        for _ in range(rounds):
            for slot, fn in enumerate(fns):
                times[slot].append(_timed(fn, device))
        if len(fns) < 2:
            break
        median = median_ratio(times[1], times[0])
        if previous is not None and abs(median - previous) <= stable * previous:
            break
        previous = median
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of the per-round ratio (robust to load that changes between rounds)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def spread(numerator: list[float], denominator: list[float]) -> float:
    """Interquartile range of the per-round ratios relative to their median."""
    ratios = sorted(a / b for a, b in zip(numerator, denominator, strict=True))
    if len(ratios) < 4:
        return 0.0
    quartiles = statistics.quantiles(ratios, n=4)
    return (quartiles[2] - quartiles[0]) / statistics.median(ratios)


@dataclass
class Row:
    device: str
    case: str
    strategy: str
    ms: float
    vs_softmax: float
    vs_read_once: float
    vs_hf: float | None
    target: str
    met: bool | None
    rows: int = 0  # batch size B
    spread: float = 0.0  # interquartile range / median of the per-round ratios to softmax
    rounds: int = 0
    softmax_ms: float = 0.0


def run(rows: int, vocab: int, devices: list[str], cases: list[str], repeats: int,
        on_row: Callable[[Row], None] | None = None) -> list[Row]:
    hf = hf_paths()
    results = []
    for device in devices:
        for case in cases:
            logits = make_logits(case, rows, vocab, device)
            softmax = _softmax_pass(logits)
            read_once = lambda x=logits: x.amax(dim=-1)  # noqa: E731
            base = interleaved([read_once, softmax], device, repeats)[::-1]
            print(f"\n[{device}] {case}: B={rows} V={vocab} fp32; softmax {statistics.median(base[0]) * 1e3:.2f} ms; "
                  f"read once (amax) {statistics.median(base[1]) * 1e3:.2f} ms")
            tokens = history(vocab)
            states = [SequenceState(history=tuple(tokens))] * rows
            input_ids = torch.tensor([tokens] * rows, device=device)
            for name, kwargs in CASES.items():
                if "logit_bias" in kwargs:  # the biased tokens that the vocabulary has
                    kwargs = {**kwargs, "logit_bias": {t: b for t, b in kwargs["logit_bias"].items() if t < vocab}}
                params = SamplingParams(seed=1, **kwargs)
                row_states = states if name in WITH_HISTORY else None
                fns = [softmax, lambda p=params, x=logits, s=row_states: sample(x, p, 0, s), read_once]
                if name in hf:
                    fns.append(lambda f=hf[name], x=logits, ids=input_ids: f(x, ids))
                times = interleaved(fns, device, repeats)
                row = _row(device, case, name, times)
                row.rows = rows
                results.append(row)
                print(_format(row))
                if on_row is not None:
                    on_row(row)
    return results


def _row(device: str, case: str, name: str, times: list[list[float]]) -> Row:
    softmax_s, ours = times[0], times[1]
    limit = 2.0 if name in WITHIN_2X else 3.0
    vs_softmax = median_ratio(ours, softmax_s)
    vs_read = median_ratio(ours, times[2])
    vs_hf = median_ratio(times[3], ours) if len(times) > 3 else None
    met = vs_softmax <= limit
    target = f"<= {limit:.0f}x softmax"
    if name in FASTER_THAN_HF:
        target += f", >= {TIMES_FASTER_THAN_HF:.0f}x HF"
        met = met and vs_hf is not None and vs_hf >= TIMES_FASTER_THAN_HF
    return Row(device, case, name, statistics.median(ours) * 1e3, vs_softmax, vs_read, vs_hf, target, met,
               spread=spread(ours, softmax_s), rounds=len(ours), softmax_ms=statistics.median(softmax_s) * 1e3)


def _format(row: Row) -> str:
    hf = f"{row.vs_hf:7.1f}x" if row.vs_hf is not None else "      -"
    noisy = "  NOISY" if row.spread > NOISY_SPREAD else ""
    return (f"  {row.strategy:18s} {row.ms:9.2f} ms  {row.vs_softmax:6.2f}x softmax  ±{row.spread * 100:3.0f}% "
            f"({row.rounds:2d} rounds)  {row.vs_read_once:7.1f}x read  HF/ours {hf}   {row.target:26s} "
            f"{'met' if row.met else 'MISSED'}{noisy}")


def batch_sizes(text: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]`` (each >= 1)."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes like 1,8,32, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return sizes


def run_all(sizes: list[int], vocab: int, devices: list[str], cases: list[str], repeats: int,
            progress: bool = True) -> list[Row]:
    """:func:`run` for each batch size, with a progress bar on stderr (rich, imported lazily)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = len(sizes) * len(devices) * len(cases) * len(CASES)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    results: list[Row] = []
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task("kernels", total=total)

        def advance(row: Row) -> None:
            bar.update(task, advance=1, description=f"B={row.rows} {row.device} {row.case} {row.strategy}")

        for size in sizes:
            results += run(size, vocab, devices, cases, repeats, on_row=advance)
    return results


def plot(results: list[Row], path: str) -> None:
    """Latency (ms per call) against batch size, one colour and marker per strategy, one panel
    per (device, case), the targets (2x and 3x that case's softmax) drawn dashed; the legend sits
    beside the panels. Written to ``path`` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("samplerd: error: --plot needs matplotlib (pip install matplotlib)") from None
    panels = sorted({(r.device, r.case) for r in results})
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels) + 3, 5.5), squeeze=False)
    colours = plt.get_cmap("tab20").colors
    markers = "os^vD<>pPX*h"
    sizes = sorted({r.rows for r in results})
    for (device, case), ax in zip(panels, axes[0], strict=True):
        for index, strategy in enumerate(CASES):
            points = sorted((r.rows, r.ms) for r in results
                            if (r.device, r.case, r.strategy) == (device, case, strategy))
            if points:
                xs, ms = zip(*points, strict=True)
                ax.plot(xs, ms, marker=markers[index % len(markers)], color=colours[index % len(colours)],
                        label=strategy, linewidth=1.2)
        # Each strategy's run timed its own softmax: the target follows their median per size.
        panel = [r for r in results if (r.device, r.case) == (device, case)]
        by_size = {b: statistics.median(r.softmax_ms for r in panel if r.rows == b) for b in {r.rows for r in panel}}
        xs = sorted(by_size)
        for factor, style in ((2.0, "--"), (3.0, ":")):
            ax.plot(xs, [factor * by_size[b] for b in xs], style, color="black", linewidth=1.5,
                    label=f"target: {factor:.0f}x softmax")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(b) for b in sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size B")
        ax.set_ylabel("ms per sample() call")
        ax.set_title(f"{device}, {case} logits")
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _numba_threads() -> str:
    """The fused CPU kernels' threads, and how idle OpenMP threads wait: two OpenMP pools (torch's
    and numba's) that spin while the other works take each other's cores."""
    import os

    import numba

    return (f"{numba.get_num_threads()} numba threads (layer {numba.config.THREADING_LAYER}), "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, {os.cpu_count()} CPUs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="samplerd bench kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=batch_sizes, default=None, metavar="B[,B...]",
                        help="batch size B, or comma-separated sizes for a curve, e.g. 1,8,32 (default 32; "
                             "with --device cuda 1,64,256)")
    parser.add_argument("--vocab", type=int, default=128256, help="vocabulary size V (default 128256)")
    parser.add_argument("--cases", default="randn,peaked", help="comma-separated logits cases: randn, peaked")
    parser.add_argument("--device", default="auto",
                        help="cpu, auto (CPU, plus CUDA when present), or cuda: the fused Triton chain against a "
                             "one-read floor, sort-based top-k/top-p and FlashInfer (samplerd.sampling.gpu.bench)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="rounds per batch; batches are added until the median is stable (default 7)")
    parser.add_argument("--tune-malloc", action="store_true",
                        help="tune glibc malloc as samplerd's workers do (default: as a library user gets it)")
    parser.add_argument("--torch-threads", type=int, default=None, metavar="N",
                        help="torch's intra-op threads (default: torch's own; samplerd's sampler workers run 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw latency and throughput against batch size (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it goes to stderr)")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a row misses its target")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        from samplerd.sampling.gpu.bench import main as gpu_main

        rows = args.rows or [1, 64, 256]
        return gpu_main(["--vocab", str(args.vocab), "--batches", *map(str, rows)])
    args.rows = args.rows or [32]
    tuned = args.tune_malloc and keep_freed_memory()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.device == "auto" else [args.device]
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"samplerd kernel benchmark: torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          + _numba_threads() + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
          + (", malloc keeps freed memory" if tuned else ""))
    results = run_all(args.rows, args.vocab, devices, args.cases.split(","), args.repeats, not args.no_progress)
    missed = [r for r in results if not r.met]
    print(f"\n{len(results) - len(missed)}/{len(results)} rows meet their target")
    noisy = [r for r in results if r.spread > NOISY_SPREAD]
    if noisy:
        print(f"warning: {len(noisy)} rows had a spread above {NOISY_SPREAD:.0%} (the machine is busy); "
              "rerun before trusting them")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(r) for r in results], handle, indent=2)
    if args.plot:
        plot(results, args.plot)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
