"""Sampling parameters as the client sends them: keyword arguments -> proto ``SamplingParams``.

Read from the proto's own descriptor (a map field is a token bias, a repeated field a list of
token ids, a double a number, anything else an integer), so the client needs neither the
sampling library nor torch. Ranges are the server's to check (it answers INVALID_ARGUMENT
naming the field); what the wire itself cannot carry (a negative ``seed``, text for a number,
a misspelt name) is refused here with :class:`ParameterError`, naming the field the same way.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Mapping
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb

_FIELDS = pb.SamplingParams.DESCRIPTOR.fields_by_name
_NUMBER_TYPES = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)
#: The values an integer field's wire type can carry.
_WIRE_RANGES = {
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
}


class ParameterError(ValueError, TypeError):
    """A client-side sampling parameter of the wrong type or outside its wire range, naming
    the field (``params.seed``, ``row_params[2].top_p``) as the server's errors do. Both a
    ``ValueError`` and a ``TypeError``, so code catching either keeps working."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def to_proto(values: Mapping[str, Any], where: str = "params") -> pb.SamplingParams:
    """A proto ``SamplingParams`` holding ``values`` (keyword arguments of ``SamplingParams``).

    Raises :class:`ParameterError` naming ``where.<name>`` for a name that is not a sampling
    parameter or a value the wire cannot carry.
    """
    message = pb.SamplingParams()
    for name, value in values.items():
        field = _FIELDS.get(name)
        where_name = f"{where}.{name}"
        if field is None:
            close = difflib.get_close_matches(name, list(_FIELDS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ParameterError(where_name, f"unknown sampling parameter {name!r}{hint}")
        if value is None:
            continue
        try:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                items = value.items() if isinstance(value, Mapping) else value
                getattr(message, name).update({_integer(k): _number(v) for k, v in items})
            elif field.is_repeated:
                getattr(message, name).extend(_integer(v) for v in value)
            elif field.type in _NUMBER_TYPES:
                setattr(message, name, _number(value))
            else:
                setattr(message, name, _integer(value))
        except (TypeError, ValueError) as error:
            raise ParameterError(where_name, _wire_problem(field, value, error)) from None
    return message


def _number(value: Any) -> float:
    if isinstance(value, (str, bytes, bool)) or not isinstance(value, numbers.Real):
        raise TypeError(f"must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, (str, bytes, bool)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"must be an integer, got {type(value).__name__} {value!r}")
    return int(value)


def _wire_problem(field: FieldDescriptor, value: Any, error: Exception) -> str:
    if isinstance(error, TypeError) and str(error).startswith("must be"):
        return str(error)
    if field.type in _WIRE_RANGES and isinstance(value, numbers.Integral):
        low, high = _WIRE_RANGES[field.type]
        return f"must be in [{low}, {high}], got {value}"
    return f"cannot be sent as given ({value!r}): {error}"
