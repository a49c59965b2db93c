"""The fused CPU fast path (sampling/fused.py) makes the general pipeline's decisions: for
rows that only use temperature, top-k, top-p and min-p, ``sample()`` with the fast path on
equals ``sample()`` with it off — the same tokens, kept sets, top log-probability ids, and
statistics within float32 rounding — and rows the fast path does not take are untouched.

The comparisons run with one torch thread, as samplerd's workers do: with several, torch
splits one long row's float32 sum across threads for a single-row batch, so a row's top-p
total (the general path's as much as the fast path's) depends on its batch's row count.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

from samplerd.sampling import SamplingError, SamplingParams, SequenceState, fused, sample
from samplerd.sampling.draw import block_size, block_sums
from samplerd.sampling.kernels import chain, general, prepare, processors, torch_sums
from samplerd.sampling.rng import STREAM_DRAW, uniforms

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(params=["replayed", "torch"])
def sums(request, monkeypatch):
    """Both ways the fast path gets torch's float32 sums: replayed in the kernel (where this
    machine's torch adds as fused.sum_lanes found), or asked from torch."""
    if request.param == "torch":
        monkeypatch.setattr(fused, "_lanes", 0)
    elif fused.sum_lanes() == 0:
        pytest.skip("torch's float32 sums are not replayed on this machine")
    return request.param


# ----------------------------------------------------------------------------- rows


def _rows(kind: str, rows: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "randn":
        return torch.randn(rows, vocab, generator=g) * 3.0
    if kind == "flat":  # top-p's boundary deep in the row
        return torch.randn(rows, vocab, generator=g) * 0.5
    if kind == "peaked":  # Zipf-like, as a trained model's next-token distribution
        ranks = torch.arange(1, vocab + 1, dtype=torch.float32)
        base = -2.75 * ranks.log()
        out = torch.stack([base[torch.randperm(vocab, generator=g)] for _ in range(rows)])
        return out + 0.3 * torch.randn(rows, vocab, generator=g)
    if kind == "ties":  # thousands of exact ties, also at every boundary
        return torch.randint(-6, 3, (rows, vocab), generator=g).float()
    if kind == "masked":  # -inf tokens; one row with a single finite logit
        out = torch.randn(rows, vocab, generator=g) * 2.0
        out[torch.rand(rows, vocab, generator=g) < 0.4] = float("-inf")
        out[0] = float("-inf")
        out[0, vocab // 2] = 1.5
        return out
    if kind == "far":  # tokens more than 32 nats below the maximum (histogram's last bin)
        out = torch.randn(rows, vocab, generator=g) * 20.0
        out[:, 0] = 60.0
        return out
    raise ValueError(kind)


KINDS = ["randn", "flat", "peaked", "ties", "masked", "far"]

# --------------------------------------------------------------------------- compare


def _both(logits, params, steps=0, states=None):
    with fused.enabled(False):
        general = sample(logits, params, steps, states)
    with fused.enabled(True):
        fast = sample(logits, params, steps, states)
    return general, fast


def _close(got, want, rtol=1e-5, atol=1e-6, what=""):
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _assert_same(general, fast, logits):
    assert torch.equal(fast.token_ids, general.token_ids), (fast.token_ids, general.token_ids)
    assert torch.equal(fast.stats.kept_tokens, general.stats.kept_tokens)
    assert fast.strategies == general.strategies
    assert torch.equal(torch.isnan(fast.mirostat_mu), torch.isnan(general.mirostat_mu))
    _close(fast.logprobs, general.logprobs, what="logprobs")
    _close(fast.stats.surprise, general.stats.surprise, what="surprise")
    for name in ("entropy", "truncated_entropy", "kept_mass", "top_k_entropy", "top_k_mass"):
        _close(getattr(fast.stats, name), getattr(general.stats, name), what=name)
    # Var[-ln p] = E[s^2] - E[s]^2 (s = logit - max): the general path computes it in float32,
    # so its rounding is relative to E[s^2] <= Var + H^2 (as -E[s] = H - ln Z <= H).
    second = fast.stats.varentropy + fast.stats.entropy.square()
    assert torch.all((fast.stats.varentropy - general.stats.varentropy).abs() <= 1e-6 + 1e-5 * second), "varentropy"
    if general.top_logprobs is None:
        assert fast.top_logprobs is None
        return
    ids, values = fast.top_logprobs
    want_ids, want_values = general.top_logprobs
    assert ids.shape == want_ids.shape
    _close(values, want_values, what="top_logprobs")
    # Ids are exact up to which members of a tie group are reported, and in which order
    # (the general path reports torch.topk's choice; the fast path the lowest ids first).
    for row in range(ids.shape[0]):
        assert torch.equal(ids[row] == -1, want_ids[row] == -1)
        got, want = ids[row][ids[row] >= 0], want_ids[row][want_ids[row] >= 0]
        assert len(set(got.tolist())) == len(got)
        assert torch.equal(logits[row, got], logits[row, want]), row
        for value in torch.unique(logits[row, want]):
            reported = logits[row, want] == value
            if int(reported.sum()) == int((logits[row] == value).sum()):  # a whole tie group
                assert sorted(got[reported].tolist()) == sorted(want[reported].tolist()), row


def _check(logits, params, steps=0):
    general, fast = _both(logits, params, steps)
    _assert_same(general, fast, logits)
    return fast


# ----------------------------------------------------------------------------- equality


CONFIGS = [
    dict(),
    dict(temperature=0.7),
    dict(top_p=0.9),
    dict(top_p=0.5, temperature=1.3),
    dict(top_p=0.1),
    dict(top_p=0.999),
    dict(top_k=1),
    dict(top_k=5),
    dict(top_k=50, temperature=0.8),
    dict(top_k=300),
    dict(min_p=0.05),
    dict(min_p=0.5, temperature=1.5),
    dict(top_k=40, top_p=0.9),
    dict(top_k=300, top_p=0.6, temperature=0.6),
    dict(top_p=0.9, min_p=0.1),
    dict(top_k=20, top_p=0.95, min_p=0.02, temperature=0.9),
    dict(top_p=0.8, min_tokens_to_keep=3),
    dict(top_k=2, min_tokens_to_keep=7),
    dict(min_p=0.9, min_tokens_to_keep=40),
    dict(top_k=10, top_p=0.3, min_p=0.2, min_tokens_to_keep=5),
    dict(top_p=0.9, n=4, top_logprobs=5),
    dict(top_k=50, top_logprobs=20, stats_top_k=1),
    dict(min_p=0.01, stats_top_k=300, top_logprobs=64),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_fast_path_equals_the_general_path(kind, config, sums):
    for vocab, seed in ((1000, 1), (5003, 2)):
        logits = _rows(kind, 5, vocab, seed)
        _check(logits, SamplingParams(seed=11, **config), steps=[0, 1, 2, 3, 2**40])


@pytest.mark.parametrize("vocab", [1, 2, 3, 4, 5, 7, 8, 9, 17, 31, 33, 128, 129, 1024, 1025, 8192, 50_000])
def test_fast_path_equals_the_general_path_at_any_vocabulary_size(vocab, sums):
    logits = _rows("randn", 3, vocab, vocab)
    for config in (dict(top_p=0.9), dict(top_k=3, top_p=0.5), dict(min_p=0.1, top_logprobs=4), dict(temperature=2.0)):
        _check(logits, SamplingParams(seed=5, n=3, **config), steps=7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fast_path_equals_the_general_path_on_half_precision_logits(dtype):
    logits = _rows("randn", 4, 3000, 9).to(dtype)
    for config in (dict(top_p=0.9), dict(top_k=20, top_p=0.7, temperature=0.8), dict(min_p=0.05)):
        _check(logits, SamplingParams(seed=2, n=2, **config))


def test_top_p_boundary_decisions_on_many_rows(sums):
    """Top-p's boundary is where float32 rounding would show: many rows and p values, each
    row alone and all together."""
    rng = np.random.default_rng(0)
    for trial in range(6):
        vocab = int(rng.integers(2, 4000))
        scale = float(rng.choice([0.3, 1.0, 3.0, 8.0]))
        logits = torch.from_numpy((rng.standard_normal((8, vocab)) * scale).astype(np.float32))
        for top_p in (0.05, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99):
            general, fast = _both(logits, SamplingParams(top_p=top_p, seed=trial, n=8))
            _assert_same(general, fast, logits)


@pytest.mark.parametrize("kind", ["peaked", "randn"])
def test_top_p_at_a_large_vocabulary(kind, sums):
    """On peaked rows top-p first sums only the chunks near the maximum, and the rest of the
    row when the target lies further down (p close to 1)."""
    logits = _rows(kind, 3, 32000, 17)
    for top_p in (0.3, 0.9, 0.99, 0.9999):
        _check(logits, SamplingParams(top_p=top_p, seed=3, n=4, top_logprobs=3))


def test_per_row_parameters_in_one_all_eligible_batch():
    logits = _rows("randn", 6, 4000, 3)
    params = [SamplingParams(top_p=0.9, seed=1), SamplingParams(top_k=5, seed=2, n=3),
              SamplingParams(min_p=0.1, temperature=0.5, top_logprobs=3), SamplingParams(seed=4),
              SamplingParams(top_k=100, top_p=0.5, seed=5, stats_top_k=50), SamplingParams(top_p=0.9, seed=1)]
    fast = _check(logits, params, steps=[1, 2, 3, 4, 5, 6])
    assert torch.all(fast.token_ids[0, 1:] == -1) and torch.all(torch.isnan(fast.logprobs[0, 1:]))
    assert fast.top_logprobs[0].shape == (6, 3)


@pytest.mark.parametrize("vocab", [1, 2, 5, 8, 13, 64, 100, 1023, 1024, 1025, 3000, 32000, 128256])
def test_replayed_sums_equal_torchs(vocab):
    lanes = fused.sum_lanes()
    if not lanes:
        pytest.skip("torch's float32 sums are not replayed on this machine")
    rng = np.random.default_rng(vocab)
    weights = (rng.random((3, vocab)) ** 12 * 1e4).astype(np.float32)
    logits = rng.standard_normal((3, vocab)).astype(np.float32)
    groups = np.empty((vocab // 512 + 2, 64), dtype=np.float32)
    block = block_size(vocab)
    for threshold in (np.float32(-np.inf), np.float32(0.0), np.float32(2.0)):
        masked = torch.from_numpy(np.where(logits >= threshold, weights, 0).astype(np.float32))
        totals, blocks = masked.sum(dim=-1).numpy(), block_sums(masked, block).numpy()
        for r in range(3):
            assert torch_sums._torch_sum(logits[r], weights[r], threshold, lanes, groups) == totals[r]
            replayed = np.empty(blocks.shape[1])
            torch_sums._block_totals(logits[r], weights[r], threshold, block, lanes, groups, 0, replayed)
            assert np.array_equal(replayed, blocks[r])
            if lanes * 4 != chain._WIDTH:
                continue
            # The same sums from the group sums of the kernel's own passes over the row.
            best = np.float32(logits[r].max())
            stats = np.empty(3)
            whole = chain._final_pass(logits[r], weights[r], best, threshold, groups, stats)
            torch_sums._block_totals(logits[r], weights[r], threshold, block, lanes, groups, whole, replayed)
            assert np.array_equal(replayed, blocks[r])
            if threshold == -np.inf and vocab >= lanes:  # as chain._scan uses it
                whole = chain._full_pass(logits[r], weights[r], best, False, np.empty(0, np.uint16), groups, stats)
                assert torch_sums._sum_from_groups(logits[r], weights[r], threshold, lanes, groups, whole) == totals[r]


# --------------------------------------------------------------------- mixed batches


MIXED_IN = [  # other strategies, and the chain with penalties, DRY or bias
    SamplingParams(seed=1, temperature=0.0),
    SamplingParams(seed=2, typical_p=0.8),
    SamplingParams(seed=3, mirostat=2),
    SamplingParams(seed=4, repetition_penalty=1.3, top_p=0.9),
    SamplingParams(seed=5, logit_bias={3: 5.0}, top_k=10),
    SamplingParams(seed=6, dynatemp_range=0.5),
    SamplingParams(seed=7, xtc_probability=1.0, xtc_threshold=0.05, top_logprobs=6),
    SamplingParams(seed=8, top_n_sigma=1.0, n=5),
    SamplingParams(seed=9, dry_multiplier=1.0),
]
CHAIN_ONLY = [  # nothing but the chain
    SamplingParams(seed=21, top_p=0.9, n=2),
    SamplingParams(seed=22, top_k=7, temperature=0.5, top_logprobs=4),
    SamplingParams(seed=23, min_p=0.05, min_tokens_to_keep=4),
    SamplingParams(seed=24, top_k=30, top_p=0.8, min_p=0.01, stats_top_k=40),
    SamplingParams(seed=25, n=3),
]


@pytest.mark.parametrize("trial", range(4))
def test_a_mixed_batch_equals_each_row_sampled_alone(trial, sums):
    rng = np.random.default_rng(trial)
    chosen = [CHAIN_ONLY[i] for i in rng.permutation(len(CHAIN_ONLY))[: 2 + trial]]
    chosen += [MIXED_IN[i] for i in rng.permutation(len(MIXED_IN))[: 2 + trial]]
    params = [chosen[i] for i in rng.permutation(len(chosen))]
    vocab = 3000
    logits = _rows("randn", len(params), vocab, 100 + trial)
    steps = rng.integers(0, 1000, len(params)).tolist()
    states = [SequenceState(history=tuple(rng.integers(0, vocab, 6).tolist()), mirostat_mu=6.0) for _ in params]
    out = sample(logits, params, steps, states)
    width = max(p.n for p in params)
    assert out.token_ids.shape == (len(params), width)
    ranked = min(max(p.top_logprobs for p in params), vocab)
    assert (out.top_logprobs is None) == (ranked == 0)
    for row, p in enumerate(params):
        alone = sample(logits[row : row + 1], p, steps[row], states[row : row + 1])
        with fused.enabled(False):
            general = sample(logits[row : row + 1], p, steps[row], states[row : row + 1])
        assert torch.equal(alone.token_ids, general.token_ids)
        assert torch.equal(out.token_ids[row, : p.n], alone.token_ids[0]), row
        assert torch.all(out.token_ids[row, p.n :] == -1)
        _close(out.logprobs[row, : p.n], alone.logprobs[0])
        assert torch.all(torch.isnan(out.logprobs[row, p.n :]))
        _close(out.stats.surprise[row, : p.n], alone.stats.surprise[0])
        for name in ("entropy", "varentropy", "truncated_entropy", "kept_mass", "top_k_entropy", "top_k_mass"):
            _close(getattr(out.stats, name)[row], getattr(alone.stats, name)[0], what=name)
        assert int(out.stats.kept_tokens[row]) == int(alone.stats.kept_tokens[0])
        assert out.strategies[row] == p.strategy_label()
        assert torch.equal(torch.isnan(out.mirostat_mu[row]), torch.isnan(alone.mirostat_mu[0]))
        if out.top_logprobs is not None:
            ids, values = out.top_logprobs
            mine = min(p.top_logprobs, vocab)
            if mine:
                assert torch.equal(ids[row, :mine], alone.top_logprobs[0][0])
                _close(values[row, :mine], alone.top_logprobs[1][0])
            assert torch.all(ids[row, mine:] == -1) and torch.all(values[row, mine:] == float("-inf"))


def test_a_mixed_batch_with_fast_path_off_is_the_general_path():
    params = CHAIN_ONLY[:2] + MIXED_IN[:3]
    logits = _rows("peaked", len(params), 2000, 7)
    with fused.enabled(False):
        first = sample(logits, params, 3)
    with fused.enabled(False):
        second = sample(logits, params, 3)
    assert torch.equal(first.token_ids, second.token_ids)
    assert torch.equal(sample(logits, params, 3).token_ids, first.token_ids)


# ------------------------------------------------------------------------ eligibility


@pytest.mark.parametrize("params", CHAIN_ONLY + [SamplingParams(temperature=1e-5), SamplingParams(top_k=10**9)])
def test_chain_rows(params):
    assert fused.is_chain(params) and fused.is_eligible(params)
    assert fused.eligible_rows(torch.zeros(2, 8), [params, params]) == [0, 1]


@pytest.mark.parametrize("params", [p for p in MIXED_IN if p.repetition_penalty == 1.0 and not p.logit_bias
                                    and not p.dry_multiplier]
                         + [SamplingParams(temperature=9e-6, top_p=0.5), SamplingParams(epsilon=0.01),
                            SamplingParams(eta=0.01), SamplingParams(top_h=0.5), SamplingParams(optimal_k=0.1),
                            SamplingParams(entropy_top_k=10), SamplingParams(statistical_top_k=5),
                            SamplingParams(mirostat=1)])
def test_other_strategies_take_the_general_kernel(params):
    assert fused.is_eligible(params) and not fused.is_chain(params)
    assert fused.eligible_rows(torch.zeros(2, 8), [params, params]) == [0, 1]


@pytest.mark.parametrize("params", [p for p in MIXED_IN if p.repetition_penalty != 1.0 or p.logit_bias
                                    or p.dry_multiplier] + [SamplingParams(frequency_penalty=0.5)])
def test_penalties_dry_and_bias_ride_on_the_chain(params, monkeypatch):
    """The processors run before either kernel, so a row takes the kernel its other strategies choose."""
    assert fused.is_chain(params) and fused.is_eligible(params)
    taken = []
    real = fused.sample
    monkeypatch.setattr(fused, "sample", lambda logits, p, *a, **k: taken.append(len(p)) or real(logits, p, *a, **k))
    sample(torch.randn(3, 8), [SamplingParams(seed=1), params, SamplingParams(seed=2)])
    assert taken == [3]


def test_penalties_with_a_general_strategy_take_the_general_kernel():
    params = SamplingParams(presence_penalty=0.5, mirostat=1)
    assert fused.is_eligible(params) and not fused.is_chain(params)


def test_no_fast_path_when_switched_off_or_off_the_cpu(monkeypatch):
    with fused.enabled(False):
        assert fused.eligible_rows(torch.zeros(1, 8), [SamplingParams()]) == []
    assert fused.is_enabled()
    meta = torch.zeros(1, 8, device="meta")
    assert fused.eligible_rows(meta, [SamplingParams()]) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bad", ["nan", "-nan", "inf", "all -inf", "nan and inf"])
def test_bad_logits_raise_the_general_paths_error(bad, dtype):
    """The fast path checks the logits' values itself (in its first pass): same errors, same
    first bad row, and bad logits still reported before other bad inputs."""
    logits = torch.randn(4, 300)
    logits[0, 5] = float("-inf")
    for row in (1, 3):
        if bad == "all -inf":
            logits[row] = float("-inf")
        if "nan" in bad:
            logits[row, 7] = -float("nan") if bad == "-nan" else float("nan")
        if "inf" in bad and bad != "all -inf":
            logits[row, 9] = float("inf")
    logits = logits.to(dtype)
    errors = []
    for flag in (False, True):
        with fused.enabled(flag), pytest.raises(SamplingError) as error:
            sample(logits, SamplingParams(top_p=0.9))
        errors.append((error.value.field, str(error.value)))
        with fused.enabled(flag), pytest.raises(SamplingError) as error:
            sample(logits, SamplingParams(top_p=0.9), steps=[1, 2])
        errors.append((error.value.field, str(error.value)))
    assert errors[0] == errors[1] == errors[2] == errors[3]
    assert errors[0][0] == "logits" and "row 1" in errors[0][1]


def test_bad_inputs_other_than_logits_are_still_reported():
    with pytest.raises(SamplingError) as error:
        sample(torch.randn(2, 10), SamplingParams(top_p=0.9), steps=[1, 2, 3])
    assert error.value.field == "steps"


def test_one_compiled_signature_per_kernel_whatever_the_batch():
    """A warm-up on a tiny batch compiles what serving calls: no kernel is compiled again for
    another batch size, vocabulary, dtype or parameter mix (a compilation costs seconds)."""
    # As the sampler actor's warm-up (workers/sampler_actor.py warmup_batches).
    sample(torch.zeros(2, 16), [SamplingParams(), SamplingParams(typical_p=0.9, logit_bias={0: 1.0})], 0)
    sample(torch.zeros(1, 16), SamplingParams(typical_p=0.9, logit_bias={0: 1.0}), 0)
    kernels = [f for module in (chain, general, prepare, processors) for f in vars(module).values()
               if isinstance(f, numba.core.registry.CPUDispatcher)]
    before = {f: len(f.signatures) for f in kernels}
    for rows, vocab in ((1, 7), (1, 32000), (5, 1000), (16, 4097)):
        logits = _rows("masked", rows, vocab, rows)
        states = [SequenceState(history=(1, 2, 1, 2, 1))] * rows
        for p in (SamplingParams(top_p=0.9), SamplingParams(top_k=5, top_p=0.5, min_p=0.1, temperature=0.5, n=3),
                  SamplingParams(min_p=0.2, top_logprobs=4, min_tokens_to_keep=3, seed=1),
                  SamplingParams(typical_p=0.5, top_logprobs=2), SamplingParams(temperature=0.0),
                  SamplingParams(repetition_penalty=1.2, dry_multiplier=0.5, top_k=3, logit_bias={0: 1.0})):
            sample(logits, p, 3, states)
            sample(logits.half(), p, 3, states)
    assert {f: len(f.signatures) for f in kernels} == before


def test_the_uniforms_are_the_counter_based_ones():
    """The n-th token of a seeded row is the inverse CDF at the n-th uniform of (seed, step)."""
    logits = _rows("randn", 1, 50, 4)
    p = SamplingParams(seed=77, n=16, top_k=50)
    out = sample(logits, p, steps=9)
    probs = torch.softmax(logits[0].double(), -1).numpy()
    u = uniforms(np.array([77], dtype=np.uint64), np.array([9], dtype=np.uint64), STREAM_DRAW, 16)[0]
    expected = np.searchsorted(np.cumsum(probs) / probs.sum(), u, side="right")
    assert out.token_ids[0].tolist() == expected.tolist()
