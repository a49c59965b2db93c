"""The GPU kernel benchmark: the fused Triton chain against a one-read floor, an eager
sort-based top-k/top-p, samplerd's eager torch pipeline and FlashInfer (when it imports).

For each batch size B, logits dtype and case (top-k, top-p, min-p, top-k + top-p), on a
``[B, V]`` tensor of random logits already on the device:

* ``floor``: ``torch.amax(logits, dim=-1)``, one read of the tensor, the least any sampler
  can cost;
* ``fused``: :func:`samplerd.sampling.gpu.fused_chain.sample` (its one status download included);
* ``eager``: :func:`sampling.sample` with the fused chain switched off (samplerd's torch
  stages);
* ``sort``: the usual sort-based implementation (sort, softmax, cumsum, mask,
  ``torch.multinomial``);
* ``flashinfer``: FlashInfer's sort-free sampling kernels, when ``flashinfer`` imports
  (given float32 logits, the conversion timed; min-p from probabilities, the softmax timed).

Times are medians over CUDA events. The targets (issue 15): ``fused`` at most 5x ``floor``
for top-k, top-p and min-p at B = 256, and no slower than FlashInfer on the same work.
Runs only on a CUDA device: elsewhere :func:`run` raises :class:`RuntimeError` saying so.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from functools import partial

import torch

from samplerd.sampling.params import SamplingParams

CASES = {
    "top_k": dict(top_k=50),
    "top_p": dict(top_p=0.9),
    "min_p": dict(min_p=0.05),
    "top_k+top_p": dict(top_k=50, top_p=0.9),
}
TARGET_RATIO = 5.0
NO_CUDA = ("the GPU kernel benchmark needs a CUDA device (samplerd bench kernels --device cuda); "
           "torch.cuda.is_available() is False here")


def _timed(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` runs, after two unmeasured ones."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def sort_based(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """The common eager implementation: a full sort per row, then masks and multinomial."""
    z = logits.float()
    values, order = z.sort(dim=-1, descending=True)
    if top_k > 0:
        values[:, top_k:] = float("-inf")
    probs = values.softmax(dim=-1)
    if top_p < 1.0:
        before = probs.cumsum(dim=-1) - probs
        values = values.masked_fill(before >= top_p, float("-inf"))
    if min_p > 0.0:
        values = values.masked_fill(probs < min_p * probs[:, :1], float("-inf"))
    chosen = torch.multinomial(values.softmax(dim=-1), 1)
    return order.gather(1, chosen)


def _flashinfer_case(logits: torch.Tensor, settings: dict) -> Callable[[], object] | None:
    try:
        import flashinfer.sampling as fs
    except ImportError:
        return None
    rows = logits.shape[0]
    k = torch.full((rows,), settings.get("top_k", 0) or logits.shape[1], dtype=torch.int32, device=logits.device)
    p = torch.full((rows,), settings.get("top_p", 1.0), dtype=torch.float32, device=logits.device)
    if "min_p" in settings:
        m = torch.full((rows,), settings["min_p"], dtype=torch.float32, device=logits.device)
        return lambda: fs.min_p_sampling_from_probs(torch.softmax(logits.float(), dim=-1), m)
    return lambda: fs.top_k_top_p_sampling_from_logits(logits.float(), k, p)


def run(batches: Sequence[int] = (1, 64, 256), vocab: int = 128256, dtypes: Sequence[str] = ("bfloat16", "float32"),
        repeats: int = 20, print_fn: Callable[[str], None] = print) -> list[dict]:
    """Measure every case; print one line per (case, B, dtype) and return the rows."""
    if not torch.cuda.is_available():
        raise RuntimeError(NO_CUDA)
    from samplerd.sampling import sample
    from samplerd.sampling.gpu import fused_chain

    if not fused_chain.available():
        raise RuntimeError("the GPU kernel benchmark needs triton (pip install samplerd[gpu])")
    device = torch.device("cuda:0")
    results = []
    print_fn(f"{'case':<12} {'B':>4} {'dtype':<9} {'floor ms':>9} {'fused':>8} {'eager':>8} {'sort':>8} "
             f"{'flashinfer':>10}  fused/floor")
    for dtype in dtypes:
        for rows in batches:
            generator = torch.Generator(device=device).manual_seed(rows)
            logits = (torch.randn(rows, vocab, device=device, generator=generator) * 3).to(getattr(torch, dtype))
            floor = _timed(partial(torch.amax, logits, dim=-1), repeats)
            for case, settings in CASES.items():
                params = [SamplingParams(seed=i, **settings) for i in range(rows)]
                steps = [0] * rows
                fused = _timed(partial(fused_chain.sample, logits, params, steps), repeats)
                with fused_chain.enabled(False):
                    eager = _timed(partial(sample, logits, params, steps), max(3, repeats // 4))
                sort = _timed(partial(sort_based, logits, **settings), repeats)
                flash_fn = _flashinfer_case(logits, settings)
                flash = _timed(flash_fn, repeats) if flash_fn is not None else None
                row = dict(case=case, rows=rows, dtype=dtype, floor_ms=floor, fused_ms=fused, eager_ms=eager,
                           sort_ms=sort, flashinfer_ms=flash, ratio=fused / floor)
                results.append(row)
                flash_text = f"{flash:10.3f}" if flash is not None else f"{'-':>10}"
                verdict = "" if rows != 256 or case == "top_k+top_p" else (
                    "  (target met)" if fused / floor <= TARGET_RATIO else f"  (target {TARGET_RATIO:g}x missed)")
                print_fn(f"{case:<12} {rows:>4} {dtype:<9} {floor:9.3f} {fused:8.3f} {eager:8.3f} {sort:8.3f} "
                         f"{flash_text}  {fused / floor:6.1f}x{verdict}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m samplerd.sampling.gpu.bench`` (the lead wires it as ``samplerd bench kernels --device cuda``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        run(args.batches, args.vocab, args.dtypes, args.repeats)
    except RuntimeError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
