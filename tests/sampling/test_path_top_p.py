"""Path-aware top-p (samplerd.sampling.strategies.path_top_p.path_aware_step), docs/semantics.md, "Path-aware top-p"."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from samplerd.sampling import SamplingParams, filter_logits
from samplerd.sampling.strategies.path_top_p import path_aware_step

ALPHA = 1e-3  # significance level of the goodness-of-fit test


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    return filter_logits(logits, SamplingParams(top_p=top_p))


def test_one_path_with_full_global_mass_is_ordinary_nucleus_sampling():
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -2.0, -3.0]])
    filtered = _nucleus(logits, 0.8)
    kept = torch.isfinite(filtered[0])
    expected = torch.softmax(filtered[0].double(), dim=-1).numpy()
    draws = 5_000
    counts = np.zeros(logits.shape[1])
    for step in range(draws):
        chosen = path_aware_step(filtered, torch.zeros(1), beams=1, path_top_p=1.0, seed=3, step=step)
        counts[int(chosen.token[0])] += 1
    assert counts[~kept.numpy()].sum() == 0
    observed = counts[kept.numpy()]
    share = expected[kept.numpy()] / expected[kept.numpy()].sum()
    _, p_value = stats.chisquare(observed, share * draws)
    assert p_value > ALPHA


def test_chosen_candidates_are_distinct_and_inside_their_paths_nucleus():
    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 2
    filtered = _nucleus(logits, 0.7)
    path_logprobs = torch.tensor([-0.1, -1.0, -2.5], dtype=torch.float64)
    chosen = path_aware_step(filtered, path_logprobs, beams=3, path_top_p=0.95, seed=11, step=4)
    pairs = set(zip(chosen.parent.tolist(), chosen.token.tolist(), strict=True))
    assert len(pairs) == 3
    for parent, token in pairs:
        assert torch.isfinite(filtered[parent, token])


def test_new_path_logprob_accumulates_the_token_logprob_on_its_path():
    torch.manual_seed(1)
    filtered = _nucleus(torch.randn(2, 30), 0.9)
    path_logprobs = torch.tensor([-0.5, -0.7], dtype=torch.float64)
    chosen = path_aware_step(filtered, path_logprobs, beams=2, path_top_p=1.0, seed=5, step=0)
    log_probs = torch.log_softmax(filtered, dim=-1).double()
    expected = path_logprobs[chosen.parent] + log_probs[chosen.parent, chosen.token]
    assert torch.allclose(chosen.path_logprob, expected)


def test_global_nucleus_excludes_improbable_paths():
    filtered = torch.tensor([[5.0, 4.0, -1e4], [0.0, -1.0, -2.0]])
    # The second path is 30 nats less probable: a 0.99 global nucleus holds only path 0.
    path_logprobs = torch.tensor([0.0, -30.0], dtype=torch.float64)
    for step in range(50):
        chosen = path_aware_step(filtered, path_logprobs, beams=2, path_top_p=0.99, seed=2, step=step)
        assert set(chosen.parent.tolist()) == {0}


@pytest.mark.parametrize("seed", [0, 7])
def test_same_seed_and_step_give_the_same_paths(seed):
    torch.manual_seed(2)
    filtered = _nucleus(torch.randn(4, 40), 0.9)
    path_logprobs = torch.linspace(0, -2, 4, dtype=torch.float64)
    first = path_aware_step(filtered, path_logprobs, beams=4, path_top_p=0.9, seed=seed, step=9)
    again = path_aware_step(filtered, path_logprobs, beams=4, path_top_p=0.9, seed=seed, step=9)
    assert torch.equal(first.parent, again.parent) and torch.equal(first.token, again.token)
