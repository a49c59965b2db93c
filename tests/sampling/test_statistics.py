"""Per-row statistics of sample(): consistent with the kept set and with a float64 reference.

"full" is the distribution the truncations see (after penalties, bias and temperature; T = 1
for greedy rows), "truncated" the final one (SampleStats docstring). Entropies in nats.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from samplerd_reference import (
    as_array,
    entropy,
    kept,
    logit_rows,
    reference_filter,
    softmax,
    truncation_params,
    varentropy,
)

from samplerd.sampling import SamplingParams, SequenceState, filter_logits, sample

SETTINGS = settings(max_examples=80, deadline=None)


def _full_logits(row, params) -> np.ndarray:
    """The tempered logits before truncation (T = 1 for greedy)."""
    z = as_array(row)
    return z if params.temperature < 1e-5 else z / params.temperature


def _run(row, config, step=0):
    params = SamplingParams(n=1 if "mirostat" in config else 4, **config)
    out = sample(row[None, :], params, steps=step)
    final = filter_logits(row[None, :], params, steps=step)[0]
    return params, out, final


@SETTINGS
@given(logit_rows(), truncation_params(), st.integers(0, 1000))
def test_kept_tokens_counts_the_finite_entries_of_filter_logits(row, case, step):
    _, out, final = _run(row, case[1], step)
    assert int(out.stats.kept_tokens[0]) == int(torch.isfinite(final).sum())


@SETTINGS
@given(logit_rows(), truncation_params(), st.integers(0, 1000))
@example(torch.tensor([29.0, -23.0]),  # XTC keeps only token 1, of probability 7e-46 at T = 0.5
         ("xtc_probability", dict(xtc_probability=1.0, xtc_threshold=0.0, temperature=0.5, seed=0)), 0)
def test_kept_mass_is_the_full_mass_of_the_kept_tokens(row, case, step):
    params, out, final = _run(row, case[1], step)
    mass = float(out.stats.kept_mass[0])
    expected = softmax(_full_logits(row, params))[kept(final)].sum()  # float64
    # Positive, unless the kept tokens' exact mass is below float32's smallest (XTC can keep
    # only a token of probability 1e-46): then float32 holds 0.
    underflows = expected < np.finfo(np.float32).smallest_subnormal
    assert (0.0 < mass <= 1.0) or (underflows and mass == 0.0)
    assert math.isclose(mass, expected, rel_tol=1e-4, abs_tol=1e-6)


@SETTINGS
@given(logit_rows(), truncation_params(), st.integers(0, 1000))
def test_truncated_entropy_is_the_entropy_of_the_final_distribution(row, case, step):
    _, out, final = _run(row, case[1], step)
    kept_tokens = int(out.stats.kept_tokens[0])
    h = float(out.stats.truncated_entropy[0])
    assert 0.0 <= h <= math.log(kept_tokens) + 1e-4
    assert math.isclose(h, entropy(softmax(final)), rel_tol=1e-4, abs_tol=1e-4)


@SETTINGS
@given(logit_rows(), st.sampled_from([dict(), dict(top_p=0.5), dict(top_k=3)]))
def test_greedy_truncated_entropy_is_zero(row, extra):
    out = sample(row[None, :], SamplingParams(temperature=0.0, **extra))
    assert float(out.stats.truncated_entropy[0]) == 0.0
    assert int(out.stats.kept_tokens[0]) == 1
    assert float(out.logprobs[0, 0]) == 0.0


@SETTINGS
@given(logit_rows(), st.sampled_from([1.0, 0.3, 2.5, 0.0]))
def test_entropy_and_varentropy_match_a_float64_reference(row, temperature):
    params = SamplingParams(temperature=temperature)
    out = sample(row[None, :], params)
    p = softmax(_full_logits(row, params))
    assert math.isclose(float(out.stats.entropy[0]), entropy(p), rel_tol=1e-4, abs_tol=1e-4)
    v = varentropy(p)
    assert math.isclose(float(out.stats.varentropy[0]), v, rel_tol=1e-3, abs_tol=1e-3 * max(1.0, entropy(p) ** 2))


@SETTINGS
@given(logit_rows(), st.integers(1, 50))
def test_top_k_entropy_and_mass_match_a_float64_reference(row, k):
    out = sample(row[None, :], SamplingParams(stats_top_k=k, top_p=0.7))
    p = np.sort(softmax(row))[::-1][:k]
    mass = p.sum()
    assert math.isclose(float(out.stats.top_k_mass[0]), mass, rel_tol=1e-4, abs_tol=1e-6)
    assert math.isclose(float(out.stats.top_k_entropy[0]), entropy(p / mass), rel_tol=1e-4, abs_tol=1e-4)


@SETTINGS
@given(logit_rows(), truncation_params(), st.integers(0, 1000))
def test_surprise_is_minus_log_p_of_the_chosen_token_under_the_full_distribution(row, case, step):
    params, out, _ = _run(row, case[1], step)
    p = softmax(_full_logits(row, params))
    tokens = out.token_ids[0].numpy()
    np.testing.assert_allclose(out.stats.surprise[0].numpy(), -np.log(p[tokens]), rtol=1e-4, atol=1e-4)


def test_statistics_of_a_known_row():
    row = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.125), math.log(0.125)]])
    out = sample(row, SamplingParams(top_k=2, seed=1, stats_top_k=2))
    h = 0.5 * math.log(2) + 0.25 * math.log(4) + 2 * 0.125 * math.log(8)
    assert math.isclose(float(out.stats.entropy[0]), h, rel_tol=1e-6)
    assert math.isclose(float(out.stats.kept_mass[0]), 0.75, rel_tol=1e-6)
    q = np.array([2 / 3, 1 / 3])
    assert math.isclose(float(out.stats.truncated_entropy[0]), float(-(q * np.log(q)).sum()), rel_tol=1e-6)
    assert int(out.stats.kept_tokens[0]) == 2
    assert math.isclose(float(out.stats.top_k_mass[0]), 0.75, rel_tol=1e-6)


def test_statistics_use_the_distribution_after_penalties_and_bias():
    row = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    params = SamplingParams(repetition_penalty=2.0, logit_bias={3: 1.0}, seed=1)
    out = sample(row, params, states=[SequenceState(history=(0,))])
    p = softmax([1.0, 1.0, 0.0, 0.0])
    assert math.isclose(float(out.stats.entropy[0]), entropy(p), rel_tol=1e-5)


def test_mirostat_mu_is_nan_where_mirostat_is_off():
    out = sample(torch.zeros(2, 5), [SamplingParams(seed=1), SamplingParams(seed=1, mirostat=2)])
    assert math.isnan(float(out.mirostat_mu[0]))
    assert not math.isnan(float(out.mirostat_mu[1]))


@SETTINGS
@given(logit_rows(min_vocab=2), truncation_params(), st.integers(1, 8))
def test_top_logprobs_are_the_most_probable_tokens_of_the_final_distribution(row, case, width):
    _, config = case
    params = SamplingParams(top_logprobs=width, **config)
    out = sample(row[None, :], params)
    final = filter_logits(row[None, :], params)[0]
    q = softmax(final)
    top_ids, top_values = out.top_logprobs
    valid = top_ids[0] >= 0
    assert int(valid.sum()) == min(width, int(np.isfinite(as_array(final)).sum()))
    chosen = top_ids[0][valid].numpy()
    np.testing.assert_allclose(top_values[0][valid].numpy(), np.log(q[chosen]), rtol=1e-4, atol=1e-4)
    # They are the largest: nothing outside them is more probable than the least of them.
    outside = np.setdiff1d(np.flatnonzero(q > 0), chosen)
    if outside.size:
        assert q[outside].max() <= q[chosen].min() + 1e-7
    assert np.all(np.diff(top_values[0][valid].numpy()) <= 1e-7)


def test_reference_final_distribution_is_what_is_sampled_for_a_combination():
    row = torch.tensor([0.3, 2.0, -1.0, 1.1, float("-inf"), 0.7, 1.9, -0.2])
    params = SamplingParams(temperature=0.8, top_k=5, top_p=0.9, min_p=0.05, seed=3)
    np.testing.assert_allclose(softmax(filter_logits(row[None, :], params)[0]), softmax(reference_filter(row, params)),
                               atol=1e-6)
