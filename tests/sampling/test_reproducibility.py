"""Counter-based randomness: a seeded row's tokens are a function of (seed, step, sample index)
and its own logits and parameters, whatever else shares its batch; unseeded rows get fresh
randomness; fp16 and bf16 inputs are handled in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samplerd.sampling import SamplingParams, SequenceState, filter_logits, sample

VOCAB = 40


def _row(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(VOCAB, generator=g) * 1.5


SEEDED = {
    "temperature": SamplingParams(seed=7, n=16, temperature=0.8),
    "top_k": SamplingParams(seed=8, n=16, top_k=10),
    "top_p": SamplingParams(seed=9, n=16, top_p=0.8, temperature=1.2),
    "min_p": SamplingParams(seed=10, n=16, min_p=0.05),
    "typical": SamplingParams(seed=11, n=16, typical_p=0.8),
    "epsilon": SamplingParams(seed=12, n=16, epsilon=0.01),
    "eta": SamplingParams(seed=13, n=16, eta=0.02),
    "top_n_sigma": SamplingParams(seed=14, n=16, top_n_sigma=1.5),
    "top_h": SamplingParams(seed=15, n=16, top_h=0.6),
    "optimal_k": SamplingParams(seed=16, n=16, optimal_k=0.02),
    "entropy_top_k": SamplingParams(seed=17, n=16, entropy_top_k=20),
    "statistical_top_k": SamplingParams(seed=18, n=16, statistical_top_k=5),
    "xtc": SamplingParams(seed=19, n=16, xtc_probability=0.5, xtc_threshold=0.05),
    "dynatemp": SamplingParams(seed=20, n=16, dynatemp_range=0.5),
    "mirostat_v1": SamplingParams(seed=21, mirostat=1),
    "mirostat_v2": SamplingParams(seed=22, mirostat=2, mirostat_tau=3.0),
    "penalties": SamplingParams(seed=23, n=16, repetition_penalty=1.5, frequency_penalty=0.5),
    "dry": SamplingParams(seed=24, n=16, dry_multiplier=1.0),
    "combination": SamplingParams(seed=2**64 - 1, n=16, top_k=20, top_p=0.9, min_p=0.02, temperature=0.9),
}
HISTORY = SequenceState(history=(1, 2, 3, 1, 2, 3, 1, 2), mirostat_mu=5.0)

OTHERS = [
    SamplingParams(),
    SamplingParams(seed=1, temperature=0.0),
    SamplingParams(seed=1, top_k=3, n=5),
    SamplingParams(top_p=0.5, n=128),
    SamplingParams(seed=99, mirostat=2),
    SamplingParams(seed=5, xtc_probability=1.0, xtc_threshold=0.01, min_tokens_to_keep=3),
    SamplingParams(seed=6, typical_p=0.3, logit_bias={0: 50.0}),
    SamplingParams(seed=7, top_k=300, temperature=3.0),
]


def _alone(row: torch.Tensor, params: SamplingParams, step: int):
    return sample(row[None, :], params, steps=step, states=[HISTORY])


@pytest.mark.parametrize("name", list(SEEDED))
def test_a_seeded_row_gives_the_same_tokens_whatever_shares_its_batch(name):
    params, row, step = SEEDED[name], _row(1), 123
    alone = _alone(row, params, step)
    rng = np.random.default_rng(0)
    for trial in range(3):
        others = [OTHERS[i] for i in rng.permutation(len(OTHERS))][: 3 + 2 * trial]
        batch_params = others + [params]
        order = rng.permutation(len(batch_params))
        batch_params = [batch_params[i] for i in order]
        position = int(np.flatnonzero(order == len(others))[0])
        logits = torch.stack([_row(10 + i) for i in range(len(batch_params))])
        logits[position] = row
        steps = rng.integers(0, 1000, size=len(batch_params)).tolist()
        steps[position] = step
        states = [SequenceState(history=tuple(rng.integers(0, VOCAB, 5).tolist())) for _ in batch_params]
        states[position] = HISTORY
        out = sample(logits, batch_params, steps=steps, states=states)
        n = params.n
        assert torch.equal(out.token_ids[position, :n], alone.token_ids[0, :n]), (name, trial)
        torch.testing.assert_close(out.logprobs[position, :n], alone.logprobs[0, :n])
        torch.testing.assert_close(out.stats.entropy[position], alone.stats.entropy[0])
        if params.mirostat:
            torch.testing.assert_close(out.mirostat_mu[position], alone.mirostat_mu[0])


def test_the_same_seed_and_step_give_the_same_tokens_on_every_call():
    params = SamplingParams(seed=42, n=64, top_p=0.9)
    first = sample(_row(2)[None, :], params, steps=5).token_ids
    torch.manual_seed(1234)  # torch's global generator plays no part
    second = sample(_row(2)[None, :], params, steps=5).token_ids
    assert torch.equal(first, second)


def test_filter_logits_is_reproducible_for_xtc_at_the_same_seed_and_step():
    params = SamplingParams(seed=3, xtc_probability=0.5, xtc_threshold=0.02)
    logits = _row(3).expand(64, VOCAB)
    steps = list(range(64))
    assert torch.equal(filter_logits(logits, params, steps=steps), filter_logits(logits, params, steps=steps))


def test_different_steps_give_different_streams():
    params = SamplingParams(seed=42, n=64)
    flat = torch.zeros(1, VOCAB)
    streams = {tuple(sample(flat, params, steps=step).token_ids[0].tolist()) for step in range(20)}
    assert len(streams) == 20


def test_different_seeds_give_different_streams():
    flat = torch.zeros(1, VOCAB)
    streams = {tuple(sample(flat, SamplingParams(seed=seed, n=64)).token_ids[0].tolist()) for seed in range(20)}
    assert len(streams) == 20


def test_samples_within_a_row_are_not_repeated_copies():
    out = sample(torch.zeros(1, VOCAB), SamplingParams(seed=1, n=128))
    assert len(set(out.token_ids[0].tolist())) > 20


def test_unseeded_rows_differ_between_calls():
    flat = torch.zeros(1, VOCAB)
    params = SamplingParams(n=64)
    first = sample(flat, params).token_ids
    second = sample(flat, params).token_ids
    assert not torch.equal(first, second)


def test_unseeded_rows_in_one_batch_differ_from_each_other():
    out = sample(torch.zeros(2, VOCAB), SamplingParams(n=64))
    assert not torch.equal(out.token_ids[0], out.token_ids[1])


def test_fewer_samples_are_a_prefix_of_more_samples():
    row = _row(4)[None, :]
    few = sample(row, SamplingParams(seed=5, n=3, top_k=10), steps=9).token_ids
    many = sample(row, SamplingParams(seed=5, n=50, top_k=10), steps=9).token_ids
    assert torch.equal(few[0], many[0, :3])


def test_rows_with_smaller_n_are_padded_with_minus_one():
    out = sample(torch.zeros(2, VOCAB), [SamplingParams(seed=1, n=2), SamplingParams(seed=1, n=5)])
    assert out.token_ids.shape == (2, 5)
    assert out.token_ids[0, 2:].tolist() == [-1, -1, -1]
    assert torch.isnan(out.logprobs[0, 2:]).all()
    assert torch.equal(out.token_ids[0, :2], out.token_ids[1, :2])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    logits = (torch.randn(8, VOCAB, generator=torch.Generator().manual_seed(5)) * 3).to(dtype)
    params = SamplingParams(seed=3, n=32, top_p=0.9, temperature=0.7, min_p=0.01)
    as_float = logits.float()
    out_half = filter_logits(logits, params)
    assert out_half.dtype == torch.float32
    assert torch.equal(out_half, filter_logits(as_float, params))
    sampled_half = sample(logits, params, steps=list(range(8)))
    sampled_float = sample(as_float, params, steps=list(range(8)))
    assert torch.equal(sampled_half.token_ids, sampled_float.token_ids)
    assert sampled_half.logprobs.dtype == torch.float32
    torch.testing.assert_close(sampled_half.stats.entropy, sampled_float.stats.entropy)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_minus_infinity_is_a_masked_token(dtype):
    logits = torch.tensor([[float("-inf"), 1.0, 0.5, float("-inf")]], dtype=dtype)
    out = sample(logits.expand(50, 4), SamplingParams(seed=1, n=8), steps=list(range(50)))
    assert set(out.token_ids.flatten().tolist()) <= {1, 2}


def test_prefix_boundary_of_a_row_does_not_depend_on_its_neighbours() -> None:
    """When float32 rounding leaves the in-bin running sum short of the target (the bin's total,
    summed in float32 in index order, rounds up twice), the boundary is the bin's last member:
    for the row alone, and beside a row whose boundary bin is wider (which once made it -inf,
    keeping every token)."""
    from samplerd.sampling.selection import prefix_boundary

    score_a = torch.tensor([[0.0, -0.001, -0.002]])  # one histogram bin
    weight_a = torch.tensor([[1.0, 6e-8, 6e-8]])
    target_a = torch.zeros(1, 2048).scatter_add_(1, torch.zeros(1, 3, dtype=torch.long), weight_a)[:, :1]
    assert float(target_a) > float(weight_a.cumsum(dim=1)[0, -1])  # the rounding this test is about
    score_b = torch.tensor([[-0.0001 * i for i in range(20)] + [-9.0] * 20])
    weight_b = score_b.exp()
    target_b = weight_b.sum(dim=1, keepdim=True) * 0.5

    alone = prefix_boundary(score_a, weight_a, target_a)
    padding = score_b.shape[1] - score_a.shape[1]  # row A beside row B: -inf scores, zero weights
    score = torch.cat([torch.cat([score_a, torch.full((1, padding), float("-inf"))], 1), score_b])
    weight = torch.cat([torch.cat([weight_a, torch.zeros(1, padding)], 1), weight_b])
    beside = prefix_boundary(score, weight, torch.cat([target_a, target_b]))
    assert float(alone) == pytest.approx(-0.002)
    assert float(beside[0]) == float(alone)


@pytest.mark.parametrize("stream", [0, 1, 2])
def test_the_device_generator_gives_the_host_generators_bits(stream) -> None:
    from samplerd.sampling.rng import device_uniforms, uniforms

    draw = np.random.default_rng(11)
    seeds = np.concatenate([draw.integers(0, 2**64, size=40, dtype=np.uint64),
                            np.array([0, 2**63, 2**64 - 1], dtype=np.uint64)])
    steps = np.concatenate([draw.integers(0, 2**64, size=40, dtype=np.uint64),
                            np.array([2**64 - 1, 0, 2**63], dtype=np.uint64)])
    on_device = device_uniforms(seeds, steps, stream, 33, "cpu")
    assert on_device.dtype == torch.float64
    assert np.array_equal(on_device.numpy(), uniforms(seeds, steps, stream, 33))
