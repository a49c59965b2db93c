"""A batch's plan (samplerd.sampling.plan): which rows each stage runs on, decided once from the parameters."""

from __future__ import annotations

import torch

from samplerd.sampling import STRATEGIES, SamplingParams, SequenceState
from samplerd.sampling.plan import BatchPlan, plan_batch


def plan(params: list[SamplingParams], states: list[SequenceState | None] | None = None) -> BatchPlan:
    return plan_batch(params, [0] * len(params), states, torch.device("cpu"))


def names(steps) -> list[str]:
    return [step.strategy.name for step in steps]


def test_a_stage_no_row_uses_is_not_in_the_plan():
    found = plan([SamplingParams(top_k=3)] * 2)
    assert found.processes == ()
    assert names(found.temperatures) == ["temperature"]
    assert names(found.truncations) == ["top_k"]


def test_stages_follow_the_registry_order_whatever_order_the_rows_come_in():
    found = plan([SamplingParams(min_p=0.1, logit_bias={1: 1.0}), SamplingParams(top_k=3, dry_multiplier=1.0)])
    planned = names(found.processes + found.temperatures + found.truncations)
    assert planned == ["dry", "logit_bias", "temperature", "top_k", "min_p"]
    assert planned == [s.name for s in STRATEGIES if s.name in planned]


def test_each_stage_runs_on_the_rows_that_switch_it_on_with_their_parameters():
    found = plan([SamplingParams(top_k=3), SamplingParams(top_p=0.5), SamplingParams(top_k=5, top_p=0.9)])
    on = {step.strategy.name: step.on for step in found.truncations}
    assert on["top_k"].positions == [0, 2]
    assert on["top_k"].index.tolist() == [0, 2]
    assert on["top_k"].rows.int("top_k")[:, 0].tolist() == [3, 5]
    assert on["top_p"].positions == [1, 2]


def test_a_stage_every_row_uses_runs_on_the_whole_batch():
    found = plan([SamplingParams(top_k=3, seed=1), SamplingParams(top_k=4, seed=2)])
    (step,) = found.truncations
    assert step.on.index is None
    assert step.on.rows is found.rows


def test_the_count_penalties_are_one_stage_on_the_rows_using_any_of_them_with_their_histories():
    found = plan([SamplingParams(repetition_penalty=1.2), SamplingParams(), SamplingParams(presence_penalty=0.5)],
                 states=[SequenceState(history=(1, 2)), SequenceState(history=(3,)), None])
    (step,) = found.processes
    assert step.on.positions == [0, 2]
    assert step.on.rows.histories == [(1, 2), ()]


def test_greedy_rows_skip_temperature_and_the_truncations():
    found = plan([SamplingParams(temperature=0.0, top_k=3), SamplingParams(top_k=3)])
    assert found.greedy.tolist() == [True, False]
    assert found.any_greedy and not found.all_greedy
    assert found.temperatures[0].on.positions == [1]
    assert found.truncations[0].on.positions == [1]


def test_an_all_greedy_batch_has_no_temperature_or_truncation_stage():
    found = plan([SamplingParams(temperature=0.0, top_k=3)] * 2)
    assert found.all_greedy
    assert found.temperatures == () and found.truncations == ()


def test_rows_found_greedy_later_leave_the_truncations():
    found = plan([SamplingParams(top_k=3, top_p=0.5), SamplingParams(top_k=3), SamplingParams(top_p=0.5)])
    greedy = found.with_greedy([False, True, True])
    assert greedy.greedy.tolist() == [False, True, True]
    assert greedy.any_greedy and not greedy.all_greedy
    assert [(step.strategy.name, step.on.positions) for step in greedy.truncations] == [("top_k", [0]), ("top_p", [0])]


def test_mirostat_rows_start_from_their_states_mu_or_twice_tau():
    found = plan([SamplingParams(mirostat=2), SamplingParams(), SamplingParams(mirostat=1, mirostat_tau=3.0)],
                 states=[SequenceState(mirostat_mu=4.5), None, None])
    assert found.mirostat.positions == [0, 2]
    assert found.mirostat.rows.mirostat_mu[:, 0].tolist() == [4.5, 6.0]
