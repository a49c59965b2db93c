"""Decoding-session state and limits (``SampleStream``), held in the front end.

A session is a set of sequences, each with its sampling parameters and the state that
stateful strategies need between steps: the token history (penalties, DRY), mirostat's mu,
the step counter (the key of the seeded random stream) and, for path-aware top-p, the live
paths with their accumulated log-probabilities. The state is a plain value
(:class:`sampling.SequenceState`) that travels with each step to whichever sampler actor
serves it, so an actor can die mid-session and the retry elsewhere gives the same tokens.

:class:`SessionRegistry` enforces the server's limits (``--max-sessions``,
``--max-sequences-per-session``) and keeps the ``samplerd_sessions_active`` gauge.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from sampling import SamplingError, SamplingParams, SequenceState, advance, check_token_ids
from service import params as params_codec
from service.errors import FieldViolation, RequestError, from_sampling_error, invalid_argument
from service.generated.samplerd.v1 import sampler_pb2 as pb

MAX_ID_BYTES = 256
_LN2 = math.log(2.0)


@dataclass(frozen=True)
class SessionLimits:
    """The server's session limits: concurrent sessions, sequences per session, and the seconds
    a session may wait for a client message (0 = no idle timeout)."""

    max_sessions: int = 1024
    max_sequences_per_session: int = 256
    idle_timeout_s: float = 300.0


@dataclass
class RunningStatistics:
    """Sums over sampled tokens: surprise -ln p_full(token) and full-distribution entropy (nats)."""

    tokens: int = 0
    surprise_nats: float = 0.0
    entropy_nats: float = 0.0

    def add(self, surprise_nats: float, entropy_nats: float) -> None:
        """Count one sampled token."""
        self.tokens += 1
        self.surprise_nats += surprise_nats
        self.entropy_nats += entropy_nats

    def to_proto(self) -> pb.SessionStatistics:
        """Means in the proto's units (all zero before the first token)."""
        if not self.tokens:
            return pb.SessionStatistics()
        log_perplexity = self.surprise_nats / self.tokens
        mean_entropy = self.entropy_nats / self.tokens
        return pb.SessionStatistics(
            tokens=self.tokens,
            mean_surprise_bits=log_perplexity / _LN2,
            log_perplexity=log_perplexity,
            mean_entropy=mean_entropy,
            perplexity_entropy_gap=log_perplexity - mean_entropy,
        )


@dataclass(frozen=True)
class Path:
    """One live path of a path-aware sequence: its token history and log-probability (nats)."""

    state: SequenceState
    logprob: float = 0.0


@dataclass
class Sequence:
    """One sequence of a session and the state it carries between steps.

    ``index`` is its position in ``SessionOpen.sequences`` (for error field names); ``seed``
    is the parameters' seed, or for an unseeded path-aware sequence one drawn at open (path
    selection needs a key).
    """

    sequence_id: str
    index: int
    params: SamplingParams
    state: SequenceState
    seed: int | None
    step: int = 0
    paths: list[Path] | None = None
    statistics: RunningStatistics = field(default_factory=RunningStatistics)

    @property
    def path_aware(self) -> bool:
        """Whether the sequence uses path-aware top-p (path_beams > 1)."""
        return self.paths is not None

    def rows(self) -> int:
        """Logits rows a step must carry for this sequence: its live paths, or 1."""
        return len(self.paths) if self.paths is not None else 1

    def force(self, tokens: list[int]) -> None:
        """Append tokens the client chose itself; each advances the step counter."""
        for token in tokens:
            if self.paths is not None:
                self.paths = [dataclasses.replace(p, state=advance(p.state, token, math.nan)) for p in self.paths]
            else:
                self.state = advance(self.state, token, math.nan)
            self.step += 1

    def accept(self, token: int, mirostat_mu: float, surprise_nats: float, entropy_nats: float) -> None:
        """The sampled token of an ordinary sequence: new state, one more step, statistics."""
        self.state = advance(self.state, token, mirostat_mu)
        self.step += 1
        if math.isfinite(surprise_nats):
            self.statistics.add(surprise_nats, entropy_nats)

    def accept_paths(self, paths: list[Path]) -> None:
        """The new live paths of a path-aware sequence after a step."""
        self.paths = paths
        self.step += 1

    def appended(self) -> int:
        """Tokens appended since the prompt (per path for path-aware sequences)."""
        return self.step


@dataclass
class Session:
    """An open session: its sequences by id, in open order, and its pooled statistics."""

    session_id: str
    sequences: dict[str, Sequence]
    vocab: int | None = None
    steps: int = 0
    statistics: RunningStatistics = field(default_factory=RunningStatistics)


def build_session(message: pb.SessionOpen, limits: SessionLimits) -> Session:
    """Validate ``SessionOpen`` and build the session; raises :class:`RequestError` naming the field."""
    if len(message.session_id.encode()) > MAX_ID_BYTES:
        raise invalid_argument("open.session_id", f"session_id must be at most {MAX_ID_BYTES} bytes")
    count = len(message.sequences)
    if count < 1:
        raise invalid_argument("open.sequences", "a session needs at least one sequence")
    if count > limits.max_sequences_per_session:
        raise invalid_argument(
            "open.sequences",
            f"{count} sequences exceed the server limit of {limits.max_sequences_per_session} per session "
            "(--max-sequences-per-session)",
        )
    try:
        shared = params_codec.from_proto(message.params)
    except SamplingError as error:
        raise from_sampling_error(error, "open.params.") from None
    sequences: dict[str, Sequence] = {}
    for i, spec in enumerate(message.sequences):
        prefix = f"open.sequences[{i}]."
        sequence_id = spec.sequence_id
        if not sequence_id or len(sequence_id.encode()) > MAX_ID_BYTES:
            raise invalid_argument(prefix + "sequence_id", f"sequence_id must be 1 to {MAX_ID_BYTES} bytes")
        if sequence_id in sequences:
            raise invalid_argument(prefix + "sequence_id", f"sequence_id {sequence_id!r} is not unique")
        try:
            params = params_codec.from_proto(spec.params, shared)
        except SamplingError as error:
            raise from_sampling_error(error, prefix + "params.") from None
        if params.path_beams > 1 and params.n > 1:
            raise invalid_argument(prefix + "params.n", f"n must be 1 with path_beams > 1, got {params.n}")
        prompt = list(spec.prompt_token_ids)
        if any(token < 0 for token in prompt):
            raise invalid_argument(prefix + "prompt_token_ids", "prompt token ids must be >= 0")
        state = SequenceState(history=tuple(prompt))
        path_aware = params.path_beams > 1
        seed = params.seed
        if path_aware and seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        sequences[sequence_id] = Sequence(
            sequence_id=sequence_id,
            index=i,
            params=params,
            state=state,
            seed=seed,
            paths=[Path(state)] if path_aware else None,
        )
    return Session(message.session_id, sequences)


def check_vocabulary(session: Session, vocab: int) -> None:
    """At the session's first logits: every token id a sequence names (its parameters' token
    ids, its prompt and the tokens forced before) must be in ``[0, vocab)``."""
    for sequence in session.sequences.values():
        prefix = f"open.sequences[{sequence.index}]."
        try:
            check_token_ids(sequence.params, vocab)
        except SamplingError as error:
            raise from_sampling_error(error, prefix + "params.") from None
        histories = [p.state.history for p in sequence.paths] if sequence.paths is not None else [
            sequence.state.history]
        largest = max((max(h, default=-1) for h in histories), default=-1)
        if largest >= vocab:
            raise invalid_argument(
                f"{prefix}prompt_token_ids",
                f"token id {largest} of the history (prompt or forced tokens) is outside the vocabulary [0, {vocab})")


class SessionRegistry:
    """The open sessions: admission against ``max_sessions`` and the active-sessions gauge.

    ``on_change(active)`` is called whenever the count changes (the metrics gauge).
    """

    def __init__(self, limits: SessionLimits, on_change: Callable[[int], None] | None = None) -> None:
        self.limits = limits
        self._active: set[int] = set()
        self._on_change = on_change or (lambda active: None)
        self._on_change(0)

    @property
    def active(self) -> int:
        """Sessions open now."""
        return len(self._active)

    def admit(self, session: Session) -> None:
        """Count ``session`` as open; RESOURCE_EXHAUSTED when ``max_sessions`` are open already."""
        if len(self._active) >= self.limits.max_sessions:
            description = (f"{len(self._active)} sessions are open, the server limit is "
                           f"{self.limits.max_sessions} (--max-sessions); retry later")
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"open: {description}",
                               (FieldViolation("open", description),))
        self._active.add(id(session))
        self._on_change(len(self._active))

    def release(self, session: Session) -> None:
        """Forget ``session`` (idempotent)."""
        if id(session) in self._active:
            self._active.discard(id(session))
            self._on_change(len(self._active))
