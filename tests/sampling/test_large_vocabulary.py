"""Large vocabularies (V >= 8192), where the kernels search only the blocks of 128 tokens that
can hold the answer (sampling/topk.py): the results must still follow the definitions,
including ties that span blocks, the partial last block and masked tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from samplerd_reference import (
    entropy,
    ids,
    keep_mirostat_v1,
    keep_optimal_k,
    kept,
    reference_filter,
    softmax,
    top_ranked,
)

from samplerd.sampling import SamplingParams, SequenceState, filter_logits, sample

VOCAB = 10_000 + 37  # 78 whole blocks of 128 and a partial one


def _tied_row(seed: int, vocab: int = VOCAB, scale: float = 2.0, masked: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    row = np.round(rng.standard_normal(vocab) * scale, 0).astype(np.float32)  # thousands of exact ties
    row[rng.random(vocab) < masked] = -np.inf
    return row


@pytest.mark.parametrize("where", [[5000, 300], [VOCAB - 1, VOCAB - 20], [129, 128, 9000], [0, VOCAB - 1]])
def test_greedy_takes_the_first_maximal_index_across_blocks(where):
    row = _tied_row(1)
    row[where] = 100.0
    logits = torch.from_numpy(row)[None, :]
    first = min(where)
    assert ids(kept(filter_logits(logits, SamplingParams(temperature=0.0))[0])) == [first]
    out = sample(logits.expand(3, -1), SamplingParams(temperature=0.0, n=2))
    assert torch.all(out.token_ids == first)
    mixed = sample(logits.expand(2, -1), [SamplingParams(temperature=0.0), SamplingParams(seed=1)])
    assert int(mixed.token_ids[0, 0]) == first


def test_greedy_statistics_on_a_large_row():
    row = _tied_row(2)
    out = sample(torch.from_numpy(row)[None, :], SamplingParams(temperature=0.0))
    p = softmax(row)
    assert float(out.stats.kept_mass[0]) == pytest.approx(p.max(), rel=1e-4)
    assert int(out.stats.kept_tokens[0]) == 1
    assert float(out.stats.entropy[0]) == pytest.approx(entropy(p), rel=1e-4)


@pytest.mark.parametrize("k", [1, 2, 5, 10, 19, 40, 300])
@pytest.mark.parametrize("seed", [3, 4])
def test_top_k_on_a_large_row_keeps_the_kth_tie_group(k, seed):
    row = _tied_row(seed, scale=1.0 if seed == 3 else 4.0)
    got = filter_logits(torch.from_numpy(row)[None, :], SamplingParams(top_k=k))[0]
    assert ids(kept(got)) == ids(top_ranked(row, k))


def test_top_k_on_a_large_row_with_the_top_tie_group_spread_over_many_blocks():
    row = np.full(VOCAB, -5.0, dtype=np.float32)
    row[np.arange(17, VOCAB, 997)] = 3.0  # 11 tied maxima, each in its own block
    row[np.arange(50, VOCAB, 1301)] = 2.0
    for k in (1, 5, 11, 12, 15):
        got = filter_logits(torch.from_numpy(row)[None, :], SamplingParams(top_k=k))[0]
        assert ids(kept(got)) == ids(top_ranked(row, k)), k


@pytest.mark.parametrize("k", [1, 3, 10, 19])
def test_top_k_statistics_on_a_large_row(k):
    row = _tied_row(5, scale=3.0)
    out = sample(torch.from_numpy(row)[None, :], SamplingParams(stats_top_k=k, seed=1))
    top = np.sort(softmax(row))[::-1][:k]
    assert float(out.stats.top_k_mass[0]) == pytest.approx(top.sum(), rel=1e-4)
    assert float(out.stats.top_k_entropy[0]) == pytest.approx(entropy(top / top.sum()), rel=1e-4, abs=1e-5)


def test_top_logprobs_on_a_large_row():
    row = _tied_row(6, scale=3.0)
    params = SamplingParams(top_logprobs=8, top_p=0.5, seed=1)
    out = sample(torch.from_numpy(row)[None, :], params)
    q = softmax(filter_logits(torch.from_numpy(row)[None, :], params)[0])
    top_ids, top_values = out.top_logprobs
    np.testing.assert_allclose(np.sort(q)[::-1][:8], np.exp(top_values[0].numpy()), rtol=1e-4)
    np.testing.assert_allclose(q[top_ids[0].numpy()], np.exp(top_values[0].numpy()), rtol=1e-4)


@pytest.mark.parametrize("mu", [3.0, 6.0, 9.0])
def test_mirostat_v1_on_a_large_zipf_row(mu):
    vocab = 60_000  # the Zipf estimate's top 100 come from the block search
    rng = np.random.default_rng(7)
    row = (-1.05 * np.log(np.arange(1, vocab + 1)) + rng.normal(0, 0.05, vocab)).astype(np.float32)
    rng.shuffle(row)
    got = filter_logits(torch.from_numpy(row)[None, :], SamplingParams(mirostat=1),
                        states=[SequenceState(mirostat_mu=mu)])[0]
    assert ids(kept(got)) == ids(keep_mirostat_v1(row, mu))


@pytest.mark.parametrize("lam", [0.001, 0.01, 0.05])
def test_optimal_k_on_a_large_row(lam):
    vocab = 40_000
    rng = np.random.default_rng(8)
    row = (-0.9 * np.log(np.arange(1, vocab + 1)) + rng.normal(0, 0.05, vocab)).astype(np.float32)
    rng.shuffle(row)
    got = filter_logits(torch.from_numpy(row)[None, :], SamplingParams(optimal_k=lam))[0]
    assert ids(kept(got)) == ids(keep_optimal_k(row, lam))


@pytest.mark.parametrize("config", [dict(top_p=0.9), dict(min_p=0.05), dict(typical_p=0.8), dict(epsilon=1e-4),
                                    dict(eta=1e-3), dict(top_n_sigma=2.0), dict(top_h=0.5),
                                    dict(top_k=15, top_p=0.8, temperature=0.7)])
def test_truncations_on_a_large_row_follow_the_reference(config):
    row = _tied_row(9, scale=3.0)
    params = SamplingParams(**config)
    got = filter_logits(torch.from_numpy(row)[None, :], params)[0]
    assert ids(kept(got)) == ids(kept(reference_filter(row, params)))
