"""``samplerd bench session``: one SampleStream session against independent unary calls.

The same work, side by side in one run against one samplerd child process (real Ray, real
workers): each decoding step samples S sequences (default 64) at vocabulary V (default
32000), either

- ``stream``: one ``SampleStream`` session holding the S sequences; a step is ONE message
  carrying the [S, V] logits and one answer with S tokens; or
- ``unary``: S independent concurrent ``Sample`` calls per step, one [1, V] row each (what
  a client without sessions does; the dispatcher batches them again on the server).

Every request is built before the clock starts (the client's encoding is not measured); each
mode runs ``--steps`` steps after ``--warmup-steps``, and the modes alternate for
``--rounds`` rounds so drifting machine load hits both. The target (issue 4): the stream's
steps/s above the unary calls'.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass

import grpc
import numpy as np

from samplerd.service.bench.process import start_server
from samplerd.service.client import build_request, encode_logits
from samplerd.service.client import params as client_params
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_VARIANTS = 4  # distinct logits tensors, cycled over the steps


@dataclass(frozen=True)
class Measurement:
    """One mode in one round."""

    mode: str
    round: int
    steps: int
    steps_per_s: float
    tokens_per_s: float
    p50_step_ms: float
    p99_step_ms: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samplerd bench session``."""
    parser.add_argument("--sequences", type=int, default=64, help="sequences per step (S) [64]")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size (V) [32000]")
    parser.add_argument("--steps", type=int, default=30, help="measured steps per mode and round [30]")
    parser.add_argument("--warmup-steps", type=int, default=3, help="unmeasured steps before each [3]")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both modes [2]")
    parser.add_argument("--top-p", type=float, default=0.9, help="top_p of every sequence [0.9]")
    parser.add_argument("--workers", type=int, default=1, help="sampler workers of the server [1]")
    parser.add_argument("--device", default="cpu", help="server --device [cpu]")
    parser.add_argument("--json", metavar="PATH", help="also write the measurements as JSON")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 when the stream is not faster than the unary calls (FAIL)")


def _logits(args: argparse.Namespace) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((args.sequences, args.vocab), dtype=np.float32) * 3 for _ in range(_VARIANTS)]


def _measure(mode: str, round_: int, durations: list[float], sequences: int) -> Measurement:
    total = sum(durations)
    cuts = statistics.quantiles(durations, n=100, method="inclusive") if len(durations) > 1 else durations * 99
    return Measurement(mode, round_, len(durations), len(durations) / total, len(durations) * sequences / total,
                       cuts[49] * 1e3, cuts[98] * 1e3)


async def run_stream(stub: pb_grpc.SamplerStub, args: argparse.Namespace, variants: list[np.ndarray],
                     round_: int) -> Measurement:
    """One session of S sequences; one message per step."""
    ids = [f"s{i}" for i in range(args.sequences)]
    open_message = pb.SessionOpen(session_id="bench", params=client_params.to_proto({"top_p": args.top_p}))
    for i, sequence_id in enumerate(ids):
        open_message.sequences.add(sequence_id=sequence_id, params=pb.SamplingParams(seed=i))
    steps = [pb.SampleStreamRequest(step=pb.SessionStep(sequence_ids=ids, logits=encode_logits(v)))
             for v in variants]
    call = stub.SampleStream()
    await call.write(pb.SampleStreamRequest(open=open_message))
    await call.read()
    durations = []
    for step in range(args.warmup_steps + args.steps):
        started = time.perf_counter()
        await call.write(steps[step % len(steps)])
        answer = await call.read()
        if len(answer.step.sequences) != args.sequences:
            raise RuntimeError(f"stream step answered {answer}")
        if step >= args.warmup_steps:
            durations.append(time.perf_counter() - started)
    await call.write(pb.SampleStreamRequest(close=pb.SessionClose()))
    await call.read()
    await call.done_writing()
    return _measure("stream", round_, durations, args.sequences)


async def run_unary(stub: pb_grpc.SamplerStub, args: argparse.Namespace, variants: list[np.ndarray],
                    round_: int) -> Measurement:
    """S concurrent unary calls per step, one row each."""
    requests = [[build_request(v[i], top_p=args.top_p, seed=i) for i in range(args.sequences)] for v in variants]
    durations = []
    for step in range(args.warmup_steps + args.steps):
        started = time.perf_counter()
        await asyncio.gather(*(stub.Sample(r, timeout=60.0) for r in requests[step % len(requests)]))
        if step >= args.warmup_steps:
            durations.append(time.perf_counter() - started)
    return _measure(f"unary x{args.sequences}", round_, durations, args.sequences)


async def _drive(target: str, args: argparse.Namespace) -> list[Measurement]:
    variants = _logits(args)
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    results = []
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.SamplerStub(channel)
        for round_ in range(1, args.rounds + 1):
            results.append(await run_unary(stub, args, variants, round_))
            results.append(await run_stream(stub, args, variants, round_))
    return results


def stream_ratio(results: list[Measurement]) -> float | None:
    """Mean steps/s of the stream over that of the unary calls (None without both)."""
    stream = [m.steps_per_s for m in results if m.mode == "stream"]
    unary = [m.steps_per_s for m in results if m.mode != "stream"]
    if not (stream and unary):
        return None
    return statistics.mean(stream) / max(statistics.mean(unary), 1e-9)


def format_table(results: list[Measurement]) -> str:
    """The measurements as an aligned text table, then the stream / unary ratio and its target."""
    lines = [f"{'mode':<12}{'round':>6}{'steps':>7}{'steps/s':>10}{'tokens/s':>11}{'p50 ms':>9}{'p99 ms':>9}"]
    for m in results:
        lines.append(f"{m.mode:<12}{m.round:>6}{m.steps:>7}{m.steps_per_s:>10.2f}{m.tokens_per_s:>11.0f}"
                     f"{m.p50_step_ms:>9.1f}{m.p99_step_ms:>9.1f}")
    ratio = stream_ratio(results)
    if ratio is not None:
        lines.append(f"steps/s, stream / unary (mean over rounds): {ratio:.2f}   target > 1   "
                     f"{'PASS' if ratio > 1 else 'FAIL'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Start samplerd, run both modes, print the table."""
    server = start_server("--device", args.device, "--workers", str(args.workers),
                          "--max-message-bytes", str(MAX_MESSAGE_BYTES))
    try:
        server.wait_serving()
        print(f"S={args.sequences} sequences, V={args.vocab} fp32, top_p={args.top_p}, seeded; {args.steps} steps "
              f"per mode and round after {args.warmup_steps} warm-up; samplerd workers={args.workers} "
              f"device={args.device}", flush=True)
        results = asyncio.run(_drive(server.target, args))
        print(format_table(results))
        if args.json:
            with open(args.json, "w") as out:
                json.dump([asdict(m) for m in results], out, indent=2)
    finally:
        server.terminate()
    ratio = stream_ratio(results)
    return 1 if args.check and (ratio is None or ratio <= 1) else 0
