"""Repetition, frequency and presence penalties and DRY over SequenceState.history.

Repetition (CTRL, HF's reading): a seen token's logit z becomes z / r if z > 0 else z * r.
Frequency / presence (OpenAI): z -= frequency * count + presence * [count > 0].
DRY (sampling/strategies/dry.py's docstring): if the history ends with a sequence that already
occurred earlier, followed there by token t, and the repeated sequence is n >= allowed_length
tokens long, t's logit loses multiplier * base ** (n - allowed_length); matches never extend
across a sequence breaker; a history ending in a breaker gets no penalty; lengths cap at 50.
The DRY reference (samplerd_reference.dry_match_lengths) is a direct O(L^2) transcription.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from samplerd_reference import dry_match_lengths, dry_penalty, penalised

from samplerd.sampling import SamplingParams, SequenceState, filter_logits

ROW = torch.tensor([[2.0, -1.0, 0.0, 3.0, -2.5, 1.0, float("-inf"), 0.5]])


def _filtered(params: SamplingParams, history, row=ROW) -> np.ndarray:
    return filter_logits(row, params, states=[SequenceState(history=tuple(history))])[0].double().numpy()


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    got = _filtered(SamplingParams(repetition_penalty=2.0), [0, 1, 2, 1, 6])
    expected = [1.0, -2.0, 0.0, 3.0, -2.5, 1.0, -np.inf, 0.5]
    np.testing.assert_allclose(got, expected)


def test_repetition_penalty_below_one_rewards_seen_tokens():
    got = _filtered(SamplingParams(repetition_penalty=0.5), [0, 1])
    np.testing.assert_allclose(got[:2], [4.0, -0.5])


def test_repetition_penalty_does_not_depend_on_the_count():
    once = _filtered(SamplingParams(repetition_penalty=1.7), [3])
    thrice = _filtered(SamplingParams(repetition_penalty=1.7), [3, 3, 3])
    np.testing.assert_array_equal(once, thrice)


def test_frequency_penalty_subtracts_once_per_occurrence():
    got = _filtered(SamplingParams(frequency_penalty=0.5), [3, 3, 3, 0])
    expected = ROW[0].double().numpy().copy()
    expected[3] -= 1.5
    expected[0] -= 0.5
    np.testing.assert_allclose(got, expected)


def test_presence_penalty_subtracts_once_for_any_occurrence():
    got = _filtered(SamplingParams(presence_penalty=0.75), [3, 3, 3, 0])
    expected = ROW[0].double().numpy().copy()
    expected[[0, 3]] -= 0.75
    np.testing.assert_allclose(got, expected)


def test_negative_frequency_and_presence_penalties_boost():
    got = _filtered(SamplingParams(frequency_penalty=-1.0, presence_penalty=-0.5), [5, 5])
    assert got[5] == pytest.approx(1.0 + 2.0 + 0.5)


def test_an_empty_history_changes_nothing():
    params = SamplingParams(repetition_penalty=3.0, frequency_penalty=1.0, presence_penalty=1.0, dry_multiplier=2.0)
    np.testing.assert_array_equal(_filtered(params, []), ROW[0].double().numpy())


def test_penalties_leave_masked_tokens_masked():
    got = _filtered(SamplingParams(repetition_penalty=0.5, frequency_penalty=-2.0, presence_penalty=-2.0), [6, 6])
    assert got[6] == -np.inf


def test_penalties_on_random_rows_and_histories_match_the_reference():
    rng = np.random.default_rng(21)
    vocab = 30
    logits = torch.from_numpy((rng.standard_normal((16, vocab)) * 3).astype(np.float32))
    histories = [tuple(rng.integers(0, vocab, size=int(rng.integers(0, 40))).tolist()) for _ in range(16)]
    params = [SamplingParams(repetition_penalty=float(rng.uniform(0.5, 3.0)),
                             frequency_penalty=float(rng.uniform(-2, 2)),
                             presence_penalty=float(rng.uniform(-2, 2))) for _ in range(16)]
    got = filter_logits(logits, params, states=[SequenceState(history=h) for h in histories])
    for i in range(16):
        expected = penalised(logits[i], histories[i], params[i].repetition_penalty, params[i].frequency_penalty,
                             params[i].presence_penalty)
        np.testing.assert_allclose(got[i].double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_rows_without_a_state_get_no_penalty():
    params = SamplingParams(repetition_penalty=2.0, frequency_penalty=1.0)
    got = filter_logits(ROW.expand(2, -1), params, states=[None, SequenceState(history=(0,))])
    torch.testing.assert_close(got[0], ROW[0])
    assert float(got[1, 0]) == pytest.approx(0.0)


# ----------------------------------------------------------------------------- DRY


def _dry(history, row_len=12, **config) -> np.ndarray:
    """The DRY amount per token: logits before minus after (temperature 1, no truncation)."""
    row = torch.zeros(1, row_len)
    return -_filtered(SamplingParams(dry_multiplier=config.pop("dry_multiplier", 1.0), **config), history, row)


def test_dry_worked_example():
    # "1 2 3" ends the history and occurred before, followed by 4: n = 3, allowed 2 -> 0.8 * 1.75 ** 1.
    got = _dry([1, 2, 3, 4, 1, 2, 3], dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2)
    expected = np.zeros(12)
    expected[4] = 0.8 * 1.75
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_dry_does_not_penalise_repeats_shorter_than_the_allowed_length():
    got = _dry([1, 2, 3, 4, 1, 2, 3], dry_allowed_length=4)
    assert not got.any()


def test_dry_penalty_at_exactly_the_allowed_length_is_the_multiplier():
    got = _dry([7, 8, 5, 7, 8], dry_multiplier=1.3, dry_allowed_length=2)
    assert got[5] == pytest.approx(1.3)
    assert np.count_nonzero(got) == 1


def test_dry_takes_the_longest_match_per_token():
    # The history ends "5 1 2 3"; 9 followed "2 3" at the start (n = 2) and "1 2 3" later (n = 3,
    # stopped by 9 != 5): the longer match counts, 2 ** (3 - 2).
    got = _dry([2, 3, 9, 1, 2, 3, 9, 5, 1, 2, 3], dry_base=2.0, dry_allowed_length=2)
    assert got[9] == pytest.approx(2.0)
    assert np.count_nonzero(got) == 1


def test_dry_matches_do_not_extend_across_a_sequence_breaker():
    history = [1, 2, 9, 3, 1, 2, 9, 3]
    without = _dry(history, dry_allowed_length=2, dry_base=2.0)
    assert without[1] == pytest.approx(2.0 ** (4 - 2))
    with_breaker = _dry(history, dry_allowed_length=2, dry_base=2.0, dry_sequence_breakers=(9,))
    assert not with_breaker.any()  # the match "3" stops at the breaker: n = 1 < 2


def test_dry_gives_no_penalty_when_the_history_ends_in_a_breaker():
    assert not _dry([1, 2, 9, 1, 2, 9], dry_sequence_breakers=(9,), dry_allowed_length=1).any()


def test_dry_does_not_penalise_a_breaker_that_would_follow():
    got = _dry([1, 2, 9, 1, 2], dry_sequence_breakers=(9,), dry_allowed_length=1)
    assert got[9] == 0.0


def test_dry_match_lengths_cap_at_50():
    history = [5] * 120
    got = _dry(history, dry_base=1.1, dry_allowed_length=2)
    assert got[5] == pytest.approx(1.1 ** (50 - 2), rel=1e-5)


def test_dry_on_random_histories_matches_the_reference():
    rng = np.random.default_rng(31)
    vocab = 12
    for trial in range(150):
        alphabet = int(rng.integers(2, 6))
        history = rng.integers(0, alphabet, size=int(rng.integers(0, 60))).tolist()
        if rng.random() < 0.5 and len(history) > 6:  # plant a long verbatim repeat
            cut = int(rng.integers(1, len(history) - 3))
            history = history + history[cut - 1: cut + int(rng.integers(2, 8))]
        breakers = tuple(rng.choice(alphabet, size=int(rng.integers(0, 2)), replace=False).tolist())
        multiplier, base, allowed = float(rng.uniform(0.1, 2.0)), float(rng.uniform(1.1, 2.5)), int(
            rng.integers(1, 5))
        got = _dry(history, row_len=vocab, dry_multiplier=multiplier, dry_base=base, dry_allowed_length=allowed,
                   dry_sequence_breakers=breakers)
        expected = dry_penalty(history, multiplier, base, allowed, breakers, vocab)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6,
                                   err_msg=f"trial {trial}: history={history} breakers={breakers} "
                                           f"matches={dry_match_lengths(history, breakers)}")


def test_dry_applies_per_row_with_each_rows_own_history_and_parameters():
    logits = torch.zeros(2, 6)
    params = [SamplingParams(dry_multiplier=1.0, dry_allowed_length=1), SamplingParams(dry_multiplier=2.0)]
    states = [SequenceState(history=(1, 2, 1)), SequenceState(history=(3, 4, 5, 3, 4))]
    got = filter_logits(logits, params, states=states)
    np.testing.assert_allclose(got[0].numpy(), [0, 0, -1.0, 0, 0, 0])
    np.testing.assert_allclose(got[1].numpy(), [0, 0, 0, 0, 0, -2.0])


def test_dry_comes_before_logit_bias_and_temperature():
    params = SamplingParams(dry_multiplier=1.0, dry_allowed_length=1, logit_bias={2: 3.0}, temperature=2.0)
    got = filter_logits(torch.zeros(1, 4), params, states=[SequenceState(history=(1, 2, 1))])
    np.testing.assert_allclose(got[0].numpy(), [0.0, 0.0, (3.0 - 1.0) / 2.0, 0.0])
