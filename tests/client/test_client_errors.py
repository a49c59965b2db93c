"""Client-side mistakes are named before anything is sent, ``wait()`` gives up with a clear
error, and /metrics carries no ``_created`` series."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from prometheus_client import generate_latest

from samplerd.service.client import ParameterError, SamplerClient, build_request
from samplerd.service.client.streams import generate_request
from samplerd.service.metrics import Metrics

LOGITS = np.zeros((3, 8), dtype=np.float32)


@pytest.mark.parametrize(("params", "field", "fragment"), [
    ({"seed": -1}, "params.seed", "must be in [0, 18446744073709551615], got -1"),
    ({"top_p": "0.9"}, "params.top_p", "must be a number, got str '0.9'"),
    ({"top_k": 2.5}, "params.top_k", "must be an integer, got float 2.5"),
    ({"topp": 0.9}, "params.topp", "did you mean 'top_p'?"),
    ({"logit_bias": {"50256": -100}}, "params.logit_bias", "must be an integer, got str '50256'"),
    ({"dry_sequence_breakers": [13, None]}, "params.dry_sequence_breakers", "must be an integer, got NoneType"),
])
def test_a_value_the_wire_cannot_carry_names_the_field(params: dict, field: str, fragment: str) -> None:
    with pytest.raises(ParameterError) as raised:
        build_request(LOGITS, **params)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ") and fragment in str(raised.value)


def test_per_row_values_are_named_by_their_row() -> None:
    with pytest.raises(ParameterError) as raised:
        build_request(LOGITS, row_params=[{}, {}, {"seed": -3}], top_p=0.9)
    assert raised.value.field == "row_params[2].seed"


def test_the_error_is_both_a_value_error_and_a_type_error() -> None:
    # Code written against the earlier bare errors keeps catching them.
    for params in ({"seed": -1}, {"top_p": "0.9"}):
        with pytest.raises(ValueError):
            build_request(LOGITS, **params)
        with pytest.raises(TypeError):
            build_request(LOGITS, **params)


def test_numpy_scalars_are_accepted() -> None:
    request = build_request(LOGITS, top_p=np.float32(0.5), top_k=np.int64(3), seed=np.uint64(2**63))
    assert request.params.top_k == 3 and request.params.seed == 2**63 and request.params.top_p == 0.5


def test_generate_requests_name_the_field_too() -> None:
    with pytest.raises(ParameterError, match=r"^params\.temperature: must be a number"):
        generate_request("hi", temperature="hot")
    assert generate_request([1, 2], max_tokens=4, seed=1).prompt_token_ids.token_ids == [1, 2]


def test_wait_gives_up_after_its_timeout_naming_the_target() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with SamplerClient(f"127.0.0.1:{port}") as client, pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        client.wait(timeout=1.5)
    assert 1.4 < time.monotonic() - started < 10


def test_metrics_have_no_created_series() -> None:
    metrics = Metrics()
    metrics.observe_request("Sample", "OK", 0.01)
    text = generate_latest(metrics.registry).decode()
    assert "samplerd_requests_total{" in text and "samplerd_request_duration_seconds_bucket{" in text
    assert "_created" not in text
