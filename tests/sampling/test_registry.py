"""The registry is the one list of strategies and parameters everything else is derived from."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import torch

import samplerd.sampling.strategies
from samplerd.sampling import PARAMETERS, STRATEGIES, STRATEGY_LABELS, SamplingParams, SequenceState, sample
from samplerd.sampling.declarations import Stage, Strategy


def _strategy_modules() -> dict[str, object]:
    """Strategy name -> the module of samplerd.sampling.strategies that declares it."""
    found = {}
    for info in pkgutil.iter_modules(samplerd.sampling.strategies.__path__):
        module = importlib.import_module(f"samplerd.sampling.strategies.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Strategy) and value.name not in found:
                found[value.name] = module
    return found


def test_strategy_names_are_unique():
    names = [s.name for s in STRATEGIES]
    assert len(names) == len(set(names))


def test_every_strategy_cites_its_source():
    for strategy in STRATEGIES:
        assert len(strategy.paper.strip()) >= 20, strategy.name
        assert strategy.summary.strip(), strategy.name


def test_every_strategy_is_declared_in_a_module_with_a_docstring():
    modules = _strategy_modules()
    for strategy in STRATEGIES:
        assert strategy.name in modules, strategy.name
        doc = modules[strategy.name].__doc__ or ""
        assert len(doc.strip()) >= 40, strategy.name


def test_every_strategy_module_is_registered():
    assert set(_strategy_modules()) == {s.name for s in STRATEGIES}


def test_strategies_are_listed_in_pipeline_order():
    stages = [s.stage for s in STRATEGIES]
    assert stages == sorted(stages)
    truncations = [s.name for s in STRATEGIES if s.stage is Stage.TRUNCATION and s.keep is not None
                   and not s.name.startswith("mirostat")]
    assert truncations == ["top_n_sigma", "top_k", "optimal_k", "entropy_top_k", "statistical_top_k", "top_h",
                           "top_p", "min_p", "typical", "epsilon", "eta", "xtc"]
    penalties = [s.name for s in STRATEGIES if s.stage is Stage.PENALTY]
    assert penalties == ["repetition_penalty", "frequency_penalty", "presence_penalty", "dry"]


# The kernel slot the declarations of each stage fill. Greedy and path-aware top-p have no
# kernel: greedy rows keep their argmax, and path-aware top-p runs inside decoding sessions.
KERNEL_SLOTS = {Stage.PENALTY: "process", Stage.LOGIT_BIAS: "process", Stage.TEMPERATURE: "temperature_of",
                Stage.TRUNCATION: "keep"}
WITHOUT_KERNEL = {"greedy", "path_top_p"}


def test_every_strategy_fills_the_kernel_slot_of_its_stage_and_no_other():
    for strategy in STRATEGIES:
        filled = [slot for slot in ("process", "temperature_of", "keep") if getattr(strategy, slot) is not None]
        assert filled == ([] if strategy.name in WITHOUT_KERNEL else [KERNEL_SLOTS[strategy.stage]]), strategy.name


# The annotation a SamplingParams field of each parameter kind is written with.
ANNOTATIONS = {"float": "float", "int": "int", "optional_int": "int | None", "token_ids": "tuple[int, ...]",
               "token_bias": "tuple[tuple[int, float], ...]"}


def test_sampling_params_fields_are_the_declared_parameters_in_order():
    assert [f.name for f in dataclasses.fields(SamplingParams)] == list(PARAMETERS)


def test_every_sampling_params_field_has_its_parameters_default_and_type():
    for field in dataclasses.fields(SamplingParams):
        declared = PARAMETERS[field.name]
        assert field.default == declared.default, field.name
        assert field.type == ANNOTATIONS[declared.kind], field.name
        assert field.kw_only and field.init, field.name


def test_every_parameter_is_documented_and_its_default_is_valid():
    for name, declared in PARAMETERS.items():
        assert declared.name == name
        assert declared.doc.strip(), name
        declared.validate(declared.default)
    SamplingParams()


def test_default_parameters_switch_every_strategy_off_but_temperature():
    assert SamplingParams().active_strategies() == ("temperature",)


CONFIGURATIONS = [
    dict(), dict(temperature=0.0), dict(temperature=0.7), dict(dynatemp_range=0.5), dict(top_k=3), dict(top_p=0.5),
    dict(min_p=0.1), dict(typical_p=0.5), dict(epsilon=0.01), dict(eta=0.01), dict(top_n_sigma=1.0),
    dict(top_h=0.5), dict(optimal_k=0.1), dict(entropy_top_k=4), dict(statistical_top_k=2),
    dict(xtc_probability=0.5), dict(mirostat=1), dict(mirostat=2), dict(top_k=3, top_p=0.5),
    dict(repetition_penalty=1.2), dict(frequency_penalty=0.5), dict(presence_penalty=0.5), dict(dry_multiplier=1.0),
    dict(logit_bias={1: 1.0}), dict(temperature=0.0, top_p=0.5), dict(min_p=0.1, dynatemp_range=0.5),
]


def test_strategy_labels_cover_every_label_sample_reports():
    params = [SamplingParams(seed=i, **config) for i, config in enumerate(CONFIGURATIONS)]
    out = sample(torch.randn(len(params), 16), params, states=[SequenceState(history=(1, 2, 1))] * len(params))
    assert len(out.strategies) == len(params)
    assert set(out.strategies) <= set(STRATEGY_LABELS)
    reported = set(out.strategies) | {"path_top_p"}  # path-aware top-p only runs inside a decoding session
    assert reported == set(STRATEGY_LABELS)


def test_strategy_label_is_greedy_then_mirostat_then_first_truncation_then_temperature():
    assert SamplingParams(temperature=0.0, top_p=0.5).strategy_label() == "greedy"
    assert SamplingParams(top_k=3, top_p=0.5).strategy_label() == "top_k"
    assert SamplingParams(min_p=0.1, top_p=0.5).strategy_label() == "top_p"
    assert SamplingParams(mirostat=1).strategy_label() == "mirostat_v1"
    assert SamplingParams(min_p=0.1, dynatemp_range=0.5).strategy_label() == "min_p"
    assert SamplingParams(dynatemp_range=0.5).strategy_label() == "dynatemp"
    assert SamplingParams(repetition_penalty=1.3).strategy_label() == "temperature"


def test_strategy_labels_are_strategy_names():
    assert set(STRATEGY_LABELS) <= {s.name for s in STRATEGIES}
    assert len(STRATEGY_LABELS) == len(set(STRATEGY_LABELS))
