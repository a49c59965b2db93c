"""The mapping between the proto ``SamplingParams`` and :class:`sampling.SamplingParams`.

Built from :data:`samplerd.sampling.registry.PARAMETERS`: each parameter's ``kind`` says how its proto
field is read, so a parameter added to the registry (and its field to the .proto)
needs no edit here. Validation is the library's: constructing ``SamplingParams`` raises
:class:`sampling.SamplingError` naming the field.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from samplerd.sampling import SamplingError, SamplingParams
from samplerd.sampling.registry import PARAMETERS
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb

_SCALAR_KINDS = frozenset({"float", "int", "optional_int"})
_SCALARS = tuple(name for name, p in PARAMETERS.items() if p.kind in _SCALAR_KINDS)
TOKEN_IDS = tuple(name for name, p in PARAMETERS.items() if p.kind == "token_ids")
TOKEN_BIAS = tuple(name for name, p in PARAMETERS.items() if p.kind == "token_bias")


def set_fields(message: pb.SamplingParams) -> dict[str, Any]:
    """The parameters ``message`` sets, as keyword arguments of ``SamplingParams``.

    A scalar counts as set when present on the wire; a repeated or map field when non-empty.
    """
    values: dict[str, Any] = {name: getattr(message, name) for name in _SCALARS if message.HasField(name)}
    for name in TOKEN_IDS:
        ids = getattr(message, name)
        if ids:
            _check_count(name, len(ids), "ids")
            values[name] = tuple(ids)
    for name in TOKEN_BIAS:
        bias = getattr(message, name)
        if bias:
            _check_count(name, len(bias), "entries")
            values[name] = dict(bias)
    return values


def _check_counts(message: pb.SamplingParams) -> None:
    """Refuse over-long id lists and bias maps of ``message`` (``len`` on them is O(1))."""
    for name in TOKEN_IDS:
        _check_count(name, len(getattr(message, name)), "ids")
    for name in TOKEN_BIAS:
        _check_count(name, len(getattr(message, name)), "entries")


def _check_count(name: str, count: int, what: str) -> None:
    """Refuse an over-long list or map before it is copied into Python objects (a client
    could otherwise have millions of entries converted, ~100 bytes each, before the library
    counted them)."""
    high = PARAMETERS[name].high
    if high is not None and count > high:
        raise SamplingError(name, f"{name} holds at most {int(high)} {what}, got {count}")


def from_proto(message: pb.SamplingParams, base: SamplingParams | None = None) -> SamplingParams:
    """``SamplingParams`` from ``message``: its set fields over ``base`` (the defaults if None).

    Raises :class:`sampling.SamplingError` (unprefixed field name) on an invalid value.
    Validation costs tens of microseconds and clients repeat the same parameters, so valid
    results are cached by the message's bytes (``SamplingParams`` is immutable).
    """
    _check_counts(message)  # before the message is serialised (a copy) or converted
    serialized = message.SerializeToString(deterministic=True)
    if len(serialized) > _CACHED_MESSAGE_BYTES:  # big lists/maps: not worth keeping 4096 of
        return _from_bytes.__wrapped__(serialized, base)
    return _from_bytes(serialized, base)


#: Only messages up to this size are cached: 4096 cached messages with maximal logit_bias
#: maps (4096 entries each) would hold gigabytes.
_CACHED_MESSAGE_BYTES = 1024


@functools.lru_cache(maxsize=4096)
def _from_bytes(serialized: bytes, base: SamplingParams | None) -> SamplingParams:
    values = set_fields(pb.SamplingParams.FromString(serialized))
    if base is None:
        return SamplingParams(**values)
    return dataclasses.replace(base, **values) if values else base
