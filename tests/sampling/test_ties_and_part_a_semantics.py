"""docs/semantics.md, rule by rule: ties, min_tokens_to_keep, disabled values, the order of
stages, greedy, and each strategy's specific choices, on small hand-made rows.

Each expected kept set is worked out in the test (or by the float64 reference in
samplerd_reference.py, which follows the definitions), never by calling the kernel under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from samplerd_reference import (
    as_array,
    dynamic_temperature,
    ids,
    keep_entropy_top_k,
    keep_mirostat_v1,
    keep_optimal_k,
    keep_statistical_top_k,
    keep_top_h,
    kept,
    reference_filter,
    softmax,
    tie_free_rows,
    top_ranked,
)

from samplerd.sampling import SamplingParams, filter_logits, sample


def kept_ids(row, **params) -> list[int]:
    return ids(kept(filter_logits(torch.tensor([row], dtype=torch.float32), SamplingParams(**params))[0]))


def logits_of(probs) -> list[float]:
    return [math.log(p) for p in probs]


# ----------------------------------------------------------------------------- rule 3: ties


def test_top_k_1_keeps_every_token_tied_with_the_maximum():
    assert kept_ids([2.0, 2.0, 1.0], top_k=1) == [0, 1]


def test_top_k_keeps_every_token_tied_with_the_kth():
    assert kept_ids([3.0, 1.0, 2.0, 1.0, 0.0], top_k=2) == [0, 2]
    assert kept_ids([3.0, 1.0, 2.0, 1.0, 0.0], top_k=3) == [0, 1, 2, 3]


def test_top_p_keeps_the_boundary_tokens_whole_tie_group():
    # p = (0.4, 0.2, 0.2, 0.2): rank 2 is kept (mass before it 0.4 < 0.5), and ranks 3, 4 tie with it.
    assert kept_ids(logits_of([0.2, 0.4, 0.2, 0.2]), top_p=0.5) == [0, 1, 2, 3]


def test_top_p_boundary_tie_group_kept_whatever_the_order_of_the_tied_tokens():
    row = [1.0, 1.0, 1.0, 3.0, 0.0]
    expected = kept_ids(row, top_p=0.8)
    for permutation in ([0, 1, 2, 3, 4], [3, 2, 0, 4, 1], [4, 0, 3, 1, 2]):
        permuted = [row[i] for i in permutation]
        assert sorted(permutation[i] for i in kept_ids(permuted, top_p=0.8)) == expected


def test_top_p_stops_at_the_first_rank_whose_prefix_reaches_p():
    # p = (0.5, 0.3, 0.2): mass before rank 2 is 0.5 >= 0.5, so only rank 1.
    assert kept_ids(logits_of([0.3, 0.5, 0.2]), top_p=0.45) == [1]
    assert kept_ids(logits_of([0.3, 0.5, 0.2]), top_p=0.55) == [0, 1]
    assert kept_ids(logits_of([0.3, 0.5, 0.2]), top_p=0.85) == [0, 1, 2]


def test_min_p_keeps_ties_at_the_threshold():
    # min_p = 1 keeps exactly the tokens tied with the maximum.
    assert kept_ids([0.0, 1.0, 1.0, -1.0], min_p=1.0) == [1, 2]


def test_epsilon_keeps_every_token_tied_at_the_floor():
    # Thresholds a clear margin from every p: whether p = 0.25 >= 0.25 holds is float rounding.
    row = logits_of([0.25, 0.25, 0.5])
    assert kept_ids(row, epsilon=0.2) == [0, 1, 2]
    assert kept_ids(row, epsilon=0.3) == [2]


def test_typical_keeps_the_boundary_scores_whole_tie_group():
    # Two tokens share a typicality score when their probabilities are equal.
    row = logits_of([0.1, 0.3, 0.3, 0.3])
    got = kept_ids(row, typical_p=0.2)
    assert got == [1, 2, 3]


def test_greedy_takes_the_first_maximal_index():
    row = torch.tensor([[1.0, 3.0, 0.5, 3.0, 3.0]])
    assert ids(kept(filter_logits(row, SamplingParams(temperature=0.0))[0])) == [1]
    out = sample(row.expand(50, 5), SamplingParams(temperature=0.0, n=4), steps=list(range(50)))
    assert torch.all(out.token_ids == 1)


def test_kept_set_is_a_function_of_the_distribution_alone():
    """Permuting the vocabulary permutes the kept set, for every threshold strategy, ties included."""
    rng = np.random.default_rng(3)
    row = np.round(rng.standard_normal(40) * 2, 0).astype(np.float32)  # many exact ties
    configurations = [dict(top_k=5), dict(top_p=0.6), dict(min_p=0.2), dict(typical_p=0.5), dict(epsilon=0.03),
                      dict(eta=0.05), dict(top_n_sigma=1.0), dict(top_h=0.4), dict(optimal_k=0.1),
                      dict(entropy_top_k=12, entropy_top_k_min=2), dict(statistical_top_k=4),
                      dict(top_k=7, min_tokens_to_keep=9)]
    for config in configurations:
        expected = set(kept_ids(row.tolist(), **config))
        for _ in range(3):
            permutation = rng.permutation(40)
            got = {int(permutation[i]) for i in kept_ids(row[permutation].tolist(), **config)}
            assert got == expected, config


# ----------------------------------------------------------------------------- rule 4: min_tokens_to_keep


@pytest.mark.parametrize("config", [dict(top_k=1), dict(top_p=0.01), dict(min_p=0.99), dict(epsilon=0.9),
                                    dict(eta=0.9), dict(top_n_sigma=0.001), dict(top_h=0.01),
                                    dict(optimal_k=50.0), dict(statistical_top_k=1), dict(mirostat=2,
                                                                                          mirostat_tau=0.01)])
def test_min_tokens_to_keep_keeps_the_m_most_probable(config):
    row = [5.0, 0.0, 4.0, 1.0, 3.0, 2.0]
    assert kept_ids(row, min_tokens_to_keep=3, **config) == [0, 2, 4]


def test_min_tokens_to_keep_with_ties_keeps_the_tie_group_of_the_mth():
    assert kept_ids([5.0, 3.0, 4.0, 3.0, 1.0], top_k=1, min_tokens_to_keep=3) == [0, 1, 2, 3]


def test_min_tokens_to_keep_of_typical_protects_the_most_typical_not_the_most_probable():
    # A dominant token (p = 0.4) among ten small ones (~0.06): its surprise is further from the entropy.
    row = logits_of([0.4] + [0.06 + 0.001 * i for i in range(10)])
    p = softmax(row)
    h = -(p * np.log(p)).sum()
    typical_order = np.argsort(np.abs(-np.log(p) - h))
    assert typical_order[0] != 0
    got = kept_ids(row, typical_p=0.01, min_tokens_to_keep=2)
    assert got == sorted(typical_order[:2].tolist())
    assert 0 not in got


def test_min_tokens_to_keep_larger_than_the_vocabulary_keeps_every_finite_token():
    assert kept_ids([1.0, float("-inf"), 0.0], top_k=1, min_tokens_to_keep=10) == [0, 2]


def test_min_tokens_to_keep_never_brings_back_masked_tokens():
    assert kept_ids([1.0, float("-inf"), 0.0, float("-inf")], top_p=0.1, min_tokens_to_keep=4) == [0, 2]


# ----------------------------------------------------------------------------- rule 6: disabled values


@pytest.mark.parametrize("config", [dict(), dict(top_k=0), dict(top_k=-1), dict(top_k=8), dict(top_k=1000),
                                    dict(top_p=1.0), dict(min_p=0.0), dict(typical_p=1.0), dict(epsilon=0.0),
                                    dict(eta=0.0), dict(top_n_sigma=0.0), dict(top_n_sigma=-1.0), dict(top_h=0.0),
                                    dict(optimal_k=0.0), dict(entropy_top_k=0), dict(statistical_top_k=0),
                                    dict(statistical_top_k=7), dict(xtc_probability=0.0),
                                    dict(xtc_probability=1.0, xtc_threshold=0.6), dict(dynatemp_range=0.0)])
def test_disabled_values_keep_every_finite_token_unchanged(config):
    row = torch.tensor([[0.5, -1.0, float("-inf"), 2.0, 0.0, 1.5, -3.0, float("-inf")]])
    out = filter_logits(row, SamplingParams(**config))
    torch.testing.assert_close(out, row)


@pytest.mark.parametrize("temperature", [0.0, 1e-6, 9.9e-6])
def test_temperature_below_1e_5_is_greedy_on_the_logits_before_temperature(temperature):
    row = torch.tensor([[0.0, 2.0, 1.0, 2.0]])
    out = filter_logits(row, SamplingParams(temperature=temperature, top_p=0.5))
    assert ids(kept(out[0])) == [1]
    assert float(out[0, 1]) == 2.0


def test_temperature_1e_5_is_not_greedy():
    row = torch.tensor([[0.0, 2.0, 1.0]])
    assert ids(kept(filter_logits(row, SamplingParams(temperature=1e-5))[0])) == [0, 1, 2]


def test_greedy_argmax_is_taken_after_logit_bias():
    row = torch.tensor([[0.0, 2.0, 1.0]])
    assert ids(kept(filter_logits(row, SamplingParams(temperature=0.0, logit_bias={2: 5.0}))[0])) == [2]


# ----------------------------------------------------------------------------- rule 2: order of stages


def test_temperature_is_applied_before_truncation():
    row = logits_of([0.5, 0.3, 0.2])
    # T = 1: mass before rank 2 is 0.5 < 0.6, keep two. T = 0.25 sharpens p_max above 0.6: keep one.
    assert kept_ids(row, top_p=0.6) == [0, 1]
    assert kept_ids(row, top_p=0.6, temperature=0.25) == [0]


def test_filter_logits_returns_the_tempered_logits_of_kept_tokens():
    row = torch.tensor([[1.0, 3.0, -2.0, 0.5]])
    out = filter_logits(row, SamplingParams(temperature=0.5, top_k=2))
    expected = torch.tensor([[2.0, 6.0, float("-inf"), float("-inf")]])
    torch.testing.assert_close(out, expected)


def test_each_truncation_sees_the_renormalised_output_of_the_one_before():
    # top_k = 2 leaves (0.5, 0.3) -> renormalised (0.625, 0.375); top_p = 0.6 then keeps only rank 1.
    # Without renormalisation rank 2 would stay (mass before it 0.5 < 0.6).
    assert kept_ids(logits_of([0.5, 0.3, 0.2]), top_k=2, top_p=0.6) == [0]


def test_min_p_runs_after_top_p():
    # top_p = 0.9 on (0.5, 0.3, 0.15, 0.05) keeps 3; min_p = 0.5 relative to 0.5/0.95 keeps 2.
    assert kept_ids(logits_of([0.5, 0.3, 0.15, 0.05]), top_p=0.9, min_p=0.5) == [0, 1]


def test_penalties_come_before_logit_bias_and_temperature():
    from samplerd.sampling import SequenceState

    row = torch.tensor([[2.0, 1.0, 0.0]])
    params = SamplingParams(repetition_penalty=2.0, logit_bias={0: 1.0}, temperature=0.5)
    out = filter_logits(row, params, states=[SequenceState(history=(0,))])
    # (2 / 2 + 1) / 0.5 = 4: bias after the penalty, both before temperature.
    torch.testing.assert_close(out, torch.tensor([[4.0, 2.0, 0.0]]))


def test_random_combinations_follow_the_reference_pipeline():
    rng = np.random.default_rng(5)
    rows = tie_free_rows(60, 17, min_vocab=5, max_vocab=120)
    for row in rows:
        params = SamplingParams(
            temperature=float(rng.uniform(0.3, 2.0)), top_n_sigma=float(rng.choice([0.0, rng.uniform(1.0, 4.0)])),
            top_k=int(rng.choice([0, rng.integers(3, 60)])), top_p=float(rng.choice([1.0, rng.uniform(0.3, 0.99)])),
            min_p=float(rng.choice([0.0, rng.uniform(0.001, 0.1)])),
            typical_p=float(rng.choice([1.0, rng.uniform(0.5, 0.99)])),
            epsilon=float(rng.choice([0.0, rng.uniform(1e-4, 0.01)])),
            min_tokens_to_keep=int(rng.integers(1, 4)))
        expected = ids(kept(reference_filter(row, params)))
        assert ids(kept(filter_logits(row[None, :], params)[0])) == expected, params


# ----------------------------------------------------------------------------- rule 5: bad numbers


def test_minus_infinity_is_a_valid_masked_logit():
    row = torch.tensor([[float("-inf"), 1.0, float("-inf"), 0.0]])
    out = sample(row.expand(200, 4), SamplingParams(seed=1), steps=list(range(200)))
    assert set(out.token_ids.flatten().tolist()) <= {1, 3}


def test_a_single_finite_logit_keeps_exactly_that_token_with_entropy_zero():
    row = torch.tensor([[float("-inf"), float("-inf"), 0.3, float("-inf")]])
    for config in (dict(), dict(top_p=0.5), dict(typical_p=0.5), dict(top_n_sigma=1.0), dict(top_h=0.5),
                   dict(statistical_top_k=1), dict(eta=0.1), dict(mirostat=1), dict(mirostat=2),
                   dict(xtc_probability=1.0), dict(optimal_k=1.0), dict(entropy_top_k=3)):
        out = sample(row, SamplingParams(seed=0, **config))
        assert out.token_ids.tolist() == [[2]], config
        assert float(out.stats.entropy[0]) == 0.0
        assert float(out.stats.truncated_entropy[0]) == 0.0
        assert float(out.stats.varentropy[0]) == 0.0
        assert float(out.logprobs[0, 0]) == 0.0


# ----------------------------------------------------------------------------- rule 7: strategy specifics


def test_top_n_sigma_uses_the_population_standard_deviation_over_finite_logits():
    # finite logits 0, 1, 2, 3: population sigma = sqrt(1.25) ~ 1.118, Bessel sigma ~ 1.291.
    # n = 2.5: threshold 3 - 2.795 = 0.205 (keeps 1, 2, 3); Bessel would give -0.23 (keeps all four).
    row = [0.0, float("-inf"), 1.0, 2.0, 3.0]
    assert kept_ids(row, top_n_sigma=2.5) == [2, 3, 4]


def test_top_n_sigma_kept_set_does_not_depend_on_temperature():
    row = [0.0, 0.7, 1.5, 2.2, 3.0, -1.0]
    assert kept_ids(row, top_n_sigma=1.0) == kept_ids(row, top_n_sigma=1.0, temperature=0.3) == kept_ids(
        row, top_n_sigma=1.0, temperature=3.0)


def test_top_n_sigma_with_all_finite_logits_equal_keeps_them_all():
    assert kept_ids([1.0, 1.0, float("-inf"), 1.0], top_n_sigma=0.5) == [0, 1, 3]


def test_top_h_uses_the_whole_vocabulary_not_a_top_100_window():
    rng = np.random.default_rng(8)
    for _ in range(10):
        row = (rng.standard_normal(400) * 0.5).astype(np.float32)
        expected = ids(keep_top_h(row, 0.5))
        assert kept_ids(row.tolist(), top_h=0.5) == expected
        assert len(expected) > 100  # a flat row: HF's top-100 window could not have found it


def test_top_h_always_keeps_rank_one():
    assert kept_ids([5.0, 0.0, -1.0], top_h=1e-6) == [0]


def test_eta_floor_is_min_epsilon_sqrt_epsilon_times_exp_minus_entropy():
    # Choose a row where the paper's floor and HF's docstring floor sqrt(eps * exp(-H)) disagree.
    row = logits_of([0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05])
    p = softmax(row)
    h = -(p * np.log(p)).sum()
    eps = 0.1
    paper = min(eps, math.sqrt(eps) * math.exp(-h))  # ~0.052
    docstring = min(eps, math.sqrt(eps * math.exp(-h)))  # 0.1
    expected = [i for i in range(7) if p[i] >= paper]
    assert expected != [i for i in range(7) if p[i] >= docstring]
    assert kept_ids(row, eta=eps) == expected


def test_statistical_top_k_keeps_everything_when_k_reaches_the_finite_count():
    assert kept_ids([0.0, float("-inf"), 1.0, 2.0], statistical_top_k=3) == [0, 2, 3]


def test_statistical_top_k_threshold_is_mean_plus_std_times_normal_quantile():
    rng = np.random.default_rng(9)
    for k in (1, 3, 10, 30):
        row = rng.standard_normal(100).astype(np.float32)
        assert kept_ids(row.tolist(), statistical_top_k=k) == ids(keep_statistical_top_k(row, k))


def test_statistical_top_k_always_keeps_the_argmax():
    # A flat row with one small outlier below: theta lies above every logit but the argmax stays.
    row = [0.0] * 9 + [-100.0]
    row[4] = 1e-3
    assert 4 in kept_ids(row, statistical_top_k=1)


def test_optimal_k_is_the_closed_form_kl_solution():
    rng = np.random.default_rng(10)
    for lam in (0.01, 0.1, 0.5, 1.0, 3.0):
        row = (rng.standard_normal(50) * 2).astype(np.float32)
        assert kept_ids(row.tolist(), optimal_k=lam) == ids(keep_optimal_k(row, lam))


def test_optimal_k_worked_example():
    # p = (0.5, 0.3, 0.2), lambda = ln 1.5 -> e^lambda - 1 = 0.5: k = 1 needs 0.3 <= 0.25 (no),
    # k = 2 needs 0.2 <= 0.4 (yes): keep two.
    assert kept_ids(logits_of([0.5, 0.3, 0.2]), optimal_k=math.log(1.5)) == [0, 1]


def test_entropy_top_k_k_follows_the_sigmoid_of_the_row_entropy():
    rng = np.random.default_rng(11)
    for scale in (0.1, 1.0, 3.0, 10.0):
        row = (rng.standard_normal(300) * scale).astype(np.float32)
        assert kept_ids(row.tolist(), entropy_top_k=200, entropy_top_k_min=3) == ids(
            keep_entropy_top_k(row, 200, 3))


def test_entropy_top_k_at_zero_entropy_keeps_k_min():
    row = [0.0, -200.0, -200.0, -200.0, -300.0]  # entropy ~ 0: k = round(1 + 3 * sigmoid(-5)) = 1
    assert kept_ids(row, entropy_top_k=4) == [0]


def test_mirostat_v1_keeps_the_papers_top_k():
    rng = np.random.default_rng(12)
    for mu in (2.0, 4.0, 6.0, 10.0):
        for vocab in (50, 300):
            row = (-1.1 * np.log(np.arange(1, vocab + 1)) + rng.normal(0, 0.1, vocab)).astype(np.float32)
            rng.shuffle(row)
            from samplerd.sampling import SequenceState

            got = filter_logits(torch.from_numpy(row)[None, :], SamplingParams(mirostat=1),
                                states=[SequenceState(mirostat_mu=mu)])[0]
            assert ids(kept(got)) == ids(keep_mirostat_v1(row, mu)), (mu, vocab)


def test_mirostat_v1_on_a_flat_row_keeps_every_finite_token():
    # A flat distribution has s_hat = 0: "all finite tokens", not llama.cpp's collapse to k = 1.
    assert kept_ids([0.0] * 12 + [float("-inf")], mirostat=1, mirostat_tau=3.0) == list(range(12))


def test_mirostat_v2_keeps_tokens_with_surprise_at_most_mu():
    from samplerd.sampling import SequenceState

    row = logits_of([0.5, 0.25, 0.125, 0.0625, 0.0625])  # surprise 1, 2, 3, 4, 4 bits
    # 2^-mu a clear margin from every p (mu = 3 would put 2^-3 exactly on p = 0.125).
    for mu, expected in ((0.5, [0]), (2.5, [0, 1]), (3.3, [0, 1, 2]), (4.3, [0, 1, 2, 3, 4])):
        got = filter_logits(torch.tensor([row]), SamplingParams(mirostat=2), states=[SequenceState(mirostat_mu=mu)])
        assert ids(kept(got[0])) == expected


def test_xtc_removes_every_top_choice_but_the_least_probable():
    row = logits_of([0.3, 0.05, 0.4, 0.15, 0.1])
    # Top choices (p >= 0.12): 0.4, 0.3, 0.15; only the 0.15 stays.
    assert kept_ids(row, xtc_probability=1.0, xtc_threshold=0.12) == [1, 3, 4]


def test_xtc_needs_two_top_choices():
    assert kept_ids(logits_of([0.6, 0.3, 0.1]), xtc_probability=1.0, xtc_threshold=0.35) == [0, 1, 2]


def test_xtc_keeps_the_least_probable_top_choices_whole_tie_group():
    assert kept_ids(logits_of([0.4, 0.2, 0.2, 0.2]), xtc_probability=1.0, xtc_threshold=0.15) == [1, 2, 3]


def test_xtc_never_counts_a_removed_token_as_a_top_choice():
    # With threshold 0 every candidate is a top choice; a -inf token (weight 0) is not a candidate,
    # so the least probable finite token is the one that stays.
    row = [math.log(0.5), math.log(0.3), float("-inf"), math.log(0.2)]
    assert kept_ids(row, xtc_probability=1.0, xtc_threshold=0.0) == [3]


def test_xtc_does_not_apply_when_fewer_than_min_tokens_to_keep_would_remain():
    # Threshold 0.15, a clear margin below p = 0.2 (at 0.2 the outcome is float rounding).
    row = logits_of([0.5, 0.3, 0.2])
    assert kept_ids(row, xtc_probability=1.0, xtc_threshold=0.15) == [2]
    assert kept_ids(row, xtc_probability=1.0, xtc_threshold=0.15, min_tokens_to_keep=2) == [0, 1, 2]


def test_dynamic_temperature_divides_by_the_entropy_scaled_temperature():
    rng = np.random.default_rng(13)
    for _ in range(10):
        row = (rng.standard_normal(30) * rng.uniform(0.5, 4)).astype(np.float32)
        t, spread, exponent = float(rng.uniform(0.5, 1.5)), float(rng.uniform(0.1, 1.0)), float(rng.uniform(0.5, 2))
        expected = as_array(row) / dynamic_temperature(row, t, spread, exponent)
        out = filter_logits(torch.from_numpy(row)[None, :],
                            SamplingParams(temperature=t, dynatemp_range=spread, dynatemp_exponent=exponent))
        np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_dynamic_temperature_counts_masked_entries_in_the_maximum_entropy():
    row = np.array([1.0, 0.0, -np.inf, -np.inf], dtype=np.float32)
    t_dyn = dynamic_temperature(row, 1.0, 0.5, 1.0)  # H / ln 4, not H / ln 2
    out = filter_logits(torch.from_numpy(row)[None, :], SamplingParams(dynatemp_range=0.5))
    np.testing.assert_allclose(out[0, :2].numpy(), row[:2] / t_dyn, rtol=1e-5)


def test_large_top_k_and_min_tokens_to_keep_keep_the_kth_tie_group():
    """k above 256 (the kernel's partial-sort limit) on rows with many exact ties and masked tokens."""
    rng = np.random.default_rng(14)
    for scale in (1.0, 3.0, 50.0):
        row = np.round(rng.standard_normal(2000) * scale, 0).astype(np.float32)
        row[rng.random(2000) < 0.2] = -np.inf
        for k in (257, 300, 1000, 1599, 1999):
            expected = ids(top_ranked(row, k))
            assert kept_ids(row.tolist(), top_k=k) == expected, (scale, k)
            assert kept_ids(row.tolist(), top_k=1, min_tokens_to_keep=k) == expected, (scale, k)


def test_top_p_typical_and_top_h_on_large_rows_with_ties_follow_the_reference():
    rng = np.random.default_rng(15)
    for _ in range(20):
        vocab = int(rng.integers(500, 3000))
        row = np.round(rng.standard_normal(vocab) * rng.choice([1.0, 3.0]), int(rng.integers(0, 2))).astype(np.float32)
        if rng.random() < 0.5:
            row[rng.random(vocab) < 0.3] = -np.inf
        for config in (dict(top_p=float(rng.uniform(0.3, 0.999))), dict(typical_p=float(rng.uniform(0.3, 0.999))),
                       dict(top_h=float(rng.uniform(0.1, 0.95))), dict(min_p=float(rng.uniform(0.001, 0.5)))):
            params = SamplingParams(**config)
            assert kept_ids(row.tolist(), **config) == ids(kept(reference_filter(row, params))), config


def test_top_h_on_a_near_deterministic_row_keeps_only_the_argmax():
    # p = (1 - 5.6e-42, 5.5e-42, 3.7e-44, ~1e-52): H ~ 5.3e-40 and rank 2 alone adds 95 * 5.5e-42 = 5.2e-40
    # to the partial sum, over the budget 0.3 * H; only rank 1 stays (float64 reference agrees).
    row = [0.0, -95.0, -100.0, -120.0]
    assert ids(keep_top_h(row, 0.3)) == [0]
    assert kept_ids(row, top_h=0.3) == [0]


def test_top_h_after_a_forcing_logit_bias_follows_the_definition():
    """logit_bias +100 leaves every other token ~e^-100: the budget and the partial sums must still be
    computed consistently (the float64 reference keeps 131 tokens here)."""
    row = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(top_h=0.5, logit_bias={0: 100.0})
    expected = ids(kept(reference_filter(row, params)))
    assert 1 < len(expected) < 1000
    assert ids(kept(filter_logits(row[None, :], params)[0])) == expected
