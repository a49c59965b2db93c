"""The sampler actor on a device: a failed copy to the device fails only its request, a
CUDA error that poisons the device ends the actor's process (the pool replaces it), an
out-of-memory does not, and the warm-up samples the shapes a CUDA actor serves.

The actor is a plain class (Ray wraps it in samplerd.workers.pool), exercised here in-process; the
CUDA faults are simulated, the warm-up batches built on the virtual CUDA device of
tests/sampling/virtual_cuda.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from samplerd.sampling import SamplingParams
from samplerd.workers import sampler_actor
from samplerd.workers.batch import RowError, RowGroup
from samplerd.workers.sampler_actor import SamplerActor, is_device_fault, warmup_batches

sys.path.insert(0, str(Path(__file__).parents[1] / "sampling"))
from virtual_cuda import VirtualCuda, is_cuda  # noqa: E402

CUDA = torch.device("cuda:0")


class Retired(Exception):
    pass


@pytest.fixture
def actor(monkeypatch) -> SamplerActor:
    monkeypatch.setattr(sampler_actor, "keep_freed_memory", lambda: None)  # process-wide malloc settings

    def exit_process(code):
        raise Retired(code)

    monkeypatch.setattr(sampler_actor, "_exit_process", exit_process)
    return SamplerActor("cpu")


def _group(requests: int = 2, vocab: int = 32) -> RowGroup:
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((1, vocab)).astype(np.float32) for _ in range(requests)]
    return RowGroup(logits=parts, dtype="float32", params=[SamplingParams(top_k=5, seed=i) for i in range(requests)],
                    steps=[0] * requests)


def test_a_failed_copy_to_the_device_fails_only_its_request(actor, monkeypatch):
    real = sampler_actor.unpack_group
    first = _group().logits[0]

    def unpack(parts, dtype, device):
        if len(parts) > 1 or parts[0] is first:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(parts, dtype, torch.device("cpu"))  # the CPU stands in for the device here

    monkeypatch.setattr(sampler_actor, "unpack_group", unpack)
    monkeypatch.setattr(actor, "_synchronize", lambda: None)
    actor._device = CUDA  # an out-of-memory is not a fault of the device: the actor stays
    group = _group()
    group.logits[0] = first
    result = actor._sample_group(group)
    assert result.output is None
    assert isinstance(result.job_outputs[0], RowError) and "out of memory" in result.job_outputs[0].reason
    assert result.job_outputs[1].token_ids.shape == (1, 1)


def test_a_cuda_error_ends_the_actor_process(actor, monkeypatch):
    def sample(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(sampler_actor, "sample", sample)
    actor._device = CUDA
    monkeypatch.setattr(sampler_actor, "unpack_group", lambda parts, dtype, device: (torch.zeros(len(parts), 32), {}))
    monkeypatch.setattr(actor, "_synchronize", lambda: None)
    with pytest.raises(Retired, match="70"):
        actor.sample_batch([_group()])


def test_a_bad_request_on_the_cpu_is_answered_not_fatal(actor):
    group = _group()
    group.logits[1] = np.full((1, 32), np.nan, dtype=np.float32)
    result = actor._sample_group(group)
    assert isinstance(result.job_outputs[1], RowError) and "NaN" in result.job_outputs[1].reason
    assert result.job_outputs[0].token_ids.shape == (1, 1)


@pytest.mark.parametrize(("error", "fault"), [
    (RuntimeError("CUDA error: device-side assert triggered"), True),
    (RuntimeError("CUDA driver error: unspecified launch failure"), True),
    (torch.cuda.OutOfMemoryError("CUDA out of memory."), False),
    (ValueError("top_p must be in (0, 1]"), False),
    (RuntimeError("shape mismatch"), False),
])
def test_which_errors_poison_a_cuda_device(error, fault):
    assert is_device_fault(error, CUDA) is fault
    assert is_device_fault(error, torch.device("cpu")) is False


def test_a_cuda_warm_up_covers_every_dtype_both_paths_and_both_vocabulary_alignments():
    from samplerd.sampling.gpu import fused_chain

    with VirtualCuda() as device:
        batches = warmup_batches(CUDA)
    assert device.mismatches == []
    assert {(logits.dtype, logits.shape[1] % 16 == 0) for logits, _ in batches} == {
        (dtype, aligned) for dtype in (torch.float32, torch.float16, torch.bfloat16) for aligned in (True, False)}
    for logits, params in batches:
        assert is_cuda(logits)
        assert [fused_chain.is_eligible(p) for p in params] == [True, True, False]
    assert [tuple(logits.shape) for logits, _ in warmup_batches(torch.device("cpu"))] == [(2, 16), (1, 16)]
