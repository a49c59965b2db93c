"""Every strategy samples from its renormalised truncated distribution (chi-square tests).

For each strategy, 10^5 tokens are drawn from one fixed row (fixed seed; 1000 decoding steps
times n = 100 samples, or 10^5 steps for mirostat, whose n must be 1) and compared with
``softmax`` of the tempered logits restricted to the kept set, both computed in the test by
the float64 reference (samplerd_reference.reference_filter, written from the definitions).
Pearson's chi-square (scipy.stats.chisquare), cells with expected count < 5 pooled, at
significance level ALPHA = 1e-3: with a fixed seed the outcome is deterministic, and a
correct sampler fails each test with probability 1e-3 over seeds. Every draw must also lie in
the kept set.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from samplerd_reference import chi_square_p_value, ids, kept, reference_filter, softmax

from samplerd.sampling import SamplingParams, SequenceState, filter_logits, sample

pytestmark = pytest.mark.statistical

ALPHA = 1e-3
DRAWS = 100_000
STEPS_PER_CALL = 20  # rows per sample() call (one step each) ...
SAMPLES_PER_ROW = 100  # ... times n samples per row
SEED = 20250117


def _fixed_row() -> torch.Tensor:
    """V = 24: Zipf-like with noise, shuffled, one masked token; pairwise distinct logits."""
    rng = np.random.default_rng(4)
    z = -1.1 * np.log(np.arange(1, 25)) + rng.normal(0.0, 0.25, 24) + 3.0
    rng.shuffle(z)
    z[int(np.argmin(z))] = -np.inf
    return torch.tensor(z, dtype=torch.float32)


ROW = _fixed_row()
VOCAB = ROW.numel()
HISTORY = (3, 5, 7, 3, 9, 5, 3, 11, 12, 3, 5, 7)  # "3 5 7" repeats: DRY penalises the 3 -> 5 -> 7 path
MU = 4.0

CASES: dict[str, tuple[dict, dict]] = {
    # name: (SamplingParams keywords, keywords for the state: history / mirostat_mu)
    "greedy": (dict(temperature=0.0), {}),
    "temperature": (dict(temperature=0.7), {}),
    "top_k": (dict(top_k=6, temperature=0.8), {}),
    "top_p": (dict(top_p=0.8), {}),
    "min_p": (dict(min_p=0.1, temperature=1.3), {}),
    "typical": (dict(typical_p=0.7), {}),
    "epsilon": (dict(epsilon=0.02), {}),
    "eta": (dict(eta=0.05), {}),
    "top_n_sigma": (dict(top_n_sigma=1.0), {}),
    "top_h": (dict(top_h=0.5), {}),
    "optimal_k": (dict(optimal_k=0.05), {}),
    "entropy_top_k": (dict(entropy_top_k=10, entropy_top_k_min=2), {}),
    "statistical_top_k": (dict(statistical_top_k=4), {}),
    "mirostat_v1": (dict(mirostat=1), dict(mirostat_mu=MU)),
    "mirostat_v2": (dict(mirostat=2), dict(mirostat_mu=MU)),
    "xtc": (dict(xtc_probability=1.0, xtc_threshold=0.05), {}),
    "dynatemp": (dict(temperature=1.0, dynatemp_range=0.6, dynatemp_exponent=1.5), {}),
    "penalties": (dict(repetition_penalty=1.3, frequency_penalty=0.2, presence_penalty=0.3), dict(history=HISTORY)),
    "logit_bias": (dict(logit_bias={3: 2.0, 5: -100.0, 7: 1.5}), {}),
    "dry": (dict(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2), dict(history=HISTORY)),
    "combination": (dict(temperature=0.9, top_k=12, top_p=0.9, min_p=0.02, typical_p=0.95, min_tokens_to_keep=2,
                         repetition_penalty=1.2, logit_bias={1: 0.5}), dict(history=HISTORY)),
}


def _params(name: str, n: int) -> SamplingParams:
    return SamplingParams(seed=SEED, n=n, **CASES[name][0])


def _state(name: str) -> SequenceState:
    return SequenceState(**CASES[name][1])


@functools.cache
def draws(name: str) -> np.ndarray:
    """10^5 tokens for case ``name`` (computed once per session)."""
    state = _state(name)
    tokens = []
    if CASES[name][0].get("mirostat"):
        rows = 10_000
        params = _params(name, 1)
        for start in range(0, DRAWS, rows):
            out = sample(ROW.expand(rows, VOCAB), params, steps=list(range(start, start + rows)), states=[state] * rows)
            tokens.append(out.token_ids.numpy().ravel())
    else:
        params = _params(name, SAMPLES_PER_ROW)
        for start in range(0, DRAWS // SAMPLES_PER_ROW, STEPS_PER_CALL):
            out = sample(ROW.expand(STEPS_PER_CALL, VOCAB), params, steps=list(range(start, start + STEPS_PER_CALL)),
                         states=[state] * STEPS_PER_CALL)
            tokens.append(out.token_ids.numpy().ravel())
    result = np.concatenate(tokens)
    assert result.size == DRAWS
    return result


def expected_distribution(name: str) -> np.ndarray:
    state = _state(name)
    final = reference_filter(ROW, _params(name, 1), history=state.history, mirostat_mu=state.mirostat_mu)
    return softmax(final)


@pytest.mark.parametrize("name", list(CASES))
def test_reference_kept_set_is_samplerds_kept_set(name):
    state = _state(name)
    ours = filter_logits(ROW[None, :], _params(name, 1), states=[state])[0]
    assert ids(kept(ours)) == ids(expected_distribution(name) > 0)


@pytest.mark.parametrize("name", list(CASES))
def test_draws_fit_the_renormalised_truncated_distribution(name):
    expected = expected_distribution(name)
    tokens = draws(name)
    outside = np.setdiff1d(np.unique(tokens), np.flatnonzero(expected > 0))
    assert outside.size == 0, f"{name}: tokens {outside.tolist()} are outside the kept set"
    counts = np.bincount(tokens, minlength=VOCAB)
    support = expected > 0
    p_value = chi_square_p_value(counts[support], expected[support])
    assert p_value >= ALPHA, f"{name}: chi-square p = {p_value:.2e} < {ALPHA} (kept {ids(support)})"


def test_the_truncations_used_here_actually_truncate():
    """Guard for the cases above: each truncation removes something from this row."""
    for name in ("top_k", "top_p", "min_p", "typical", "epsilon", "eta", "top_n_sigma", "top_h", "optimal_k",
                 "entropy_top_k", "statistical_top_k", "mirostat_v1", "mirostat_v2", "xtc", "combination"):
        support = int((expected_distribution(name) > 0).sum())
        assert 1 < support < VOCAB - 1, (name, support)


def test_goodness_of_fit_rejects_the_wrong_distribution():
    """Power check: the T = 0.7 draws are rejected against the T = 1 distribution."""
    counts = np.bincount(draws("temperature"), minlength=VOCAB)
    wrong = softmax(ROW.double().numpy())
    support = wrong > 0
    assert chi_square_p_value(counts[support], wrong[support]) < ALPHA


def test_xtc_coin_probability_mixes_the_two_distributions():
    """xtc_probability = 0.5: per step, the coin decides (seen in filter_logits, which keys it by
    the same seed and step); the draws follow the per-step mixture."""
    params = SamplingParams(seed=SEED, n=SAMPLES_PER_ROW, xtc_probability=0.5, xtc_threshold=0.05)
    steps = list(range(400))
    filtered = filter_logits(ROW.expand(len(steps), VOCAB), params, steps=steps)
    truncated = kept(reference_filter(ROW, params, xtc_coin=True))
    untruncated = kept(reference_filter(ROW, params, xtc_coin=False))
    applied = np.array([np.array_equal(kept(filtered[i]), truncated) for i in range(len(steps))])
    skipped = np.array([np.array_equal(kept(filtered[i]), untruncated) for i in range(len(steps))])
    assert np.all(applied ^ skipped)
    # The coin is fair: 400 steps, alpha = 1e-3.
    from scipy.stats import binomtest

    assert binomtest(int(applied.sum()), len(steps), 0.5).pvalue >= ALPHA
    out = sample(ROW.expand(len(steps), VOCAB), params, steps=steps)
    tokens = out.token_ids.numpy()
    q_applied = softmax(reference_filter(ROW, params, xtc_coin=True))
    q_skipped = softmax(reference_filter(ROW, params, xtc_coin=False))
    assert np.all(truncated[tokens[applied]])
    expected = applied.sum() * q_applied + skipped.sum() * q_skipped
    counts = np.bincount(tokens.ravel(), minlength=VOCAB)
    support = expected > 0
    assert chi_square_p_value(counts[support], expected[support]) >= ALPHA


def test_draws_across_several_blocks_of_a_large_vocabulary_fit():
    """V = 3000 spans three 1024-token blocks of the inverse-CDF draw; the likeliest tokens sit at the
    block edges (0, 1023, 1024, 2047, 2048, 2999); top_k keeps 60 tokens spread over all blocks."""
    rng = np.random.default_rng(6)
    vocab = 3000
    z = rng.standard_normal(vocab) * 1.5
    z[[0, 1023, 1024, 2047, 2048, 2999]] += 4.0
    row = torch.tensor(z, dtype=torch.float32)
    params = SamplingParams(seed=SEED, n=SAMPLES_PER_ROW, top_k=60, temperature=1.2)
    expected = softmax(reference_filter(row, params))
    assert ids(expected > 0) == ids(kept(filter_logits(row[None, :], params)[0]))
    tokens = []
    for start in range(0, DRAWS // SAMPLES_PER_ROW, STEPS_PER_CALL):
        out = sample(row.expand(STEPS_PER_CALL, vocab), params, steps=list(range(start, start + STEPS_PER_CALL)))
        tokens.append(out.token_ids.numpy().ravel())
    tokens = np.concatenate(tokens)
    assert tokens.size == DRAWS
    assert np.all(expected[tokens] > 0)
    counts = np.bincount(tokens, minlength=vocab)
    support = expected > 0
    assert chi_square_p_value(counts[support], expected[support]) >= ALPHA
