"""``samplerd bench step``: one engine-sized decode step, every way it can reach the sampler.

For each case (B rows of a V=128256 vocabulary in one dtype; top-p 0.9, min-p 0.05, top-k 50,
temperature 0.7) the same step is timed, one call at a time, as:

- ``in-process``: ``sampling.sample`` in this process with one torch thread (a sampler actor's);
- ``Sample inline``: samplerd ``Sample`` with the logits in the message;
- ``Sample shm``: samplerd ``Sample`` with the logits in a registered shared-memory region;
- ``OIP shm (tritonclient)``: ``ModelInfer`` through the real tritonclient with the logits in
  a region (in tritonclient's own Python: ``--tritonclient-python``; skipped without it);
- ``empty handler``: an empty grpc.aio handler receiving the inline message (the transport's
  floor for the inline path).

The engine is assumed to write its logits into the region itself: the shm rows time the call,
not a copy into the region. The rows take turns in rounds and each row's median over all rounds
is reported, so a machine whose speed drifts slows all rows alike. Targets: by shared memory
<= 1.3x the in-process call; inline <= 1.2x the empty handler.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from samplerd.sampling import SamplingParams, sample
from samplerd.service.bench.process import start_server
from samplerd.service.client import SamplerClient, build_request
from samplerd.service.client.shared_memory import SharedMemoryRegion
from samplerd.service.config import message_size_options
from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc

PARAMS = {"top_p": 0.9, "min_p": 0.05, "top_k": 50, "temperature": 0.7, "seed": 1}
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TRITON_SCRIPT = Path(__file__).with_name("step_tritonclient.py")


@dataclass(frozen=True)
class Case:
    """One step shape: B rows of V logits in ``dtype`` (fp32, fp16 or bf16)."""

    rows: int
    vocab: int
    dtype: str

    @property
    def nbytes(self) -> int:
        return self.rows * self.vocab * (4 if self.dtype == "fp32" else 2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samplerd bench step``."""
    parser.add_argument("--cases", default="64:fp16,64:bf16,64:fp32,8:fp16,256:fp16",
                        help="comma-separated ROWS:DTYPE steps [64:fp16,64:bf16,64:fp32,8:fp16,256:fp16]")
    parser.add_argument("--vocab", type=int, default=128256, help="vocabulary size V [128256]")
    parser.add_argument("--rounds", type=int, default=4, help="turns each row takes per case [4]")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per row and round [3]")
    parser.add_argument("--batch-window-ms", type=float, default=2.0,
                        help="the server's --batch-window-ms [2, its default]; 0 suits one engine sending one "
                             "step at a time")
    parser.add_argument("--tritonclient-python", default=os.environ.get(
        "SAMPLERD_TRITONCLIENT_PYTHON", ".venv-tritonclient/bin/python"),
        help="a Python with tritonclient[grpc] for the OIP row [env SAMPLERD_TRITONCLIENT_PYTHON; "
             "default .venv-tritonclient/bin/python]; missing: the row is skipped")


def parse_cases(text: str, vocab: int) -> list[Case]:
    """``64:fp16,8:fp32`` -> cases."""
    cases = []
    for item in text.split(","):
        rows, _, dtype = item.strip().partition(":")
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"bad case {item!r}: expected ROWS:fp16|bf16|fp32")
        cases.append(Case(int(rows), vocab, dtype))
    return cases


def timed(call, calls: int) -> list[float]:
    """Seconds of ``calls`` calls of ``call()``, after one untimed."""
    call()
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


class TritonRow:
    """The tritonclient row: a child process in tritonclient's Python that times ModelInfer by
    shared memory on request (one line in: calls; one line out: seconds, comma-separated)."""

    def __init__(self, python: str, target: str, case: Case) -> None:
        self.process = subprocess.Popen(
            [python, str(TRITON_SCRIPT), target, str(case.rows), str(case.vocab), case.dtype.upper()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the tritonclient timer did not start")

    def __call__(self, calls: int) -> list[float]:
        self.process.stdin.write(f"{calls}\n")
        self.process.stdin.flush()
        return [float(s) for s in self.process.stdout.readline().split(",")]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(60)


def empty_server() -> tuple[subprocess.Popen, str]:
    """The empty handler of ``samplerd bench service`` as a child process, and its target."""
    empty = subprocess.Popen([sys.executable, "-m", "samplerd.service.bench.service", "empty-server"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return empty, "127.0.0.1:" + empty.stdout.readline().strip().removeprefix("port=")


def measure_case(case: Case, samplerd: str, empty_target: str, args: argparse.Namespace,
                 message_bytes: int) -> dict[str, float]:
    """Median seconds per row for one case."""
    generator = torch.Generator().manual_seed(case.rows)
    logits = (torch.randn(case.rows, case.vocab, generator=generator) * 3).to(TORCH_DTYPES[case.dtype])
    params = SamplingParams(**PARAMS)
    request = build_request(logits, **PARAMS)
    options = message_size_options(message_bytes)
    rows: dict[str, list[float]] = {}
    triton = None
    if Path(args.tritonclient_python).exists():
        triton = TritonRow(args.tritonclient_python, samplerd, case)
    with SamplerClient(samplerd, max_message_bytes=message_bytes, timeout=300) as client, \
            SharedMemoryRegion(client, case.nbytes) as region, grpc.insecure_channel(empty_target, options) as channel:
        reference = region.put(logits)
        empty = pb_grpc.SamplerStub(channel)
        calls = {
            "in-process": lambda: sample(logits, params, 0),
            "Sample inline": lambda: client.stub.Sample(request, timeout=300),
            "Sample shm": lambda: client.sample(None, logits=reference, **PARAMS),
            "empty handler (inline message)": lambda: empty.Sample(request, timeout=300),
        }
        try:
            for _ in range(max(1, args.rounds)):
                for label, call in calls.items():
                    rows.setdefault(label, []).extend(timed(call, args.calls))
                if triton is not None:
                    rows.setdefault("OIP shm (tritonclient)", []).extend(triton(args.calls))
        finally:
            if triton is not None:
                triton.close()
    return {label: statistics.median(values) for label, values in rows.items()}


def format_case(case: Case, medians: dict[str, float]) -> str:
    """One case's table, with the two target ratios."""
    base = medians["in-process"]
    lines = [f"B={case.rows} V={case.vocab} {case.dtype} ({case.nbytes / 1e6:.1f} MB)",
             f"  {'row':34s} {'median ms':>10s} {'x in-process':>13s}"]
    for label, seconds in medians.items():
        lines.append(f"  {label:34s} {seconds * 1e3:10.1f} {seconds / base:13.2f}")
    shm = medians["Sample shm"] / base
    inline = medians["Sample inline"] / medians["empty handler (inline message)"]
    lines.append(f"  target: Sample shm / in-process = {shm:.2f} (<= 1.3: {'met' if shm <= 1.3 else 'NOT met'})")
    if "OIP shm (tritonclient)" in medians:
        oip = medians["OIP shm (tritonclient)"] / base
        lines.append(f"  target: OIP shm / in-process = {oip:.2f} (<= 1.3: {'met' if oip <= 1.3 else 'NOT met'})")
    lines.append(f"  target: Sample inline / empty handler = {inline:.2f} "
                 f"(<= 1.2: {'met' if inline <= 1.2 else 'NOT met'})")
    transport = (medians["Sample inline"] - base) / medians["empty handler (inline message)"]
    lines.append(f"  (Sample inline - in-process) / empty handler = {transport:.2f}: the inline path's cost beyond "
                 "sampling, against the transport floor")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Start samplerd (one CPU worker) and the empty handler, time every case, print the tables."""
    torch.set_num_threads(1)  # a sampler actor's thread count (num_cpus_per_worker = 1)
    cases = parse_cases(args.cases, args.vocab)
    largest = max(c.nbytes for c in cases)
    message_bytes = max(64 << 20, 2 * largest)
    elements = max(16 << 20, max(c.rows * c.vocab for c in cases))
    empty, empty_target = empty_server()
    samplerd = None
    try:
        samplerd = start_server("--device", "cpu", "--workers", "1", "--max-message-bytes", str(message_bytes),
                                "--max-tensor-elements", str(elements), "--max-shm-bytes", str(2 * largest),
                                "--batch-window-ms", str(args.batch_window_ms))
        samplerd.wait_serving()
        print(f"samplerd bench step: top_p 0.9, min_p 0.05, top_k 50, temperature 0.7; one CPU worker, "
              f"--batch-window-ms {args.batch_window_ms:g}; median of {args.rounds} rounds x {args.calls} calls per "
              f"row; {os.cpu_count()} CPUs", flush=True)
        for case in cases:
            print(format_case(case, measure_case(case, samplerd.target, empty_target, args, message_bytes)),
                  flush=True)
    finally:
        empty.stdin.close()
        empty.wait(30)
        if samplerd is not None:
            samplerd.terminate()
    return 0
