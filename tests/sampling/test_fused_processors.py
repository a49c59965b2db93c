"""Penalties, DRY and logit bias on the fused CPU paths (sampling/kernels/processors.py,
gathered by sampling/fused_processors.py) are the eager stages' to the bit: the processed
logits equal ``filter_logits``' (which always runs the eager stages) exactly, and ``sample()``
with the fused path on equals ``sample()`` with it off — tokens, kept sets, top log-probability
ids, mirostat mu, statistics within float32 rounding — for each processor at its parameters'
edge values, with empty, short, long and breaker-laden histories, on random, tied, masked and
far-spread rows, alone and in front of each truncation. One torch thread, as test_fused.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_fused import _assert_same, _both, _rows

from samplerd.sampling import SamplingError, SamplingParams, SequenceState, filter_logits, fused, sample
from samplerd.sampling.fused_processors import processed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


VOCAB = 2000


def _history(kind: str, seed: int) -> tuple[int, ...]:
    rng = np.random.default_rng(seed)
    if kind == "empty":
        return ()
    if kind == "one":
        return (7,)
    if kind == "random":  # few repeats, short DRY matches
        return tuple(rng.integers(0, VOCAB, 300).tolist())
    if kind == "looping":  # a phrase repeated with variations: long DRY matches, high counts
        phrase = rng.integers(0, 40, 30)
        out = np.concatenate([np.where(rng.random(30) < 0.1, rng.integers(0, 40, 30), phrase) for _ in range(60)])
        return tuple(out.tolist())
    if kind == "constant":  # every start matches as far back as the cap
        return (11,) * 200
    raise ValueError(kind)


HISTORIES = ["empty", "one", "random", "looping", "constant"]

# Each processor at the ends of its range and in between (penalty ranges: penalties.py, dry.py).
PROCESSORS = {
    "repetition": [dict(repetition_penalty=r) for r in (1e-3, 0.7, 1.3, 100.0)],
    "frequency": [dict(frequency_penalty=v) for v in (-2.0, 0.3, 2.0)],
    "presence": [dict(presence_penalty=v) for v in (-2.0, 0.6, 2.0)],
    "counts": [dict(repetition_penalty=1.2, frequency_penalty=0.4, presence_penalty=-0.5)],
    "dry": [dict(dry_multiplier=0.8), dict(dry_multiplier=1e-3, dry_base=1.0001, dry_allowed_length=1),
            dict(dry_multiplier=100.0, dry_base=2.0, dry_allowed_length=1),  # up to 5.6e16: bans in effect
            dict(dry_multiplier=2.0, dry_allowed_length=1000),  # longer than any match: nothing
            dict(dry_multiplier=1.5, dry_allowed_length=3, dry_sequence_breakers=(11, 5, 17, 5, VOCAB - 1)),
            # Up to 1.8e36. Not in front of top-nσ: the reference's float32 variance overflows
            # beyond |logit| ~ 1.8e19 (the fused kernel's float64 one does not).
            dict(dry_multiplier=100.0, dry_base=5.0, dry_allowed_length=1)],
    "bias": [dict(logit_bias={0: 100.0, 5: -100.0, VOCAB - 1: 0.25}),
             dict(logit_bias={t: (-1) ** t * 3.5 for t in range(0, VOCAB, 7)})],
    "all": [dict(repetition_penalty=1.5, frequency_penalty=0.2, presence_penalty=0.1, dry_multiplier=0.9,
                 dry_sequence_breakers=(3,), logit_bias={11: -2.0, 12: 5.0})],
}


def _processor_cases():
    for name, settings in PROCESSORS.items():
        for i, kwargs in enumerate(settings):
            yield pytest.param(kwargs, id=f"{name}-{i}")


_PROCESSOR_PREFIXES = ("repetition", "frequency", "presence", "dry", "logit_bias")


def _check(logits, kwargs: dict, params, states, steps=0):
    """Fused on and off agree; top log-probability ids are compared on the processed logits."""
    general, fast = _both(logits, params, steps=steps, states=states)
    only_processors = SamplingParams(**{k: v for k, v in kwargs.items() if k.startswith(_PROCESSOR_PREFIXES)})
    _assert_same(general, fast, filter_logits(logits, only_processors, states=states))
    torch.testing.assert_close(fast.mirostat_mu, general.mirostat_mu, rtol=1e-6, atol=1e-6, equal_nan=True)
    return general, fast


def _states(kind: str, rows: int) -> list[SequenceState]:
    return [SequenceState(history=_history(kind, seed)) for seed in range(rows)]


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("kind", ["randn", "ties", "masked", "far"])
@pytest.mark.parametrize("kwargs", list(_processor_cases()))
def test_processed_logits_are_the_eager_stages_to_the_bit(kwargs, kind, history):
    logits = _rows(kind, 3, VOCAB, seed=len(kind))
    if kind == "randn":
        logits[1, :50] = -3e38  # seen ones times a repetition penalty of 100 overflow to -inf
    params = SamplingParams(**kwargs)
    states = _states(history, 3)
    want = filter_logits(logits, params, states=states)
    before = logits.clone()
    out = np.empty((3, VOCAB), dtype=np.float32)
    got = processed(logits.numpy(), [params] * 3, states, out)
    assert torch.equal(logits, before), "the caller's logits are never changed"
    assert torch.equal(torch.from_numpy(got), want)


TRUNCATIONS = [
    dict(), dict(temperature=0.7), dict(top_k=20), dict(top_p=0.8), dict(min_p=0.05),
    dict(top_k=50, top_p=0.9, min_p=0.01, temperature=1.3),
    dict(temperature=0.0), dict(typical_p=0.7), dict(epsilon=1e-3), dict(eta=1e-3), dict(top_n_sigma=1.5),
    dict(top_h=0.6), dict(optimal_k=0.05), dict(entropy_top_k=100), dict(statistical_top_k=30),
    dict(xtc_probability=1.0, xtc_threshold=0.05), dict(dynatemp_range=0.5), dict(mirostat=2),
    dict(mirostat=1, mirostat_tau=3.0),
]
OUTPUTS = dict(n=3, top_logprobs=4, stats_top_k=15)


@pytest.mark.parametrize("truncation", TRUNCATIONS, ids=str)
@pytest.mark.parametrize("kwargs", [PROCESSORS["counts"][0], PROCESSORS["dry"][0], PROCESSORS["dry"][2],
                                    PROCESSORS["bias"][1], PROCESSORS["all"][0]], ids=str)
def test_fused_sampling_with_processors_makes_the_eager_decisions(kwargs, truncation):
    logits = _rows("peaked", 4, VOCAB, seed=3)
    outputs = dict(top_logprobs=4) if truncation.get("mirostat") else OUTPUTS
    params = SamplingParams(seed=5, **{**outputs, **kwargs, **truncation})
    states = [SequenceState(history=_history(kind, r)) for r, kind in enumerate(["looping", "random", "empty",
                                                                                  "constant"])]
    _check(logits, kwargs, params, states, steps=2)


@pytest.mark.parametrize("kind", ["randn", "flat", "ties", "masked", "far"])
def test_each_processor_alone_samples_as_the_eager_stages(kind):
    logits = _rows(kind, 3, VOCAB, seed=9)
    states = _states("looping", 3)
    for kwargs in [k for settings in PROCESSORS.values() for k in settings]:
        _check(logits, kwargs, SamplingParams(seed=1, **OUTPUTS, **kwargs), states, steps=4)


def test_a_large_vocabulary_and_a_long_history():
    logits = _rows("peaked", 2, 128256, seed=1)
    rng = np.random.default_rng(0)
    history = tuple(np.tile(rng.integers(0, 128256, 500), 16).tolist())  # 8000 tokens, long matches
    states = [SequenceState(history=history), SequenceState(history=history[:-3])]
    params = SamplingParams(seed=3, top_p=0.9, top_logprobs=3, **PROCESSORS["all"][0])
    _check(logits, PROCESSORS["all"][0], params, states, steps=1)


def test_a_rows_result_does_not_depend_on_its_batch():
    logits = _rows("randn", 6, VOCAB, seed=2)
    params = [SamplingParams(seed=i, **kwargs) for i, kwargs in
              enumerate([PROCESSORS["all"][0], dict(top_p=0.9), PROCESSORS["dry"][4], dict(typical_p=0.8),
                         {**PROCESSORS["bias"][0], "top_k": 5}, {**PROCESSORS["counts"][0], "eta": 1e-3}])]
    states = [SequenceState(history=_history(kind, r)) for r, kind in
              enumerate(["looping", "random", "constant", "empty", "one", "looping"])]
    together = sample(logits, params, [7] * 6, states)
    for r in range(6):
        alone = sample(logits[r:r + 1], params[r:r + 1], [7], states[r:r + 1])
        assert torch.equal(alone.token_ids[0], together.token_ids[r])
        assert torch.equal(alone.stats.kept_tokens[0], together.stats.kept_tokens[r])
        torch.testing.assert_close(alone.stats.entropy[0], together.stats.entropy[r])


def test_rows_without_a_state_have_an_empty_history():
    logits = _rows("randn", 2, VOCAB, seed=4)
    params = SamplingParams(seed=2, **PROCESSORS["all"][0])
    _, fast = _check(logits, PROCESSORS["all"][0], params, [None, SequenceState(history=_history("looping", 1))])
    without, _ = _both(logits, params, steps=0)
    assert torch.equal(fast.token_ids[0], sample(logits, params, 0).token_ids[0])
    assert torch.equal(without.token_ids, sample(logits, params, 0).token_ids)


def test_bad_logits_are_reported_before_what_the_processors_make_of_them():
    logits = torch.randn(3, 50)
    logits[2, 3] = float("nan")
    states = [SequenceState(history=(1, 2, 3))] * 3
    errors = []
    for flag in (False, True):
        with fused.enabled(flag), pytest.raises(SamplingError) as error:
            sample(logits, SamplingParams(repetition_penalty=0.5, logit_bias={3: 1.0}), 0, states)
        errors.append(str(error.value))
    assert errors[0] == errors[1] and "row 2 contains NaN" in errors[0]


@pytest.mark.parametrize("flag", [True, False], ids=["fused", "eager"])
def test_a_penalty_that_overflows_to_inf_is_an_error_naming_the_row(flag):
    logits = torch.zeros(2, 10)
    logits[1, 4] = 3e38
    with fused.enabled(flag), pytest.raises(SamplingError, match="row 1 contains \\+inf after its penalties"):
        sample(logits, SamplingParams(repetition_penalty=0.01), 0, [SequenceState(history=(4,))] * 2)


def test_dry_amounts_beyond_float32_ban_the_token():
    """100 * 10 ** 49 does not fit a float32: the token is banned (-inf), on both paths."""
    logits = torch.zeros(1, 20)
    params = SamplingParams(dry_multiplier=100.0, dry_base=10.0, dry_allowed_length=1)
    states = [SequenceState(history=(11,) * 60)]
    out = np.empty((1, 20), dtype=np.float32)
    got = processed(logits.numpy(), [params], states, out)
    assert got[0, 11] == -np.inf
    assert np.all(np.delete(got[0], 11) == 0.0)
    with fused.enabled(False):
        assert torch.equal(filter_logits(logits, params, states=states), torch.from_numpy(got))


@pytest.mark.parametrize("kwargs", [k for settings in PROCESSORS.values() for k in settings
                                    if k.get("dry_allowed_length") != 1000], ids=str)
def test_every_case_above_changes_the_logits(kwargs):
    """The equalities above are not those of untouched rows: each case penalises something."""
    logits = _rows("randn", 1, VOCAB, seed=1)
    out = np.empty((1, VOCAB), dtype=np.float32)
    got = processed(logits.numpy(), [SamplingParams(**kwargs)], _states("looping", 1), out)
    assert not np.array_equal(got, logits.numpy())


@pytest.mark.parametrize("flag", [True, False], ids=["fused", "eager"])
def test_a_row_whose_every_token_is_banned_is_an_error_naming_the_row(flag):
    logits = torch.zeros(2, 3)
    logits[1, [0, 2]] = float("-inf")  # token 1 alone is finite, and DRY bans it
    params = SamplingParams(dry_multiplier=100.0, dry_base=10.0, dry_allowed_length=1)
    with fused.enabled(flag), pytest.raises(SamplingError, match="row 1 has no finite logit after its penalties"):
        sample(logits, params, 0, [SequenceState(history=(1,) * 60)] * 2)
