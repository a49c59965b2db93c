"""Input checks of :func:`sampling.sample` and :func:`sampling.filter_logits`: each raises
:class:`~samplerd.sampling.errors.SamplingError` naming the field at fault, before any stage runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from samplerd.sampling.errors import SamplingError
from samplerd.sampling.params import SamplingParams
from samplerd.sampling.state import SequenceState

_ACCEPTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Inputs:
    """Checked inputs: one entry per row in ``params``, ``steps`` and ``states`` (None: no state)."""

    logits: torch.Tensor
    params: list[SamplingParams]
    steps: list[int]
    states: list[SequenceState | None] | None
    all_finite: bool | None  # None when the logits' values were not checked


def checked_inputs(logits: torch.Tensor, params: SamplingParams | Sequence[SamplingParams],
                   steps: int | Sequence[int], states: Sequence[SequenceState | None] | None,
                   values: bool = True) -> Inputs:
    """The inputs validated: shapes, types, token ids against the vocabulary, and the logits'
    values too unless ``values=False``."""
    if not isinstance(logits, torch.Tensor):
        raise SamplingError("logits", f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _ACCEPTED_DTYPES:
        raise SamplingError("logits", f"logits dtype must be float32, float16 or bfloat16, got {logits.dtype}")
    if logits.dim() != 2:
        raise SamplingError("logits", f"logits must have shape [B, V], got {list(logits.shape)}")
    rows, vocab = logits.shape
    if rows < 1 or vocab < 1:
        raise SamplingError("logits", f"logits must have B >= 1 and V >= 1, got {list(logits.shape)}")
    all_finite = check_logits(logits) if values else None
    if isinstance(params, SamplingParams):
        params = [params] * rows
    else:
        params = list(params)
        if len(params) != rows:
            raise SamplingError("params", f"params must hold one SamplingParams per row ({rows}), got {len(params)}")
        for i, p in enumerate(params):
            if not isinstance(p, SamplingParams):
                raise SamplingError("params", f"params[{i}] must be a SamplingParams, got {type(p).__name__}")
    steps = _per_row("steps", steps, rows)
    if states is not None:
        states = list(states)
        if len(states) != rows:
            raise SamplingError("states", f"states must hold one entry per row ({rows}), got {len(states)}")
        _check_states(states, vocab)
    for i, p in enumerate(params):
        check_token_ids(p, vocab, f" (row {i})" if rows > 1 else "")
        if p.path_beams > 1:
            raise SamplingError("path_beams", "path_beams > 1 needs a decoding session "
                                "(samplerd.sampling.strategies.path_top_p.path_aware_step)")
    return Inputs(logits, params, steps, states, all_finite)


def check_logits(logits: torch.Tensor) -> bool:
    """Raise :class:`SamplingError` on NaN, +inf or a row with no finite logit (``-inf`` is a
    masked token, valid); return whether every logit is finite.

    Two reductions decide it: max and min propagate NaN, the max is +inf with any +inf and
    -inf only when the row has no finite logit, and the min is -inf when a token is masked.
    """
    if logits.device.type == "cpu" and logits.dtype != torch.bfloat16:
        # numpy reduces a few rows several times faster than torch dispatches its ops (the
        # front end checks every request this way); numpy has no bfloat16.
        values = logits.detach().numpy()
        if _all_finite(values):
            return True
        row_max, row_min = values.max(axis=-1), values.min(axis=-1)
    else:
        # one read back: on CUDA, the eager path's only host sync besides what the data decide
        row_max, row_min = torch.stack([logits.amax(dim=-1), logits.amin(dim=-1)]).float().cpu().numpy()
    raise_bad_row(_status_of(row_max))
    return bool(np.isfinite(row_min).all())


#: Why a row of logits is refused, by status code (the fused kernels' first pass gives a row
#: these codes; :func:`check_logits` derives them from the row's maximum).
BAD_ROW = {-1: "contains NaN", -2: "contains +inf", -3: "has no finite logit"}

#: Said of a row that the logits processors, not the caller, left without a distribution.
AFTER_PROCESSORS = " after its penalties, DRY and logit bias"


def check_processed(processed: torch.Tensor) -> None:
    """Raise :class:`SamplingError` on a row the logits processors left without a distribution:
    a penalty that overflowed to +inf, or every finite token banned. The caller's own logits
    were checked before; the message says the processors did it, as the fused paths' does."""
    raise_bad_row(_status_of(processed.amax(dim=-1).float().cpu().numpy()), AFTER_PROCESSORS)


def raise_bad_row(status: np.ndarray, cause: str = "") -> None:
    """Raise ``SamplingError`` naming the first row with a negative status (a :data:`BAD_ROW`
    code), if any; ``cause`` is appended to the message."""
    if (status < 0).any():
        row = int(np.flatnonzero(status < 0)[0])
        raise SamplingError("logits", f"logits row {row} {BAD_ROW[int(status[row])]}{cause}")


def _status_of(row_max: np.ndarray) -> np.ndarray:
    """Each row's :data:`BAD_ROW` code from its maximum (0: a valid row): max propagates NaN, is
    +inf with any +inf, and is -inf only when no logit is finite."""
    return np.select([np.isnan(row_max), row_max == np.inf, row_max == -np.inf], [-1, -2, -3], 0)


def _all_finite(values: np.ndarray) -> bool:
    """True when every value is finite, in one pass; False may also mean a huge sum (the caller
    then looks closer). NaN and +-inf propagate into a sum of squares, which for float32 is a
    BLAS dot product, several times faster than a numpy reduction (``np.vdot``: unlike ``np.dot``
    it warns of no overflow). float16 squares overflow at 256, so float16 is summed in float32."""
    flat = values.reshape(-1)
    if flat.dtype == np.float32:
        return bool(np.isfinite(np.vdot(flat, flat)))
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf, or an overflowing sum
        return bool(np.isfinite(flat.sum(dtype=np.float32)))


def _per_row(name: str, value, rows: int) -> list[int]:
    if isinstance(value, (int, np.integer)):
        values = [value] * rows
    else:
        try:
            values = list(value)
        except TypeError:
            raise SamplingError(name, f"{name} must be an int or a sequence of ints, got {value!r}") from None
    if len(values) != rows:
        raise SamplingError(name, f"{name} must be an int or one per row ({rows}), got {len(values)}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < 2**64:
            raise SamplingError(name, f"{name} must be integers in [0, 2**64), got {v!r}")
    return [int(v) for v in values]


def _check_states(states, vocab: int) -> None:
    """Each state is None or a SequenceState with history ids in [0, V) and a finite mu."""
    for row, state in enumerate(states):
        if state is None:
            continue
        if not isinstance(state, SequenceState):
            raise SamplingError(f"states[{row}]",
                                f"states[{row}] must be a SequenceState or None, got {type(state).__name__}")
        if state.history:
            try:
                history = np.asarray(state.history, dtype=np.int64)
            except (TypeError, ValueError, OverflowError):
                raise SamplingError(f"states[{row}].history",
                                    f"states[{row}].history must hold integer token ids") from None
            outside = np.flatnonzero((history < 0) | (history >= vocab))
            if outside.size:
                position = int(outside[0])
                raise SamplingError(
                    f"states[{row}].history",
                    f"states[{row}].history[{position}]: token {int(history[position])} is outside the "
                    f"vocabulary (V={vocab})")
        mu = state.mirostat_mu
        if mu is not None and not (isinstance(mu, (int, float)) and np.isfinite(mu)):
            raise SamplingError(f"states[{row}].mirostat_mu", f"states[{row}].mirostat_mu must be finite, got {mu!r}")


def check_token_ids(p: SamplingParams, vocab: int, where: str = "") -> None:
    """Raise :class:`SamplingError` when a token id in ``p`` (logit bias, DRY breakers) is outside
    a vocabulary of ``vocab`` tokens; ``where`` is appended to the message."""
    for token, _ in p.logit_bias:
        if token >= vocab:
            raise SamplingError("logit_bias", f"logit_bias token {token} is outside the vocabulary (V={vocab}){where}")
    for token in p.dry_sequence_breakers:
        if token >= vocab:
            raise SamplingError("dry_sequence_breakers",
                                f"dry_sequence_breakers token {token} is outside the vocabulary (V={vocab}){where}")
