"""``samplerd bench generate``: generation tokens/s for 1 and 16 concurrent prompts.

Two paths, measured in one run on the same model (the tiny GPT-2 of
:mod:`workers.generation.tiny_model`, built in a temporary directory, unless ``--model DIR``):

1. the engine in this process (:func:`service.generation_bench.run_generation_bench`): the decode
   loop alone, continuously batched, and the 16-prompt case again with ``batching="solo"`` (one
   forward pass per sequence) to show what batching the forward pass pays;
2. through gRPC (unless ``--no-grpc``): a real ``samplerd serve --model DIR`` child (its own
   local Ray instance, the model in a language-model actor), ``concurrency`` Generate calls
   streaming at once from a grpc.aio client. Its table adds the ratio to the engine path at
   the same concurrency: what the actor, the polling and one gRPC message per token cost.

Every prompt generates exactly ``--max-tokens`` tokens (``ignore_eos``, seeded sampling at
temperature 1); each point is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

_PROMPTS = ("The quick brown fox", "A language model assigns", "Sampling picks one token", "Entropy measures how")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samplerd bench generate``."""
    parser.add_argument("--model", metavar="DIR", help="model directory [the tiny GPT-2, built in a temp dir]")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated concurrent prompts [1,16]")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per prompt [64]")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point; the best is kept [3]")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of the model [cpu]")
    parser.add_argument("--no-grpc", action="store_true", help="measure the engine path only")


async def _grpc_case(target: str, concurrency: int, max_tokens: int, repeat: int) -> tuple[int, float]:
    """``concurrency`` concurrent Generate calls; (tokens received, wall seconds)."""
    import grpc

    from service.generated.samplerd.v1 import sampler_pb2 as pb
    from service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SamplerStub(channel)

        async def one(i: int) -> int:
            request = pb.GenerateRequest(prompt_text=_PROMPTS[i % len(_PROMPTS)], max_tokens=max_tokens,
                                         ignore_eos=True,
                                         params=pb.SamplingParams(temperature=1.0, seed=1000 * repeat + i))
            tokens = 0
            async for message in stub.Generate(request, timeout=600):
                tokens += message.WhichOneof("event") == "token"
            return tokens

        await one(0)  # connection and first-call costs out of the measurement
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(i) for i in range(concurrency)))
        return sum(counts), time.perf_counter() - started


def run_grpc_bench(model_dir: Path, concurrencies: tuple[int, ...], max_tokens: int, repeats: int,
                   device: str = "cpu") -> list[dict[str, Any]]:
    """Tokens/s through a real ``samplerd serve --model`` child at each concurrency."""
    from service.process import start_server

    server = start_server("--workers", "1", "--device", device, "--model", str(model_dir), "--model-device", device,
                          "--model-max-tokens", str(max(max_tokens, 1)))
    try:
        server.wait_serving(timeout_s=300)
        rows = []
        for concurrency in concurrencies:
            best, tokens = float("inf"), 0
            for repeat in range(repeats):
                tokens, seconds = asyncio.run(_grpc_case(server.target, concurrency, max_tokens, repeat))
                best = min(best, seconds)
            rows.append({"case": f"{concurrency} concurrent", "path": "gRPC", "concurrency": concurrency,
                         "tokens": tokens, "seconds": best, "tokens_per_s": tokens / best})
    finally:
        server.terminate()
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
    return rows


def format_grpc_table(rows: list[dict[str, Any]], engine_rows: list[dict[str, Any]]) -> str:
    """The gRPC rows as a table, with each row's tokens/s over the engine's at the same concurrency."""
    engine = {r["concurrency"]: r["tokens_per_s"] for r in engine_rows if r["batching"] != "solo"}
    lines = ["through gRPC (samplerd serve --model: one language-model actor, one message per token)",
             f"{'case':<16}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'speedup':>9}{'of engine':>11}"]
    for row in rows:
        share = row["tokens_per_s"] / engine[row["concurrency"]] if row["concurrency"] in engine else float("nan")
        lines.append(f"{row['case']:<16}{row['tokens']:>8}{row['seconds']:>10.3f}{row['tokens_per_s']:>11.1f}"
                     f"{row['speedup']:>8.2f}x{share:>10.2f}x")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``samplerd bench generate``: print the engine table, then the gRPC one."""
    from service.generation_bench import run_generation_bench
    from workers.generation.tiny_model import build_tiny_model

    concurrencies = tuple(int(c) for c in args.concurrency.split(",") if c.strip())
    with tempfile.TemporaryDirectory(prefix="samplerd-bench-lm-") as scratch:
        model_dir = Path(args.model) if args.model else build_tiny_model(Path(scratch) / "model")
        engine_rows = run_generation_bench(model_dir if args.model else None, concurrencies=concurrencies,
                                           device=args.device, max_tokens=args.max_tokens, repeats=args.repeats)
        if not args.no_grpc:
            print(flush=True)
            rows = run_grpc_bench(model_dir, concurrencies, args.max_tokens, args.repeats, args.device)
            print(format_grpc_table(rows, engine_rows), flush=True)
    return 0
