"""``SamplingParams``: one row's sampling parameters, validated on construction.

Every field is a parameter declared next to its strategy (:mod:`samplerd.sampling.registry` collects
them) with the declared name, default and type; the declaration checks the value, so an
invalid one raises :class:`~samplerd.sampling.errors.SamplingError` naming the field, e.g.
``SamplingParams(top_p=1.5)`` -> ``top_p must be in (0, 1], got 1.5``.
tests/sampling/test_registry.py keeps these fields and the declarations in step.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any

from samplerd.sampling.declarations import Stage, Strategy
from samplerd.sampling.errors import SamplingError
from samplerd.sampling.registry import MIROSTATS, PARAMETERS, STRATEGIES, TRUNCATIONS
from samplerd.sampling.strategies.temperature import DYNATEMP, GREEDY, TEMPERATURE_STRATEGY


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """One row's sampling parameters (keyword-only, frozen, validated); per field below."""

    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_sequence_breakers: tuple[int, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()
    temperature: float = 1.0
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    top_n_sigma: float = 0.0
    top_k: int = 0
    optimal_k: float = 0.0
    entropy_top_k: int = 0
    entropy_top_k_min: int = 1
    statistical_top_k: int = 0
    top_h: float = 0.0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    epsilon: float = 0.0
    eta: float = 0.0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    path_beams: int = 1
    path_top_p: float = 1.0
    min_tokens_to_keep: int = 1
    n: int = 1
    seed: int | None = None
    top_logprobs: int = 0
    stats_top_k: int = 10

    def __post_init__(self) -> None:
        for name, declared in PARAMETERS.items():
            object.__setattr__(self, name, declared.validate(getattr(self, name)))
        _check_combinations(self)

    @cached_property
    def _active(self) -> tuple[str, ...]:
        # Cached: the pipeline asks for every row of every batch.
        return tuple(s.name for s in STRATEGIES if s.is_active(self))

    def active_strategies(self) -> tuple[str, ...]:
        """Names of every stage this parameter set switches on, in pipeline order."""
        return self._active

    def uses(self, strategy: Strategy) -> bool:
        """Whether this parameter set switches ``strategy`` (a registry declaration) on."""
        return strategy.name in self._active

    @cached_property
    def _label(self) -> str:
        if GREEDY.is_active(self):
            return GREEDY.name
        for declared in STRATEGIES:
            if declared.stage is Stage.TRUNCATION and declared.is_active(self):
                return declared.name
        return DYNATEMP.name if DYNATEMP.is_active(self) else TEMPERATURE_STRATEGY.name

    def strategy_label(self) -> str:
        """The row's ``strategy`` label: greedy, mirostat, else its first truncation in pipeline
        order, else dynamic temperature, else plain temperature."""
        return self._label

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a plain dict (logit_bias as a dict)."""
        out = dataclasses.asdict(self)
        out["logit_bias"] = dict(self.logit_bias)
        out["dry_sequence_breakers"] = list(self.dry_sequence_breakers)
        return out


SamplingParams.__doc__ += "\n\n" + "\n".join(
    f"    {name}: {p.doc} Range {p.range_text() or 'any'}; default {p.default!r}." for name, p in PARAMETERS.items())


def _check_combinations(p: SamplingParams) -> None:
    if p.mirostat:
        others = [s.parameters[0].name for s in TRUNCATIONS if s not in MIROSTATS and s.is_active(p)]
        if others:
            raise SamplingError("mirostat", f"mirostat replaces the other truncations; unset {', '.join(others)}")
        if p.n > 1:
            raise SamplingError("n", f"n must be 1 with mirostat (its state follows one sequence), got {p.n}")
    if p.entropy_top_k and p.entropy_top_k_min > p.entropy_top_k:
        raise SamplingError(
            "entropy_top_k_min",
            f"entropy_top_k_min must be <= entropy_top_k ({p.entropy_top_k}), got {p.entropy_top_k_min}",
        )
    if p.path_beams > 1 and p.mirostat:
        raise SamplingError("path_beams", "path_beams > 1 cannot be combined with mirostat")
