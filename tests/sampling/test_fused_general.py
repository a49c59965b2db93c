"""The general fused kernel (sampling/kernels/general.py, wrapped by sampling/fused_general.py)
makes the eager pipeline's decisions for every strategy it takes: ``sample()`` with the fused
path on equals ``sample()`` with it off — the same tokens, kept sets, top log-probability ids
and mirostat mu, statistics within float32 rounding — on random, flat, peaked, tied, masked
and far-spread rows, for each strategy at its parameters' edge values and in chains.

One torch thread, as in test_fused.py (torch splits a single long row's sum across threads).
"""

from __future__ import annotations

import pytest
import torch
from test_fused import KINDS, _assert_same, _both, _rows

from samplerd.sampling import SamplingParams, SequenceState, fused

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Each strategy at the ends of its range and in between.
SINGLE = {
    "greedy": [dict(temperature=0.0), dict(temperature=9e-6, top_p=0.5, top_logprobs=3)],
    "typical": [dict(typical_p=p) for p in (0.01, 0.5, 0.95, 0.9999)] + [dict(typical_p=0.3, min_tokens_to_keep=7)],
    "epsilon": [dict(epsilon=e) for e in (1e-9, 3e-4, 0.2, 0.999)] + [dict(epsilon=0.3, min_tokens_to_keep=4)],
    "eta": [dict(eta=e) for e in (1e-9, 3e-4, 0.2, 0.999)] + [dict(eta=0.05, min_tokens_to_keep=4)],
    "top_n_sigma": [dict(top_n_sigma=n) for n in (1e-6, 0.5, 1.0, 3.0, 1e9)],
    # top_h = 1 puts the last token exactly on the budget (a float64 sum in two orders): not tested.
    "top_h": [dict(top_h=h) for h in (1e-6, 0.4, 0.9, 0.999)],
    "optimal_k": [dict(optimal_k=x) for x in (1e-6, 0.05, 1.0, 50.0)],
    "entropy_top_k": [dict(entropy_top_k=1), dict(entropy_top_k=100, entropy_top_k_min=3),
                      dict(entropy_top_k=10**6, entropy_top_k_min=50)],
    "statistical_top_k": [dict(statistical_top_k=k) for k in (1, 50, 10**9)],
    "mirostat_v1": [dict(mirostat=1, mirostat_tau=t, mirostat_eta=0.5) for t in (0.1, 3.0, 100.0)],
    "mirostat_v2": [dict(mirostat=2, mirostat_tau=t) for t in (0.01, 3.0, 100.0)],
    "xtc": [dict(xtc_probability=1.0, xtc_threshold=t) for t in (0.001, 0.05, 0.5)]
           + [dict(xtc_probability=0.5, xtc_threshold=0.01, min_tokens_to_keep=3)],
    "dynatemp": [dict(dynatemp_range=0.5), dict(dynatemp_range=2.0, dynatemp_exponent=0.2),
                 dict(temperature=0.3, dynatemp_range=0.3, dynatemp_exponent=4.0)],
}
CHAINS = [
    dict(top_k=50, typical_p=0.5, epsilon=1e-3, min_tokens_to_keep=3),
    dict(top_n_sigma=2.0, top_p=0.8, min_p=0.02),
    dict(optimal_k=0.01, xtc_probability=1.0, xtc_threshold=0.02),
    dict(entropy_top_k=200, eta=1e-3, min_tokens_to_keep=5, temperature=0.7),
    dict(top_h=0.7, top_p=0.9, typical_p=0.9),
    dict(statistical_top_k=300, top_k=100, min_p=0.1, epsilon=1e-4),
    dict(dynatemp_range=0.4, top_n_sigma=1.5, typical_p=0.8, xtc_probability=1.0, xtc_threshold=0.1),
]
OUTPUTS = dict(n=3, top_logprobs=5, stats_top_k=20)


def _cases():
    for name, settings in SINGLE.items():
        for i, kwargs in enumerate(settings):
            yield pytest.param(kwargs, id=f"{name}-{i}")
    for i, kwargs in enumerate(CHAINS):
        yield pytest.param(kwargs, id=f"chain-{i}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("kwargs", list(_cases()))
def test_general_kernel_makes_the_pipelines_decisions(kwargs, kind):
    logits = _rows(kind, 4, 3000, seed=len(kind))
    outputs = OUTPUTS if not kwargs.get("mirostat") else dict(top_logprobs=5)  # mirostat: n = 1
    params = SamplingParams(seed=11, **{**outputs, **kwargs})
    assert fused.is_eligible(params) and not fused.is_chain(params)
    general, fast = _both(logits, params, steps=5)
    _assert_same(general, fast, logits)
    torch.testing.assert_close(fast.mirostat_mu, general.mirostat_mu, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("kwargs", [SINGLE["typical"][2], SINGLE["eta"][1], SINGLE["top_h"][1], CHAINS[0],
                                    SINGLE["mirostat_v1"][1], SINGLE["xtc"][1]], ids=str)
def test_at_a_large_vocabulary(kwargs):
    logits = _rows("peaked", 3, 128256, seed=5)
    general, fast = _both(logits, SamplingParams(seed=2, top_logprobs=4, **kwargs), steps=1)
    _assert_same(general, fast, logits)


@pytest.mark.parametrize("mode", [1, 2])
def test_mirostat_follows_each_rows_state(mode):
    logits = _rows("peaked", 3, 2000, seed=3)
    states = [SequenceState(mirostat_mu=1.5), None, SequenceState(mirostat_mu=12.0)]
    general, fast = _both(logits, SamplingParams(seed=4, mirostat=mode), steps=2, states=states)
    _assert_same(general, fast, logits)
    torch.testing.assert_close(fast.mirostat_mu, general.mirostat_mu, rtol=1e-6, atol=1e-6)


def test_a_batch_mixing_chain_general_and_eager_rows_equals_the_pipeline():
    params = [SamplingParams(seed=1, top_p=0.9), SamplingParams(seed=2, typical_p=0.8, top_logprobs=2),
              SamplingParams(seed=3, repetition_penalty=1.2), SamplingParams(seed=4, temperature=0.0, n=2),
              SamplingParams(seed=5, eta=1e-3)]
    logits = _rows("randn", len(params), 1500, seed=9)
    general, fast = _both(logits, params, steps=[0, 1, 2, 3, 4])
    _assert_same(general, fast, logits)


@pytest.mark.parametrize("kwargs", [dict(typical_p=0.9), dict(mirostat=2), dict(temperature=0.0)], ids=str)
def test_a_rows_result_does_not_depend_on_its_batch(kwargs):
    logits = _rows("randn", 6, 1000, seed=2)
    params = [SamplingParams(seed=i, **kwargs) for i in range(6)]
    together = fused.sample(logits, params, [7] * 6)
    for r in range(6):
        alone = fused.sample(logits[r:r + 1], params[r:r + 1], [7])
        assert torch.equal(alone.token_ids[0], together.token_ids[r])
        assert torch.equal(alone.stats.kept_tokens[0], together.stats.kept_tokens[r])
