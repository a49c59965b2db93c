"""A small Python client for samplerd.

>>> from samplerd.service.client import SamplerClient
>>> with SamplerClient("localhost:50051") as client:
...     result = client.sample(logits, top_p=0.9, seed=7)   # logits: numpy or torch, [B, V] or [V]
...     result.token_ids                                      # [[id], ...] one list per row

Any keyword argument of :class:`sampling.SamplingParams` is accepted; ``row_params`` (one dict
per row, merged over the keyword arguments) and ``steps`` set per-row values. Errors are the
``grpc.RpcError`` the server answered; :func:`field_violations` lists the fields it named. A
value the wire cannot carry (``seed=-1``, ``top_p="0.9"``) raises :class:`ParameterError`
(a ValueError and TypeError) naming the field before anything is sent. ``client.wait()``
blocks until a freshly started server can answer; ``client.generate(...)`` and
``client.session(...)`` are the streaming calls (:mod:`samplerd.service.client.streams`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from samplerd.service.client import params as client_params
from samplerd.service.client.params import ParameterError as ParameterError  # re-exported: raised by build_request
from samplerd.service.client.streams import AsyncSampleSession, GenerateStream, SampleSession, generate_request
from samplerd.service.config import ServerConfig, message_size_options
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc
from samplerd.service.security import open_channel

DEFAULT_MAX_MESSAGE_BYTES = ServerConfig.max_message_bytes
_SERVICE = pb.DESCRIPTOR.services_by_name["Sampler"].full_name  # the health service name of the Sampler
_NOT_YET = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND)
_WAIT_POLL_S = 0.25
_NUMPY_WIRE = {np.dtype(np.float32): pb.Tensor.FP32, np.dtype(np.float16): pb.Tensor.FP16}


@dataclass(frozen=True)
class RowSample:
    """One row's answer: tokens, their log-probs, top log-probs and statistics (nats)."""

    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[tuple[int, float]]
    strategy: str
    mirostat_mu: float | None
    entropy: float
    varentropy: float
    truncated_entropy: float
    kept_tokens: int
    kept_mass: float
    top_k_entropy: float
    top_k_mass: float
    surprise: list[float]


@dataclass(frozen=True)
class SampleResult:
    """The answer to one ``sample`` call: one :class:`RowSample` per row, in order."""

    rows: list[RowSample]
    request_id: str

    @property
    def token_ids(self) -> list[list[int]]:
        """The sampled ids, one list (of ``n``) per row."""
        return [row.token_ids for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, row: int) -> RowSample:
        return self.rows[row]

    def __iter__(self) -> Iterator[RowSample]:
        return iter(self.rows)


def encode_logits(array: Any) -> pb.Tensor:
    """A wire ``Tensor`` from a numpy array or torch tensor, ``[B, V]`` (or ``[V]``: one row).

    torch: float32, float16, bfloat16; numpy: float32, float16 (float64 is sent as float32).
    """
    dtype, values = wire_array(array)
    return pb.Tensor(dtype=dtype, shape=list(values.shape), data=values.tobytes())


def wire_array(array: Any) -> tuple[int, np.ndarray]:
    """``(wire dtype, [B, V] little-endian numpy array)`` of logits (bf16 as its int16 bits)."""
    if type(array).__module__.startswith("torch"):
        return _torch_array(array)
    values = np.asarray(array)
    native = values.dtype.newbyteorder("=")
    if native == np.float64:
        native = np.dtype(np.float32)
    if native not in _NUMPY_WIRE:
        raise TypeError(f"logits must be float32, float16 or bfloat16, got {values.dtype}")
    if values.ndim == 1:
        values = values[None, :]
    return _NUMPY_WIRE[native], values.astype(native.newbyteorder("<"), copy=False)


def _torch_array(tensor: Any) -> tuple[int, np.ndarray]:
    import torch

    wire = {torch.float32: pb.Tensor.FP32, torch.float16: pb.Tensor.FP16, torch.bfloat16: pb.Tensor.BF16}
    if tensor.dtype not in wire:
        raise TypeError(f"logits must be float32, float16 or bfloat16, got {tensor.dtype}")
    values = tensor.detach().cpu().contiguous()
    if values.dim() == 1:
        values = values[None, :]
    raw = values.view(torch.int16) if values.dtype == torch.bfloat16 else values
    data = raw.numpy()
    if sys.byteorder != "little":
        data = data.byteswap()
    return wire[tensor.dtype], data


def build_request(
    array: Any,
    *,
    row_params: Sequence[Mapping[str, Any]] | None = None,
    steps: Sequence[int] | None = None,
    request_id: str = "",
    logits: pb.Tensor | None = None,
    **params: Any,
) -> pb.SampleRequest:
    """The ``SampleRequest`` for logits ``array`` (or the already encoded ``logits``) and
    sampling parameters."""
    return pb.SampleRequest(
        logits=logits if logits is not None else encode_logits(array),
        params=client_params.to_proto(params),
        row_params=[client_params.to_proto(row, f"row_params[{i}]") for i, row in enumerate(row_params or ())],
        steps=list(steps or ()),
        request_id=request_id,
    )


def decode_response(response: pb.SampleResponse) -> SampleResult:
    """A :class:`SampleResult` from the wire answer."""
    return SampleResult(rows=[decode_row(row) for row in response.rows], request_id=response.request_id)


def decode_row(row: pb.RowResult) -> RowSample:
    """A :class:`RowSample` from one wire row."""
    stats = row.stats
    return RowSample(
        token_ids=list(row.token_ids),
        logprobs=list(row.logprobs),
        top_logprobs=[(t.token_id, t.logprob) for t in row.top_logprobs],
        strategy=row.strategy,
        mirostat_mu=row.mirostat_mu if row.HasField("mirostat_mu") else None,
        entropy=stats.entropy,
        varentropy=stats.varentropy,
        truncated_entropy=stats.truncated_entropy,
        kept_tokens=stats.kept_tokens,
        kept_mass=stats.kept_mass,
        top_k_entropy=stats.top_k_entropy,
        top_k_mass=stats.top_k_mass,
        surprise=list(stats.surprise),
    )


def field_violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The ``(field, description)`` pairs of a google.rpc.BadRequest in an error's details."""
    status = rpc_status.from_call(error)
    found = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.extend((v.field, v.description) for v in bad.field_violations)
    return found


class SamplerClient:
    """Blocking client: ``SamplerClient(target).sample(array, **params)``."""

    def __init__(self, target: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 timeout: float | None = None, tls: bool = False, ca: Any = None, cert: Any = None,
                 key: Any = None, token: str | None = None, shared_memory: bool = False) -> None:
        # TLS when tls or ca/cert/key (paths or PEM bytes; cert+key: mutual TLS); token: a
        # bearer token sent with every call. See samplerd.service.security.open_channel.
        # shared_memory: logits go through a region this client owns (same machine or pod as
        # the server; see samplerd.service.client.shared_memory), grown as needed and removed by close().
        self._channel = open_channel(target, message_size_options(max_message_bytes), tls=tls, ca=ca, cert=cert,
                                     key=key, token=token)
        self._stub = pb_grpc.SamplerStub(self._channel)
        self._timeout = timeout
        self._target = target
        self._shared = None
        if shared_memory:
            from samplerd.service.client.shared_memory import GrowingRegion

            self._shared = GrowingRegion(self._stub, timeout)

    @property
    def stub(self) -> pb_grpc.SamplerStub:
        """The channel's ``Sampler`` stub (for RPCs this class has no method for)."""
        return self._stub

    def sample(self, array: Any, *, row_params: Sequence[Mapping[str, Any]] | None = None,
               steps: Sequence[int] | None = None, request_id: str = "", timeout: float | None = None,
               logits: pb.Tensor | None = None, **params: Any) -> SampleResult:
        """Sample every row of ``array`` (see :func:`build_request` for the arguments); or of
        ``logits``, a ``Tensor`` already encoded (e.g. ``SharedMemoryRegion.put``), with ``array`` None."""
        if logits is None and self._shared is not None:
            logits = self._shared.encode(array)
        request = build_request(array, row_params=row_params, steps=steps, request_id=request_id, logits=logits,
                                **params)
        return decode_response(self._stub.Sample(request, timeout=timeout or self._timeout))

    def list_strategies(self) -> list[pb.StrategyInfo]:
        """The server's strategies with their parameters."""
        return list(self._stub.ListStrategies(pb.ListStrategiesRequest(), timeout=self._timeout).strategies)

    def wait(self, timeout: float = 120.0) -> None:
        """Block until the server can answer: its health says SERVING (its sampler workers,
        and its language model if any, are up). ``samplerd serve`` binds its port at once but
        needs several seconds more for the workers; until then calls get UNAVAILABLE.
        Raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        stub = health_pb2_grpc.HealthStub(self._channel)
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"samplerd at {self._target} not ready within {timeout:g} s ({last})")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=_SERVICE), timeout=min(remaining, 5.0),
                                   wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as error:
                if error.code() not in _NOT_YET:
                    raise
                last = error.code().name
            time.sleep(min(_WAIT_POLL_S, max(0.0, deadline - time.monotonic())))

    def generate(self, prompt: str | Sequence[int], *, max_tokens: int | None = None, stop: Sequence[str] = (),
                 stop_token_ids: Sequence[int] = (), ignore_eos: bool = False, request_id: str = "",
                 timeout: float | None = None, **params: Any) -> GenerateStream:
        """Generate text with the server's language model (``samplerd serve --model``): an
        iterator of ``GeneratedToken`` messages; its ``finish`` holds the final message."""
        request = generate_request(prompt, max_tokens=max_tokens, stop=stop, stop_token_ids=stop_token_ids,
                                   ignore_eos=ignore_eos, request_id=request_id, **params)
        return GenerateStream(self._stub.Generate(request, timeout=timeout or self._timeout))

    def session(self, sequences: Mapping[str, Mapping[str, Any]] | Sequence[str], *,
                prompts: Mapping[str, Sequence[int]] | None = None, session_id: str = "",
                timeout: float | None = None, **params: Any) -> SampleSession:
        """Open a decoding session (``SampleStream``): ``sequences`` are ids, or ids mapped to
        their own parameters (merged over ``params``); ``prompts`` seed the penalties' history.
        See :class:`samplerd.service.client.streams.SampleSession`."""
        return SampleSession(self._stub, sequences, prompts=prompts, session_id=session_id,
                             timeout=timeout or self._timeout,
                             encode=self._shared.encode if self._shared is not None else None, **params)

    def close(self) -> None:
        """Close the channel (after unregistering and removing the client's region, if any)."""
        if self._shared is not None:
            self._shared.close()
        self._channel.close()

    def __enter__(self) -> SamplerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSamplerClient:
    """The same calls on ``grpc.aio``, for many concurrent requests from one event loop."""

    def __init__(self, target: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 timeout: float | None = None, tls: bool = False, ca: Any = None, cert: Any = None,
                 key: Any = None, token: str | None = None, shared_memory: bool = False) -> None:
        # TLS, token and shared_memory as in SamplerClient; with shared_memory, concurrent calls
        # each lease their own part of the client's region (see AsyncGrowingRegion).
        self._channel = open_channel(target, message_size_options(max_message_bytes), aio=True, tls=tls, ca=ca,
                                     cert=cert, key=key, token=token)
        self._stub = pb_grpc.SamplerStub(self._channel)
        self._timeout = timeout
        self._shared = None
        if shared_memory:
            from samplerd.service.client.shared_memory import AsyncGrowingRegion

            self._shared = AsyncGrowingRegion(self._stub, timeout)

    @property
    def stub(self) -> pb_grpc.SamplerStub:
        """The channel's ``Sampler`` stub (``grpc.aio``)."""
        return self._stub

    async def sample(self, array: Any, *, row_params: Sequence[Mapping[str, Any]] | None = None,
                     steps: Sequence[int] | None = None, request_id: str = "", timeout: float | None = None,
                     logits: pb.Tensor | None = None, **params: Any) -> SampleResult:
        """Sample every row of ``array`` (see :func:`build_request` for the arguments); or of
        ``logits``, a ``Tensor`` already encoded, with ``array`` None."""
        if logits is None and self._shared is not None:
            async with self._shared.lease(array) as leased:
                return await self.sample(None, row_params=row_params, steps=steps, request_id=request_id,
                                         timeout=timeout, logits=leased, **params)
        request = build_request(array, row_params=row_params, steps=steps, request_id=request_id, logits=logits,
                                **params)
        return decode_response(await self._stub.Sample(request, timeout=timeout or self._timeout))

    def session(self, sequences: Mapping[str, Mapping[str, Any]] | Sequence[str], *,
                prompts: Mapping[str, Sequence[int]] | None = None, session_id: str = "",
                timeout: float | None = None, **params: Any) -> AsyncSampleSession:
        """A decoding session (``SampleStream``), opened by ``async with`` (or ``await
        session.open()``); see :meth:`SamplerClient.session`."""
        return AsyncSampleSession(self._stub, sequences, prompts=prompts, session_id=session_id,
                                  timeout=timeout or self._timeout,
                                  lease=self._shared.lease if self._shared is not None else None, **params)

    async def list_strategies(self) -> list[pb.StrategyInfo]:
        """The server's strategies with their parameters."""
        response = await self._stub.ListStrategies(pb.ListStrategiesRequest(), timeout=self._timeout)
        return list(response.strategies)

    async def wait(self, timeout: float = 120.0) -> None:
        """Wait until the server's health says SERVING (see :meth:`SamplerClient.wait`)."""
        deadline = time.monotonic() + timeout
        stub = health_pb2_grpc.HealthStub(self._channel)
        while time.monotonic() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=_SERVICE),
                                         timeout=min(deadline - time.monotonic(), 5.0), wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as error:
                if error.code() not in _NOT_YET:
                    raise
            await asyncio.sleep(_WAIT_POLL_S)
        raise TimeoutError(f"samplerd not ready within {timeout:g} s")

    async def close(self) -> None:
        """Close the channel (after unregistering and removing the client's regions, if any)."""
        if self._shared is not None:
            await self._shared.close()
        await self._channel.close()

    async def __aenter__(self) -> AsyncSamplerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
