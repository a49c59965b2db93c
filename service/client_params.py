"""Sampling parameters as the client sends them: keyword arguments -> proto ``SamplingParams``.

Read from the proto's own descriptor (a map field is a token bias, a repeated field a list of
token ids, anything else a scalar), so the client needs neither the sampling library nor torch.
The server validates every value and answers INVALID_ARGUMENT naming the field; what the proto
itself cannot hold (a negative ``seed``, text for a number) is refused here, naming the field too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.generated.samplerd.v1 import sampler_pb2 as pb

_FIELDS = pb.SamplingParams.DESCRIPTOR.fields_by_name


def to_proto(values: Mapping[str, Any]) -> pb.SamplingParams:
    """A proto ``SamplingParams`` holding ``values`` (keyword arguments of ``SamplingParams``).

    Raises ``TypeError`` for a name that is not a sampling parameter and ``ValueError`` /
    ``TypeError`` naming the field for a value its proto field cannot hold.
    """
    message = pb.SamplingParams()
    for name, value in values.items():
        field = _FIELDS.get(name)
        if field is None:
            raise TypeError(f"unknown sampling parameter {name!r}")
        if value is None:
            continue
        try:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                items = value.items() if isinstance(value, Mapping) else value
                getattr(message, name).update({int(k): float(v) for k, v in items})
            elif field.is_repeated:
                getattr(message, name).extend(int(v) for v in value)
            else:
                setattr(message, name, value)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name}: {error}") from None
    return message
