"""The client's own room: it imports grpc, protobuf and numpy only, and names the field it refuses."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service import client_params


def test_importing_the_client_loads_neither_torch_nor_numba_nor_ray() -> None:
    script = ("import sys\nimport service.client\n"
              "print(sorted({'torch', 'numba', 'ray'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize(("values", "error", "field"), [
    ({"seed": -1}, ValueError, "seed"),
    ({"top_p": "0.9"}, TypeError, "top_p"),
    ({"logit_bias": {"x": 1.0}}, ValueError, "logit_bias"),
    ({"dry_sequence_breakers": [1, "two"]}, ValueError, "dry_sequence_breakers"),
])
def test_a_value_the_proto_cannot_hold_is_refused_naming_its_field(values, error, field) -> None:
    with pytest.raises(error, match=f"^{field}: "):
        client_params.to_proto(values)


def test_an_unknown_parameter_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="'top_q'"):
        client_params.to_proto({"top_q": 0.9})
