"""``SamplingParams``: one row's sampling parameters, validated on construction.

The fields are generated from the registry's parameter declarations (one source of truth):
every field has the declared name, default and range, and an invalid value raises
:class:`~sampling.errors.SamplingError` naming the field, e.g.
``SamplingParams(top_p=1.5)`` -> ``top_p must be in (0, 1], got 1.5``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sampling.declarations import Stage
from sampling.errors import SamplingError
from sampling.registry import MIROSTATS, PARAMETERS, STRATEGIES, TRUNCATIONS
from sampling.strategies.temperature import DYNATEMP, GREEDY, TEMPERATURE_STRATEGY

_TYPES = {"float": float, "int": int, "optional_int": "int | None",
          "token_ids": "tuple[int, ...]", "token_bias": "tuple[tuple[int, float], ...]"}


def _post_init(self) -> None:
    for name, declared in PARAMETERS.items():
        object.__setattr__(self, name, declared.validate(getattr(self, name)))
    _check_combinations(self)
    # Derived once here: the pipeline asks for every row of every batch.
    object.__setattr__(self, "_active", frozenset(s.name for s in STRATEGIES if s.is_active(self)))
    object.__setattr__(self, "_label", _label(self))


def _check_combinations(p) -> None:
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


def active_strategies(self) -> tuple[str, ...]:
    """Names of every stage this parameter set switches on, in pipeline order."""
    return tuple(s.name for s in STRATEGIES if s.name in self._active)


def uses(self, strategy) -> bool:
    """Whether this parameter set switches ``strategy`` (a registry declaration) on."""
    return strategy.name in self._active


def strategy_label(self) -> str:
    """The row's ``strategy`` label: greedy, mirostat, else its first truncation in pipeline
    order, else dynamic temperature, else plain temperature."""
    return self._label


def _label(p) -> str:
    if GREEDY.is_active(p):
        return GREEDY.name
    for declared in STRATEGIES:
        if declared.stage is Stage.TRUNCATION and declared.is_active(p):
            return declared.name
    return DYNATEMP.name if DYNATEMP.is_active(p) else TEMPERATURE_STRATEGY.name


def to_dict(self) -> dict[str, Any]:
    """The parameters as a plain dict (logit_bias as a dict)."""
    out = dataclasses.asdict(self)
    out["logit_bias"] = dict(self.logit_bias)
    out["dry_sequence_breakers"] = list(self.dry_sequence_breakers)
    return out


SamplingParams = dataclasses.make_dataclass(
    "SamplingParams",
    [(name, _TYPES[p.kind], dataclasses.field(default=p.default)) for name, p in PARAMETERS.items()],
    namespace={
        "__post_init__": _post_init,
        "active_strategies": active_strategies,
        "uses": uses,
        "strategy_label": strategy_label,
        "to_dict": to_dict,
        "__module__": __name__,
    },
    frozen=True,
    kw_only=True,
)
SamplingParams.__doc__ = (
    "One row's sampling parameters (keyword-only, frozen, validated).\n\n"
    + "\n".join(f"    {name}: {p.doc} Range {p.range_text() or 'any'}; default {p.default!r}."
                for name, p in PARAMETERS.items())
)
