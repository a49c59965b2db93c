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

import array
import hashlib
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np

from samplerd.sampling import SamplingError, SamplingParams, SequenceState, check_token_ids
from samplerd.service import params as params_codec
from samplerd.service.errors import FieldViolation, RequestError, from_sampling_error, invalid_argument, over_limit
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb

MAX_ID_BYTES = 256
_LN2 = math.log(2.0)


@dataclass(frozen=True)
class SessionLimits:
    """The server's session limits: concurrent sessions (in all, and per client), sequences per
    session, the seconds a session may wait for a client message (0 = no idle timeout), and the
    token history a sequence (prompt, forced and sampled tokens) and a whole session (every
    sequence, every live path) may hold."""

    max_sessions: int = 1024
    max_sequences_per_session: int = 256
    idle_timeout_s: float = 300.0
    max_history_tokens: int = 131072
    max_session_tokens: int = 1 << 20
    max_sessions_per_client: int = 256


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
    selection needs a key). An ordinary sequence keeps its history in an int64 array that grows
    in place (appending is O(1) amortised, 8 bytes a token while the session idles);
    :attr:`state` is built from it when a step samples.
    """

    sequence_id: str
    index: int
    params: SamplingParams
    history: array.array
    seed: int | None
    mirostat_mu: float | None = None
    step: int = 0
    paths: list[Path] | None = None
    statistics: RunningStatistics = field(default_factory=RunningStatistics)
    _state: SequenceState | None = field(default=None, repr=False)

    @property
    def path_aware(self) -> bool:
        """Whether the sequence uses path-aware top-p (path_beams > 1)."""
        return self.paths is not None

    @property
    def state(self) -> SequenceState:
        """The ordinary sequence's state as the sampler takes it (built once per change)."""
        if self._state is None:
            self._state = SequenceState(history=tuple(self.history), mirostat_mu=self.mirostat_mu)
        return self._state

    def rows(self) -> int:
        """Logits rows a step must carry for this sequence: its live paths, or 1."""
        return len(self.paths) if self.paths is not None else 1

    def history_tokens(self) -> int:
        """Tokens of history held for this sequence: its own, or the sum over its live paths."""
        if self.paths is not None:
            return sum(len(p.state.history) for p in self.paths)
        return len(self.history)

    def longest_history(self) -> int:
        """The longest history of the sequence (of any live path for path-aware ones)."""
        if self.paths is not None:
            return max(len(p.state.history) for p in self.paths)
        return len(self.history)

    def force(self, tokens: list[int]) -> None:
        """Append tokens the client chose itself; each advances the step counter. One copy of
        each path's history per call, not per token."""
        if not tokens:
            return
        if self.paths is not None:
            added = tuple(tokens)
            self.paths = [Path(SequenceState(p.state.history + added, p.state.mirostat_mu), p.logprob)
                          for p in self.paths]
        else:
            self.history.extend(tokens)
            self._state = None
        self.step += len(tokens)

    def accept(self, token: int, mirostat_mu: float, surprise_nats: float, entropy_nats: float) -> None:
        """The sampled token of an ordinary sequence: new state, one more step, statistics."""
        self.history.append(int(token))
        if not math.isnan(mirostat_mu):
            self.mirostat_mu = float(mirostat_mu)
        self._state = None
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
    client: str = ""

    def history_tokens(self) -> int:
        """Tokens of history held by every sequence (every live path) of the session."""
        return sum(sequence.history_tokens() for sequence in self.sequences.values())


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
    total = 0
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
        size = len(spec.prompt_token_ids)  # checked before anything is copied
        if size > limits.max_history_tokens:
            raise over_limit(prefix + "prompt_token_ids",
                             f"{size} prompt tokens exceed the server limit of {limits.max_history_tokens} "
                             "per sequence (--max-history-tokens)")
        total += size
        if total > limits.max_session_tokens:
            raise over_limit(prefix + "prompt_token_ids",
                             f"the prompts hold {total} tokens or more, over the server limit of "
                             f"{limits.max_session_tokens} per session (--max-session-tokens)")
        prompt = token_list(spec.prompt_token_ids)
        if prompt and min(prompt) < 0:
            raise invalid_argument(prefix + "prompt_token_ids", "prompt token ids must be >= 0")
        path_aware = params.path_beams > 1
        seed = params.seed
        if path_aware and seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        sequences[sequence_id] = Sequence(
            sequence_id=sequence_id,
            index=i,
            params=params,
            history=array.array("q", prompt),
            seed=seed,
            paths=[Path(SequenceState(history=tuple(prompt)))] if path_aware else None,
        )
    return Session(message.session_id, sequences)


def token_list(ids) -> list[int]:
    """A repeated int64 field as a list of Python ints, converted by numpy (not one by one)."""
    return np.asarray(ids, dtype=np.int64).tolist() if len(ids) else []


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
            sequence.history]
        largest = max((max(h, default=-1) for h in histories), default=-1)
        if largest >= vocab:
            raise invalid_argument(
                f"{prefix}prompt_token_ids",
                f"token id {largest} of the history (prompt or forced tokens) is outside the vocabulary [0, {vocab})")


class SessionRegistry:
    """The open sessions: admission against ``max_sessions`` in all and
    ``max_sessions_per_client`` per client, and the active-sessions gauge.

    ``on_change(active)`` is called whenever the count changes (the metrics gauge).
    """

    def __init__(self, limits: SessionLimits, on_change: Callable[[int], None] | None = None) -> None:
        self.limits = limits
        self._active: dict[int, str] = {}  # id(session) -> its client
        self._per_client: Counter[str] = Counter()
        self._on_change = on_change or (lambda active: None)
        self._on_change(0)

    @property
    def active(self) -> int:
        """Sessions open now."""
        return len(self._active)

    def admit(self, session: Session) -> None:
        """Count ``session`` as open; RESOURCE_EXHAUSTED when ``max_sessions`` are open already,
        or ``max_sessions_per_client`` of its client."""
        if len(self._active) >= self.limits.max_sessions:
            description = (f"{len(self._active)} sessions are open, the server limit is "
                           f"{self.limits.max_sessions} (--max-sessions); retry later")
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"open: {description}",
                               (FieldViolation("open", description),))
        if self._per_client[session.client] >= self.limits.max_sessions_per_client:
            description = (f"this client has {self._per_client[session.client]} sessions open, the server "
                           f"limit is {self.limits.max_sessions_per_client} per client "
                           "(--max-sessions-per-client); close one or retry later")
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"open: {description}",
                               (FieldViolation("open", description),))
        self._active[id(session)] = session.client
        self._per_client[session.client] += 1
        self._on_change(len(self._active))

    def release(self, session: Session) -> None:
        """Forget ``session`` (idempotent)."""
        client = self._active.pop(id(session), None)
        if client is not None:
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]
            self._on_change(len(self._active))


def client_key(metadata, peer: str) -> str:
    """Who a call comes from, for per-client limits: its bearer token (hashed: the registry
    keeps no secrets) when it sends one, else its peer's address without the port."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode(errors="replace")
            return "token:" + hashlib.sha256(text.encode()).hexdigest()[:32]
    if peer.startswith(("ipv4:", "ipv6:")):
        return "peer:" + peer.rsplit(":", 1)[0]
    return "peer:" + peer
