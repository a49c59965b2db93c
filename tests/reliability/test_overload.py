"""Overload: a burst of 10x more concurrent requests than the queue holds, expired deadlines,
cancelled calls (one real server with one CPU actor, a 16-row queue and one row per batch)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from reliability_support import SERVING, expected_tokens, health, make_logits, metric, serve, tokens_of, wait_for

from samplerd.service.bench.process import ServerProcess
from samplerd.service.bench.soak import rss_bytes
from samplerd.service.client import build_request
from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

QUEUE_ROWS = 16
#: Resident memory the front end may gain over a burst of 160 requests of 256 KiB of logits
#: each (40 MiB on the wire): what it keeps must not grow with the refused excess.
RSS_BOUND_BYTES = 96 * 2**20


@pytest.fixture(scope="module")
def server(ray_address: str) -> Iterator[ServerProcess]:
    process = serve(ray_address, "--workers", "1", "--max-queue", str(QUEUE_ROWS), "--max-batch-rows", "1",
                    "--batch-window-ms", "0")
    try:
        yield process
    finally:
        process.terminate()


class HealthProber:
    """Checks health every 50 ms on a thread; records each answer's status and latency."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.answers: list[tuple[int, float]] = []
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            deadline = time.monotonic() + 120  # bounded even if stop() is never called
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    self.answers.append((health(self.target, timeout=2.0, channel=channel),
                                         time.monotonic() - started))
                except grpc.RpcError as error:
                    self.failures.append(error)
                self._stop.wait(0.05)

    def __enter__(self) -> HealthProber:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


async def timed_calls(target: str, requests, timeout: float = 120.0) -> list[tuple[object, float]]:
    """Send all requests at once; (outcome, seconds until answered) for each."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SamplerStub(channel)
        started = time.monotonic()

        async def one(request) -> tuple[object, float]:
            try:
                outcome: object = await stub.Sample(request, timeout=timeout)
            except grpc.RpcError as error:
                outcome = error
            return outcome, time.monotonic() - started

        return await asyncio.gather(*(one(r) for r in requests))


def code_of(outcome: object) -> str:
    return outcome.code().name if isinstance(outcome, grpc.RpcError) else "OK"


def test_ten_times_the_queue_refuses_the_excess_at_once_and_stays_bounded(server: ServerProcess) -> None:
    """160 concurrent one-row requests against a 16-row queue: the excess gets
    RESOURCE_EXHAUSTED at once, every accepted one completes with the library's tokens, the
    front end's RSS grows by less than RSS_BOUND_BYTES, and health answers throughout."""
    count = 10 * QUEUE_ROWS
    cases = []
    for i in range(count):
        logits = make_logits(1, 64000, seed=i)
        values = {"top_p": 0.95, "seed": i, "n": 16, "top_logprobs": 32}
        cases.append((build_request(logits, request_id=str(i), **values), logits, values))
    warm = asyncio.run(timed_calls(server.target, [cases[0][0]] * 4))  # first-call allocations aside
    assert all(code_of(o) == "OK" for o, _ in warm)
    rss_before = rss_bytes(server.process.pid)
    with HealthProber(server.target) as prober:
        outcomes = asyncio.run(timed_calls(server.target, [request for request, _, _ in cases]))
        time.sleep(0.3)
    rss_after = rss_bytes(server.process.pid)
    codes = Counter(code_of(o) for o, _ in outcomes)
    refused_s = sorted(s for o, s in outcomes if code_of(o) == "RESOURCE_EXHAUSTED")
    served_s = sorted(s for o, s in outcomes if code_of(o) == "OK")
    print(f"burst of {count} on a {QUEUE_ROWS}-row queue: {dict(codes)}; refusals within "
          f"{refused_s[-1] if refused_s else 0:.2f}s, last success after {served_s[-1]:.2f}s; "
          f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB; "
          f"{len(prober.answers)} health checks, slowest {max(s for _, s in prober.answers):.3f}s")
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] >= QUEUE_ROWS and codes["RESOURCE_EXHAUSTED"] >= count // 2, codes
    assert refused_s[len(refused_s) // 2] < served_s[len(served_s) // 2]  # refusals do not wait for work
    assert refused_s[-1] < 5.0
    for outcome, _ in outcomes:
        if code_of(outcome) == "OK":
            _, logits, values = cases[int(outcome.request_id)]
            assert tokens_of(outcome) == expected_tokens(logits, values)
    assert rss_after - rss_before < RSS_BOUND_BYTES
    assert not prober.failures and len(prober.answers) >= 3
    assert {status for status, _ in prober.answers} == {SERVING}
    assert max(seconds for _, seconds in prober.answers) < 2.0


def blockers(count: int) -> list:
    """Requests that keep the one actor busy for a while (4M-token vocabulary, a chain of the
    costliest fused strategies: about a fifth of a second each on a loaded 2-core machine)."""
    return [build_request(make_logits(1, 4_000_000, seed=900 + i), top_h=0.95, entropy_top_k=10**6, typical_p=0.95,
                          eta=1e-9, logit_bias={0: 0.5}, seed=i)
            for i in range(count)]


def test_expired_deadlines_are_never_executed(server: ServerProcess) -> None:
    """Requests whose 0.2 s deadline passes while they wait behind slow work (batches running
    and queued ahead of them) are answered DEADLINE_EXCEEDED and never reach a
    worker: the executed-rows counter grows only by the slow requests' rows."""
    rows_before = metric(server, "samplerd_batch_rows_sum")

    async def scenario() -> tuple[list, list]:
        slow = asyncio.ensure_future(timed_calls(server.target, blockers(4)))
        await asyncio.sleep(0.3)
        short = [build_request(make_logits(1, 1000, seed=i), seed=i) for i in range(10)]
        expired = await timed_calls(server.target, short, timeout=0.2)
        return await slow, expired

    slow, expired = asyncio.run(scenario())
    assert [code_of(o) for o, _ in slow] == ["OK"] * 4
    expired_codes = Counter(code_of(o) for o, _ in expired)
    time.sleep(1.0)  # any batch still on its way would be counted by now
    executed = metric(server, "samplerd_batch_rows_sum") - rows_before
    print(f"deadlines: {dict(expired_codes)}; rows executed {executed:.0f} (4 slow ones took "
          f"{max(s for _, s in slow):.2f}s)")
    assert expired_codes == Counter(DEADLINE_EXCEEDED=10), expired_codes
    assert executed == 4


def test_cancelled_calls_release_their_queue_slots(server: ServerProcess) -> None:
    """Fill the queue behind slow work, cancel every queued call: the queue empties and a full
    queue's worth of new requests is accepted and served."""

    async def scenario() -> list:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.SamplerStub(channel)
            slow = [stub.Sample(r, timeout=120) for r in blockers(2)]
            await asyncio.sleep(0.3)
            queued = [stub.Sample(build_request(make_logits(1, 1000, seed=i), seed=i), timeout=120)
                      for i in range(QUEUE_ROWS)]
            await asyncio.sleep(0.3)
            depth = metric(server, "samplerd_queue_depth")
            for call in queued:
                call.cancel()
            await asyncio.to_thread(wait_for, lambda: metric(server, "samplerd_queue_depth") == 0, 10,
                                    "an empty queue after cancelling")
            fresh = [(build_request(make_logits(1, 1000, seed=100 + i), seed=i), i) for i in range(QUEUE_ROWS)]
            answers = await asyncio.gather(*(stub.Sample(r, timeout=120) for r, _ in fresh),
                                           return_exceptions=True)
            for call in slow:
                await call
            print(f"queue depth before cancelling: {depth:.0f}")
            return list(zip(fresh, answers, strict=True))

    results = asyncio.run(scenario())
    for ((_request, i), answer) in results:
        assert not isinstance(answer, BaseException), answer  # no RESOURCE_EXHAUSTED: slots were freed
        assert tokens_of(answer) == expected_tokens(make_logits(1, 1000, seed=100 + i), {"seed": i})
