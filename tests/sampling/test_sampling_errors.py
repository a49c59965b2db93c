"""Invalid input raises SamplingError naming what is wrong (docs/semantics.md: bad numbers, ranges).

The parameter checks are driven by the registry's declarations (PARAMETERS): every declared
parameter gets bad values built from its own range, so a new parameter is covered without
editing this file.
"""

from __future__ import annotations

import math

import pytest
import torch

from samplerd.sampling import (
    PARAMETERS,
    SamplingError,
    SamplingParams,
    SequenceState,
    check_logits,
    filter_logits,
    sample,
)

NEG_INF = float("-inf")
INT64_MAX = 2**63 - 1
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _bad_values(declared) -> list:
    """Values outside the declared range (and of the wrong type) for one parameter."""
    kind = declared.kind
    if kind == "token_ids":
        bad = [[-1], [1.5], ["a"], 3]
        if declared.high is not None:
            bad.append(list(range(int(declared.high) + 1)))
        return bad
    if kind == "token_bias":
        bad = [{-1: 1.0}, {0: math.nan}, {0: math.inf}, {1.5: 1.0}, {0: "x"}]
        if declared.element_low is not None:
            bad.append({0: declared.element_low - 1.0})
        if declared.element_high is not None:
            bad.append({0: declared.element_high + 1.0})
        if declared.high is not None:
            bad.append({i: 0.0 for i in range(int(declared.high) + 1)})
        return bad
    bad = ["1", True]
    if kind == "float":
        bad += [math.nan, math.inf, -math.inf]
    else:
        bad += [1.5]
    if kind == "int":
        bad.append(None)
    if declared.choices is not None:
        return bad + [max(declared.choices) + 1, min(declared.choices) - 1]
    if declared.low is not None:
        bad.append(declared.low if not declared.low_inclusive else declared.low - 1)
    if declared.high is not None:
        bad.append(declared.high if not declared.high_inclusive else declared.high + 1)
    else:  # unbounded above: still limited to what the kernels' int64 / float32 columns hold
        bad.append(10**30 if kind != "float" else 1e39)
    return bad


BAD = [pytest.param(name, value, id=f"{name}={value!r}"[:60])
       for name, declared in PARAMETERS.items() for value in _bad_values(declared)]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_every_out_of_range_parameter_raises_an_error_naming_it(name, value):
    with pytest.raises(SamplingError) as error:
        SamplingParams(**{name: value})
    assert error.value.field == name
    assert name in str(error.value)
    assert str(error.value).startswith(name)


def test_every_parameter_has_bad_values_here():
    names = {name for name, _ in (p.values for p in BAD)}
    assert names == set(PARAMETERS)


def test_sampling_error_is_a_value_error_with_field_and_reason():
    with pytest.raises(ValueError):
        SamplingParams(top_p=1.5)
    error = pytest.raises(SamplingError, SamplingParams, top_p=1.5).value
    assert (error.field, str(error)) == ("top_p", "top_p must be in (0, 1], got 1.5")


def test_unknown_parameter_is_rejected():
    with pytest.raises(TypeError):
        SamplingParams(top_q=0.5)


# ----------------------------------------------------------------------------- every accepted value works


def _edge_values(declared) -> list:
    """Values at the edges of the declared range that SamplingParams accepts."""
    if declared.kind in ("token_ids", "token_bias") or declared.choices is not None:
        return []
    values = []
    if declared.low is not None and declared.low_inclusive:
        values.append(declared.low)
    if declared.high is not None and declared.high_inclusive:
        values.append(declared.high)
    if declared.high is None:  # the largest value the kernels' int64 / float32 columns hold
        values.append(INT64_MAX if declared.kind != "float" else FLOAT32_MAX)
    if declared.kind != "float":
        values = [int(v) for v in values]
    return values


EDGES = [pytest.param(name, value, id=f"{name}={value!r}")
         for name, declared in PARAMETERS.items() for value in _edge_values(declared)]


@pytest.mark.parametrize(("name", "value"), EDGES)
def test_every_value_sampling_params_accepts_is_handled_by_sample(name, value):
    """Either the parameter set is rejected with SamplingError, or filter_logits and sample work."""
    config = {"seed": 1, "dynatemp_range": 0.5} if name == "dynatemp_exponent" else {"seed": 1}
    if name == "entropy_top_k_min":
        config["entropy_top_k"] = value
    config[name] = value
    try:
        params = SamplingParams(**config)
    except SamplingError:
        return
    logits = torch.tensor([[0.5, -1.0, 2.0, NEG_INF, 0.0, 1.0]])
    state = [SequenceState(history=(0, 2, 0, 2))]
    try:
        final = filter_logits(logits, params, states=state)
        out = sample(logits, params, states=state)
    except SamplingError:
        return
    assert torch.isfinite(final).any()
    assert bool(torch.isfinite(final[0, out.token_ids[0, 0]]))


# ----------------------------------------------------------------------------- combinations


def test_entropy_top_k_min_above_entropy_top_k_is_an_error():
    with pytest.raises(SamplingError) as error:
        SamplingParams(entropy_top_k=3, entropy_top_k_min=4)
    assert error.value.field == "entropy_top_k_min"


def test_path_beams_need_a_decoding_session():
    with pytest.raises(SamplingError) as error:
        sample(torch.zeros(1, 4), SamplingParams(path_beams=2))
    assert error.value.field == "path_beams"


# ----------------------------------------------------------------------------- bad logits


@pytest.mark.parametrize(("bad", "what"), [(math.nan, "NaN"), (math.inf, "+inf")])
@pytest.mark.parametrize("call", [filter_logits, sample])
def test_nan_and_plus_infinity_logits_are_errors_naming_the_row(bad, what, call):
    logits = torch.zeros(4, 6)
    logits[2, 3] = bad
    with pytest.raises(SamplingError) as error:
        call(logits, SamplingParams())
    assert error.value.field == "logits"
    assert "row 2" in str(error.value) and what in str(error.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_row_with_no_finite_logit_is_an_error_naming_the_row(dtype):
    logits = torch.zeros(3, 5, dtype=dtype)
    logits[1] = NEG_INF
    with pytest.raises(SamplingError) as error:
        sample(logits, SamplingParams(top_p=0.5))
    assert error.value.field == "logits"
    assert "row 1" in str(error.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_huge_finite_logits_are_valid_and_masked_ones_are_told_apart(dtype):
    # The one-pass check sums squares (float32) or values: both overflow on these finite
    # logits, and the exact check behind it must still accept them.
    huge = torch.finfo(dtype).max / 2
    logits = torch.full((3, 64), huge, dtype=dtype)
    logits[:, ::2] = -huge
    assert check_logits(logits) is True
    logits[1, 5] = NEG_INF
    assert check_logits(logits) is False
    logits[2, 7] = math.nan
    with pytest.raises(SamplingError, match="row 2 contains NaN"):
        check_logits(logits)


def test_half_precision_nan_is_an_error():
    logits = torch.zeros(2, 5, dtype=torch.float16)
    logits[1, 0] = math.nan
    with pytest.raises(SamplingError, match="row 1"):
        filter_logits(logits, SamplingParams())


@pytest.mark.parametrize("logits", [torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, 3, dtype=torch.float64),
                                    torch.zeros(1, 3, dtype=torch.bool), torch.zeros(3), torch.zeros(1, 1, 3),
                                    torch.zeros(0, 3), torch.zeros(1, 0), [[0.0, 1.0]]],
                         ids=["int64", "float64", "bool", "rank1", "rank3", "no-rows", "no-tokens", "list"])
def test_wrong_dtype_rank_or_type_of_logits_is_an_error(logits):
    with pytest.raises(SamplingError) as error:
        sample(logits, SamplingParams())
    assert error.value.field == "logits"


@pytest.mark.parametrize("params", [[], [SamplingParams()], [SamplingParams()] * 3, [SamplingParams(), {"top_k": 1}],
                                    [SamplingParams(), None]],
                         ids=["none", "too-few", "too-many", "dict", "None"])
def test_wrong_number_or_type_of_params_is_an_error(params):
    with pytest.raises(SamplingError) as error:
        filter_logits(torch.zeros(2, 4), params)
    assert error.value.field == "params"


@pytest.mark.parametrize("steps", [[0], [0, 1, 2], [0, -1], -3, [0, True]], ids=["short", "long", "negative",
                                                                                   "negative-int", "bool"])
def test_wrong_steps_are_an_error(steps):
    with pytest.raises(SamplingError) as error:
        sample(torch.zeros(2, 4), SamplingParams(), steps=steps)
    assert error.value.field == "steps"


@pytest.mark.parametrize("steps", [2**64, 3.0], ids=["2**64", "float"])
def test_steps_outside_uint64_or_not_integers_are_an_error(steps):
    with pytest.raises(SamplingError) as error:
        sample(torch.zeros(1, 4), SamplingParams(seed=1), steps=steps)
    assert error.value.field == "steps"


def test_wrong_number_of_states_is_an_error():
    with pytest.raises(SamplingError) as error:
        filter_logits(torch.zeros(2, 4), SamplingParams(), states=[None])
    assert error.value.field == "states"


def test_logit_bias_outside_the_vocabulary_is_an_error():
    with pytest.raises(SamplingError) as error:
        filter_logits(torch.zeros(2, 4), [SamplingParams(), SamplingParams(logit_bias={4: 1.0})])
    assert error.value.field == "logit_bias"
    assert "row 1" in str(error.value)


def test_dry_sequence_breaker_outside_the_vocabulary_is_an_error():
    with pytest.raises(SamplingError) as error:
        filter_logits(torch.zeros(1, 4), SamplingParams(dry_multiplier=1.0, dry_sequence_breakers=(9,)))
    assert error.value.field == "dry_sequence_breakers"


@pytest.mark.parametrize("params", [SamplingParams(repetition_penalty=1.5), SamplingParams(frequency_penalty=1.0),
                                    SamplingParams(dry_multiplier=1.0)], ids=["repetition", "frequency", "dry"])
@pytest.mark.parametrize("history", [(1, 4), (1, 9), (1, -2)], ids=["vocabulary-size", "beyond-vocabulary",
                                                                    "negative"])
def test_history_token_outside_the_vocabulary_is_an_error(params, history):
    with pytest.raises(SamplingError) as error:
        filter_logits(torch.zeros(1, 4), params, states=[SequenceState(history=history)])
    assert error.value.field.startswith("states")


def test_a_state_that_is_not_a_sequence_state_is_an_error():
    with pytest.raises(SamplingError) as error:
        filter_logits(torch.zeros(1, 4), SamplingParams(repetition_penalty=2.0), states=[(1, 2)])
    assert error.value.field.startswith("states")


@pytest.mark.parametrize("mu", [math.nan, math.inf])
def test_a_non_finite_mirostat_mu_is_an_error(mu):
    with pytest.raises(SamplingError) as error:
        filter_logits(torch.zeros(1, 4), SamplingParams(mirostat=2), states=[SequenceState(mirostat_mu=mu)])
    assert error.value.field.startswith("states")
