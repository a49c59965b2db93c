"""``Sample`` requests parsed with their inline logits left in the received bytes
(samplerd.service.inline_logits): the same request as protobuf's own parse, no copy of the logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf.message import DecodeError

from samplerd.service.client import build_request
from samplerd.service.codec import Limits, decode_request
from samplerd.service.errors import RequestError
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.inline_logits import parse_sample_request

LIMITS = Limits(max_tensor_elements=1 << 24)


def logits_of(rows: int, vocab: int) -> np.ndarray:
    return (np.random.default_rng(rows * vocab).standard_normal((rows, vocab)) * 3).astype(np.float16)


def without_data(message: pb.SampleRequest) -> pb.SampleRequest:
    copy = pb.SampleRequest()
    copy.CopyFrom(message)
    if message.HasField("logits"):
        copy.logits.ClearField("data")
    return copy


def requests() -> list[bytes]:
    full = build_request(logits_of(3, 500), row_params=[{"top_k": 5}, {}, {"min_p": 0.1}], steps=[1, 2, 3],
                         request_id="r-1", top_p=0.9, seed=4)
    data_first = pb.SampleRequest(logits=pb.Tensor(data=full.logits.data))
    header_after = pb.SampleRequest(logits=pb.Tensor(dtype=full.logits.dtype, shape=full.logits.shape),
                                    params=full.params)
    return [
        full.SerializeToString(),
        build_request(logits_of(1, 8)).SerializeToString(),
        # logits in two occurrences, which merge: the header after the data
        data_first.SerializeToString() + header_after.SerializeToString(),
        # the last data wins
        full.SerializeToString() + pb.SampleRequest(logits=pb.Tensor(data=b"\x00" * 16)).SerializeToString(),
        pb.SampleRequest(request_id="no logits").SerializeToString(),
        b"",
    ]


@pytest.mark.parametrize("raw", requests())
def test_the_split_request_is_protobufs_parse_with_the_data_apart(raw: bytes) -> None:
    expected = pb.SampleRequest.FromString(raw)

    split = parse_sample_request(raw)

    assert split.message == without_data(expected)
    if expected.logits.data:
        assert bytes(split.logits_data) == expected.logits.data
    else:
        assert not split.logits_data


def test_decoded_logits_view_the_received_bytes() -> None:
    logits = logits_of(4, 1000)
    raw = build_request(logits, top_p=0.9).SerializeToString()
    split = parse_sample_request(raw)

    decoded = decode_request(split.message, LIMITS, logits_data=split.logits_data)

    start = np.frombuffer(raw, np.uint8).ctypes.data
    assert start <= decoded.logits.data_ptr() < start + len(raw)  # no copy: a view of the message's bytes
    assert torch.equal(decoded.logits, torch.from_numpy(logits))


def test_data_beside_a_shared_memory_reference_is_still_refused() -> None:
    message = build_request(logits_of(2, 10))
    message.logits.shared_memory.region = "r"
    message.logits.shared_memory.byte_size = 40
    split = parse_sample_request(message.SerializeToString())

    with pytest.raises(RequestError) as caught:
        decode_request(split.message, LIMITS, logits_data=split.logits_data)

    assert [v.field for v in caught.value.violations] == ["logits.data"]


@pytest.mark.parametrize("raw", [b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05\x1a\x10ab", b"\xff"])
def test_bytes_that_do_not_parse_raise_decode_error(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_sample_request(raw)
