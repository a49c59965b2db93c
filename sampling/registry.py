"""The registry: every strategy of the suite, in pipeline order, and every parameter.

This is the one list to edit when a strategy is added (next to its own module), and the one
place the order of the pipeline's stages is written: the pipeline (:mod:`samplerd.sampling.plan`,
:mod:`samplerd.sampling.pipeline`) runs the declarations in the order of ``STRATEGIES``. Mirostat
replaces the other truncations.
"""

from __future__ import annotations

from samplerd.sampling.declarations import Parameter, Stage, Strategy
from samplerd.sampling.strategies import (
    dry,
    entropy_top_k,
    epsilon,
    eta,
    logit_bias,
    min_p,
    mirostat,
    optimal_k,
    path_top_p,
    penalties,
    statistical_top_k,
    temperature,
    top_h,
    top_k,
    top_n_sigma,
    top_p,
    typical,
    xtc,
)

STRATEGIES: tuple[Strategy, ...] = (
    penalties.REPETITION_PENALTY,
    penalties.FREQUENCY_PENALTY,
    penalties.PRESENCE_PENALTY,
    dry.DRY,
    logit_bias.STRATEGY,
    temperature.GREEDY,
    temperature.TEMPERATURE_STRATEGY,
    temperature.DYNATEMP,
    top_n_sigma.STRATEGY,
    top_k.STRATEGY,
    optimal_k.STRATEGY,
    entropy_top_k.STRATEGY,
    statistical_top_k.STRATEGY,
    top_h.STRATEGY,
    top_p.STRATEGY,
    min_p.STRATEGY,
    typical.STRATEGY,
    epsilon.STRATEGY,
    eta.STRATEGY,
    xtc.STRATEGY,
    mirostat.MIROSTAT_V1,
    mirostat.MIROSTAT_V2,
    path_top_p.STRATEGY,
)

COMMON_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("min_tokens_to_keep", "int", 1,
              "Truncations never remove the m highest-ranked tokens (by probability; typical: by typicality).",
              low=1, high=1_000_000),
    Parameter("n", "int", 1, "Independent samples drawn from each row's final distribution.", low=1, high=128),
    Parameter("seed", "optional_int", None,
              "Key of the counter-based generator: same seed and step give the same tokens.",
              low=0, high=2**64 - 1, off="unset: fresh randomness"),
    Parameter("top_logprobs", "int", 0, "Return the N most probable tokens of the final distribution.",
              low=0, high=64, off="0"),
    Parameter("stats_top_k", "int", 10, "k of the top-k entropy and top-k mass statistics.", low=1, high=1024),
)

TRUNCATIONS: tuple[Strategy, ...] = tuple(
    s for s in STRATEGIES if s.stage is Stage.TRUNCATION and s.keep is not None
)
MIROSTATS: tuple[Strategy, ...] = (mirostat.MIROSTAT_V1, mirostat.MIROSTAT_V2)


def _collect_parameters() -> dict[str, Parameter]:
    found: dict[str, Parameter] = {}
    for declared in [p for s in STRATEGIES for p in s.parameters] + list(COMMON_PARAMETERS):
        if found.setdefault(declared.name, declared) is not declared:
            raise RuntimeError(f"parameter {declared.name} is declared twice")
    return found


PARAMETERS: dict[str, Parameter] = _collect_parameters()

# Every value of the per-row ``strategy`` label (metrics, results): the strategies that
# decide how a token is chosen, as opposed to the logits processors before them.
STRATEGY_LABELS: tuple[str, ...] = tuple(
    s.name for s in STRATEGIES if s.stage in (Stage.TEMPERATURE, Stage.TRUNCATION)
)


def strategy(name: str) -> Strategy:
    """The declaration of the strategy called ``name``."""
    for declared in STRATEGIES:
        if declared.name == name:
            return declared
    raise KeyError(name)
