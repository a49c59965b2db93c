"""The batch wire format of samplerd.workers.batch, without Ray: what the dispatcher and an actor exchange."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from samplerd.sampling import SamplingParams, sample
from samplerd.workers.batch import DTYPE_NAMES, pack_logits, stack_group, take_job, to_numpy, unpack_logits

sys.path.insert(0, str(Path(__file__).parents[1] / "sampling"))
from virtual_cuda import VirtualCuda, is_cuda  # noqa: E402


def test_logits_of_every_dtype_survive_packing_bit_for_bit() -> None:
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        logits = torch.randn(3, 17).to(dtype)

        packed = pack_logits(logits)
        packed.flags.writeable = False  # as it comes out of Ray's object store

        back = unpack_logits([packed], DTYPE_NAMES[dtype], torch.device("cpu"))
        assert back.dtype == dtype and torch.equal(back, logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_on_a_gpu_each_request_goes_straight_into_its_rows_of_the_device_batch(dtype: torch.dtype) -> None:
    requests = [torch.randn(2, 24).to(dtype), torch.randn(3, 24).to(dtype)]
    parts = [pack_logits(logits) for logits in requests]
    for part in parts:
        part.flags.writeable = False  # as they come out of a link's arena

    with VirtualCuda() as device:
        batch = unpack_logits(parts, DTYPE_NAMES[dtype], torch.device("cuda:0"))
        on_device = is_cuda(batch)

    # One blocking upload per request and nothing else: the copy must have read its source before
    # the call returns (the parts are views of a link's arena, reused once the answer is in).
    assert device.mismatches == [] and device.syncs == {"blocking upload": len(parts)}
    assert on_device and batch.dtype == dtype and torch.equal(batch, torch.cat(requests))


def test_stack_group_concatenates_requests_in_order() -> None:
    a, b = torch.randn(2, 8), torch.randn(3, 8)
    params = [SamplingParams(seed=i) for i in range(5)]

    group = stack_group([a, b], params, [0, 1, 2, 3, 4])

    assert group.rows == 5 and group.job_rows == (2, 3) and group.dtype == "float32"
    assert torch.equal(unpack_logits(group.logits, group.dtype, torch.device("cpu")), torch.cat([a, b]))


def test_take_job_shapes_rows_as_sampling_them_alone_would() -> None:
    logits = torch.randn(3, 50)
    wide = SamplingParams(n=4, top_logprobs=3, seed=1)
    narrow = SamplingParams(seed=2)
    group = sample(logits, [wide, narrow, narrow], [0, 1, 2])

    got = take_job(to_numpy(group), 1, 3, draws=1, top_logprobs=0)

    want = sample(logits[1:], [narrow, narrow], [1, 2])
    assert torch.equal(got.token_ids, want.token_ids)
    assert got.logprobs.shape == want.logprobs.shape and got.stats.surprise.shape == (2, 1)
    assert got.top_logprobs is None and got.strategies == want.strategies


def test_outputs_round_trip_through_numpy() -> None:
    out = sample(torch.randn(2, 30), SamplingParams(top_logprobs=2, seed=3), 0)

    wire = to_numpy(out)
    for array in (wire.token_ids, wire.top_logprobs[0], wire.stats.kept_tokens):
        array.flags.writeable = False  # as they come out of a Ray reply

    back = take_job(wire, 0, 2, draws=1, top_logprobs=2)

    assert torch.equal(back.token_ids, out.token_ids)
    assert torch.equal(back.top_logprobs[0], out.top_logprobs[0])
    assert torch.equal(back.stats.kept_tokens, out.stats.kept_tokens)
    assert back.token_ids.numpy().flags.writeable
