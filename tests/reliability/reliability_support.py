"""Shared helpers of the reliability tests: servers on the session's Ray, health, metrics,
logits, and the library's answer to compare with."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from samplerd.sampling import SamplingParams, sample
from samplerd.service.bench.process import ServerProcess, start_server
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: Child environment: a slow raylet on busy cores, and Python stacks on a crash.
SERVER_ENV = {"RAY_raylet_start_wait_time_s": "120", "PYTHONFAULTHANDLER": "1"}


def serve(ray_address: str, *options: str, wait: bool = True) -> ServerProcess:
    """A ``samplerd serve`` child on loopback joined to the test session's Ray instance."""
    server = start_server("--device", "cpu", "--ray-address", ray_address, *options, env=SERVER_ENV)
    if wait:
        try:
            server.wait_serving()
        except BaseException:
            server.terminate()
            raise
    return server


def health(target: str, timeout: float = 5.0, channel: grpc.Channel | None = None) -> int:
    """The server's overall health status."""
    if channel is not None:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status
    with grpc.insecure_channel(target) as own:
        return health_pb2_grpc.HealthStub(own).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> float:
    """Poll ``condition`` until true; the seconds it took. Fails the test after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


def metric(server: ServerProcess, name: str, host: str = "127.0.0.1", **labels: str) -> float:
    """The sum of the samples named ``name`` (with ``labels``) on the server's /metrics."""
    with urllib.request.urlopen(f"http://{host}:{server.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample_ in family.samples:
            if sample_.name == name and all(sample_.labels.get(k) == v for k, v in labels.items()):
                total += sample_.value
    return total


def make_logits(rows: int, vocab: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random logits, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, vocab, generator=generator) * 2.5).to(dtype)


def expected_tokens(logits: torch.Tensor, values: dict, steps: list[int] | None = None) -> list[list[int]]:
    """The token ids ``sampling.sample`` draws for these logits and (seeded) parameters."""
    params = SamplingParams(**values)
    out = sample(logits, [params] * logits.shape[0], steps=steps or 0)
    return [out.token_ids[row, : params.n].tolist() for row in range(logits.shape[0])]


def tokens_of(response: pb.SampleResponse) -> list[list[int]]:
    """The token ids of every row of a response."""
    return [list(row.token_ids) for row in response.rows]
