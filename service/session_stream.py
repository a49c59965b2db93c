"""The ``SampleStream`` handler: one decoding session over one bidirectional stream.

Each client message gets exactly one answer, in order (see the .proto): ``open`` ->
``opened``, ``step`` -> ``step``, ``close`` or the client's half-close -> ``closed``. An
invalid message, an idle timeout or a failed step ends the stream with its status; a client
that vanishes cancels the handler. Whatever ends it, the session is released (its slot,
``samplerd_sessions_active``).

Where the work runs:

- ordinary sequences: their rows go to the dispatcher as one :class:`SampleJob` per step,
  with each sequence's :class:`sampling.SequenceState` (history, mirostat mu) and step
  counter, so any sampler actor can serve any step and the dispatcher's retry after an
  actor died gives the same seeded tokens;
- path-aware sequences (``path_beams > 1``): one :class:`PathStepJob` per sequence and step,
  its live paths as rows, with each path's state and accumulated log-probability; the
  dispatcher batches them with the other jobs of the moment and the sampler actor runs
  ``sampling.filter_logits`` over the paths and ``path_aware_step`` (``samplerd.workers.path_steps``),
  so the front end does no sampling work of its own. The job carries all the state the step
  needs, so an actor's death costs a retry, never the session's paths.

Messages are read by a pump task into a queue of two, so the idle timeout is a plain
``asyncio.wait_for`` on the queue (a gRPC read is never cancelled half-way) and a client
cannot run ahead by more than two messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import AsyncIterator

import grpc
import torch

from samplerd.sampling.state import advance
from samplerd.service.codec import Limits, check_logits_values, decode_tensor, encode_response, tensor_data_field
from samplerd.service.dispatcher import Dispatcher, PathStepJob, SampleJob
from samplerd.service.errors import RequestError, classify, invalid_argument, over_limit, to_status
from samplerd.service.generated.samplerd.v1 import sampler_pb2 as pb
from samplerd.service.metrics import Metrics
from samplerd.service.sessions import (
    Path,
    Sequence,
    Session,
    SessionLimits,
    SessionRegistry,
    build_session,
    check_vocabulary,
    client_key,
    token_list,
)
from samplerd.service.shared_memory import SharedAccess, SharedMemoryRegistry

log = logging.getLogger(__name__)

METHOD = "SampleStream"
PATH_STRATEGY = "path_top_p"
_QUEUE_MESSAGES = 2
_END = object()  # the client half-closed
#: Steps forcing more tokens than this apply them in a worker thread, off the event loop.
_INLINE_FORCED_TOKENS = 16384


@dataclasses.dataclass(frozen=True)
class _StepPlan:
    """A validated step: forced tokens per sequence, and the listed sequences with their rows."""

    forced: list[tuple[Sequence, list[int]]]
    listed: list[Sequence]
    logits: torch.Tensor | None
    vocab: int | None


class SessionStreams:
    """Serves ``SampleStream`` RPCs: one session each, against the server's session limits."""

    def __init__(self, dispatcher: Dispatcher, metrics: Metrics, limits: Limits,
                 session_limits: SessionLimits | None = None,
                 shared_memory: SharedMemoryRegistry | None = None) -> None:
        self._dispatcher = dispatcher
        self._shared_memory = shared_memory
        self._metrics = metrics
        self._limits = limits
        self._session_limits = session_limits or SessionLimits()
        self.registry = SessionRegistry(self._session_limits, metrics.sessions_active.set)

    async def serve(self, request_iterator: AsyncIterator[pb.SampleStreamRequest],
                    context: grpc.aio.ServicerContext) -> None:
        """Run one session to its end (see the module docstring)."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        self._metrics.inflight.inc()
        messages: asyncio.Queue = asyncio.Queue(_QUEUE_MESSAGES)
        pump = asyncio.create_task(_pump(request_iterator, messages))
        session: Session | None = None
        try:
            while True:
                message = await self._next(messages)
                if message is _END:
                    if session is not None:
                        await _write(context, _closed(session))
                    return
                kind = message.WhichOneof("kind")
                if session is None:
                    if kind != "open":
                        raise invalid_argument("open", "the first message must open the session (set `open`)")
                    candidate = build_session(message.open, self._session_limits)
                    candidate.client = client_key(context.invocation_metadata(), context.peer())
                    self.registry.admit(candidate)
                    session = candidate
                    await _write(context, pb.SampleStreamResponse(opened=pb.SessionOpened(
                        session_id=session.session_id, sequences=len(session.sequences),
                        idle_timeout_s=self._session_limits.idle_timeout_s)))
                elif kind == "step":
                    result = await self._step(session, message.step, context)
                    await _write(context, pb.SampleStreamResponse(step=result))
                elif kind == "close":
                    await _write(context, _closed(session))
                    return
                elif kind == "open":
                    raise invalid_argument("open", "the session is already open; `open` is only the first message")
                else:
                    raise invalid_argument("kind", "set one of open, step or close")
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:  # every failure ends the stream with the code classify() picks
            if isinstance(error, _ClientGone) or _cancelled(context):  # nobody to answer, nothing went wrong
                code = grpc.StatusCode.CANCELLED
                log.debug("SampleStream cancelled by the client: %s", error)
                return
            refused = classify(error)
            code = refused.code
            await context.abort_with_status(to_status(refused))
        finally:
            pump.cancel()
            if session is not None:
                self.registry.release(session)
            self._metrics.inflight.dec()
            self._metrics.observe_request(METHOD, code.name, time.perf_counter() - started)

    async def _next(self, messages: asyncio.Queue) -> object:
        """The next client message, or ``_END``; DEADLINE_EXCEEDED after the idle timeout."""
        timeout = self._session_limits.idle_timeout_s
        try:
            item = await asyncio.wait_for(messages.get(), timeout or None)
        except asyncio.TimeoutError:
            raise RequestError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"session idle for more than {timeout:g} s (server --session-idle-timeout-s); the session is closed",
            ) from None
        if isinstance(item, BaseException):
            raise item
        return item

    async def _step(self, session: Session, step: pb.SessionStep,
                    context: grpc.aio.ServicerContext) -> pb.SessionStepResult:
        """Validate, apply forced tokens, sample the listed sequences, update their state."""
        shared = None if self._shared_memory is None else SharedAccess(
            self._shared_memory, self._shared_memory.owner(context))
        forcing = sum(len(entry.token_ids) for entry in step.forced)
        if forcing > _INLINE_FORCED_TOKENS:  # big steps are planned and applied off the event loop
            plan = await asyncio.to_thread(_plan_and_force, session, step, self._limits, self._session_limits, shared)
        else:
            plan = _plan_and_force(session, step, self._limits, self._session_limits, shared)
        if plan.vocab is not None and session.vocab is None:
            session.vocab = plan.vocab
        answers: dict[str, pb.SequenceResult] = {}
        if plan.listed:
            deadline = _deadline(context)
            ordinary: list[tuple[Sequence, int]] = []
            path_aware: list[tuple[Sequence, int]] = []
            row = 0
            for sequence in plan.listed:
                (path_aware if sequence.path_aware else ordinary).append((sequence, row))
                row += sequence.rows()
            await asyncio.gather(
                self._sample_ordinary(session, ordinary, plan.logits, deadline, answers),
                self._sample_paths(path_aware, plan.logits, deadline, answers),
            )
        result = pb.SessionStepResult(step=session.steps, statistics=session.statistics.to_proto())
        result.sequences.extend(answers[s.sequence_id] for s in plan.listed)
        session.steps += 1
        return result

    async def _sample_ordinary(self, session: Session, work: list[tuple[Sequence, int]], logits: torch.Tensor,
                               deadline: float | None, answers: dict[str, pb.SequenceResult]) -> None:
        """One dispatcher job for every ordinary sequence of the step."""
        if not work:
            return
        sequences = [sequence for sequence, _ in work]
        rows = [row for _, row in work]
        if rows != list(range(logits.shape[0])):
            logits = logits[torch.tensor(rows)]
        params = [s.params for s in sequences]
        job = SampleJob(logits=logits, params=params, steps=[s.step for s in sequences], deadline=deadline,
                        states=[s.state for s in sequences])
        result = await self._dispatcher.submit(job)
        encoded = encode_response(result.output, params, "").rows
        token_ids = result.token_ids[:, 0].tolist()
        mirostat_mu = result.mirostat_mu.tolist()
        surprise = result.stats.surprise[:, 0].tolist()
        entropy = result.stats.entropy.tolist()
        for i, sequence in enumerate(sequences):
            answer = pb.SequenceResult(sequence_id=sequence.sequence_id, step=sequence.step, row=encoded[i])
            sequence.accept(token_ids[i], mirostat_mu[i], surprise[i], entropy[i])
            if math.isfinite(surprise[i]):
                session.statistics.add(surprise[i], entropy[i])
            answer.statistics.CopyFrom(sequence.statistics.to_proto())
            answers[sequence.sequence_id] = answer
        self._metrics.queue_wait.observe(result.queue_wait_s)
        self._metrics.observe_rows(result, (p.n for p in params))

    async def _sample_paths(self, work: list[tuple[Sequence, int]], logits: torch.Tensor, deadline: float | None,
                            answers: dict[str, pb.SequenceResult]) -> None:
        """The path-aware sequences of the step, one dispatcher job each (see the module docstring)."""
        if not work:
            return
        jobs = [PathStepJob(logits=logits[row:row + s.rows()], params=s.params, step=s.step, seed=s.seed,
                            path_logprobs=[p.logprob for p in s.paths], states=[p.state for p in s.paths],
                            deadline=deadline)
                for s, row in work]
        results = await asyncio.gather(*(self._dispatcher.submit(job) for job in jobs))
        for (sequence, _), result in zip(work, results, strict=True):
            chosen = result.step
            parents = chosen.parent.tolist()
            tokens = chosen.token.tolist()
            token_logprobs = chosen.token_logprob.tolist()
            path_logprobs = chosen.path_logprob.tolist()
            answer = pb.SequenceResult(
                sequence_id=sequence.sequence_id, step=sequence.step,
                row=pb.RowResult(token_ids=tokens, logprobs=token_logprobs, strategy=PATH_STRATEGY))
            new_paths = []
            for parent, token, token_logprob, path_logprob in zip(
                    parents, tokens, token_logprobs, path_logprobs, strict=True):
                answer.paths.add(parent=parent, token_id=token, token_logprob=token_logprob,
                                 path_logprob=path_logprob)
                new_paths.append(Path(advance(sequence.paths[parent].state, token, math.nan), path_logprob))
            sequence.accept_paths(new_paths)
            answer.statistics.CopyFrom(sequence.statistics.to_proto())
            answers[sequence.sequence_id] = answer
            self._metrics.rows.labels(PATH_STRATEGY).inc(len(parents))


def _plan_and_force(session: Session, step: pb.SessionStep, limits: Limits, session_limits: SessionLimits,
                    shared: SharedAccess | None = None) -> _StepPlan:
    """Validate the step, then append its forced tokens (nothing changes if it is refused)."""
    plan = _plan_step(session, step, limits, session_limits, shared)
    for sequence, tokens in plan.forced:
        sequence.force(tokens)
    return plan


def _plan_step(session: Session, step: pb.SessionStep, limits: Limits,
               session_limits: SessionLimits | None = None, shared: SharedAccess | None = None) -> _StepPlan:
    """Validate a step against the session without changing anything; raises RequestError."""
    session_limits = session_limits or SessionLimits()
    listed: list[Sequence] = []
    seen: set[str] = set()
    for j, sequence_id in enumerate(step.sequence_ids):
        sequence = session.sequences.get(sequence_id)
        if sequence is None:
            raise invalid_argument(f"step.sequence_ids[{j}]", f"unknown sequence id {sequence_id!r}")
        if sequence_id in seen:
            raise invalid_argument(f"step.sequence_ids[{j}]", f"sequence id {sequence_id!r} is listed twice")
        seen.add(sequence_id)
        listed.append(sequence)
    logits = None
    vocab = session.vocab
    if listed:
        if not step.HasField("logits"):
            raise invalid_argument("step.logits", "logits are required when sequence_ids is non-empty")
        logits = decode_tensor(step.logits, limits, "step.logits", shared)
        rows, step_vocab = logits.shape
        expected = sum(s.rows() for s in listed)
        if rows != expected:
            raise invalid_argument(
                "step.logits.shape",
                f"logits must have {expected} rows (one per listed sequence, one per live path for path-aware "
                f"ones), got {rows}")
        if vocab is not None and step_vocab != vocab:
            raise invalid_argument(
                "step.logits.shape", f"V must stay {vocab} (the session's first logits), got {step_vocab}")
        check_logits_values(logits, tensor_data_field(step.logits, "step.logits"))
        if vocab is None:
            check_vocabulary(session, step_vocab)
            vocab = step_vocab
    elif step.HasField("logits"):
        raise invalid_argument("step.logits", "logits given but sequence_ids is empty")
    forced: list[tuple[Sequence, list[int]]] = []
    growth: dict[str, int] = {}  # tokens each sequence gains in this step (per path)
    total = session.history_tokens()
    for j, entry in enumerate(step.forced):
        field = f"step.forced[{j}].token_ids"
        sequence = session.sequences.get(entry.sequence_id)
        if sequence is None:
            raise invalid_argument(f"step.forced[{j}].sequence_id", f"unknown sequence id {entry.sequence_id!r}")
        count = len(entry.token_ids)  # sizes are checked before any token is copied
        grown = growth.get(sequence.sequence_id, 0) + count
        if sequence.longest_history() + grown > session_limits.max_history_tokens:
            raise over_limit(field, f"{count} forced tokens would take the sequence's history to "
                                    f"{sequence.longest_history() + grown} tokens, over the server limit of "
                                    f"{session_limits.max_history_tokens} (--max-history-tokens)")
        total += count * sequence.rows()
        if total > session_limits.max_session_tokens:
            raise over_limit(field, f"forced tokens would take the session's history to {total} tokens, over the "
                                    f"server limit of {session_limits.max_session_tokens} (--max-session-tokens)")
        growth[sequence.sequence_id] = grown
        tokens = token_list(entry.token_ids)
        if tokens:
            low, high = min(tokens), max(tokens)
            if low < 0 or (vocab is not None and high >= vocab):
                bound = f"[0, {vocab})" if vocab is not None else ">= 0"
                raise invalid_argument(field, f"token id {low if low < 0 else high} is outside {bound}")
        forced.append((sequence, tokens))
    for j, sequence in enumerate(listed):
        grown = growth.get(sequence.sequence_id, 0) + 1
        if sequence.longest_history() + grown > session_limits.max_history_tokens:
            raise over_limit(f"step.sequence_ids[{j}]",
                             f"sequence {sequence.sequence_id!r} holds {sequence.longest_history()} tokens of "
                             f"history; sampling would pass the server limit of {session_limits.max_history_tokens} "
                             "(--max-history-tokens): close the session")
        total += sequence.params.path_beams if sequence.path_aware else 1
    if listed and total > session_limits.max_session_tokens:
        raise over_limit("step.sequence_ids", f"sampling would take the session's history to {total} tokens, over "
                                              f"the server limit of {session_limits.max_session_tokens} "
                                              "(--max-session-tokens): close the session")
    return _StepPlan(forced, listed, logits, vocab)


def _closed(session: Session) -> pb.SampleStreamResponse:
    """The final answer: steps, pooled and per-sequence statistics."""
    closed = pb.SessionClosed(steps=session.steps, statistics=session.statistics.to_proto())
    for sequence in session.sequences.values():
        closed.sequences.add(sequence_id=sequence.sequence_id, tokens=sequence.appended(),
                             statistics=sequence.statistics.to_proto())
    return pb.SampleStreamResponse(closed=closed)


class _ClientGone(Exception):
    """An answer could not be written: the client cancelled or went away."""


async def _write(context: grpc.aio.ServicerContext, response: pb.SampleStreamResponse) -> None:
    """Write one answer; :class:`_ClientGone` when the call is over on the client's side (grpc
    raises its own internal error type then)."""
    try:
        await context.write(response)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        raise _ClientGone(str(error)) from error


def _cancelled(context: grpc.aio.ServicerContext) -> bool:
    """Whether the client cancelled the call (or it otherwise ended on the client's side)."""
    try:
        return context.cancelled()
    except Exception:  # an older grpc without ServicerContext.cancelled
        return False


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The stream's deadline on the ``time.monotonic()`` clock, or None."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + max(remaining, 0.0)


async def _pump(request_iterator: AsyncIterator[pb.SampleStreamRequest], messages: asyncio.Queue) -> None:
    """Move client messages into ``messages``; then ``_END``, or the error that stopped reading."""
    try:
        async for message in request_iterator:
            await messages.put(message)
        await messages.put(_END)
    except asyncio.CancelledError:
        raise
    except Exception as error:  # handed to the handler, which answers with its status
        await messages.put(error)
