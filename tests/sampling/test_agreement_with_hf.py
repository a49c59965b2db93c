"""Kept sets agree with Hugging Face transformers' warpers on many random rows.

Rows: 200 random float32 rows of varied vocabulary size (2..300), scale and shape
(Gaussian at several scales, peaked, Zipf-like, wide), a third with ``-inf`` entries, and no
exact ties among finite logits (HF splits tie groups at top-p boundaries; samplerd keeps them
whole, which test_ties_and_part_a_semantics.py covers). Parameters are drawn per row, half of
the rows with ``min_tokens_to_keep > 1``. The kept set is the set of finite entries of
``filter_logits``; HF's is the set of finite entries of the warper's output.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from samplerd_reference import ids, kept, tie_free_rows
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from samplerd.sampling import SamplingParams, SequenceState, filter_logits

ROWS = 200
ROW_SEED = 20240601


@pytest.fixture(scope="module")
def rows() -> list[torch.Tensor]:
    return tie_free_rows(ROWS, ROW_SEED)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _min_keep(rng: np.random.Generator) -> int:
    return 1 if rng.random() < 0.5 else int(rng.integers(2, 7))


def _hf(processors, row: torch.Tensor, input_ids: torch.Tensor | None = None) -> torch.Tensor:
    scores = row[None, :].clone()
    if input_ids is None:
        input_ids = torch.zeros((1, 1), dtype=torch.long)
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores[0]


def _assert_same_kept_sets(cases):
    """``cases``: (row index, params, samplerd row, HF row); all kept sets must be equal."""
    mismatches = []
    for index, params, ours, theirs in cases:
        if not np.array_equal(kept(ours), kept(theirs)):
            mismatches.append((index, params, ids(kept(ours)), ids(kept(theirs))))
    assert not mismatches, f"{len(mismatches)} of {len(cases)} rows differ; first: {mismatches[:3]}"


def _compare(rows, make):
    """``make(rng, row)`` -> (SamplingParams, list of HF processors)."""
    rng = np.random.default_rng(7)
    cases = []
    for index, row in enumerate(rows):
        params, processors = make(rng, row)
        ours = filter_logits(row[None, :], params)[0]
        cases.append((index, params, ours, _hf(processors, row)))
    _assert_same_kept_sets(cases)


def test_top_k_kept_set_equals_hf(rows):
    def make(rng, row):
        k, m = int(rng.integers(1, row.numel() + 5)), _min_keep(rng)
        return SamplingParams(top_k=k, min_tokens_to_keep=m), [TopKLogitsWarper(k, min_tokens_to_keep=m)]

    _compare(rows, make)


def test_top_p_kept_set_equals_hf(rows):
    def make(rng, row):
        top_p, m = float(rng.uniform(0.02, 0.999)), _min_keep(rng)
        return SamplingParams(top_p=top_p, min_tokens_to_keep=m), [TopPLogitsWarper(top_p, min_tokens_to_keep=m)]

    _compare(rows, make)


def test_min_p_kept_set_equals_hf(rows):
    def make(rng, row):
        min_p, m = _log_uniform(rng, 1e-4, 0.95), _min_keep(rng)
        return SamplingParams(min_p=min_p, min_tokens_to_keep=m), [MinPLogitsWarper(min_p, min_tokens_to_keep=m)]

    _compare(rows, make)


def test_typical_kept_set_equals_hf(rows):
    def make(rng, row):
        mass, m = float(rng.uniform(0.02, 0.999)), _min_keep(rng)
        return (SamplingParams(typical_p=mass, min_tokens_to_keep=m),
                [TypicalLogitsWarper(mass, min_tokens_to_keep=m)])

    _compare(rows, make)


def test_epsilon_kept_set_equals_hf(rows):
    def make(rng, row):
        epsilon, m = _log_uniform(rng, 1e-5, 0.5), _min_keep(rng)
        return (SamplingParams(epsilon=epsilon, min_tokens_to_keep=m),
                [EpsilonLogitsWarper(epsilon, min_tokens_to_keep=m)])

    _compare(rows, make)


def test_eta_kept_set_equals_hf(rows):
    def make(rng, row):
        eta, m = _log_uniform(rng, 1e-5, 0.9), _min_keep(rng)
        return SamplingParams(eta=eta, min_tokens_to_keep=m), [EtaLogitsWarper(eta, min_tokens_to_keep=m)]

    _compare(rows, make)


def test_top_h_kept_set_equals_hf_where_its_window_covers_the_vocabulary(rows):
    """HF looks at the top 100 tokens only; samplerd at the whole vocabulary: compare for V <= 100."""
    small = [row for row in rows if row.numel() <= 100]
    assert len(small) >= 50

    def make(rng, row):
        alpha = float(rng.uniform(0.05, 0.95))
        return SamplingParams(top_h=alpha), [TopHLogitsWarper(alpha)]

    _compare(small, make)


def test_temperature_matches_hf(rows):
    rng = np.random.default_rng(11)
    for row in rows:
        temperature = _log_uniform(rng, 0.05, 5.0)
        ours = filter_logits(row[None, :], SamplingParams(temperature=temperature))[0]
        theirs = _hf([TemperatureLogitsWarper(temperature)], row)
        assert np.array_equal(kept(ours), kept(theirs))
        torch.testing.assert_close(ours[torch.isfinite(ours)], theirs[torch.isfinite(theirs)], rtol=1e-6, atol=1e-6)


def test_repetition_penalty_matches_hf(rows):
    rng = np.random.default_rng(12)
    for row in rows:
        vocab = row.numel()
        history = rng.integers(0, vocab, size=int(rng.integers(1, 20))).tolist()
        penalty = _log_uniform(rng, 0.3, 5.0)
        ours = filter_logits(row[None, :], SamplingParams(repetition_penalty=penalty),
                             states=[SequenceState(history=tuple(history))])[0]
        theirs = _hf([RepetitionPenaltyLogitsProcessor(penalty)], row, torch.tensor([history]))
        assert np.array_equal(kept(ours), kept(theirs))
        torch.testing.assert_close(ours[torch.isfinite(ours)], theirs[torch.isfinite(theirs)], rtol=1e-6, atol=1e-6)


def test_temperature_then_top_k_then_top_p_equals_hf(rows):
    def make(rng, row):
        temperature, m = _log_uniform(rng, 0.2, 3.0), _min_keep(rng)
        k, top_p = int(rng.integers(1, row.numel() + 3)), float(rng.uniform(0.05, 0.99))
        params = SamplingParams(temperature=temperature, top_k=k, top_p=top_p, min_tokens_to_keep=m)
        return params, [TemperatureLogitsWarper(temperature), TopKLogitsWarper(k, min_tokens_to_keep=m),
                        TopPLogitsWarper(top_p, min_tokens_to_keep=m)]

    _compare(rows, make)


def test_every_hf_truncation_chained_in_hf_order_equals_hf(rows):
    """HF's order top-k -> top-p -> min-p -> typical -> epsilon -> eta is also samplerd's (docs/semantics.md)."""

    def make(rng, row):
        temperature, m = _log_uniform(rng, 0.3, 3.0), _min_keep(rng)
        k = int(rng.integers(2, row.numel() + 3))
        top_p, min_p = float(rng.uniform(0.5, 0.999)), _log_uniform(rng, 1e-4, 0.05)
        mass, epsilon, eta = float(rng.uniform(0.5, 0.999)), _log_uniform(rng, 1e-5, 0.02), _log_uniform(
            rng, 1e-5, 0.05)
        params = SamplingParams(temperature=temperature, top_k=k, top_p=top_p, min_p=min_p, typical_p=mass,
                                epsilon=epsilon, eta=eta, min_tokens_to_keep=m)
        return params, [
            TemperatureLogitsWarper(temperature),
            TopKLogitsWarper(k, min_tokens_to_keep=m),
            TopPLogitsWarper(top_p, min_tokens_to_keep=m),
            MinPLogitsWarper(min_p, min_tokens_to_keep=m),
            TypicalLogitsWarper(mass, min_tokens_to_keep=m),
            EpsilonLogitsWarper(epsilon, min_tokens_to_keep=m),
            EtaLogitsWarper(eta, min_tokens_to_keep=m),
        ]

    _compare(rows, make)


def test_whole_batch_with_per_row_parameters_equals_hf_row_by_row(rows):
    """One filter_logits call over a batch of equal-V rows with a different top_p per row."""
    rng = np.random.default_rng(13)
    vocab = 64
    batch = torch.stack(tie_free_rows(40, 99, min_vocab=vocab, max_vocab=vocab))
    top_ps = rng.uniform(0.05, 0.99, size=40)
    params = [SamplingParams(top_p=float(t)) for t in top_ps]
    ours = filter_logits(batch, params)
    cases = [(i, params[i], ours[i], _hf([TopPLogitsWarper(float(top_ps[i]))], batch[i])) for i in range(40)]
    _assert_same_kept_sets(cases)
