"""``samplerd bench service``: the service against an empty grpc.aio handler, side by side.

Both servers run as child processes on loopback: samplerd (real Ray, real workers) and an
empty handler that receives the same ``SampleRequest`` bytes and answers an empty response
(the floor of any Python gRPC service on this machine). This process is the load generator:
for each concurrency C, C tasks send requests back to back, and the completed requests give
requests/s, rows/s and latency percentiles. The two targets take turns in short rounds (each
after its own warm-up) and each target's rounds are pooled, so that a machine whose speed
drifts (shared or throttled cores: the empty handler's rate moved by +-30% within minutes on
the development machine) slows both alike instead of skewing their ratio.

The targets (issue 3): samplerd's throughput at C=16 at least 40% of the empty handler's;
rows/s at C=64 at least 4x rows/s at C=1 (batching must pay); p99 at C=16 under 3x p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from samplerd.service.bench.process import start_server
from samplerd.service.client import DEFAULT_MAX_MESSAGE_BYTES, build_request
from samplerd.service.config import message_size_options
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Measurement:
    """One target at one concurrency."""

    target: str
    concurrency: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``samplerd bench service``."""
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="measured time per target and concurrency, over all rounds [6]")
    parser.add_argument("--rounds", type=int, default=3, help="turns each target takes per concurrency [3]")
    parser.add_argument("--warmup-seconds", type=float, default=0.5, help="unmeasured time before each turn [0.5]")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated client counts [1,16,64]")
    parser.add_argument("--rows", type=int, default=1, help="rows (B) per request [1]")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size (V) [32000]")
    parser.add_argument("--top-p", type=float, default=0.9, help="top_p of every request [0.9]")
    parser.add_argument("--workers", type=int, default=1, help="sampler workers of the server [1]")
    parser.add_argument("--max-batch-rows", type=int, default=256, help="server --max-batch-rows [256]")
    parser.add_argument("--batch-window-ms", type=float, default=2.0, help="server --batch-window-ms [2]")
    parser.add_argument("--json", metavar="PATH", help="also write the measurements as JSON")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 when a target ratio is missed (FAIL); without it the exit status "
                             "is 0 whatever the figures")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw rows/s and p50/p99 latency against concurrency (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it goes to stderr)")


class EmptySampler(pb_grpc.SamplerServicer):
    """Receives (and parses) a SampleRequest, answers an empty SampleResponse."""

    async def Sample(self, request: pb.SampleRequest, context: grpc.aio.ServicerContext) -> pb.SampleResponse:
        return pb.SampleResponse()


async def serve_empty() -> None:
    """Run the empty handler on a free loopback port; print ``port=N``; stop on stdin EOF."""
    server = grpc.aio.server(options=message_size_options(DEFAULT_MAX_MESSAGE_BYTES))
    pb_grpc.add_SamplerServicer_to_server(EmptySampler(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port={port}", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await server.stop(0)


@dataclass
class Sampled:
    """What C closed-loop clients saw over one or more measured windows."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def add(self, other: Sampled) -> None:
        self.seconds += other.seconds
        self.latencies.extend(other.latencies)
        self.errors += other.errors

    def measurement(self, label: str, concurrency: int, rows: int) -> Measurement:
        """Requests/s and rows/s over the windows, and latency percentiles over all requests."""
        if not self.latencies:
            return Measurement(label, concurrency, 0.0, 0.0, float("nan"), float("nan"), self.errors)
        per_s = len(self.latencies) / self.seconds
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return Measurement(label, concurrency, per_s, per_s * rows, cuts[49] * 1e3, cuts[98] * 1e3, self.errors)


async def drive(target: str, request: pb.SampleRequest, concurrency: int, warmup_s: float, seconds: float) -> Sampled:
    """C closed-loop clients against ``target``; what completed inside the measured window."""
    async with grpc.aio.insecure_channel(target, options=message_size_options(DEFAULT_MAX_MESSAGE_BYTES)) as channel:
        call = pb_grpc.SamplerStub(channel).Sample
        start = time.perf_counter()
        measure_from, measure_to = start + warmup_s, start + warmup_s + seconds
        latencies: list[float] = []
        errors = 0

        async def client() -> None:
            nonlocal errors
            while True:
                sent = time.perf_counter()
                if sent >= measure_to:
                    return
                try:
                    await call(request, timeout=30.0)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                done = time.perf_counter()
                if measure_from <= sent and done <= measure_to:
                    latencies.append(done - sent)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return Sampled(seconds, latencies, errors)


def format_table(results: list[Measurement]) -> str:
    """The measurements as an aligned text table."""
    lines = [f"{'target':<10}{'C':>4}{'req/s':>10}{'rows/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"]
    for m in results:
        lines.append(f"{m.target:<10}{m.concurrency:>4}{m.requests_per_s:>10.0f}{m.rows_per_s:>10.0f}"
                     f"{m.p50_ms:>9.2f}{m.p99_ms:>9.2f}{m.errors:>8}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    """One target ratio: its value, the bound, and whether it was met."""

    name: str
    value: float
    op: str
    bound: float

    @property
    def met(self) -> bool:
        return self.value >= self.bound if self.op == ">=" else self.value < self.bound


def target_verdicts(results: list[Measurement]) -> list[Verdict]:
    """The three target ratios (where the measured concurrencies allow: C=1, 16, 64)."""
    by = {(m.target, m.concurrency): m for m in results}
    verdicts = []

    def ratio_line(name: str, value: float, op: str, bound: float) -> None:
        verdicts.append(Verdict(name, value, op, bound))

    if ("samplerd", 16) in by and ("empty", 16) in by:
        ratio_line("throughput C=16, samplerd / empty handler", by["samplerd", 16].requests_per_s
                   / max(by["empty", 16].requests_per_s, 1e-9), ">=", 0.40)
    if ("samplerd", 64) in by and ("samplerd", 1) in by:
        ratio_line("rows/s samplerd, C=64 / C=1", by["samplerd", 64].rows_per_s
                   / max(by["samplerd", 1].rows_per_s, 1e-9), ">=", 4.0)
    if ("samplerd", 16) in by:
        ratio_line("latency samplerd C=16, p99 / p50", by["samplerd", 16].p99_ms / by["samplerd", 16].p50_ms, "<", 3.0)
    return verdicts


def format_targets(verdicts: list[Verdict]) -> str:
    """One line per target ratio: value, bound, PASS or FAIL."""
    return "\n".join(f"{v.name:<52}{v.value:>7.2f}   target {v.op} {v.bound:g}   {'PASS' if v.met else 'FAIL'}"
                     for v in verdicts)


def check_status(verdicts: list[Verdict], check: bool) -> int:
    """The exit status: 1 when ``check`` and a target was missed, else 0."""
    return 1 if check and not all(v.met for v in verdicts) else 0


def server_breakdown(metrics_port: int) -> str:
    """Where samplerd's time went, from its own /metrics: means of the server-side request
    duration, queue wait, kernel time per batch group and rows per batch."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        families = {f.name: f for f in text_string_to_metric_families(reply.read().decode())}

    def mean(name: str, **labels: str) -> float:
        total = count = 0.0
        for metric in families[name].samples:
            if all(metric.labels.get(k) == v for k, v in labels.items()):
                if metric.name == name + "_sum":
                    total += metric.value
                elif metric.name == name + "_count":
                    count += metric.value
        return total / count if count else float("nan")

    request_ms = mean("samplerd_request_duration_seconds", method="Sample") * 1e3
    queue_ms = mean("samplerd_queue_wait_seconds") * 1e3
    kernel_ms = mean("samplerd_sample_duration_seconds") * 1e3
    return (f"samplerd means over the run: request {request_ms:.2f} ms, queue wait {queue_ms:.2f} ms, "
            f"kernel per batch group {kernel_ms:.2f} ms, rows per batch {mean('samplerd_batch_rows'):.1f}")


def progress_bar(enabled: bool):
    """A rich progress bar on stderr (transient: gone once the run ends), or a disabled one."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=Console(stderr=True), transient=True, disable=not enabled)


def plot(results: list[Measurement], path: str, title: str) -> None:
    """Throughput (rows/s) and latency (p50, p99) against concurrency, samplerd beside the empty
    handler, written to ``path`` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib (pip install matplotlib)") from None
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    for target, color in (("samplerd", "tab:blue"), ("empty", "tab:gray")):
        points = sorted((m for m in results if m.target == target), key=lambda m: m.concurrency)
        concurrency = [m.concurrency for m in points]
        throughput.plot(concurrency, [m.rows_per_s for m in points], marker="o", color=color, label=target)
        latency.plot(concurrency, [m.p50_ms for m in points], marker="o", color=color, label=f"{target} p50")
        latency.plot(concurrency, [m.p99_ms for m in points], marker="^", linestyle="--", color=color,
                     label=f"{target} p99")
    for ax, ylabel in ((throughput, "rows per second"), (latency, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (closed-loop clients)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    figure.suptitle(f"samplerd bench service: {title}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table and the target ratios."""
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    logits = np.random.default_rng(0).standard_normal((args.rows, args.vocab), dtype=np.float32) * 3
    request = build_request(logits, top_p=args.top_p)
    empty = subprocess.Popen([sys.executable, "-m", "samplerd.service.bench.service", "empty-server"],
                             stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    samplerd = None
    try:
        empty_target = "127.0.0.1:" + empty.stdout.readline().strip().removeprefix("port=")
        samplerd = start_server("--device", "cpu", "--workers", str(args.workers),
                                "--max-batch-rows", str(args.max_batch_rows),
                                "--batch-window-ms", str(args.batch_window_ms))
        samplerd.wait_serving()
        rounds = max(1, args.rounds)
        print(f"B={args.rows} V={args.vocab} fp32 top_p={args.top_p}; {args.seconds:g}s per point in {rounds} "
              f"alternating rounds, each after {args.warmup_seconds:g}s warm-up; samplerd workers={args.workers}",
              flush=True)
        results = []
        targets = (("empty", empty_target), ("samplerd", samplerd.target))
        with progress_bar(not args.no_progress) as bar:
            task = bar.add_task("bench service", total=2 * rounds * len(concurrencies))
            for concurrency in concurrencies:
                pooled = {label: Sampled() for label, _ in targets}
                for _ in range(rounds):
                    for label, target in targets:
                        bar.update(task, description=f"{label} C={concurrency}")
                        pooled[label].add(asyncio.run(
                            drive(target, request, concurrency, args.warmup_seconds, args.seconds / rounds)))
                        bar.advance(task)
                results.extend(pooled[label].measurement(label, concurrency, args.rows) for label, _ in targets)
        print(format_table(results))
        verdicts = target_verdicts(results)
        print(format_targets(verdicts))
        print(server_breakdown(samplerd.metrics_port))
        if args.json:
            with open(args.json, "w") as out:
                json.dump([asdict(m) for m in results], out, indent=2)
        if args.plot:
            plot(results, args.plot, f"B={args.rows} V={args.vocab} fp32 top_p={args.top_p}")
    finally:
        empty.stdin.close()
        empty.wait(30)
        if samplerd is not None:
            samplerd.terminate()
    return check_status(verdicts, args.check)


if __name__ == "__main__" and sys.argv[1:] == ["empty-server"]:
    asyncio.run(serve_empty())
