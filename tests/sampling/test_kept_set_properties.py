"""Properties of the kept set and of the draws, over many generated rows (hypothesis).

Rows have 1..40 tokens, frequent exact ties and ``-inf`` entries; one truncation at a time,
with a temperature (0 = greedy) and a min_tokens_to_keep.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from samplerd_reference import KEEPS_ARGMAX, as_array, kept, logit_rows, softmax, truncation_params

from samplerd.sampling import SamplingParams, filter_logits, sample

SETTINGS = settings(max_examples=60, deadline=None)


def _kept(row: torch.Tensor, **config) -> np.ndarray:
    return kept(filter_logits(row[None, :], SamplingParams(**config))[0])


@SETTINGS
@given(logit_rows(), truncation_params())
def test_kept_set_is_never_empty_and_holds_min_tokens_to_keep(row, case):
    _, config = case
    keep = _kept(row, **config)
    finite = int(np.isfinite(as_array(row)).sum())
    expected_at_least = 1 if config["temperature"] == 0.0 else min(config["min_tokens_to_keep"], finite)
    assert keep.sum() >= expected_at_least


@SETTINGS
@given(logit_rows(), truncation_params())
def test_kept_set_only_holds_finite_input_tokens(row, case):
    _, config = case
    keep = _kept(row, **config)
    assert not (keep & ~np.isfinite(as_array(row))).any()


@SETTINGS
@given(logit_rows(), truncation_params(names=tuple(sorted(KEEPS_ARGMAX))))
def test_kept_set_holds_every_most_probable_token_where_the_definition_says_so(row, case):
    _, config = case
    keep = _kept(row, **config)
    z = as_array(row)
    if config["temperature"] == 0.0:
        assert keep[int(np.argmax(z))]
    else:
        assert keep[z == z.max()].all()


def _nested(row, name, smaller, larger, **fixed):
    """Kept set at ``name = smaller`` is a subset of the kept set at ``name = larger``."""
    small = _kept(row, **{name: smaller}, **fixed)
    large = _kept(row, **{name: larger}, **fixed)
    return not (small & ~large).any()


def _ordered(a, b):
    return (a, b) if a <= b else (b, a)


@SETTINGS
@given(logit_rows(), st.floats(0.01, 1.0), st.floats(0.01, 1.0), st.sampled_from([1, 3]))
def test_kept_set_grows_with_top_p(row, a, b, m):
    assert _nested(row, "top_p", *_ordered(a, b), min_tokens_to_keep=m)


@SETTINGS
@given(logit_rows(), st.integers(1, 45), st.integers(1, 45), st.sampled_from([1, 3]))
def test_kept_set_grows_with_top_k(row, a, b, m):
    assert _nested(row, "top_k", *_ordered(a, b), min_tokens_to_keep=m)


@SETTINGS
@given(logit_rows(), st.floats(0.01, 1.0), st.floats(0.01, 1.0), st.sampled_from([1, 3]))
def test_kept_set_grows_with_typical_p(row, a, b, m):
    assert _nested(row, "typical_p", *_ordered(a, b), min_tokens_to_keep=m)


@SETTINGS
@given(logit_rows(), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.sampled_from([1, 3]))
def test_kept_set_shrinks_with_min_p(row, a, b, m):
    small, large = _ordered(a, b)
    assert _nested(row, "min_p", large, small, min_tokens_to_keep=m)


@SETTINGS
@given(logit_rows(), st.floats(0.0, 0.99), st.floats(0.0, 0.99), st.sampled_from([1, 3]))
def test_kept_set_shrinks_with_epsilon(row, a, b, m):
    small, large = _ordered(a, b)
    assert _nested(row, "epsilon", large, small, min_tokens_to_keep=m)


@SETTINGS
@given(logit_rows(), st.floats(0.0, 0.99), st.floats(0.0, 0.99))
def test_kept_set_shrinks_with_eta(row, a, b):
    small, large = _ordered(a, b)
    assert _nested(row, "eta", large, small)


@SETTINGS
@given(logit_rows(), st.floats(0.01, 10.0), st.floats(0.01, 10.0))
def test_kept_set_grows_with_top_n_sigma(row, a, b):
    assert _nested(row, "top_n_sigma", *_ordered(a, b))


@SETTINGS
@given(logit_rows(), st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_kept_set_grows_with_top_h(row, a, b):
    assert _nested(row, "top_h", *_ordered(a, b))


@SETTINGS
@given(logit_rows(), st.floats(0.001, 20.0), st.floats(0.001, 20.0))
def test_kept_set_shrinks_with_optimal_k_lambda(row, a, b):
    small, large = _ordered(a, b)
    assert _nested(row, "optimal_k", large, small)


@SETTINGS
@given(logit_rows(), st.integers(1, 45), st.integers(1, 45))
def test_kept_set_grows_with_statistical_top_k(row, a, b):
    assert _nested(row, "statistical_top_k", *_ordered(a, b))


@SETTINGS
@given(logit_rows(), truncation_params(), st.integers(0, 10**6))
def test_sample_returns_only_kept_tokens(row, case, step):
    _, config = case
    params = SamplingParams(n=1 if "mirostat" in config else 16, **config)
    keep = kept(filter_logits(row[None, :], params, steps=step)[0])
    out = sample(row[None, :], params, steps=step)
    assert keep[out.token_ids[0].numpy()].all()


@SETTINGS
@given(logit_rows(), truncation_params(), st.integers(0, 10**6))
def test_logprobs_are_the_log_of_the_renormalised_kept_probabilities(row, case, step):
    _, config = case
    params = SamplingParams(n=1 if "mirostat" in config else 8, **config)
    final = filter_logits(row[None, :], params, steps=step)[0]
    q = softmax(final)
    out = sample(row[None, :], params, steps=step)
    tokens = out.token_ids[0].numpy()
    with np.errstate(divide="ignore"):
        expected = np.log(q[tokens])
    np.testing.assert_allclose(out.logprobs[0].numpy(), expected, rtol=1e-4, atol=1e-4)
    assert (out.logprobs[0].numpy() <= 1e-6).all()
    assert not math.isinf(float(out.logprobs[0].min()))
