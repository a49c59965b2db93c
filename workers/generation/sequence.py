"""One live generation: its sampler state, its text, its statistics, and when it ends.

A :class:`Sequence` takes each sampled token (:meth:`Sequence.take`), advances its
:class:`~sampling.SequenceState` (history for the penalties, mu for mirostat), runs the
incremental detokeniser and the stop conditions, and returns the events the token produces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from samplerd.sampling import SequenceState, advance
from samplerd.workers.generation.detokenizer import Decoder, IncrementalDetokenizer
from samplerd.workers.generation.request import (
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    SessionStats,
    TokenEvent,
)


@dataclass(frozen=True)
class SampledRow:
    """One row of a :class:`sampling.SampleOutput`, as Python numbers."""

    token_id: int
    logprob: float
    surprise: float
    entropy: float
    varentropy: float
    truncated_entropy: float
    kept_tokens: int
    kept_mass: float
    top_k_entropy: float
    top_k_mass: float
    strategy: str
    mirostat_mu: float
    top_logprobs: tuple[tuple[int, float], ...] = ()


class Sequence:
    """The engine's record of one request while it runs."""

    def __init__(self, request_id: str, request: GenerationRequest, prompt_ids: list[int], decode: Decoder,
                 eos_token_ids: tuple[int, ...], max_positions: int | None) -> None:
        self.request_id = request_id
        self.request = request
        self.prompt_ids = prompt_ids
        self.params = request.params
        self.state = SequenceState(history=tuple(prompt_ids))
        self.generated: list[int] = []
        self.cancelled = False
        self.finished: FinishEvent | None = None
        self._detokenizer = IncrementalDetokenizer(decode, prompt_ids, request.stop)
        self._eos = frozenset() if request.ignore_eos else frozenset(eos_token_ids)
        self._stop_ids = frozenset(request.stop_token_ids)
        self._max_positions = max_positions
        self._surprise_sum = 0.0
        self._entropy_sum = 0.0

    @property
    def step(self) -> int:
        """The index of the token to sample next (the sampler's step counter)."""
        return len(self.generated)

    @property
    def last_token(self) -> int:
        """The token to feed the model next."""
        return self.generated[-1]

    def take(self, row: SampledRow) -> list[GenerationEvent]:
        """Record the sampled token; return its :class:`TokenEvent` and, when it ends the
        sequence, the :class:`FinishEvent`."""
        token = row.token_id
        index = len(self.generated)
        self.generated.append(token)
        self.state = advance(self.state, token, row.mirostat_mu)
        self._surprise_sum += row.surprise
        self._entropy_sum += row.entropy
        reason: str | None = None
        stop_reason: str | int | None = None
        if token in self._stop_ids:
            reason, stop_reason = "stop", token
            text = self._detokenizer.flush()
        elif token in self._eos:
            reason = "eos"
            text = self._detokenizer.flush()
        else:
            piece = self._detokenizer.add(token)
            text = piece.text
            if piece.stop is not None:
                reason, stop_reason = "stop", piece.stop
            elif len(self.generated) >= self.request.max_tokens or self._context_full():
                reason = "length"
                text += self._detokenizer.flush()
        mu = None if math.isnan(row.mirostat_mu) else row.mirostat_mu
        events: list[GenerationEvent] = [TokenEvent(
            self.request_id, index, token, text, row.logprob, row.surprise, row.entropy, row.varentropy,
            row.truncated_entropy, row.kept_tokens, row.kept_mass, row.top_k_entropy, row.top_k_mass, row.strategy,
            row.top_logprobs, mu)]
        if reason is not None:
            events.append(self.finish(reason, stop_reason))
        return events

    def finish(self, reason: str, stop_reason: str | int | None = None, error: str | None = None) -> FinishEvent:
        """End the sequence; the :class:`FinishEvent` carries any text still held back."""
        held = self._detokenizer.flush() if self._detokenizer.stopped is None else ""
        self.finished = FinishEvent(
            request_id=self.request_id,
            finish_reason=reason,
            text=held,
            output_text=self._detokenizer.output_text,
            token_ids=tuple(self.generated),
            prompt_tokens=len(self.prompt_ids),
            stats=SessionStats.from_sums(len(self.generated), self._surprise_sum, self._entropy_sum),
            stop_reason=stop_reason,
            error=error,
        )
        return self.finished

    def _context_full(self) -> bool:
        """Whether the last token cannot be fed: it would sit past the model's last position."""
        return self._max_positions is not None and len(self.prompt_ids) + len(self.generated) >= self._max_positions
