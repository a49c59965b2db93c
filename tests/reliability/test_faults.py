"""Faults under a real server on loopback with real Ray: sampler actors killed mid-flight, the
Ray worker node lost and restored, SIGTERM under load.

(The "same with an open SampleStream session" case of issue 6 belongs to the sessions work,
tests/sessions, and is not repeated here.)
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from reliability_support import (
    NOT_SERVING,
    SERVER_ENV,
    SERVING,
    expected_tokens,
    health,
    make_logits,
    metric,
    serve,
    tokens_of,
    wait_for,
)

from samplerd.service.bench.process import ServerProcess, start_server
from samplerd.service.bench.soak import kill_sampler_actor, sampler_actor_names
from samplerd.service.client import build_request
from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

VOCAB = 32000


@pytest.fixture(scope="module")
def server(ray_address: str) -> Iterator[ServerProcess]:
    """Two CPU sampler actors; small batches, so that many batches are in flight at once."""
    process = serve(ray_address, "--workers", "2", "--max-batch-rows", "4", "--grace-seconds", "20")
    try:
        yield process
    finally:
        process.terminate()


def seeded_cases(count: int, seed0: int) -> list[tuple[object, list[list[int]]]]:
    """``count`` seeded one-row requests and the tokens the library draws for each."""
    cases = []
    for i in range(count):
        logits = make_logits(1, VOCAB, seed=seed0 + i)
        values = {"top_p": 0.9, "seed": seed0 + i}
        cases.append((build_request(logits, request_id=f"r{seed0 + i}", **values), expected_tokens(logits, values)))
    return cases


async def send_all(target: str, cases, timeout: float = 60.0, answered: list[str] | None = None):
    """Send every case concurrently; one outcome (response or RpcError) per case, in order.
    ``answered`` collects the request ids as their answers arrive."""

    async def one(stub: pb_grpc.SamplerStub, request) -> object:
        try:
            return await stub.Sample(request, timeout=timeout)
        finally:
            if answered is not None:
                answered.append(request.request_id)

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SamplerStub(channel)
        return await asyncio.gather(*(one(stub, request) for request, _ in cases), return_exceptions=True)


def check_each_answered_once(cases, outcomes) -> Counter:
    """Every request got exactly one answer: its own right tokens, or UNAVAILABLE."""
    codes: Counter = Counter()
    seen_ids: list[str] = []
    for (request, expected), outcome in zip(cases, outcomes, strict=True):
        if isinstance(outcome, grpc.RpcError):
            assert outcome.code() is grpc.StatusCode.UNAVAILABLE, outcome
            codes[outcome.code().name] += 1
            continue
        assert not isinstance(outcome, BaseException), outcome
        assert outcome.request_id == request.request_id
        assert tokens_of(outcome) == expected, request.request_id
        seen_ids.append(outcome.request_id)
        codes["OK"] += 1
    assert len(seen_ids) == len(set(seen_ids)), "a request was answered twice"
    return codes


def alive_workers(server: ServerProcess) -> float:
    return metric(server, "samplerd_workers", state="alive")


async def test_killing_an_actor_under_100_in_flight_requests_answers_each_once_and_recovers(
    server: ServerProcess, ray_connected: str
) -> None:
    """ray.kill one of two actors while 100 seeded requests are in flight: each gets exactly one
    answer (the library's tokens, or UNAVAILABLE), none hangs; the actor is replaced and both
    actors serve again."""
    names = sampler_actor_names(server.process.pid)
    assert len(names) == 2, names
    cases = await asyncio.to_thread(seeded_cases, 100, 1000)
    answered: list[str] = []
    sending = asyncio.create_task(send_all(server.target, cases, answered=answered))
    started = time.monotonic()
    while not answered and time.monotonic() - started < 60:  # batches are flowing: both actors busy
        await asyncio.sleep(0.005)
    assert await asyncio.to_thread(kill_sampler_actor, names[0])
    in_flight = len(cases) - len(answered)
    outcomes = await asyncio.wait_for(sending, 90)  # none hangs
    codes = check_each_answered_once(cases, outcomes)
    print(f"killed an actor with {in_flight} of 100 requests unanswered: {dict(codes)}")
    assert in_flight >= 50
    assert codes["OK"] >= 50, codes  # the retry on the surviving actor served most of them

    def replaced() -> bool:
        now = sampler_actor_names(server.process.pid)
        return len(now) == 2 and names[0] not in now and alive_workers(server) == 2

    took = await asyncio.to_thread(wait_for, replaced, 90, "the killed actor's replacement")
    print(f"actor replaced, full capacity after {took:.1f}s")
    again = await asyncio.to_thread(seeded_cases, 40, 5000)
    codes = check_each_answered_once(again, await send_all(server.target, again))
    assert codes == Counter(OK=40)


async def test_health_serving_while_one_actor_lives_not_serving_when_none(
    server: ServerProcess, ray_connected: str
) -> None:
    """Health stays SERVING while one actor of two is dead; turns NOT_SERVING (and requests get
    UNAVAILABLE, promptly) when both are, and SERVING again once they are replaced."""
    await asyncio.to_thread(wait_for, lambda: alive_workers(server) == 2, 90, "two live actors")
    names = sampler_actor_names(server.process.pid)
    probe = seeded_cases(1, 9000)

    assert await asyncio.to_thread(kill_sampler_actor, names[0])
    statuses = []
    alive_seen = []
    started = time.monotonic()
    # Until the death is noticed (a call or the 2 s idle ping) and the replacement is up.
    while time.monotonic() - started < 90:
        await send_all(server.target, probe)
        statuses.append(health(server.target))
        alive_seen.append(alive_workers(server))
        if min(alive_seen) < 2 and alive_seen[-1] == 2:
            break
        await asyncio.sleep(0.1)
    assert min(alive_seen) == 1 and alive_seen[-1] == 2, alive_seen
    assert set(statuses) == {SERVING}, statuses

    names = sampler_actor_names(server.process.pid)
    for name in names:
        assert await asyncio.to_thread(kill_sampler_actor, name)
    unavailable = []

    async def not_serving() -> bool:
        outcome = (await send_all(server.target, probe, timeout=30))[0]
        if isinstance(outcome, grpc.RpcError):
            assert outcome.code() is grpc.StatusCode.UNAVAILABLE, outcome
            unavailable.append(outcome)
        return health(server.target) == NOT_SERVING

    started = time.monotonic()
    while not await not_serving():
        assert time.monotonic() - started < 15, "health did not turn NOT_SERVING with no live actor"
        await asyncio.sleep(0.05)
    before = time.monotonic()
    outcome = (await send_all(server.target, probe, timeout=30))[0]
    if health(server.target) == NOT_SERVING:  # still no actor: the answer is UNAVAILABLE, at once
        assert isinstance(outcome, grpc.RpcError) and outcome.code() is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - before < 2.0
    await asyncio.to_thread(wait_for, lambda: health(server.target) == SERVING, 90, "SERVING after replacement")
    outcome = (await send_all(server.target, probe))[0]
    assert tokens_of(outcome) == probe[0][1]


def test_sigterm_under_load_finishes_in_flight_refuses_new_and_exits_in_grace(ray_address: str) -> None:
    """SIGTERM while requests are in flight: the requests the server was handling complete with
    the right tokens, every other one (its backlog, and requests sent after the signal) gets
    UNAVAILABLE, never grpc's CANCELLED; the process exits within the grace period."""
    grace = 15.0
    server = serve(ray_address, "--workers", "1", "--max-batch-rows", "1", "--grace-seconds", str(grace))
    try:
        cases = seeded_cases(60, 20000)
        outcomes: list[object] = []
        answered: list[str] = []

        def load() -> None:
            outcomes.extend(asyncio.run(send_all(server.target, cases, answered=answered)))

        sender = threading.Thread(target=load)
        sender.start()
        wait_for(lambda: len(answered) >= 1, 30, "the first answer")
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        answered_before = len(answered)
        time.sleep(0.2)
        late = seeded_cases(5, 30000)
        late_outcomes = asyncio.run(send_all(server.target, late, timeout=10))
        server.process.wait(grace + 20)
        exit_s = time.monotonic() - signalled
        sender.join(30)
        codes = check_each_answered_once(cases, outcomes)  # OK with the right tokens, or UNAVAILABLE
        for outcome in late_outcomes:
            assert isinstance(outcome, grpc.RpcError) and outcome.code() is grpc.StatusCode.UNAVAILABLE, outcome
        print(f"SIGTERM under load: {60 - answered_before} of 60 unanswered at the signal; answers {dict(codes)}; "
              f"exit after {exit_s:.1f}s (grace {grace:g}s)")
        assert codes["OK"] > answered_before  # requests in flight at the signal were finished
        assert exit_s < grace + 5.0  # the grace period, plus stopping the actors
        assert server.process.returncode == 0
    finally:
        server.terminate()


# -- the Ray worker node lost and restored -----------------------------------------------------


@pytest.fixture
def small_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A Ray cluster of its own: a head node without CPUs (nothing can be placed on it) and one
    worker node with 2 CPUs, where the sampler actors run."""
    import ray._private.utils
    from ray.cluster_utils import Cluster

    # Cluster would record its address as "the current cluster" in /tmp/ray, where other
    # processes' ray.init() on this machine would find it; it is this test's alone.
    monkeypatch.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2)
        yield cluster
    finally:
        cluster.shutdown()


def test_losing_the_ray_worker_node_answers_unavailable_promptly_and_recovers(small_cluster) -> None:
    """Kill the Ray worker node (raylet and every worker process) under the front end: the first
    request gets its answer (from an actor process that outlives its raylet for a moment and
    still answers on its batch link) or UNAVAILABLE, within seconds; health turns NOT_SERVING
    within seconds and from then on requests get UNAVAILABLE within a second; once a worker node
    joins again, the actors are recreated and requests are served."""
    server = start_server("--device", "cpu", "--workers", "2", "--ray-address", small_cluster.address,
                          env=SERVER_ENV)
    try:
        server.wait_serving()
        probe = seeded_cases(1, 40000)
        assert tokens_of(asyncio.run(send_all(server.target, probe))[0]) == probe[0][1]
        (worker_node,) = small_cluster.worker_nodes
        small_cluster.remove_node(worker_node, allow_graceful=False)

        def one_call() -> tuple[object, float]:
            before = time.monotonic()
            return asyncio.run(send_all(server.target, probe, timeout=30))[0], time.monotonic() - before

        # The first call is answered either way, never hung: by an actor not yet gone, or
        # UNAVAILABLE once its link and Ray tell it is.
        outcome, first_s = one_call()
        if not isinstance(outcome, grpc.RpcError):
            assert tokens_of(outcome) == probe[0][1]
        else:
            assert outcome.code() is grpc.StatusCode.UNAVAILABLE, outcome
        assert first_s < 10.0
        took = wait_for(lambda: health(server.target) == NOT_SERVING, 10, "NOT_SERVING without workers")
        # From then on every call is refused at once (no live actor), while none returns.
        for _ in range(5):
            outcome, seconds = one_call()
            assert isinstance(outcome, grpc.RpcError) and outcome.code() is grpc.StatusCode.UNAVAILABLE, outcome
            assert seconds < 0.5, f"UNAVAILABLE took {seconds:.2f}s"
            time.sleep(0.2)
        first = "answered" if not isinstance(outcome, grpc.RpcError) else "UNAVAILABLE"
        print(f"worker node lost: first call {first} after {first_s:.1f}s, NOT_SERVING {took:.1f}s later, "
              f"then UNAVAILABLE at once")
        assert health(server.target) == NOT_SERVING  # no worker returned by itself
        small_cluster.add_node(num_cpus=2)
        took = wait_for(lambda: health(server.target) == SERVING, 120, "SERVING once a worker node returned")
        print(f"worker node back: SERVING after {took:.1f}s")
        assert tokens_of(asyncio.run(send_all(server.target, probe))[0]) == probe[0][1]
    finally:
        server.terminate()
