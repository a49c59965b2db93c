"""Decoding without a server: the wire tensor round trip and the response encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samplerd.sampling import SamplingParams, sample
from samplerd.service.client import build_request, decode_response, encode_logits
from samplerd.service.codec import Limits, decode_request, decode_tensor, encode_response
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb

LIMITS = Limits(max_tensor_elements=1_000_000)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_logits_survive_the_wire_bit_for_bit(dtype: torch.dtype) -> None:
    logits = (torch.randn(3, 17) * 4).to(dtype)
    logits[1, 2] = -float("inf")
    decoded = decode_tensor(encode_logits(logits), LIMITS, "logits")
    assert decoded.dtype == dtype
    assert torch.equal(decoded, logits)


def test_numpy_float64_is_sent_as_float32() -> None:
    values = np.linspace(-3, 3, 12).reshape(2, 6)
    tensor = encode_logits(values)
    assert tensor.dtype == pb.Tensor.FP32 and list(tensor.shape) == [2, 6]
    np.testing.assert_array_equal(decode_tensor(tensor, LIMITS, "logits").numpy(), values.astype(np.float32))


def test_a_one_dimensional_array_is_one_row() -> None:
    assert list(encode_logits(np.zeros(5, dtype=np.float16)).shape) == [1, 5]


def test_decoding_views_the_request_bytes_without_copying() -> None:
    request = build_request(np.arange(8, dtype=np.float32).reshape(2, 4))
    decoded = decode_request(request, LIMITS)
    assert not decoded.logits.numpy().flags.owndata


def test_unsupported_array_types_are_refused_by_the_client() -> None:
    with pytest.raises(TypeError):
        encode_logits(np.zeros((1, 4), dtype=np.int32))


def test_response_rows_hold_exactly_their_own_sample_counts() -> None:
    logits = torch.randn(2, 50)
    params = [SamplingParams(n=3, top_logprobs=2, seed=1), SamplingParams(n=1, seed=2)]
    out = sample(logits, params)
    result = decode_response(encode_response(out, params, "r"))
    assert [len(row.token_ids) for row in result] == [3, 1]
    assert [len(row.surprise) for row in result] == [3, 1]
    assert [len(row.top_logprobs) for row in result] == [2, 0]
    assert result.request_id == "r" and result[0].mirostat_mu is None
    assert result.token_ids[0] == out.token_ids[0].tolist()
