"""``Sample`` requests parsed with their inline logits left where they arrived.

protobuf copies a ``bytes`` field every time it is read, and parsing copies it once before
that: a 16 MB ``logits.data`` crossed memory twice before the front end could view it. The
``Sample`` handler's deserializer instead finds ``logits.data`` in the request's bytes (a scan
of the top-level fields and of ``logits``' own, a few dozen at most), parses the message
without it, and hands on a view of it: the logits' first copy is the one into the sampler
actor's link (``samplerd.workers.socket_link``).

Protobuf's rules hold: the fields may come in any order, ``logits`` may occur several times
(its occurrences merge: the last ``data`` wins), unknown fields are kept. Bytes that this scan
cannot follow are parsed the ordinary way (which copies, or raises ``DecodeError`` for bytes
that do not parse at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.generated.samplerd.v1 import sampler_pb2_grpc as pb_grpc

_LOGITS = pb.SampleRequest.DESCRIPTOR.fields_by_name["logits"].number
_DATA = pb.Tensor.DESCRIPTOR.fields_by_name["data"].number
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class SplitSampleRequest:
    """A ``SampleRequest`` whose ``logits.data`` is left empty, and that data as a read-only view
    of the received bytes (None: the request had none, or was parsed the ordinary way)."""

    message: pb.SampleRequest
    logits_data: memoryview | None


def parse_sample_request(data: bytes) -> SplitSampleRequest:
    """The request in ``data`` (the deserializer of ``Sample``); ``DecodeError`` when it does not parse."""
    try:
        rest, logits_data = split_logits_data(data)
    except _Unfollowable:
        return SplitSampleRequest(pb.SampleRequest.FromString(data), None)
    return SplitSampleRequest(pb.SampleRequest.FromString(rest), logits_data)


def add_sampler_servicer(servicer: Any, server: Any) -> None:
    """``add_SamplerServicer_to_server`` with ``Sample``'s requests parsed by
    :func:`parse_sample_request` (its handler receives a :class:`SplitSampleRequest`)."""
    pb_grpc.add_SamplerServicer_to_server(servicer, _SplittingRegistrar(server))


class _SplittingRegistrar:
    """Stands in for the server while the generated code registers the service."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_SplittingGenericHandler(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(service, {name: _split(name, h) for name, h in handlers.items()})


class _SplittingGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        return None if handler is None else _split(handler_call_details.method.rpartition("/")[2], handler)


def _split(name: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    return handler._replace(request_deserializer=parse_sample_request) if name == "Sample" else handler


class _Unfollowable(Exception):
    """Bytes the scan does not follow (malformed, or groups): parse them the ordinary way."""


def split_logits_data(data: bytes) -> tuple[bytes, memoryview | None]:
    """``data`` (a serialized ``SampleRequest``) without ``logits.data``, and a view of the
    last ``logits.data`` in it (None without one)."""
    view = memoryview(data)
    rest = bytearray()
    found = None
    for number, wire_type, start, tag_end, value_start, end in _fields(view, 0, len(view)):
        if number != _LOGITS or wire_type != _LEN:
            rest += view[start:end]
            continue
        tensor = bytearray()
        for inner_number, inner_type, inner_start, _, inner_value, inner_end in _fields(view, value_start, end):
            if inner_number == _DATA and inner_type == _LEN:
                found = view[inner_value:inner_end]
            else:
                tensor += view[inner_start:inner_end]
        rest += view[start:tag_end]
        rest += _varint(len(tensor))
        rest += tensor
    return bytes(rest), found


def _fields(view: memoryview, position: int, stop: int):
    """``(number, wire type, start, tag end, value start, end)`` of each field in ``view[position:stop]``."""
    while position < stop:
        start = position
        tag, position = _read_varint(view, position, stop)
        tag_end = position
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise _Unfollowable
        if wire_type == _VARINT:
            _, position = _read_varint(view, position, stop)
            value_start = position
        elif wire_type == _LEN:
            length, value_start = _read_varint(view, position, stop)
            position = value_start + length
        elif wire_type in (_FIXED64, _FIXED32):
            value_start = position
            position += 8 if wire_type == _FIXED64 else 4
        else:
            raise _Unfollowable
        if position > stop:
            raise _Unfollowable
        yield number, wire_type, start, tag_end, value_start, position


def _read_varint(view: memoryview, position: int, stop: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= stop or shift > 63:
            raise _Unfollowable
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
