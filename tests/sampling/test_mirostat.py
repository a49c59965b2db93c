"""Mirostat's controller: mu' = mu - eta * (surprise_bits - tau), the surprise taken under the
untruncated distribution, mu carried by the caller in SequenceState; over 200 steps the
observed mean surprise tracks tau."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from samplerd_reference import softmax

from samplerd.sampling import SamplingError, SamplingParams, SequenceState, advance, sample

ZIPF = torch.tensor(-1.1 * np.log(np.arange(1, 1001)), dtype=torch.float32)


def _surprise_bits(row: torch.Tensor, token: int, temperature: float = 1.0) -> float:
    return -math.log2(softmax(row.double().numpy() / temperature)[token])


@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("mu", [None, 3.0, 7.5])
def test_mu_update_uses_the_surprise_in_bits_of_the_chosen_token(mode, mu):
    tau, eta = 4.0, 0.3
    params = SamplingParams(mirostat=mode, mirostat_tau=tau, mirostat_eta=eta, seed=11)
    for step in range(5):
        out = sample(ZIPF[None, :], params, steps=step, states=[SequenceState(mirostat_mu=mu)])
        token = int(out.token_ids[0, 0])
        start = 2 * tau if mu is None else mu
        expected = start - eta * (_surprise_bits(ZIPF, token) - tau)
        assert math.isclose(float(out.mirostat_mu[0]), expected, rel_tol=1e-5, abs_tol=1e-5)


def test_surprise_is_taken_under_the_untruncated_distribution():
    # mu = 2 keeps very few tokens: their truncated probabilities are far larger than the full ones.
    row = ZIPF[:50]
    params = SamplingParams(mirostat=2, mirostat_tau=3.0, mirostat_eta=1.0, seed=5)
    out = sample(row[None, :], params, states=[SequenceState(mirostat_mu=2.0)])
    token = int(out.token_ids[0, 0])
    untruncated = 2.0 - (_surprise_bits(row, token) - 3.0)
    truncated = 2.0 - (-float(out.logprobs[0, 0]) / math.log(2) - 3.0)
    assert not math.isclose(untruncated, truncated, abs_tol=1e-3)
    assert math.isclose(float(out.mirostat_mu[0]), untruncated, rel_tol=1e-5)


def test_surprise_is_taken_after_temperature():
    params = SamplingParams(mirostat=2, mirostat_eta=1.0, temperature=0.5, seed=2)
    out = sample(ZIPF[None, :], params, states=[SequenceState(mirostat_mu=6.0)])
    token = int(out.token_ids[0, 0])
    expected = 6.0 - (_surprise_bits(ZIPF, token, temperature=0.5) - 5.0)
    assert math.isclose(float(out.mirostat_mu[0]), expected, rel_tol=1e-5)


def test_mu_starts_at_twice_tau():
    out = sample(ZIPF[None, :], SamplingParams(mirostat=2, mirostat_tau=3.0, mirostat_eta=1e-9, seed=1))
    assert math.isclose(float(out.mirostat_mu[0]), 6.0, rel_tol=1e-6)


def test_defaults_are_llama_cpp_tau_5_eta_0_1():
    params = SamplingParams(mirostat=2)
    assert (params.mirostat_tau, params.mirostat_eta) == (5.0, 0.1)


def test_mu_is_per_row_state():
    params = SamplingParams(mirostat=2, seed=3)
    states = [SequenceState(mirostat_mu=mu) for mu in (1.0, 4.0, 9.0)]
    out = sample(ZIPF.expand(3, -1), params, states=states)
    for row, mu in enumerate((1.0, 4.0, 9.0)):
        token = int(out.token_ids[row, 0])
        assert math.isclose(float(out.mirostat_mu[row]), mu - 0.1 * (_surprise_bits(ZIPF, token) - 5.0), rel_tol=1e-5)


def test_advance_appends_the_token_and_carries_mu():
    state = advance(SequenceState(history=(1, 2), mirostat_mu=3.0), 7, 2.5)
    assert state == SequenceState(history=(1, 2, 7), mirostat_mu=2.5)
    assert advance(state, 8, float("nan")).mirostat_mu == 2.5
    assert advance(None, 4, float("nan")) == SequenceState(history=(4,), mirostat_mu=None)


def _mean_surprise(mode: int, tau: float, sequences: int = 4, steps: int = 200) -> np.ndarray:
    states = [SequenceState() for _ in range(sequences)]
    params = [SamplingParams(mirostat=mode, mirostat_tau=tau, seed=1000 + i) for i in range(sequences)]
    surprise = []
    for step in range(steps):
        out = sample(ZIPF.expand(sequences, -1), params, steps=step, states=states)
        surprise.append(out.stats.surprise[:, 0].numpy() / math.log(2))
        states = [advance(s, int(t), float(m)) for s, t, m in zip(states, out.token_ids[:, 0], out.mirostat_mu,
                                                                    strict=True)]
    return np.array(surprise).mean(axis=0)


def test_mirostat_v2_mean_surprise_over_200_steps_is_within_10_percent_of_tau():
    tau = 5.0
    means = _mean_surprise(2, tau)
    assert abs(means.mean() - tau) <= 0.1 * tau, means


def test_mirostat_v1_mean_surprise_over_200_steps_is_within_10_percent_of_tau():
    tau = 3.0
    means = _mean_surprise(1, tau)
    assert abs(means.mean() - tau) <= 0.1 * tau, means


def test_mirostat_with_another_truncation_is_an_error_naming_the_parameter_to_unset():
    for other in (dict(top_k=5), dict(top_p=0.9), dict(min_p=0.1), dict(typical_p=0.5), dict(epsilon=0.01),
                  dict(eta=0.01), dict(top_n_sigma=1.0), dict(top_h=0.5), dict(optimal_k=0.1),
                  dict(entropy_top_k=5), dict(statistical_top_k=5), dict(xtc_probability=0.5)):
        for mode in (1, 2):
            with pytest.raises(SamplingError) as error:
                SamplingParams(mirostat=mode, **other)
            assert error.value.field == "mirostat"
            assert "mirostat" in str(error.value) and next(iter(other)) in str(error.value)


def test_mirostat_with_more_than_one_sample_per_row_is_an_error():
    with pytest.raises(SamplingError) as error:
        SamplingParams(mirostat=1, n=2)
    assert error.value.field == "n"
