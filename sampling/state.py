"""Per-sequence state that stateful strategies need, as an explicit value.

A decoding session keeps one :class:`SequenceState` per sequence and passes it in with
each step; :func:`advance` returns the state after the step. Nothing is stored inside the
sampler, so any worker can serve any step of any session.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SequenceState:
    """What a sequence carries between steps.

    history: token ids seen so far (prompt and generated), used by the repetition,
        frequency, presence and DRY penalties.
    mirostat_mu: mirostat's controller state; ``None`` starts it at ``2 * mirostat_tau``.
    """

    history: tuple[int, ...] = ()
    mirostat_mu: float | None = None


def advance(state: SequenceState | None, token: int, mirostat_mu: float) -> SequenceState:
    """The state after ``token`` was chosen; ``mirostat_mu`` is NaN for rows without mirostat."""
    state = state or SequenceState()
    mu = state.mirostat_mu if math.isnan(mirostat_mu) else float(mirostat_mu)
    return replace(state, history=state.history + (int(token),), mirostat_mu=mu)
