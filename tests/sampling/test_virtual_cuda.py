"""Every strategy through :func:`sampling.sample` on a (virtual) CUDA device: no op mixes a
CPU tensor with a cuda one, the host syncs per call stay within a budget per strategy, and the
device's code paths (sort-based thresholds, sparse penalties, the generator on the device)
give the CPU's tokens on rows clear of every boundary.

A sync is a read back or a blocking upload (see :mod:`virtual_cuda`). The budget of every
strategy is one sync per call, on the eager pipeline as on the fused chain: the eager
pipeline reads back only the logits' validity (one packed min/max read,
:func:`samplerd.sampling.checks.check_logits`), the fused chain only its status tensor; their
uploads go through pinned memory without blocking. Every other decision is made on the host
from the parameters. Two exceptions read back a second time: a dynamic temperature whose lowest
value ``max(0, T - range)`` is below 1e-5 (whether it came out greedy), and a batch with
penalties, DRY or logit bias (whether they left every row a distribution: no +inf from an
overflowing penalty, some token not banned).
Before issue 15's eager-path work the eager path read back 4 to 11 times per strategy (7 to
18 budgeted) and uploaded 4 to 10 times more, blocking. The fused chain runs its Triton
kernel under the interpreter, outside the virtual device's view.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from virtual_cuda import VirtualCuda, is_cuda

from samplerd.sampling import SamplingParams, SequenceState, filter_logits, sample

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# name: (parameters, host syncs per call).
STRATEGIES = {
    "temperature": (dict(temperature=0.8), 1),
    "greedy": (dict(temperature=0.0), 1),
    "top_k": (dict(top_k=20), 1),
    "top_k_above_256": (dict(top_k=280), 1),
    "top_p": (dict(top_p=0.9), 1),
    "min_p": (dict(min_p=0.05), 1),
    "top_k+top_p+min_p": (dict(top_k=50, top_p=0.9, min_p=0.02, top_logprobs=3, n=2), 1),
    "min_tokens_to_keep": (dict(top_p=0.3, min_tokens_to_keep=5, stats_top_k=20), 1),
    "repetition_penalty": (dict(repetition_penalty=1.3), 2),
    "frequency_penalty": (dict(frequency_penalty=0.5), 2),
    "presence_penalty": (dict(presence_penalty=0.5), 2),
    "dry": (dict(dry_multiplier=0.8), 2),
    "logit_bias": (dict(logit_bias=((3, 2.0), (5, -1.0))), 2),
    "dynatemp": (dict(dynatemp_range=0.5), 1),
    "dynatemp_reaching_greedy": (dict(temperature=0.3, dynatemp_range=0.5), 2),
    "top_n_sigma": (dict(top_n_sigma=1.0), 1),
    "optimal_k": (dict(optimal_k=1.0), 1),
    "entropy_top_k": (dict(entropy_top_k=20), 1),
    "statistical_top_k": (dict(statistical_top_k=20), 1),
    "top_h": (dict(top_h=0.5), 1),
    "typical": (dict(typical_p=0.9), 1),
    "typical_min_tokens_to_keep": (dict(typical_p=0.5, min_tokens_to_keep=3), 1),
    "epsilon": (dict(epsilon=0.001), 1),
    "eta": (dict(eta=0.001), 1),
    "xtc": (dict(xtc_probability=0.5), 1),
    "mirostat_v1": (dict(mirostat=1), 1),
    "mirostat_v2": (dict(mirostat=2), 1),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROWS, VOCAB = 4, 300
STATES = [SequenceState(history=(1, 2, 3, 1, 2, 7)) for _ in range(ROWS)]


@pytest.fixture
def gpu_chain(request, monkeypatch):
    """The fused GPU chain on (its Triton kernel run unseen by the virtual device) or off."""
    from samplerd.sampling.gpu import fused_chain

    if request.param and not fused_chain.available():
        pytest.skip("triton is not installed")
    if request.param:
        from samplerd.sampling.gpu import kernels

        real = kernels.fused_chain_kernel

        class Unseen:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    with torch._C.DisableTorchFunction():
                        return real[grid](*args, **kwargs)
                return launch

        monkeypatch.setattr(kernels, "fused_chain_kernel", Unseen())
    with fused_chain.enabled(request.param):
        yield request.param


def _run(logits: torch.Tensor, params, states=None, outputs: list | None = None) -> VirtualCuda:
    with VirtualCuda() as device:
        on_device = logits.to("cuda")
        assert is_cuda(on_device) and on_device.device.type == "cuda"
        before = device.sync_count
        out = sample(on_device, params, list(range(len(params))) if isinstance(params, list) else 0, states)
        device.call_syncs = device.sync_count - before
        assert is_cuda(out.token_ids)
    if outputs is not None:
        outputs.append(out)
    return device


def _logits(dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(ROWS, VOCAB, generator=torch.Generator().manual_seed(3)) * 2).to(dtype)


@pytest.mark.parametrize("gpu_chain", [False, True], ids=["eager", "fused-chain"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_strategy_on_cuda_mixes_no_devices_and_keeps_its_sync_budget(name, dtype, gpu_chain):
    settings, budget = STRATEGIES[name]
    params = SamplingParams(seed=5, **settings)
    outputs = []
    device = _run(_logits(dtype), params, STATES, outputs)
    assert device.mismatches == []
    assert device.call_syncs <= budget, dict(device.syncs)
    on_cpu = sample(_logits(dtype), params, 0, STATES)
    assert torch.equal(outputs[0].token_ids, on_cpu.token_ids)
    assert torch.equal(outputs[0].stats.kept_tokens, on_cpu.stats.kept_tokens)


@pytest.mark.parametrize("gpu_chain", [False, True], ids=["eager", "fused-chain"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_batch_mixing_strategies_and_paths_mixes_no_devices(dtype, gpu_chain):
    params = [SamplingParams(top_k=10, seed=1, top_logprobs=2), SamplingParams(typical_p=0.9, seed=2, n=3),
              SamplingParams(temperature=0.0), SamplingParams(mirostat=2, seed=4)]
    outputs = []
    device = _run(_logits(dtype), params, STATES, outputs)
    assert device.mismatches == []
    # split between the paths: the fused chain's status read and the eager rows' validity read
    assert device.call_syncs <= (2 if gpu_chain else 1), dict(device.syncs)
    on_cpu = sample(_logits(dtype), params, [0, 1, 2, 3], STATES)  # these rows sit clear of every boundary
    assert torch.equal(outputs[0].token_ids, on_cpu.token_ids)
    assert torch.equal(outputs[0].stats.kept_tokens, on_cpu.stats.kept_tokens)
    # bf16 ties: the eager path lists a tie group in torch.topk's order, the fused paths in index order.
    assert torch.equal(outputs[0].top_logprobs[0].sort(dim=1).values, on_cpu.top_logprobs[0].sort(dim=1).values)


def test_the_harness_sees_cross_device_ops_and_syncs():
    with VirtualCuda() as device:
        on_device = torch.ones(3, device="cuda")
        on_host = torch.ones(3)
        _ = on_device + on_host  # a mismatch
        _ = on_device * torch.tensor(2.0)  # a 0-dim CPU scalar is fine
        _ = on_device.sum().item()
        _ = bool(on_device.any())
        _ = on_device.cpu()
        _ = on_host.to("cuda")  # a blocking upload
        _ = on_host.pin_memory().to("cuda", non_blocking=True)  # queued, not waited for
        _ = torch.tensor([1, 2], device="cuda")  # a blocking upload
        _ = on_device[torch.tensor([0, 2])]  # the host index is uploaded, blocking
        _ = on_device[[0, 2]]  # so is a list
        _ = on_device[torch.arange(0, 3, 2, device="cuda")]  # a device index: nothing to wait for
    assert len(device.mismatches) == 1 and "add" in device.mismatches[0]
    assert device.syncs == {"item": 1, "__bool__": 1, "cpu": 1, "blocking upload": 4}


@pytest.mark.parametrize("spread", [0.5, 3.0, 40.0], ids=["flat", "peaked", "near-deterministic"])
def test_top_h_on_the_device_keeps_the_cpus_set(spread):
    generator = torch.Generator().manual_seed(int(spread * 10))
    logits = torch.randn(64, 3000, generator=generator) * spread
    logits[::4] = logits[::4].round()  # tie groups
    logits[1::4, :500] = float("-inf")  # removed tokens
    # one token 95 nats above the rest: every other term is ~1e-40, below float32's normal range
    logits[3::4, 7] = logits[3::4].amax(dim=1) + 95.0
    params = [SamplingParams(top_h=alpha) for alpha in torch.linspace(0.05, 0.95, 64).tolist()]
    with VirtualCuda() as device:
        on_device = filter_logits(logits.to("cuda", non_blocking=True), params)
    assert device.mismatches == [] and device.sync_count == 1  # the logits' validity
    assert torch.equal(torch.isfinite(on_device), torch.isfinite(filter_logits(logits, params)))


def test_a_dynamic_temperature_that_comes_out_greedy_costs_one_more_sync():
    logits = _logits()
    logits[1::2, 11] = 200.0  # entropy 0: these rows' dynamic temperature is 0, i.e. greedy
    params = SamplingParams(temperature=0.01, dynatemp_range=0.5, top_k=40, seed=3)
    outputs = []
    device = _run(logits, params, outputs=outputs)
    assert device.mismatches == [] and device.call_syncs == 2, dict(device.syncs)
    assert outputs[0].token_ids[1::2, 0].tolist() == [11] * (ROWS // 2)
    assert torch.equal(outputs[0].token_ids, sample(logits, params).token_ids)


def test_the_actor_downloads_a_cuda_output_in_one_read():
    from samplerd.workers.batch import to_numpy

    params = [SamplingParams(top_k=10, seed=1, top_logprobs=2, n=2), SamplingParams(mirostat=2, seed=4)] * 2
    outputs = []
    _run(_logits(torch.bfloat16), params, STATES, outputs)
    out = outputs[0]
    with VirtualCuda() as device:
        on_host = to_numpy(out)
    assert device.sync_count == 1 and device.mismatches == []
    pairs = [(on_host.token_ids, out.token_ids), (on_host.logprobs, out.logprobs),
             (on_host.mirostat_mu, out.mirostat_mu), *zip(on_host.top_logprobs, out.top_logprobs, strict=True),
             *((getattr(on_host.stats, name), getattr(out.stats, name)) for name in out.stats.__dataclass_fields__)]
    for array, tensor in pairs:  # outside the virtual device the tensors are plain CPU tensors
        assert array.dtype == tensor.numpy().dtype and array.shape == tuple(tensor.shape)
        assert np.array_equal(array, tensor.numpy(), equal_nan=True)


@pytest.mark.parametrize("settings", [
    dict(top_p=0.7), dict(typical_p=0.6), dict(top_k=700), dict(top_p=0.2, min_tokens_to_keep=300),
    dict(typical_p=0.3, min_tokens_to_keep=40), dict(optimal_k=0.05), dict(entropy_top_k=900), dict(mirostat=1),
], ids=str)
def test_the_devices_sort_based_thresholds_keep_the_cpus_sets(settings):
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(32, 3000, generator=generator) * torch.linspace(0.3, 4.0, 32)[:, None]
    logits[::4] = logits[::4].mul(2).round()  # tie groups
    logits[1::4, 2000:] = float("-inf")
    params = SamplingParams(**settings)
    states = [SequenceState(mirostat_mu=mu) for mu in torch.linspace(2.0, 12.0, 32).tolist()]
    with VirtualCuda() as device:
        on_device = filter_logits(logits.to("cuda", non_blocking=True), params, 0, states)
    assert device.mismatches == [] and device.sync_count == 1
    assert torch.equal(torch.isfinite(on_device), torch.isfinite(filter_logits(logits, params, 0, states)))


def test_a_path_aware_step_on_cuda_reads_back_only_its_candidate_count():
    from samplerd.sampling.strategies.path_top_p import path_aware_step

    logits = _logits()[:3]
    path_logprobs = torch.tensor([-1.0, -2.5, -0.5], dtype=torch.float64)  # the session's, on the host
    with VirtualCuda() as device:
        on_device = logits.to("cuda", non_blocking=True)
        chosen = path_aware_step(on_device, path_logprobs, 3, 0.9, seed=5, step=2)
        assert is_cuda(chosen.token)
    assert device.mismatches == [] and dict(device.syncs) == {"item": 1}
    on_cpu = path_aware_step(logits, path_logprobs, 3, 0.9, seed=5, step=2)
    assert torch.equal(chosen.parent, on_cpu.parent) and torch.equal(chosen.token, on_cpu.token)
    assert torch.equal(chosen.path_logprob, on_cpu.path_logprob)
