"""Helpers of the session tests: a blocking SampleStream client, a synthetic Zipf-like model,
and the server's /metrics."""

from __future__ import annotations

import queue
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from samplerd.service.bench.process import ServerProcess, start_server
from samplerd.service.client import encode_logits
from samplerd.service.client import params as client_params
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc

MESSAGE_BYTES = 64 * 1024 * 1024


def start_session_server(ray_address: str, *options: str) -> ServerProcess:
    """A samplerd on loopback with two CPU sampler actors, joined to the test session's Ray."""
    server = start_server("--device", "cpu", "--workers", "2", "--ray-address", ray_address,
                          "--grace-seconds", "5", *options,
                          env={"RAY_raylet_start_wait_time_s": "120", "PYTHONFAULTHANDLER": "1"})
    try:
        server.wait_serving()
    except BaseException:
        server.terminate()
        raise
    return server


class SessionClient:
    """One SampleStream call driven message by message: ``send`` writes one request and
    returns its one answer."""

    def __init__(self, channel: grpc.Channel, timeout: float = 120.0) -> None:
        self._requests: queue.Queue = queue.Queue()
        self.call = pb_grpc.SamplerStub(channel).SampleStream(iter(self._requests.get, None), timeout=timeout)

    def send(self, request: pb.SampleStreamRequest) -> pb.SampleStreamResponse:
        """Write one message and read its answer (raises the stream's grpc.RpcError)."""
        self._requests.put(request)
        return next(self.call)

    def open(self, sequences: Mapping[str, Mapping[str, Any]], prompts: Mapping[str, Sequence[int]] | None = None,
             session_id: str = "", **params: Any) -> pb.SessionOpened:
        """Open the session: sequence id -> its parameters (merged over ``params``)."""
        prompts = prompts or {}
        message = pb.SessionOpen(session_id=session_id, params=client_params.to_proto(params))
        for sequence_id, own in sequences.items():
            message.sequences.add(sequence_id=sequence_id, params=client_params.to_proto(own),
                                  prompt_token_ids=list(prompts.get(sequence_id, ())))
        return self.send(pb.SampleStreamRequest(open=message)).opened

    def step(self, sequence_ids: Sequence[str], logits: np.ndarray | None,
             forced: Mapping[str, Iterable[int]] | None = None) -> pb.SessionStepResult:
        """One step: ``logits`` [R, V] for ``sequence_ids`` (None: forced tokens only)."""
        message = pb.SessionStep(sequence_ids=list(sequence_ids))
        if logits is not None:
            message.logits.CopyFrom(encode_logits(np.asarray(logits, dtype=np.float32)))
        for sequence_id, tokens in (forced or {}).items():
            message.forced.add(sequence_id=sequence_id, token_ids=list(tokens))
        return self.send(pb.SampleStreamRequest(step=message)).step

    def close(self) -> pb.SessionClosed:
        """Send ``close``, read the final answer, and half-close."""
        closed = self.send(pb.SampleStreamRequest(close=pb.SessionClose())).closed
        self.half_close()
        return closed

    def half_close(self) -> None:
        """End the client's side of the stream."""
        self._requests.put(None)


class ZipfModel:
    """A fixed synthetic language model: Zipf-like logits -s ln(rank), the ranks permuted by
    the last token of the history (one of ``contexts`` permutations), plus small noise keyed by
    the history's length. A pure function of the history."""

    def __init__(self, vocab: int = 1000, exponent: float = 1.1, contexts: int = 8, noise: float = 0.3,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        zipf = (-exponent * np.log(np.arange(1, vocab + 1))).astype(np.float32)
        self._tables = np.empty((contexts, vocab), dtype=np.float32)
        for c in range(contexts):
            self._tables[c, rng.permutation(vocab)] = zipf
        self.vocab = vocab
        self._noise = noise
        self._seed = seed

    def logits(self, history: Sequence[int]) -> np.ndarray:
        """Next-token logits [V] (float32) after ``history``."""
        last = history[-1] if history else 0
        noise = np.random.default_rng((self._seed, len(history), last)).standard_normal(self.vocab)
        return self._tables[last % len(self._tables)] + (self._noise * noise).astype(np.float32)


def metric_value(server: ServerProcess, name: str, **labels: str) -> float:
    """One sample of the server's /metrics, by name and exact labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise KeyError(name)


def wait_for_metric(server: ServerProcess, name: str, value: float, timeout_s: float = 10.0, **labels: str) -> float:
    """Poll /metrics until the sample equals ``value`` or ``timeout_s`` passed; the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = metric_value(server, name, **labels)
        if found == value or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def field_of(error: grpc.RpcError) -> list[str]:
    """The fields a google.rpc.BadRequest in ``error`` names."""
    from samplerd.service.client import field_violations

    return [name for name, _ in field_violations(error)]
