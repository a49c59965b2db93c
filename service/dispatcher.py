"""The dispatcher: dynamic batching of sampling jobs onto the sampler actors.

A job is one request's logits [B, V] with per-row parameters and steps. :meth:`Dispatcher.submit`
admits it to a bounded queue (``max_queue_rows``) and awaits its answer. One collector task
turns the queue into batches:

1. it waits for work and for a free batch slot (``max_batches_per_worker`` per live actor);
2. it waits at most ``batch_window_s`` after the oldest waiting job for more to arrive,
   unless ``max_batch_rows`` rows, or ``full_batch_bytes`` of logits, are already waiting
   (sampling that many bytes takes longer than the window: waiting for neighbours would only
   add latency);
3. it takes the waiting jobs in order, up to ``max_batch_rows`` rows (a larger job goes
   alone) and no more than an even share of what waits per idle actor, dropping those whose
   deadline has passed;
4. it launches the batch as its own task (several may be in flight): the jobs are grouped
   by (V, dtype), their logits bytes are sent once, over the chosen actor's link when it has
   one (see ``samplerd.workers.socket_link``) or else into Ray's object store,
   ONE call samples the whole batch (the actor stacks each group's rows), and each job's rows
   are cut back out of its group's result.

A :class:`PathStepJob` (one path-aware sequence's step of a ``SampleStream`` session) is
queued and batched the same way: its live paths are its rows, and they travel in the same
actor call as the other jobs, as a group of their own (``samplerd.workers.batch.PathGroup``).

Every accepted job gets exactly one answer: its result, :class:`DeadlineExceededError` (its
deadline passed while it waited), :class:`WorkersUnavailableError` (no live actor, or its
actor died and the one retry on another actor failed too), ``sampling.SamplingError`` (its
rows failed in the sampler; neighbours in the batch are unaffected) or another exception for
an internal failure. Cancelling the awaiting task withdraws a waiting job, or discards the
result of a running one.

This module reaches Ray only through :mod:`workers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from samplerd.sampling import SampleOutput, SampleStats, SamplingParams, SequenceState
from samplerd.sampling.strategies.path_top_p import PathStep
from samplerd.service.config import DispatcherConfig
from samplerd.service.errors import (
    DeadlineExceededError,
    DispatchError,
    QueueFullError,
    WorkersUnavailableError,
)
from samplerd.workers import (
    REGION_TYPES,
    BatchOutput,
    CudaRegionSlice,
    NoLiveWorkerError,
    PathGroup,
    PathGroupResult,
    PathJob,
    RegionSlice,
    RowError,
    RowGroup,
    SamplerPool,
    stack_group,
    take_job,
)
from samplerd.workers.batch import DTYPE_NAMES, pack_logits

_TORCH_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}

_log = logging.getLogger(__name__)

#: fn(batch_rows, kernel_seconds_by_strategy, device), called once per executed batch.
BatchObserver = Callable[[int, dict[str, float], str], None]


@dataclass
class SampleJob:
    """One request's rows: logits [B, V] (CPU, fp32/fp16/bf16), B parameter sets (or one for
    all rows), B steps (or one for all rows), an optional ``time.monotonic()`` deadline, and
    optionally B ``sampling.SequenceState`` values (or None entries) for stateful strategies
    (penalty history, mirostat mu), passed to ``sampling.sample(..., states=)``. ``logits`` may
    instead be a ``workers.RegionSlice``: logits in a client's shared memory, which the sampler
    actor reads itself (it then also checks their values, as ``sampling.sample`` does), or a
    ``workers.CudaRegionSlice``: logits in a client's GPU memory, read by a GPU actor."""

    logits: torch.Tensor | RegionSlice | CudaRegionSlice
    params: Sequence[SamplingParams] | SamplingParams
    steps: Sequence[int] | int = 0
    deadline: float | None = None
    states: Sequence[SequenceState | None] | None = None


@dataclass
class PathStepJob:
    """One path-aware sequence's step (``params.path_beams > 1``): logits ``[paths, V]`` (CPU),
    one row per live path, with each path's accumulated log-probability and
    ``sampling.SequenceState``, the sequence's parameters, step and seed, and an optional
    ``time.monotonic()`` deadline. Answered with a :class:`PathStepResult`."""

    logits: torch.Tensor
    params: SamplingParams
    step: int
    seed: int
    path_logprobs: Sequence[float]
    states: Sequence[SequenceState | None]
    deadline: float | None = None


@dataclass(frozen=True)
class PathStepResult:
    """A path step's answer: the paths kept (``samplerd.sampling.strategies.path_top_p.PathStep``, CPU
    tensors) and how long the job waited in the queue."""

    step: PathStep
    queue_wait_s: float


@dataclass(frozen=True)
class SampleResult:
    """A job's answer: the sampler's output for exactly its rows (CPU tensors), and how long
    the job waited in the queue before its batch was sent."""

    output: SampleOutput
    queue_wait_s: float

    @property
    def token_ids(self) -> torch.Tensor:
        """int64 [B, n], -1 padded."""
        return self.output.token_ids

    @property
    def logprobs(self) -> torch.Tensor:
        """float32 [B, n]."""
        return self.output.logprobs

    @property
    def top_logprobs(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """None, or (ids [B, K], logprobs [B, K])."""
        return self.output.top_logprobs

    @property
    def stats(self) -> SampleStats:
        """The rows' ``sampling.SampleStats``."""
        return self.output.stats

    @property
    def strategies(self) -> list[str]:
        """Each row's strategy label."""
        return self.output.strategies

    @property
    def mirostat_mu(self) -> torch.Tensor:
        """float64 [B]."""
        return self.output.mirostat_mu


class _State(enum.Enum):
    QUEUED = "queued"
    SENT = "sent"
    DONE = "done"


@dataclass(eq=False)
class _Pending:
    """A job inside the dispatcher: its rows normalised, its future and where it is."""

    logits: torch.Tensor | RegionSlice | CudaRegionSlice
    params: list[SamplingParams]
    steps: list[int]
    states: list[SequenceState | None] | None
    deadline: float | None
    future: asyncio.Future[SampleResult | PathStepResult]
    enqueued_at: float
    draws: int
    top_logprobs: int
    path: PathJob | None = None  # set for a PathStepJob
    state: _State = _State.QUEUED
    timer: asyncio.TimerHandle | None = None
    queue_wait_s: float = 0.0
    rows: int = field(init=False)
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = int(self.logits.shape[0])
        logits = self.logits
        self.nbytes = logits.nbytes if isinstance(logits, REGION_TYPES) else logits.numel() * logits.element_size()

    def key(self) -> tuple[int, torch.dtype, bool]:
        """Jobs with the same key are stacked into one group (path steps in groups of their own)."""
        dtype = self.logits.dtype  # a region's logits name their dtype
        torch_dtype = _TORCH_DTYPES[dtype] if isinstance(dtype, str) else dtype
        return int(self.logits.shape[1]), torch_dtype, self.path is not None

    def answer(self, result: SampleResult | PathStepResult | BaseException) -> None:
        """Resolve the future unless the caller already gave up on it."""
        self.state = _State.DONE
        if self.timer is not None:
            self.timer.cancel()
        if self.future.done():
            return
        if isinstance(result, BaseException):
            self.future.set_exception(result)
        else:
            self.future.set_result(result)


class Dispatcher:
    """Dynamic batcher in front of the sampler actors (see the module docstring)."""

    def __init__(self, config: DispatcherConfig) -> None:
        self._config = config
        self._pool = SamplerPool(config.pool, on_change=self._wake)
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._queued_bytes = 0  # logits bytes of the waiting jobs
        self._held_bytes = 0  # logits bytes of the jobs admitted and not answered yet
        self._running_batches = 0
        self._wakeup = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._observer: BatchObserver | None = None
        self._accepting = False
        self._closing = False

    @property
    def pool(self) -> SamplerPool:
        """The worker pool, for diagnostics and fault-injection tests."""
        return self._pool

    async def start(self) -> None:
        """Start (or join) Ray, create the sampler actors, wait for their warm-up, start batching.

        Raises :class:`WorkersUnavailableError` when no actor comes up.
        """
        try:
            await self._pool.start()
        except NoLiveWorkerError as error:
            raise WorkersUnavailableError(str(error)) from error
        self._accepting = True
        self._collector = asyncio.create_task(self._collect(), name="dispatcher-collector")

    async def stop(self) -> None:
        """Stop accepting jobs, run what is queued and in flight, shut down the actors (and Ray,
        if :meth:`start` started it)."""
        self._accepting = False
        self._closing = True
        self._wake()
        if self._collector is not None:
            await self._collector
        await asyncio.gather(*self._batches, return_exceptions=True)
        await self._pool.stop()

    def ready(self) -> bool:
        """True when accepting jobs and at least one actor is alive and answered its warm-up."""
        return self._accepting and self._pool.ready()

    def queue_depth(self) -> int:
        """Rows waiting to be batched."""
        return self._queued_rows

    def worker_states(self) -> dict[str, int]:
        """Sampler actor slots by state: ``{"alive": n, "starting": n, "dead": n}``."""
        return self._pool.states()

    def set_batch_observer(self, fn: BatchObserver | None) -> None:
        """Call ``fn(batch_rows, kernel_seconds_by_strategy, device)`` once per executed batch.

        ``kernel_seconds_by_strategy`` splits each row group's measured ``sample()`` time over
        its rows' strategy labels in proportion to their row counts. ``fn`` runs on the event
        loop, so keep it cheap; its exceptions are logged and ignored.
        """
        self._observer = fn

    async def submit(self, job: SampleJob | PathStepJob) -> SampleResult | PathStepResult:
        """Queue a job and await its answer: a :class:`SampleResult`, or for a
        :class:`PathStepJob` a :class:`PathStepResult` (see the module docstring for the errors).

        Raises QueueFullError / WorkersUnavailableError / DeadlineExceededError at once when
        the job is not accepted, and ValueError for a malformed job.
        """
        pending = self._admit(job)
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._withdraw(pending)
            raise

    # -- admission -------------------------------------------------------------------------

    def _admit(self, job: SampleJob | PathStepJob) -> _Pending:
        if not self._accepting:
            raise WorkersUnavailableError("the dispatcher is not running")
        if not self._pool.ready():
            raise WorkersUnavailableError("no live sampler actor")
        path = None
        if isinstance(job, PathStepJob):
            logits, params, steps, states, path = _normalise_path(job)
            draws, top_logprobs = 1, 0
        else:
            logits, params, steps, states = _normalise(job)
            draws, top_logprobs = _widths(job.params, params)
        rows = int(logits.shape[0])
        now = time.monotonic()
        if job.deadline is not None and job.deadline <= now:
            raise DeadlineExceededError("the deadline passed before the job was queued")
        if self._queued_rows + rows > self._config.max_queue_rows:
            raise QueueFullError(
                f"queue full: {self._queued_rows} rows waiting, {rows} more would exceed "
                f"max_queue_rows={self._config.max_queue_rows}"
            )
        # A region's bytes count too: the actor reads them into its batch.
        nbytes = logits.nbytes if isinstance(logits, REGION_TYPES) else logits.numel() * logits.element_size()
        if self._held_bytes + nbytes > self._config.max_queue_bytes:
            raise QueueFullError(
                f"queue full: {self._held_bytes} bytes of logits are queued or being sampled, {nbytes} more would "
                f"exceed max_queue_bytes={self._config.max_queue_bytes} (--max-queue-bytes)"
            )
        loop = asyncio.get_running_loop()
        pending = _Pending(
            logits, params, steps, states, job.deadline, loop.create_future(), now, draws, top_logprobs, path
        )
        self._held_bytes += nbytes
        pending.future.add_done_callback(lambda _future: self._release_bytes(nbytes))
        if job.deadline is not None:
            pending.timer = loop.call_later(job.deadline - now, self._expire, pending)
        was_empty = self._queued_rows == 0
        self._queue.append(pending)
        self._queued_rows += rows
        self._queued_bytes += pending.nbytes
        if was_empty or self._queued_rows >= self._config.max_batch_rows or \
                self._queued_bytes >= self._config.full_batch_bytes:
            self._wake()
        return pending

    def _release_bytes(self, nbytes: int) -> None:
        self._held_bytes -= nbytes

    def _withdraw(self, pending: _Pending) -> None:
        """Free a waiting job's queue slot (a sent job's result is simply discarded)."""
        if pending.state is _State.QUEUED:
            self._queued_rows -= pending.rows
            self._queued_bytes -= pending.nbytes
        if pending.state is not _State.SENT:
            pending.state = _State.DONE
        if pending.timer is not None:
            pending.timer.cancel()

    def _expire(self, pending: _Pending) -> None:
        if pending.state is _State.QUEUED:
            self._withdraw(pending)
            pending.answer(DeadlineExceededError("the deadline passed while the job waited in the queue"))

    def _wake(self) -> None:
        self._wakeup.set()

    # -- batching --------------------------------------------------------------------------

    async def _collect(self) -> None:
        """Run the collector loop; should it ever fail, stop accepting and answer what waits."""
        try:
            await self._collect_loop()
        except Exception:
            _log.exception("the dispatcher's collector failed")
            self._accepting = False
            self._fail_queued(WorkersUnavailableError("the dispatcher failed"))

    async def _collect_loop(self) -> None:
        """The collector loop: waiting work -> batches, while batch slots are free."""
        cfg = self._config
        while True:
            self._wakeup.clear()
            head = self._head()
            if head is None:
                if self._closing:
                    return
                await self._wakeup.wait()
                continue
            if not self._pool.ready():
                self._fail_queued(WorkersUnavailableError("no live sampler actor"))
                continue
            if self._running_batches >= self._pool.capacity():
                await self._wakeup.wait()
                continue
            wait_s = head.enqueued_at + cfg.batch_window_s - time.monotonic()
            if wait_s > 0 and self._queued_rows < cfg.max_batch_rows and self._queued_bytes < cfg.full_batch_bytes \
                    and not self._closing:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait_s)
                continue
            batch = self._take_batch(self._batch_rows_limit())
            if batch:
                self._running_batches += 1
                task = asyncio.create_task(self._run_batch(batch))
                self._batches.add(task)
                task.add_done_callback(self._batch_done)

    def _head(self) -> _Pending | None:
        """The oldest waiting job, discarding withdrawn ones from the front."""
        while self._queue and self._queue[0].state is not _State.QUEUED:
            self._queue.popleft()
        return self._queue[0] if self._queue else None

    def _batch_rows_limit(self) -> int:
        """Rows for the next batch: what waits, shared evenly over the idle actors (so that
        synchronised clients keep every actor busy rather than one), at most ``max_batch_rows``."""
        idle = max(1, self._pool.alive() - self._running_batches)
        return min(self._config.max_batch_rows, max(1, math.ceil(self._queued_rows / idle)))

    def _take_batch(self, max_rows: int) -> list[_Pending]:
        """Waiting jobs in order, up to ``max_rows`` rows (a larger job goes alone); expired jobs
        are answered, unrun."""
        batch: list[_Pending] = []
        rows = 0
        now = time.monotonic()
        while self._queue:
            pending = self._queue[0]
            if pending.state is not _State.QUEUED:
                self._queue.popleft()
                continue
            if batch and rows + pending.rows > max_rows:
                break
            self._queue.popleft()
            self._queued_rows -= pending.rows
            self._queued_bytes -= pending.nbytes
            if pending.deadline is not None and pending.deadline <= now:
                pending.answer(DeadlineExceededError("the deadline passed while the job waited in the queue"))
                continue
            pending.state = _State.SENT
            if pending.timer is not None:
                pending.timer.cancel()
            pending.queue_wait_s = now - pending.enqueued_at
            batch.append(pending)
            rows += pending.rows
        return batch

    def _fail_queued(self, error: DispatchError) -> None:
        while self._queue:
            pending = self._queue.popleft()
            if pending.state is _State.QUEUED:
                self._queued_rows -= pending.rows
                self._queued_bytes -= pending.nbytes
                pending.answer(error)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._running_batches -= 1
        self._wake()

    async def _run_batch(self, batch: list[_Pending]) -> None:
        """Stack, send, and answer one batch; every job in it gets exactly one answer."""
        plan: dict[tuple[int, torch.dtype, bool], list[_Pending]] = {}
        for pending in batch:
            if not pending.future.done():  # cancelled while it waited for the batch to leave
                plan.setdefault(pending.key(), []).append(pending)
        try:
            if not plan:
                return
            self._deliver(plan, await self._pool.run(_stack(plan)))
        except NoLiveWorkerError as error:
            _answer_all(batch, WorkersUnavailableError(str(error)))
        except asyncio.CancelledError:
            _answer_all(batch, WorkersUnavailableError("the dispatcher stopped"))
            raise
        except Exception as error:  # any other failure still answers every job
            _log.exception("sampling batch failed")
            _answer_all(batch, error)
        finally:
            _answer_all(batch, RuntimeError("the batch ended without an answer for this job"))

    def _deliver(self, plan: dict[tuple[int, torch.dtype, bool], list[_Pending]], output: BatchOutput) -> None:
        for pendings, group in zip(plan.values(), output.groups, strict=True):
            if isinstance(group, PathGroupResult):
                for pending, choice in zip(pendings, group.choices, strict=True):
                    if isinstance(choice, RowError):
                        pending.answer(choice.to_exception())
                    else:
                        step = PathStep(*(torch.from_numpy(a if a.flags.writeable else a.copy()) for a in (
                            choice.parent, choice.token, choice.path_logprob, choice.token_logprob)))
                        pending.answer(PathStepResult(step, pending.queue_wait_s))
                continue
            if group.output is None:
                for pending, job_output in zip(pendings, group.job_outputs or [], strict=True):
                    if isinstance(job_output, RowError):
                        pending.answer(job_output.to_exception())
                    else:
                        own = take_job(job_output, 0, pending.rows, pending.draws, pending.top_logprobs)
                        pending.answer(SampleResult(own, pending.queue_wait_s))
                continue
            start = 0
            for pending in pendings:
                stop = start + pending.rows
                own = take_job(group.output, start, stop, pending.draws, pending.top_logprobs)
                pending.answer(SampleResult(own, pending.queue_wait_s))
                start = stop
        if self._observer is not None:
            rows = sum(p.rows for pendings in plan.values() for p in pendings)
            try:
                self._observer(rows, output.kernel_seconds_by_strategy, output.device)
            except Exception:  # metrics must never break answers
                _log.exception("batch observer failed")


def _normalise(
    job: SampleJob,
) -> tuple[torch.Tensor, list[SamplingParams], list[int], list[SequenceState | None] | None]:
    """The job's logits, and per-row params, steps and states lists; ValueError when malformed."""
    logits = job.logits
    if isinstance(logits, REGION_TYPES):
        if logits.dtype not in _TORCH_DTYPES:
            raise ValueError(f"logits dtype must be float32, float16 or bfloat16, got {logits.dtype}")
    elif not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError("logits must be a 2-D torch tensor [B, V] or a RegionSlice")
    elif logits.dtype not in DTYPE_NAMES:
        raise ValueError(f"logits dtype must be float32, float16 or bfloat16, got {logits.dtype}")
    elif logits.device.type != "cpu":
        raise ValueError(f"logits must be on the CPU, got {logits.device}")
    rows, vocab = logits.shape
    if rows < 1 or vocab < 1:
        raise ValueError(f"logits must have at least one row and one column, got shape {tuple(logits.shape)}")
    params = [job.params] * rows if isinstance(job.params, SamplingParams) else list(job.params)
    steps = [int(job.steps)] * rows if isinstance(job.steps, int) else list(job.steps)
    states = None if job.states is None else list(job.states)
    if len(params) != rows or len(steps) != rows or (states is not None and len(states) != rows):
        raise ValueError(
            f"need one params, one step (and one state, if any) per row: {rows} rows, {len(params)} params, "
            f"{len(steps)} steps, {'no' if states is None else len(states)} states"
        )
    return logits, params, steps, states


def _normalise_path(
    job: PathStepJob,
) -> tuple[torch.Tensor, list[SamplingParams], list[int], list[SequenceState | None], PathJob]:
    """A path step's logits, per-row params, steps and states, and its :class:`PathJob`;
    ValueError when malformed."""
    logits, params, steps, states = _normalise(SampleJob(job.logits, job.params, job.step, states=job.states))
    if job.params.path_beams < 2:
        raise ValueError("a path step needs params.path_beams > 1")
    if len(job.path_logprobs) != len(params):
        raise ValueError(f"need one path log-probability per row: {len(params)} rows, {len(job.path_logprobs)}")
    path = PathJob(job.params, job.step, job.seed, [float(lp) for lp in job.path_logprobs], list(job.states))
    return logits, params, steps, states or [None] * len(params), path


def _widths(given: Sequence[SamplingParams] | SamplingParams, params: list[SamplingParams]) -> tuple[int, int]:
    """The job's largest ``n`` and ``top_logprobs``: the widths of its own output."""
    if isinstance(given, SamplingParams):
        return given.n, given.top_logprobs
    return max(p.n for p in params), max(p.top_logprobs for p in params)


def _stack(plan: dict[tuple[int, torch.dtype, bool], list[_Pending]]) -> list[RowGroup | PathGroup]:
    """One row group per (V, dtype): the jobs' logits in order, per-row lists joined; path
    steps in a path group per (V, dtype)."""
    groups: list[RowGroup | PathGroup] = []
    for (_, dtype, paths), pendings in plan.items():
        if paths:
            groups.append(PathGroup([pack_logits(p.logits) for p in pendings], DTYPE_NAMES[dtype],
                                    [p.path for p in pendings if p.path is not None]))
            continue
        params: list[SamplingParams] = []
        steps: list[int] = []
        for pending in pendings:
            params.extend(pending.params)
            steps.extend(pending.steps)
        states: list[SequenceState | None] | None = None
        if any(pending.states is not None for pending in pendings):
            states = []
            for pending in pendings:
                states.extend(pending.states if pending.states is not None else [None] * pending.rows)
        groups.append(stack_group([p.logits for p in pendings], params, steps, states))
    return groups


def _answer_all(batch: list[_Pending], answer: BaseException) -> None:
    for pending in batch:
        if pending.state is not _State.DONE:
            pending.answer(answer)
