"""``samplerd bench generate``: generation tokens/s for 1 and 16 concurrent prompts, engine and gRPC.

Two paths, measured in one run on the same model (the tiny GPT-2 of
:mod:`samplerd.workers.generation.tiny_model`, built in a temporary directory, unless ``--model DIR``):

1. the engine in this process (:func:`run_generation_bench`, no Ray, no gRPC): the decode loop
   alone, continuously batched, and the largest concurrency again with ``batching="solo"`` (one
   forward pass per sequence; only the sampling is batched) to show what batching the forward
   pass pays;
2. through gRPC (unless ``--no-grpc``): a real ``samplerd serve --model DIR`` child (its own
   local Ray instance, the model in a language-model actor), ``concurrency`` Generate calls
   streaming at once from a grpc.aio client. Its table adds the ratio to the engine path at
   the same concurrency (what the actor, the event channel and one gRPC message per token
   cost) and the time to first token (p50 / p99 over every call of every repeat).

Every prompt generates exactly ``--max-tokens`` tokens (``ignore_eos``, seeded sampling at
temperature 1); each point is the best of ``--repeats`` runs. The targets (:data:`TARGETS`:
gRPC at least 0.8x the engine's tokens/s for 1 prompt, 0.7x for 16) are printed with the
measured ratios; ``--check`` makes a missed target exit with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

_PROMPTS = ("The quick brown fox", "A language model assigns", "Sampling picks one token", "Entropy measures how")

#: The least gRPC tokens/s, as a share of the engine's at the same concurrency, by concurrency.
TARGETS = {1: 0.8, 16: 0.7}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samplerd bench generate``."""
    parser.add_argument("--model", metavar="DIR", help="model directory [the tiny GPT-2, built in a temp dir]")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated concurrent prompts [1,16]")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per prompt [64]")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point; the best is kept [3]")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of the model [cpu]")
    parser.add_argument("--no-grpc", action="store_true", help="measure the engine path only")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 when gRPC misses a target (0.8x the engine at 1 prompt, 0.7x at 16)")


# -- the engine path -------------------------------------------------------------------------------

def _engine_once(engine: Any, concurrency: int, max_tokens: int, repeat: int) -> tuple[int, float, list[float]]:
    """Generate ``concurrency`` x ``max_tokens`` tokens at once; (tokens, wall seconds, each
    request's time to its first token)."""
    from samplerd.sampling import SamplingParams
    from samplerd.workers.generation import GenerationRequest

    requests = [GenerationRequest(prompt=_PROMPTS[i % len(_PROMPTS)], max_tokens=max_tokens, ignore_eos=True,
                                  params=SamplingParams(temperature=1.0, seed=1000 * repeat + i))
                for i in range(concurrency)]
    first_token: list[float] = []
    started = time.perf_counter()
    ids = [engine.submit(r) for r in requests]
    read: dict[str, list[Any]] = {rid: [] for rid in ids}
    no_token_yet = set(ids)  # polled after each step until their first token (cheap: a lock and a deque)
    while engine.has_work():
        engine.step()
        for rid in [r for r in ids if r in no_token_yet]:
            read[rid] += engine.poll(rid)
            if read[rid]:
                first_token.append(time.perf_counter() - started)
                no_token_yet.discard(rid)
    elapsed = time.perf_counter() - started
    tokens = sum(len((read[rid] + engine.poll(rid))[-1].token_ids) for rid in ids)
    return tokens, elapsed, first_token


def _engines(directory: Path, device: str, dtype: str, concurrencies: tuple[int, ...]) -> dict[str, Any]:
    """The engines to measure, warmed up: ``padded`` (continuous batching) and, when the model
    allows padding and some case is concurrent, ``solo`` for comparison."""
    from samplerd.workers.generation import GenerationEngine, GenerationRequest

    engines = {"padded": GenerationEngine(directory, device, dtype, max_batch_size=max(concurrencies))}
    if engines["padded"].info.batching != "padded":
        engines = {"solo": engines["padded"]}
    elif max(concurrencies) > 1:
        engines["solo"] = GenerationEngine(directory, device, dtype, max_batch_size=max(concurrencies),
                                           batching="solo")
    for engine in engines.values():  # warm up: first calls load kernels
        engine.generate(GenerationRequest(prompt=_PROMPTS[0], max_tokens=4, ignore_eos=True))
    return engines


def _engine_cases(engines: dict[str, Any], concurrencies: tuple[int, ...]) -> list[tuple[str, int]]:
    """(batching, concurrency) of each engine case: the main engine at every concurrency, solo at the largest."""
    main = next(iter(engines))
    return [(mode, c) for c in concurrencies for mode in engines if mode == main or c == max(concurrencies)]


def _best(case: dict[str, Any], runs: list[tuple[int, float, list[float]]]) -> dict[str, Any]:
    """A table row: ``case`` with the best of ``runs`` (tokens, seconds) and every run's times to first token."""
    tokens, seconds = min(((t, s) for t, s, _ in runs), key=lambda run: run[1])
    return {**case, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "ttft": [f for _, _, first in runs for f in first]}


def _with_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
    return rows


def _torch_threads(threads: int | None) -> Any:
    """A context that runs torch with ``threads`` intra-op threads (None: as it is)."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def scope():
        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return scope()


def run_generation_bench(model_dir: str | Path | None = None, *, device: str = "cpu", dtype: str = "auto",
                         concurrencies: tuple[int, ...] = (1, 16), max_tokens: int = 64, repeats: int = 3,
                         torch_threads: int | None = 1, print_table: bool = True) -> list[dict[str, Any]]:
    """Measure the engine's generation throughput alone; return one dict per case and print a table.

    Each row: ``case``, ``batching``, ``concurrency``, ``tokens``, ``seconds`` (best of
    ``repeats``), ``tokens_per_s``, ``speedup`` (tokens/s over the 1-prompt case) and
    ``ttft`` (times to first token, seconds). ``torch_threads`` sets torch's intra-op threads
    for the run (1 by default: on a shared machine more threads make each small operation
    wait for busy cores; the language-model actor also runs one); None leaves it.
    """
    from samplerd.workers.generation.tiny_model import build_tiny_model

    with _torch_threads(torch_threads), tempfile.TemporaryDirectory(prefix="samplerd-tiny-lm-") as scratch:
        directory = Path(model_dir) if model_dir is not None else build_tiny_model(Path(scratch) / "model")
        engines = _engines(directory, device, dtype, concurrencies)
        rows = [_best({"case": f"{c} concurrent", "batching": mode, "concurrency": c},
                      [_engine_once(engines[mode], c, max_tokens, repeat) for repeat in range(repeats)])
                for mode, c in _engine_cases(engines, concurrencies)]
    rows = _with_speedups(rows)
    if print_table:
        print(format_table(rows, str(model_dir) if model_dir is not None else "tiny GPT-2 (built in a temp dir)"))
    return rows


def format_table(rows: list[dict[str, Any]], model: str) -> str:
    """The engine rows as a plain-text table."""
    lines = [f"generation benchmark: {model}",
             "the engine in this process (no Ray, no gRPC)",
             f"{'case':<16}{'batching':<10}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'speedup':>9}"
             f"{'TTFT p50':>11}{'TTFT p99':>11}"]
    for row in rows:
        p50, p99 = _percentiles(row["ttft"])
        lines.append(f"{row['case']:<16}{row['batching']:<10}{row['tokens']:>8}{row['seconds']:>10.3f}"
                     f"{row['tokens_per_s']:>11.1f}{row['speedup']:>8.2f}x{p50 * 1e3:>9.1f}ms{p99 * 1e3:>9.1f}ms")
    return "\n".join(lines)


# -- the gRPC path ----------------------------------------------------------------------------------

async def _grpc_case(target: str, concurrency: int, max_tokens: int, repeat: int) -> tuple[int, float, list[float]]:
    """``concurrency`` concurrent Generate calls; (tokens received, wall seconds, each call's
    time to its first token)."""
    import grpc

    from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
    from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SamplerStub(channel)

        async def one(i: int, started: float) -> tuple[int, float]:
            request = pb.GenerateRequest(prompt_text=_PROMPTS[i % len(_PROMPTS)], max_tokens=max_tokens,
                                         ignore_eos=True,
                                         params=pb.SamplingParams(temperature=1.0, seed=1000 * repeat + i))
            tokens = 0
            first = float("nan")
            async for message in stub.Generate(request, timeout=600):
                if message.WhichOneof("event") == "token":
                    if not tokens:
                        first = time.perf_counter() - started
                    tokens += 1
            return tokens, first

        await one(0, time.perf_counter())  # connection and first-call costs out of the measurement
        started = time.perf_counter()
        results = await asyncio.gather(*(one(i, started) for i in range(concurrency)))
        return sum(t for t, _ in results), time.perf_counter() - started, [f for _, f in results]


def _start_server(model_dir: Path, max_tokens: int, device: str) -> Any:
    """A ``samplerd serve --model`` child, SERVING."""
    from samplerd.service.bench.process import start_server

    server = start_server("--workers", "1", "--device", device, "--model", str(model_dir), "--model-device", device,
                          "--model-max-tokens", str(max(max_tokens, 1)))
    try:
        server.wait_serving(timeout_s=300)
    except BaseException:
        server.terminate()
        raise
    return server


def format_grpc_table(rows: list[dict[str, Any]], engine_rows: list[dict[str, Any]]) -> str:
    """The gRPC rows as a table, with each row's tokens/s over the engine's at the same
    concurrency, and its times to first token."""
    engine = _engine_by_concurrency(engine_rows)
    lines = ["through gRPC (samplerd serve --model: one language-model actor, one message per token)",
             f"{'case':<16}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'speedup':>9}{'of engine':>11}"
             f"{'TTFT p50':>11}{'TTFT p99':>11}"]
    for row in rows:
        share = row["tokens_per_s"] / engine[row["concurrency"]] if row["concurrency"] in engine else float("nan")
        p50, p99 = _percentiles(row["ttft"])
        lines.append(f"{row['case']:<16}{row['tokens']:>8}{row['seconds']:>10.3f}{row['tokens_per_s']:>11.1f}"
                     f"{row['speedup']:>8.2f}x{share:>10.2f}x{p50 * 1e3:>9.1f}ms{p99 * 1e3:>9.1f}ms")
    return "\n".join(lines)


def check_targets(rows: list[dict[str, Any]], engine_rows: list[dict[str, Any]]) -> tuple[list[str], bool]:
    """One line per :data:`TARGETS` entry measured in this run, and whether all were met."""
    engine = _engine_by_concurrency(engine_rows)
    lines, met = ["targets (gRPC tokens/s over the engine's, same run)"], True
    for row in rows:
        target = TARGETS.get(row["concurrency"])
        if target is None or row["concurrency"] not in engine:
            continue
        share = row["tokens_per_s"] / engine[row["concurrency"]]
        ok = share >= target
        met = met and ok
        lines.append(f"{row['case']:<16}{share:>6.2f}x  (target >= {target:.2f}x)  {'met' if ok else 'MISSED'}")
    return lines, met


def _engine_by_concurrency(engine_rows: list[dict[str, Any]]) -> dict[int, float]:
    return {r["concurrency"]: r["tokens_per_s"] for r in engine_rows if r["batching"] != "solo"}


def _percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99 (inclusive method; nan when empty)."""
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan")
    if len(values) == 1:
        return values[0], values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


def run(args: argparse.Namespace) -> int:
    """Run ``samplerd bench generate``: print the engine table, then the gRPC one and the targets;
    with ``--check``, 1 when a target was missed.

    With gRPC, the server starts first and each repeat runs the engine case and then the gRPC
    case of the same concurrency, so that both see the same machine (on shared cores the load
    drifts within seconds)."""
    from samplerd.workers.generation.tiny_model import build_tiny_model

    concurrencies = tuple(int(c) for c in args.concurrency.split(",") if c.strip())
    label = args.model or "tiny GPT-2 (built in a temp dir)"
    with tempfile.TemporaryDirectory(prefix="samplerd-bench-lm-") as scratch:
        model_dir = Path(args.model) if args.model else build_tiny_model(Path(scratch) / "model")
        if args.no_grpc:
            rows = run_generation_bench(model_dir, concurrencies=concurrencies, device=args.device,
                                        max_tokens=args.max_tokens, repeats=args.repeats, print_table=False)
            print(format_table(rows, label))
            return 0
        server = _start_server(model_dir, args.max_tokens, args.device)
        try:
            with _torch_threads(1):
                engines = _engines(model_dir, args.device, "auto", concurrencies)
                asyncio.run(_grpc_case(server.target, 1, 4, 0))  # warm up the server's model
                engine_runs: dict[tuple[str, int], list[Any]] = {case: [] for case in _engine_cases(engines,
                                                                                                    concurrencies)}
                grpc_runs: dict[int, list[Any]] = {c: [] for c in concurrencies}
                for concurrency in concurrencies:
                    for repeat in range(args.repeats):
                        for mode, c in engine_runs:
                            if c == concurrency:
                                engine_runs[mode, c].append(_engine_once(engines[mode], c, args.max_tokens, repeat))
                        grpc_runs[concurrency].append(
                            asyncio.run(_grpc_case(server.target, concurrency, args.max_tokens, repeat)))
        finally:
            server.terminate()
    engine_rows = _with_speedups([_best({"case": f"{c} concurrent", "batching": mode, "concurrency": c}, runs)
                                  for (mode, c), runs in engine_runs.items()])
    rows = _with_speedups([_best({"case": f"{c} concurrent", "path": "gRPC", "concurrency": c}, runs)
                           for c, runs in grpc_runs.items()])
    print(format_table(engine_rows, label))
    print()
    print(format_grpc_table(rows, engine_rows))
    lines, met = check_targets(rows, engine_rows)
    print("\n" + "\n".join(lines), flush=True)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    run_generation_bench()
