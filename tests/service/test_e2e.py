"""End to end: a real ``samplerd serve`` process on loopback with a real local Ray instance.

One server serves the whole module (started by the ``server`` fixture, Ray dashboard off);
the last test shuts it down with SIGTERM, so the module leaves no Ray instance behind for
the test modules after it.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_cases import ACTIVATING, SESSION_ONLY

from samplerd.sampling import SamplingParams, sample
from samplerd.sampling.registry import PARAMETERS, STRATEGY_LABELS
from samplerd.service.bench.process import ServerProcess, start_server
from samplerd.service.client import AsyncSamplerClient, SamplerClient, SampleResult, build_request, field_violations
from samplerd.service.config import message_size_options
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_TENSOR_ELEMENTS = 1_000_000
MAX_QUEUE_ROWS = 1024
CLIENT_MESSAGE_BYTES = 64 * 1024 * 1024


STARTUP_HEALTH: list[int] = []  # health right after the ports were bound, before the workers


def health_status(server: ServerProcess, service: str = "") -> int:
    with grpc.insecure_channel(server.target) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


@pytest.fixture(scope="module")
def server(ray_address: str) -> Iterator[ServerProcess]:
    """One samplerd with two CPU workers and small size limits, joined to the test session's
    Ray instance, for the whole module."""
    process = start_server(
        "--ray-address", ray_address,
        "--device", "cpu", "--workers", "2", "--max-message-bytes", str(MAX_MESSAGE_BYTES),
        "--max-tensor-elements", str(MAX_TENSOR_ELEMENTS), "--max-queue", str(MAX_QUEUE_ROWS),
        "--grace-seconds", "20",
        # Ray gives its raylet 30 s by default; on 2 shared, busy cores it can take longer.
        # PYTHONFAULTHANDLER: a crash shows its Python stack in the output a failure prints.
        env={"RAY_raylet_start_wait_time_s": "120", "PYTHONFAULTHANDLER": "1"},
    )
    try:
        STARTUP_HEALTH.append(health_status(process))
        process.wait_serving()
        yield process
    finally:
        process.terminate()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[SamplerClient]:
    with SamplerClient(server.target, max_message_bytes=CLIENT_MESSAGE_BYTES, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.SamplerStub]:
    with grpc.insecure_channel(server.target, options=message_size_options(CLIENT_MESSAGE_BYTES)) as channel:
        yield pb_grpc.SamplerStub(channel)


def make_logits(rows: int, vocab: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random logits with a few masked (-inf) tokens per row."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=generator) * 2.5
    if vocab > 4:
        logits[:, torch.randint(0, vocab, (max(1, vocab // 50),), generator=generator)] = -float("inf")
        logits[:, 0] = 1.0  # keeps every row with a finite logit
    return logits.to(dtype)


# Float32 sums over a row depend on how the batch is laid out (the worker stacks rows of other
# requests), so statistics agree to float32 accuracy; token ids agree exactly.
STATS_TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def assert_matches_library(result: SampleResult, logits: torch.Tensor, params: list[SamplingParams],
                           steps: list[int]) -> None:
    """The service's answer equals sampling.sample on the same logits, parameters and steps."""
    expected = sample(logits, params, steps=steps)
    assert len(result) == logits.shape[0]
    for i, (row, p) in enumerate(zip(result, params, strict=True)):
        assert row.token_ids == expected.token_ids[i, : p.n].tolist(), f"row {i}"
        assert row.strategy == expected.strategies[i]
        np.testing.assert_allclose(row.logprobs, expected.logprobs[i, : p.n].numpy(), **STATS_TOLERANCE)
        np.testing.assert_allclose(row.surprise, expected.stats.surprise[i, : p.n].numpy(), **STATS_TOLERANCE)
        for name in ("entropy", "varentropy", "truncated_entropy", "kept_mass", "top_k_entropy", "top_k_mass"):
            np.testing.assert_allclose(getattr(row, name), float(getattr(expected.stats, name)[i]),
                                       err_msg=name, **STATS_TOLERANCE)
        assert row.kept_tokens == int(expected.stats.kept_tokens[i])
        mu = float(expected.mirostat_mu[i])
        assert (row.mirostat_mu is None) == np.isnan(mu)
        if row.mirostat_mu is not None:
            assert row.mirostat_mu == pytest.approx(mu)
        if p.top_logprobs:
            ids, logprobs = expected.top_logprobs
            assert [t for t, _ in row.top_logprobs] == ids[i, : p.top_logprobs].tolist()
            np.testing.assert_allclose([lp for _, lp in row.top_logprobs], logprobs[i, : p.top_logprobs].numpy(),
                                       **STATS_TOLERANCE)


def refused(call, *args, **kwargs) -> grpc.RpcError:
    """The error ``call`` answered with (fails if it succeeded)."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


# -- health, reflection, strategies ----------------------------------------------------------


def test_health_is_not_serving_until_workers_are_up(server: ServerProcess) -> None:
    assert STARTUP_HEALTH == [health_pb2.HealthCheckResponse.NOT_SERVING]


def test_health_is_serving_once_workers_are_up(server: ServerProcess) -> None:
    for service in ("", "samplerd.v1.Sampler"):
        assert health_status(server, service) == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_sampler_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in next(replies).list_services_response.service}
    assert {"samplerd.v1.Sampler", "grpc.health.v1.Health"} <= names


def test_list_strategies_answers_every_registered_strategy(client: SamplerClient) -> None:
    strategies = {s.name: s for s in client.list_strategies()}
    assert set(ACTIVATING) == set(strategies)
    assert strategies["top_k"].parameters[0].range == PARAMETERS["top_k"].range_text()


def test_generate_without_a_model_is_failed_precondition_saying_how_to_start_one(
        server: ServerProcess, stub: pb_grpc.SamplerStub) -> None:
    # This module's server runs without --model (the model's own tests are in tests/generate).
    with pytest.raises(grpc.RpcError) as caught:
        next(stub.Generate(pb.GenerateRequest(prompt_text="Once upon"), timeout=10))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "samplerd serve --model DIR" in caught.value.details()
    assert health_status(server) == health_pb2.HealthCheckResponse.SERVING  # no model, still serving
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    assert 'samplerd_requests_total{code="FAILED_PRECONDITION",method="Generate"} 1.0' in text


# -- sampling --------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", sorted(set(ACTIVATING) - set(SESSION_ONLY)))
def test_every_strategy_returns_what_the_library_returns(client: SamplerClient, strategy: str) -> None:
    logits = make_logits(3, 500, seed=hash(strategy) % 1000)
    values = {**ACTIVATING[strategy], "seed": 11, "top_logprobs": 4}
    if not values.get("mirostat"):
        values["n"] = 2
    steps = [0, 1, 7]
    result = client.sample(logits, steps=steps, request_id=strategy, **values)
    assert result.request_id == strategy
    assert_matches_library(result, logits, [SamplingParams(**values)] * 3, steps)


@pytest.mark.parametrize("strategy", sorted(SESSION_ONLY))
def test_session_only_strategies_are_refused_by_unary_sample(client: SamplerClient, strategy: str) -> None:
    error = refused(client.sample, make_logits(1, 50, seed=0), **ACTIVATING[strategy])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert SESSION_ONLY[strategy] in dict(field_violations(error))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_sampled_as_sent(client: SamplerClient, dtype: torch.dtype) -> None:
    logits = make_logits(2, 300, seed=5, dtype=dtype)
    result = client.sample(logits, top_k=40, seed=3)
    assert_matches_library(result, logits, [SamplingParams(top_k=40, seed=3)] * 2, [0, 0])


def test_numpy_logits_are_accepted(client: SamplerClient) -> None:
    logits = make_logits(1, 200, seed=9).numpy()
    result = client.sample(logits[0], temperature=0.0)
    assert result.token_ids == [[int(np.argmax(logits[0]))]]


def test_row_params_are_merged_over_the_shared_params(client: SamplerClient) -> None:
    logits = make_logits(3, 400, seed=4)
    rows = [{"seed": 1}, {"temperature": 0.0}, {"top_k": 5, "seed": 2, "n": 3}]
    result = client.sample(logits, row_params=rows, top_p=0.8, seed=99)
    params = [SamplingParams(**{"top_p": 0.8, "seed": 99, **row}) for row in rows]
    assert_matches_library(result, logits, params, [0, 0, 0])
    assert [len(ids) for ids in result.token_ids] == [1, 1, 3]


def test_unseeded_requests_still_answer_valid_tokens(client: SamplerClient) -> None:
    result = client.sample(make_logits(4, 100, seed=1), top_p=0.5)
    assert all(0 <= ids[0] < 100 for ids in result.token_ids)


async def test_200_concurrent_mixed_requests_each_get_their_own_answer(server: ServerProcess) -> None:
    rng = random.Random(1234)
    strategies = sorted(set(ACTIVATING) - set(SESSION_ONLY))
    cases = []
    for i in range(200):
        values = {**ACTIVATING[rng.choice(strategies)], "seed": 1000 + i}
        if not values.get("mirostat"):
            values["n"] = rng.choice((1, 2))
        rows, vocab = rng.randint(1, 3), rng.choice((50, 1000, 32000))
        dtype = rng.choice((torch.float32, torch.float16, torch.bfloat16))
        steps = [rng.randint(0, 50) for _ in range(rows)]
        cases.append((make_logits(rows, vocab, seed=i, dtype=dtype), values, steps))
    async with AsyncSamplerClient(server.target, timeout=120) as client:
        results = await asyncio.gather(*(
            client.sample(logits, steps=steps, request_id=str(i), **values)
            for i, (logits, values, steps) in enumerate(cases)
        ))
    for i, (result, (logits, values, steps)) in enumerate(zip(results, cases, strict=True)):
        assert result.request_id == str(i)
        assert_matches_library(result, logits, [SamplingParams(**values)] * logits.shape[0], steps)


# -- bad input -------------------------------------------------------------------------------


def valid_request(**params) -> pb.SampleRequest:
    return build_request(make_logits(2, 10, seed=0), **params)


def with_logits(**changes) -> pb.SampleRequest:
    request = valid_request()
    for name, value in changes.items():
        if name == "shape":
            del request.logits.shape[:]
            request.logits.shape.extend(value)
        else:
            setattr(request.logits, name, value)
    return request


def with_nonfinite(row: int, value: float) -> pb.SampleRequest:
    logits = make_logits(3, 10, seed=0)
    logits[row, 2] = value
    return build_request(logits)


def all_masked_row() -> pb.SampleRequest:
    logits = make_logits(2, 10, seed=0)
    logits[1] = -float("inf")
    return build_request(logits)


def with_row_params(count: int, **row) -> pb.SampleRequest:
    return build_request(make_logits(2, 10, seed=0), row_params=[row] * count)


BAD_REQUESTS = {
    "wrong byte length": (lambda: with_logits(data=b"\0" * 79), "logits.data", "80 bytes"),
    "unknown dtype": (lambda: with_logits(dtype=42), "logits.dtype", "42"),
    "unspecified dtype": (lambda: with_logits(dtype=pb.Tensor.DTYPE_UNSPECIFIED), "logits.dtype", "FP32"),
    "rank-3 shape": (lambda: with_logits(shape=[1, 2, 10]), "logits.shape", "rank 3"),
    "B=0": (lambda: with_logits(shape=[0, 10], data=b""), "logits.shape", "B >= 1"),
    "V=0": (lambda: with_logits(shape=[2, 0], data=b""), "logits.shape", "V >= 1"),
    "no logits": (lambda: pb.SampleRequest(), "logits", "required"),
    "NaN logits": (lambda: with_nonfinite(1, float("nan")), "logits.data", "row 1 contains NaN"),
    "+inf logits": (lambda: with_nonfinite(2, float("inf")), "logits.data", "row 2 contains +inf"),
    "all -inf row": (all_masked_row, "logits.data", "row 1 has no finite logit"),
    "top_p=1.5": (lambda: valid_request(top_p=1.5), "params.top_p", "1.5"),
    "top_k=-3": (lambda: valid_request(top_k=-3), "params.top_k", "-3"),
    "temperature<0": (lambda: valid_request(temperature=-0.5), "params.temperature", "-0.5"),
    "mirostat with top_p": (lambda: valid_request(mirostat=2, top_p=0.5), "params.mirostat", "top_p"),
    "logit_bias outside V": (lambda: valid_request(logit_bias={10: 1.0}), "params.logit_bias", "vocabulary"),
    "bad row params": (lambda: with_row_params(2, top_k=-3), "row_params[0].top_k", "-3"),
    "row params count != B": (lambda: with_row_params(3), "row_params", "exactly B = 2"),
    "steps count != B": (lambda: build_request(make_logits(2, 10, seed=0), steps=[1]), "steps", "exactly B = 2"),
    "negative step": (lambda: build_request(make_logits(2, 10, seed=0), steps=[0, -1]), "steps[1]", "-1"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_is_invalid_argument_naming_the_field(stub: pb_grpc.SamplerStub, case: str) -> None:
    build, field, text = BAD_REQUESTS[case]
    error = refused(stub.Sample, build(), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    violations = dict(field_violations(error))
    assert field in violations, violations
    assert text in violations[field]


def test_tensor_over_the_element_limit_is_resource_exhausted(stub: pb_grpc.SamplerStub) -> None:
    request = with_logits(shape=[2, MAX_TENSOR_ELEMENTS])  # rejected on its shape, before the bytes
    error = refused(stub.Sample, request, timeout=30)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "logits.shape" in error.details()


def test_message_over_the_size_limit_is_resource_exhausted(stub: pb_grpc.SamplerStub) -> None:
    vocab = MAX_MESSAGE_BYTES // 4 + 1024
    request = build_request(np.zeros((1, vocab), dtype=np.float32))
    error = refused(stub.Sample, request, timeout=30)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_expired_deadline_is_deadline_exceeded(stub: pb_grpc.SamplerStub, client: SamplerClient) -> None:
    request = build_request(make_logits(64, 32000, seed=0), top_p=0.9)
    error = refused(stub.Sample, request, timeout=0.001)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(client.sample(make_logits(1, 10, seed=0))) == 1


async def test_a_full_queue_answers_resource_exhausted_and_every_request_gets_one_answer(
    server: ServerProcess,
) -> None:
    logits = make_logits(128, 1000, seed=3)  # 80 x 128 rows: far more than the queue's 1024
    async with AsyncSamplerClient(server.target, max_message_bytes=CLIENT_MESSAGE_BYTES, timeout=120) as client:
        answers = await asyncio.gather(*(client.sample(logits, top_k=5) for _ in range(80)), return_exceptions=True)
    codes = [grpc.StatusCode.OK if isinstance(a, SampleResult) else a.code() for a in answers]
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert health_status(server) == health_pb2.HealthCheckResponse.SERVING


# -- metrics ---------------------------------------------------------------------------------


def scrape(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def test_metrics_show_per_strategy_series_after_traffic(server: ServerProcess, client: SamplerClient) -> None:
    client.sample(make_logits(2, 100, seed=0), top_k=10, seed=1)
    text = scrape(server)
    rows = [line for line in text.splitlines() if line.startswith('samplerd_rows_total{strategy="top_k"}')]
    assert rows and float(rows[0].split()[-1]) >= 2
    for label in STRATEGY_LABELS:  # pre-initialised: zeros for strategies never used
        assert f'samplerd_kept_tokens_count{{strategy="{label}"}}' in text
    for series in ('samplerd_entropy_nats_bucket{le="0.5",stage="full",strategy="top_k"}',
                   'samplerd_entropy_nats_bucket{le="0.5",stage="truncated",strategy="top_k"}',
                   'samplerd_requests_total{code="OK",method="Sample"}',
                   'samplerd_requests_total{code="INVALID_ARGUMENT",method="Sample"}',
                   'samplerd_sample_duration_seconds_count{device="cpu",strategy="top_k"}',
                   "samplerd_queue_wait_seconds_count", "samplerd_batch_rows_count", "samplerd_inflight_requests",
                   "samplerd_queue_depth", 'samplerd_workers{state="alive"} 2.0', "samplerd_surprise_nats_count",
                   "samplerd_kept_mass_count", "samplerd_request_duration_seconds_count"):
        assert series in text, series


def test_metrics_exposition_passes_promtool(server: ServerProcess, client: SamplerClient, promtool: str) -> None:
    client.sample(make_logits(1, 100, seed=0), min_p=0.1)
    checked = subprocess.run([promtool, "check", "metrics"], input=scrape(server), text=True,
                             capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- shutdown (last: it stops the module's server) -------------------------------------------


def test_sigterm_turns_health_not_serving_and_finishes_in_flight_work(server: ServerProcess) -> None:
    channel = grpc.insecure_channel(server.target)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

    calls: list[tuple[float, float, grpc.StatusCode]] = []  # (start, end, answer) of every call
    request = build_request(make_logits(16, 32000, seed=0), top_p=0.9)
    holding = threading.Event()

    def call() -> None:
        # Each caller keeps one request in flight until the scrape below sees the server holding
        # work (however quickly a single request is served), then lets its last one finish.
        while not holding.is_set():
            start = time.monotonic()
            try:
                pb_grpc.SamplerStub(channel).Sample(request, timeout=60)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            calls.append((start, time.monotonic(), code))
            if code != grpc.StatusCode.OK:
                return

    callers = [threading.Thread(target=call) for _ in range(4)]
    for caller in callers:
        caller.start()
    in_flight = 0
    for _ in range(100):  # until the server holds at least one of them
        scraped_from = time.monotonic()
        in_flight = int(float(next(line for line in scrape(server).splitlines()
                                   if line.startswith("samplerd_inflight_requests ")).split()[1]))
        scraped_until = time.monotonic()
        if in_flight:
            break
        time.sleep(0.02)
    holding.set()
    server.process.terminate()  # SIGTERM
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    for caller in callers:
        caller.join(60)
    exit_code = server.process.wait(60)
    if server.reader is not None:
        server.reader.join(5)
    assert exit_code == 0, "\n".join(server.output)
    channel.close()
    # The requests the server held at the scrape are among the calls open during it: each must
    # have finished with OK, SIGTERM or not.
    open_then = [code for start, end, code in calls if start < scraped_until and end > scraped_from]
    assert open_then.count(grpc.StatusCode.OK) >= in_flight >= 1, (open_then, list(server.output)[-20:])
    assert {code for _, _, code in calls} <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE,
                                              grpc.StatusCode.CANCELLED}
