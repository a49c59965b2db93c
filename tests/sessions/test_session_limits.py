"""SampleStream limits end to end: sessions per server, sequences per session, the idle
timeout, and a client that vanishes; one real server with small limits for the module."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from session_helpers import SessionClient, field_of, metric_value, start_session_server, wait_for_metric

from samplerd.service.bench.process import ServerProcess

pytestmark = pytest.mark.e2e

MAX_SESSIONS = 2
MAX_SEQUENCES = 4
IDLE_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server(ray_address: str) -> Iterator[ServerProcess]:
    process = start_session_server(
        ray_address, "--max-sessions", str(MAX_SESSIONS), "--max-sequences-per-session", str(MAX_SEQUENCES),
        "--session-idle-timeout-s", str(IDLE_TIMEOUT_S))
    try:
        yield process
    finally:
        process.terminate()


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as c:
        yield c


def test_opened_answer_reports_the_sequences_and_idle_timeout(channel):
    client = SessionClient(channel)
    opened = client.open({"a": {}, "b": {}}, session_id="mine")
    assert (opened.session_id, opened.sequences, opened.idle_timeout_s) == ("mine", 2, IDLE_TIMEOUT_S)
    client.close()


def test_more_sequences_than_the_limit_is_invalid_argument_naming_open_sequences(channel):
    client = SessionClient(channel)
    with pytest.raises(grpc.RpcError) as caught:
        client.open({str(i): {} for i in range(MAX_SEQUENCES + 1)})
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(caught.value) == ["open.sequences"]
    assert "--max-sequences-per-session" in caught.value.details()


def test_sessions_over_the_limit_are_resource_exhausted_until_one_closes(channel, server):
    open_ones = [SessionClient(channel) for _ in range(MAX_SESSIONS)]
    for client in open_ones:
        client.open({"a": {}})
    assert metric_value(server, "samplerd_sessions_active") == MAX_SESSIONS
    extra = SessionClient(channel)
    with pytest.raises(grpc.RpcError) as caught:
        extra.open({"a": {}})
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-sessions" in caught.value.details()
    open_ones[0].close()
    again = SessionClient(channel)
    again.open({"a": {}})
    for client in (*open_ones[1:], again):
        client.close()
    assert wait_for_metric(server, "samplerd_sessions_active", 0) == 0


def test_idle_session_ends_with_deadline_exceeded_and_is_freed(channel, server):
    client = SessionClient(channel)
    client.open({"a": {}})
    client.step(["a"], np.zeros((1, 16), dtype=np.float32))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        next(client.call)  # no message: the server ends the stream after the idle timeout
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "idle" in caught.value.details() and "--session-idle-timeout-s" in caught.value.details()
    assert time.monotonic() - started >= IDLE_TIMEOUT_S * 0.9
    assert wait_for_metric(server, "samplerd_sessions_active", 0) == 0


def test_client_that_vanishes_frees_its_session(channel, server):
    client = SessionClient(channel)
    client.open({"a": {}, "b": {}})
    client.step(["a", "b"], np.zeros((2, 16), dtype=np.float32))
    assert metric_value(server, "samplerd_sessions_active") == 1
    client.call.cancel()
    assert wait_for_metric(server, "samplerd_sessions_active", 0, timeout_s=IDLE_TIMEOUT_S / 2) == 0


def test_half_close_ends_the_session_with_its_final_statistics(channel, server):
    client = SessionClient(channel)
    client.open({"a": {"seed": 1}})
    client.step(["a"], np.zeros((1, 16), dtype=np.float32))
    client.half_close()
    closed = next(client.call).closed
    assert closed.steps == 1 and closed.statistics.tokens == 1
    assert closed.statistics.mean_entropy == pytest.approx(np.log(16), rel=1e-5)
    with pytest.raises(StopIteration):
        next(client.call)
    assert client.call.code() is grpc.StatusCode.OK
    assert wait_for_metric(server, "samplerd_sessions_active", 0) == 0
