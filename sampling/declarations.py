"""The types a strategy is declared with: :class:`Parameter`, :class:`Strategy`, :class:`Stage`.

A strategy is declared once, in its own module, as a :class:`Strategy` value; the registry
(:mod:`samplerd.sampling.registry`) collects the declarations, and everything else — parameter
validation, ``SamplingParams`` fields, the proto mapping, ``ListStrategies``, the README
table and the metric label values — is derived from them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from samplerd.sampling.errors import SamplingError

if TYPE_CHECKING:
    import torch

    from samplerd.sampling.distribution import Distribution
    from samplerd.sampling.rows import RowParams

    # The kernel of each kind of stage: a pure batched function of the rows that switch the
    # strategy on (``rows``) and of their logits, or of the distribution a truncation sees.
    Processor = Callable[[torch.Tensor, RowParams], torch.Tensor]  # logits -> new logits
    TemperatureRule = Callable[[torch.Tensor, RowParams], torch.Tensor]  # logits -> [rows, 1] temperatures
    KeepMask = Callable[[Distribution, RowParams], torch.Tensor]  # distribution -> bool [rows, V] kept


class Stage(enum.IntEnum):
    """Where a strategy runs in the pipeline; the order of the members is the order of stages."""

    PENALTY = 10
    LOGIT_BIAS = 20
    TEMPERATURE = 30
    TRUNCATION = 40
    DRAW = 50
    COMMON = 60


@dataclass(frozen=True)
class Parameter:
    """One sampling parameter: its name (as in ``SamplingParams`` and the proto), type, range,
    default and what value switches it off.

    ``kind`` is one of ``float``, ``int``, ``token_ids`` (a sequence of token ids) and
    ``token_bias`` (a mapping token id -> additive bias); ``optional_int`` is an int that may
    be unset (``None``, e.g. ``seed``).
    """

    name: str
    kind: str
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: tuple[int, ...] | None = None
    off: str = ""
    element_low: float | None = None
    element_high: float | None = None

    def range_text(self) -> str:
        """The valid range in interval notation, e.g. ``(0, 1]``; empty when unbounded."""
        if self.choices is not None:
            return "{" + ", ".join(str(c) for c in self.choices) + "}"
        if self.low is None and self.high is None:
            return ""
        low = "-inf" if self.low is None else _fmt(self.low)
        high = "inf" if self.high is None else _fmt(self.high)
        left = "[" if self.low is not None and self.low_inclusive else "("
        right = "]" if self.high is not None and self.high_inclusive else ")"
        return f"{left}{low}, {high}{right}"

    def validate(self, value: Any) -> Any:
        """Return ``value`` in its canonical form, or raise :class:`SamplingError` naming the field."""
        if self.kind == "token_ids":
            return self._validate_token_ids(value)
        if self.kind == "token_bias":
            return self._validate_token_bias(value)
        if value is None:
            if self.kind == "optional_int":
                return None
            raise SamplingError(self.name, f"{self.name} must be set, got None")
        if self.kind in ("int", "optional_int"):
            if isinstance(value, bool) or not _is_integral(value):
                raise SamplingError(self.name, f"{self.name} must be an integer, got {value!r}")
            value = int(value)
            if self.high is None and not _INT64_MIN <= value <= _INT64_MAX:
                raise SamplingError(self.name, f"{self.name} must fit in a signed 64-bit integer, got {value}")
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_real(value):
                raise SamplingError(self.name, f"{self.name} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise SamplingError(self.name, f"{self.name} must be finite, got {value}")
            # Kernels compute in float32: a value it cannot represent would overflow there.
            if abs(value) > _FLOAT32_MAX:
                raise SamplingError(self.name, f"{self.name} must be representable as float32, got {value}")
        if self.choices is not None:
            if value not in self.choices:
                raise SamplingError(self.name, f"{self.name} must be one of {self.range_text()}, got {value}")
            return value
        if not _in_range(value, self.low, self.high, self.low_inclusive, self.high_inclusive):
            raise SamplingError(self.name, f"{self.name} must be in {self.range_text()}, got {value}")
        return value

    def _validate_token_ids(self, value: Any) -> tuple[int, ...]:
        if value is None:
            return ()
        try:
            items = tuple(value)
        except TypeError:
            raise SamplingError(self.name, f"{self.name} must be a sequence of token ids") from None
        out = []
        for i, token in enumerate(items):
            if isinstance(token, bool) or not _is_integral(token) or int(token) < 0:
                raise SamplingError(
                    self.name, f"{self.name}[{i}] must be a non-negative token id, got {token!r}"
                )
            out.append(int(token))
        if self.high is not None and len(out) > self.high:
            raise SamplingError(self.name, f"{self.name} holds at most {int(self.high)} ids, got {len(out)}")
        return tuple(out)

    def _validate_token_bias(self, value: Any) -> tuple[tuple[int, float], ...]:
        if value is None:
            return ()
        pairs = value.items() if isinstance(value, Mapping) else value
        try:
            pairs = list(pairs)
        except TypeError:
            raise SamplingError(self.name, f"{self.name} must map token ids to biases") from None
        if self.high is not None and len(pairs) > self.high:
            raise SamplingError(self.name, f"{self.name} holds at most {int(self.high)} entries, got {len(pairs)}")
        merged: dict[int, float] = {}
        for pair in pairs:
            try:
                token, bias = pair
            except (TypeError, ValueError):
                raise SamplingError(self.name, f"{self.name} must map token ids to biases") from None
            if isinstance(token, bool) or not _is_integral(token) or int(token) < 0:
                raise SamplingError(self.name, f"{self.name} key must be a non-negative token id, got {token!r}")
            if isinstance(bias, bool) or not _is_real(bias) or not math.isfinite(float(bias)):
                raise SamplingError(self.name, f"{self.name}[{token}] must be a finite number, got {bias!r}")
            if not _in_range(float(bias), self.element_low, self.element_high, True, True):
                raise SamplingError(
                    self.name,
                    f"{self.name}[{token}] must be in [{_fmt(self.element_low)}, {_fmt(self.element_high)}], "
                    f"got {bias}",
                )
            merged[int(token)] = float(bias)
        return tuple(sorted(merged.items()))


@dataclass(frozen=True, eq=False)
class Strategy:
    """A decoding strategy or logits processor, declared once in its own module.

    ``name`` is also the value of the ``strategy`` metric label; ``is_active`` says whether a
    parameter set switches it on; ``paper`` cites the source. The pipeline runs the
    declarations in the registry's order, each on the rows that switch it on, through the one
    kernel slot of its stage:

    * ``process`` (penalties, logit bias): the rows' logits -> their new logits;
    * ``temperature_of`` (temperature): the rows' logits -> their temperature, which replaces
      the one an earlier declaration gave them (greedy has none: its rows keep their argmax);
    * ``keep`` (truncations): the distribution the rows have so far -> the tokens kept.

    Declarations that share a kernel (the three count penalties) run as one stage on the rows
    that switch any of them on. ``keeps_argmax`` says the keep mask never removes the most
    probable token (so the pipeline need not protect it); ``own_min_keep`` is True where
    ``min_tokens_to_keep`` follows the strategy's own rule, which its kernel then honours.
    A declaration with no kernel (path-aware top-p) runs inside a decoding session only.
    """

    name: str
    stage: Stage
    summary: str
    paper: str
    parameters: tuple[Parameter, ...]
    is_active: Callable[[Any], bool]
    process: Processor | None = None
    temperature_of: TemperatureRule | None = None
    keep: KeepMask | None = None
    keeps_argmax: bool = True
    own_min_keep: bool = False

    @property
    def kernel(self) -> Processor | TemperatureRule | KeepMask | None:
        """The declaration's kernel, whichever slot holds it."""
        return self.process or self.temperature_of or self.keep


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT32_MAX = 3.4028234663852886e38


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    if isinstance(x, int):
        return str(x)
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _is_integral(x: Any) -> bool:
    try:
        return float(x).is_integer() and not isinstance(x, str)
    except (TypeError, ValueError, OverflowError):
        return False


def _is_real(x: Any) -> bool:
    if isinstance(x, str):
        return False
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return True


def _in_range(value: float, low: float | None, high: float | None, low_inc: bool, high_inc: bool) -> bool:
    if low is not None and (value < low or (value == low and not low_inc)):
        return False
    if high is not None and (value > high or (value == high and not high_inc)):
        return False
    return True
