"""On a real CUDA device (``pytest -m cuda``; skipped elsewhere): the fused Triton chain
makes the CPU path's decisions at a production vocabulary (V = 128256), a sampler actor
serves a batch on ``cuda``, the eager path runs there, every strategy keeps the sync budget
that test_virtual_cuda.py holds it to (counted by torch's own sync debug mode, which sees
the syncs inside C++ that the virtual device cannot), and the kernel benchmark runs.

Nothing here has run yet: this project has not been lent a GPU (see the README's GPU
section). The same comparisons run on the CPU under Triton's interpreter in
test_gpu_kernels.py at small vocabularies.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_virtual_cuda import STATES, STRATEGIES

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

VOCAB = 128256


@pytest.fixture(scope="module")
def compare():
    pytest.importorskip("triton", reason="triton is not installed")
    from test_gpu_kernels import _assert_same_as_cpu

    return _assert_same_as_cpu


def _logits(rows: int, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rows)
    logits = torch.randn(rows, VOCAB, generator=generator) * 3
    logits[1, 1000:1010] = logits[1].max() + 1.0  # a tie group at the top
    logits[2, 50000:] = float("-inf")
    return logits.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_the_chain_matches_the_cpu_at_a_production_vocabulary(compare, dtype):
    from samplerd.sampling import SamplingParams

    params = [SamplingParams(temperature=0.8, top_k=50, top_p=0.9, seed=1, n=4, top_logprobs=5),
              SamplingParams(top_k=5, seed=2, top_logprobs=20),
              SamplingParams(temperature=1.2, top_p=0.95, min_p=0.01, seed=3, stats_top_k=1024),
              SamplingParams(temperature=0.0, top_logprobs=3),
              SamplingParams(top_p=0.5, min_tokens_to_keep=200, seed=5, n=128),
              SamplingParams(temperature=0.7, min_p=0.1, seed=6)]
    clear, rows = compare(_logits(len(params), dtype), params, list(range(len(params))))
    assert clear >= rows - 1


def test_sample_on_cuda_takes_the_chain_and_the_eager_path_in_one_batch():
    from samplerd.sampling import SamplingParams, sample

    logits = _logits(4)
    params = [SamplingParams(top_k=20, seed=1), SamplingParams(typical_p=0.9, seed=2),
              SamplingParams(temperature=0.0), SamplingParams(mirostat=2, seed=4)]
    got = sample(logits.cuda(), params, [0, 1, 2, 3])
    want = sample(logits, params, [0, 1, 2, 3])
    assert got.token_ids.device.type == "cuda"
    assert torch.equal(got.stats.kept_tokens.cpu(), want.stats.kept_tokens)
    assert int(got.token_ids[2, 0]) == int(want.token_ids[2, 0])


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_strategy_on_cuda_keeps_its_sync_budget(name):
    from samplerd.sampling import SamplingParams, sample

    settings, budget = STRATEGIES[name]
    params = SamplingParams(seed=5, **settings)
    logits = _logits(4)
    on_device = logits.cuda()
    sample(on_device, params, 0, STATES)  # the first call initialises CUDA, Triton, the allocators
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            got = sample(on_device, params, 0, STATES)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= budget, syncs
    want = sample(logits, params, 0, STATES)
    # sums in another order can move a boundary by a token where it lies within rounding
    assert (got.stats.kept_tokens.cpu() - want.stats.kept_tokens).abs().max() <= 1


def test_a_sampler_actor_serves_a_batch_on_cuda():
    from samplerd.sampling import SamplingParams
    from samplerd.workers.batch import RowGroup
    from samplerd.workers.sampler_actor import SamplerActor

    actor = SamplerActor("cuda")
    assert actor.warmup() == "cuda"
    parts = [_logits(3).numpy()[:2], _logits(3).numpy()[2:]]
    group = RowGroup(logits=parts, dtype="float32", params=[SamplingParams(top_p=0.9, seed=i) for i in range(3)],
                     steps=[0, 0, 0])
    result = actor.sample_batch([group]).groups[0]
    assert result.output is not None
    assert np.all((result.output.token_ids >= 0) & (result.output.token_ids < VOCAB))


def test_the_kernel_benchmark_runs():
    from samplerd.sampling.gpu import bench

    lines = []
    rows = bench.run(batches=(1,), dtypes=("bfloat16",), repeats=3, print_fn=lines.append)
    assert {row["case"] for row in rows} == set(bench.CASES)
    assert all(row["fused_ms"] > 0 and row["floor_ms"] > 0 for row in rows)
    assert len(lines) == 1 + len(bench.CASES)
