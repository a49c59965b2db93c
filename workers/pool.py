"""A pool of sampler actors: creation, least-loaded routing, death detection and replacement.

The pool is asyncio-friendly: :meth:`SamplerPool.run` awaits the batch's answer on the event
loop. It sends each batch over the actor's link (:mod:`samplerd.workers.socket_link`: a Unix socket
on this node, TCP to others) when the actor has one, else by an actor call. Each worker slot
holds one actor; when an actor dies (a call fails with ``RayActorError`` and its subclasses ``ActorDiedError`` /
``ActorUnavailableError``, or an idle health ping does) the slot is marked dead and a
replacement is started in the background, with back-off while creation keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import ray
import ray.util.client
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayError

from samplerd.workers.batch import WIRE_TYPES, BatchOutput, RowGroup
from samplerd.workers.cluster import cluster_gpus, connect, disconnect, resolve
from samplerd.workers.config import LinkLimits, PoolConfig
from samplerd.workers.region import RegionError, RegionSlice, read_array
from samplerd.workers.sampler_actor import SamplerActor
from samplerd.workers.socket_link import SUPPORTED as LINKS_SUPPORTED
from samplerd.workers.socket_link import LinkCallError, LinkLostError, SocketLink

_log = logging.getLogger(__name__)

#: Sampler actors are named ``samplerd-sampler-<front-end pid>-<pool>-<n>``: ``pool`` numbers the
#: process's pools from 0, ``n`` the pool's actors in creation order (replacements get new numbers).
ACTOR_NAME_PREFIX = "samplerd-sampler-"
_POOL_NUMBERS = itertools.count()

#: How long opening an actor's link may take (one small actor call and a connect).
LINK_OPEN_TIMEOUT_S = 30.0
#: How long connecting to an actor on another node may take: a front end that cannot reach the
#: actors' nodes directly (only the Ray client port) learns it this soon and uses Ray.
REMOTE_LINK_CONNECT_TIMEOUT_S = 5.0
#: Longest pause between tries to open a link that was refused.
_LINK_RETRY_MAX_S = 60.0

#: The errors that mean "this actor is gone": its batch may be retried elsewhere.
ACTOR_LOST = (ActorDiedError, ActorUnavailableError, RayActorError)


class WorkerState(str, enum.Enum):
    """Where a worker slot is in its life; the values are the ``state`` metric label."""

    STARTING = "starting"
    ALIVE = "alive"
    DEAD = "dead"


class NoLiveWorkerError(RuntimeError):
    """No sampler actor is alive, or a batch's actor died and its one retry failed too."""


class BatchFailedError(RuntimeError):
    """Ray could not run a batch for a reason other than the actor's death."""


#: Batches with fewer logits bytes than this travel inside the actor call itself (as Ray does
#: with small arguments anyway) when they go by Ray: a ``ray.put`` costs about a millisecond
#: even when tiny.
INLINE_BYTES = 64 * 1024

#: Batches of up to this many logits bytes are stored with ``ray.put`` on the event loop itself:
#: handing them to a worker thread costs more (GIL hand-offs delay both sides) than the copy.
#: Larger ones go to a thread so that the loop never stalls for long.
COPY_ON_LOOP_BYTES = 4 << 20


@dataclass(frozen=True)
class WorkerInfo:
    """One worker slot as seen at one moment: its actor handle, state, device, load, and whether
    its batches go over a link (False: by Ray)."""

    actor: Any
    state: WorkerState
    device: str
    inflight_rows: int
    inflight_batches: int
    linked: bool


@dataclass(eq=False)
class _Worker:
    actor: Any
    state: WorkerState = WorkerState.STARTING
    device: str = ""
    inflight_rows: int = 0
    inflight_batches: int = 0
    #: The link to the actor (:mod:`samplerd.workers.socket_link`); None: batches go by Ray. ``linkable``:
    #: a link was opened at warm-up, so one that broke is opened again by the health monitor.
    link: SocketLink | None = None
    linkable: bool = False
    link_retry_at: float = 0.0
    link_backoff_s: float = 0.0


class SamplerPool:
    """N sampler actors, each owning one device, fed whole batches.

    ``on_change`` is called (on the event loop) whenever capacity may have grown: a batch
    finished, a worker came up or died.
    """

    def __init__(self, config: PoolConfig, on_change: Callable[[], None] | None = None) -> None:
        self._config = config
        self._on_change = on_change or (lambda: None)
        self._workers: list[_Worker] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._started_ray = False
        self._stopping = False
        self._actor_class: Any = None
        self._actor_options: dict[str, Any] = {}
        self._spawned = itertools.count()
        self._pool_number = next(_POOL_NUMBERS)

    async def start(self) -> None:
        """Connect to (or start) Ray, create the actors and wait for their warm-up calls.

        Raises :class:`NoLiveWorkerError` when no actor answers within ``startup_timeout_s``;
        actors that failed are replaced in the background.
        """
        cfg = self._config
        num_cpus = max(os.cpu_count() or 1, math.ceil(cfg.num_workers * cfg.num_cpus_per_worker))
        # Off the event loop: starting Ray takes seconds. A side effect is welcome: Ray installs
        # its SIGTERM handler only from the main thread, so the front end's handler stays in place.
        self._started_ray = await asyncio.to_thread(connect, cfg.ray_address, num_cpus)
        num_gpus = self._resolve_num_gpus()
        if self._started_ray and num_gpus > cluster_gpus():
            # A local instance never grows: an actor asking for a GPU it lacks would wait forever.
            await self.stop()
            raise NoLiveWorkerError(
                f"device={cfg.device} needs {num_gpus:g} GPU per actor; the local Ray instance has {cluster_gpus():g}"
            )
        self._actor_options = {"num_cpus": cfg.num_cpus_per_worker, "num_gpus": num_gpus, "max_restarts": 0}
        self._actor_class = ray.remote(SamplerActor)
        self._workers = [self._spawn() for _ in range(cfg.num_workers)]
        await asyncio.gather(*(self._warm(worker) for worker in self._workers))
        if not any(w.state is WorkerState.ALIVE for w in self._workers):
            await self.stop()
            raise NoLiveWorkerError(
                f"no sampler actor came up within {cfg.startup_timeout_s:g}s "
                f"(device={cfg.device}, num_gpus_per_worker={num_gpus:g})"
            )
        for worker in self._workers:
            if worker.state is WorkerState.DEAD:
                self._background(self._replace(worker))
        self._background(self._monitor())

    async def stop(self) -> None:
        """Stop replacing and pinging, kill the actors, and shut Ray down if :meth:`start` started it."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self._workers:
            self._kill(worker)
            worker.state = WorkerState.DEAD
        disconnect(self._started_ray)
        self._started_ray = False

    def ready(self) -> bool:
        """True when at least one actor is alive (it answered its warm-up call)."""
        return self.alive() > 0

    def states(self) -> dict[str, int]:
        """Worker slots by state, every state present: ``{"alive": 2, "starting": 0, "dead": 0}``."""
        counts = {state.value: 0 for state in (WorkerState.ALIVE, WorkerState.STARTING, WorkerState.DEAD)}
        for worker in self._workers:
            counts[worker.state.value] += 1
        return counts

    def alive(self) -> int:
        """How many actors are alive."""
        return sum(1 for w in self._workers if w.state is WorkerState.ALIVE)

    def capacity(self) -> int:
        """How many batches may be in flight at once: ``max_batches_per_worker`` per live actor."""
        return self.alive() * self._config.max_batches_per_worker

    def workers(self) -> list[WorkerInfo]:
        """A snapshot of every worker slot, in slot order, for diagnostics and fault-injection tests."""
        return [
            WorkerInfo(
                w.actor, w.state, w.device, w.inflight_rows, w.inflight_batches,
                w.link is not None,
            )
            for w in self._workers
        ]

    async def run(self, groups: list[RowGroup]) -> BatchOutput:
        """Run a batch on the least-loaded live actor; if that actor dies, once more on another.

        The batch goes over the actor's link when it has one, else by an actor call, stored once
        with ``ray.put`` (small batches travel inline in the call). A link that breaks is
        dropped (the health monitor opens a new one) and the batch goes by Ray to the same
        actor, which tells whether the actor died.
        The answer's outputs hold numpy arrays (``samplerd.workers.batch.take_job`` makes a request's
        tensors). Raises :class:`NoLiveWorkerError` when there is no live actor to try, or the
        retry's actor died as well, and :class:`BatchFailedError` on any other failure.
        """
        rows = sum(group.rows for group in groups)
        stored: list[Any] = []  # the ray.put payload, made at most once for both attempts
        tried: list[_Worker] = []
        lost: BaseException | None = None
        for attempt in range(2):
            worker = self._pick(exclude=tried, need_capacity=attempt == 0) or self._pick(
                exclude=tried, need_capacity=False
            )
            if worker is None:
                break
            tried.append(worker)
            worker.inflight_rows += rows
            worker.inflight_batches += 1
            try:
                link = worker.link
                if link is not None:
                    try:
                        # Only an actor on this node can read a client's shared memory itself.
                        return await link.call(localize(groups) if link.over_tcp else groups)
                    except LinkLostError as error:
                        if worker.link is link:  # not already replaced by the monitor
                            _log.warning("a sampler actor's batch link broke (%s); its batches go by Ray", error)
                            self._unlink(worker)
                if not stored:  # by Ray the actor may be on another node: regions are read here
                    local = localize(groups)
                    stored.append(await _store(local, sum(group.nbytes for group in local)))
                return await worker.actor.sample_batch.remote(stored[0])
            except ACTOR_LOST as error:
                lost = error
                self._lose(worker, error)
            except (RayError, LinkCallError) as error:
                raise BatchFailedError(f"sampler actor failed to run the batch: {error}") from error
            finally:
                worker.inflight_rows -= rows
                worker.inflight_batches -= 1
                self._on_change()
        if lost is None:
            raise NoLiveWorkerError("no live sampler actor")
        raise NoLiveWorkerError(f"sampler actor died and the retry failed: {lost}") from lost

    def _resolve_num_gpus(self) -> float:
        cfg = self._config
        if cfg.device == "cpu":
            return 0.0
        if cfg.num_gpus_per_worker is not None:
            return float(cfg.num_gpus_per_worker)
        if cfg.device == "cuda":
            return 1.0
        return 1.0 if cluster_gpus() > 0 else 0.0

    def _spawn(self) -> _Worker:
        # Named (see ACTOR_NAME_PREFIX) only so that operators and fault-injection tests can
        # find a server's actors with ray.util.list_named_actors(all_namespaces=True).
        name = f"{ACTOR_NAME_PREFIX}{os.getpid()}-{self._pool_number}-{next(self._spawned)}"
        return _Worker(actor=self._actor_class.options(**self._actor_options, name=name).remote(
            self._config.device, self._config.link_limits))

    async def _warm(self, worker: _Worker) -> bool:
        """Wait for a new actor's warm-up call; mark it alive, or dead (and killed)."""
        try:
            device = await resolve(worker.actor.warmup.remote(), self._config.startup_timeout_s)
        except (RayError, asyncio.TimeoutError) as error:
            _log.warning("sampler actor failed to start: %s", error)
            self._kill(worker)
            worker.state = WorkerState.DEAD
            self._on_change()
            return False
        worker.device = device
        if self._config.batch_transport == "socket":
            worker.link = await open_link(worker.actor, self._config.link_limits)
            # A link refused now (the actor busy with peers, say) is tried again by the monitor.
            worker.linkable = LINKS_SUPPORTED and not _ray_tls()
        worker.state = WorkerState.ALIVE
        self._on_change()
        return True

    def _pick(self, exclude: Any, need_capacity: bool) -> _Worker | None:
        limit = self._config.max_batches_per_worker
        candidates = [
            w
            for w in self._workers
            if w.state is WorkerState.ALIVE
            and w not in exclude
            and (not need_capacity or w.inflight_batches < limit)
        ]
        return min(candidates, key=lambda w: (w.inflight_rows, w.inflight_batches), default=None)

    def _lose(self, worker: _Worker, error: BaseException) -> None:
        """Mark a worker dead and start its replacement (once, however many calls noticed)."""
        if worker.state is WorkerState.DEAD or worker not in self._workers:
            return
        _log.warning("sampler actor lost: %s", error)
        worker.state = WorkerState.DEAD
        self._kill(worker)
        self._on_change()
        if not self._stopping:
            self._background(self._replace(worker))

    async def _replace(self, dead: _Worker) -> None:
        backoff = self._config.restart_backoff_s
        while not self._stopping:
            worker = self._spawn()
            self._workers[self._workers.index(dead)] = worker
            self._on_change()
            if await self._warm(worker):
                return
            dead = worker
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _monitor(self) -> None:
        """Ping live actors so that a death is noticed (and repaired) without traffic, and open
        the link again to a live actor whose link broke. Busy actors are pinged too when their
        batches go over a link: a failed Ray call tells of a death, a link call only of its
        process's end, and an actor whose node Ray lost may answer on its link for a while."""
        while not self._stopping:
            await asyncio.sleep(self._config.health_interval_s)
            pinged = [
                w for w in self._workers
                if w.state is WorkerState.ALIVE and (w.inflight_batches == 0 or w.link is not None)
            ]
            results = await asyncio.gather(
                *(resolve(w.actor.device_name.remote(), 10.0) for w in pinged),
                return_exceptions=True,
            )
            for worker, result in zip(pinged, results, strict=True):
                if isinstance(result, ACTOR_LOST):
                    self._lose(worker, result)
                elif (worker.linkable and worker.link is None and worker.state is WorkerState.ALIVE
                      and time.monotonic() >= worker.link_retry_at):
                    link = await open_link(worker.actor, self._config.link_limits)
                    if link is None:  # tried again later, less often each time it fails
                        worker.link_backoff_s = min(2 * worker.link_backoff_s or self._config.health_interval_s,
                                                    _LINK_RETRY_MAX_S)
                        worker.link_retry_at = time.monotonic() + worker.link_backoff_s
                    else:
                        worker.link_backoff_s = 0.0
                    if worker.state is WorkerState.ALIVE and worker.link is None:
                        worker.link = link
                    elif link is not None:
                        link.close()

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _unlink(worker: _Worker) -> None:
        if worker.link is not None:
            worker.link.close()
            worker.link = None

    @classmethod
    def _kill(cls, worker: _Worker) -> None:
        cls._unlink(worker)
        with contextlib.suppress(Exception):
            ray.kill(worker.actor, no_restart=True)


def _ray_tls() -> bool:
    """Whether Ray runs with TLS (then batches stay on Ray's channels: links are not encrypted)."""
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


async def open_link(actor: Any, limits: LinkLimits, types: Iterable[type] = WIRE_TYPES) -> SocketLink | None:
    """A link to ``actor`` (an actor with an ``open_link(tcp)`` method answering with a
    :class:`~samplerd.workers.socket_link.LinkAddress`), whose frames may hold ``types``; or None
    (its calls go by Ray).

    On this process's node the link is a Unix socket with an arena (:meth:`SocketLink.open`);
    to an actor on another node, or from a front end connected through the Ray client
    (``ray://``, as in the Kubernetes deployment, where it is not a Ray node), it is TCP to the
    actor's node address (:meth:`SocketLink.open_remote`), unless Ray runs with TLS
    (``RAY_USE_TLS``): links are not encrypted, so those batches stay on Ray's channels.
    """
    if not LINKS_SUPPORTED:
        return None
    try:
        if not ray.util.client.ray.is_connected():
            address = await resolve(actor.open_link.remote(), LINK_OPEN_TIMEOUT_S)
            if address.node_id == ray.get_runtime_context().get_node_id():
                return await SocketLink.open(address, LINK_OPEN_TIMEOUT_S, types,
                                             max_frame_bytes=limits.max_frame_bytes)
        if _ray_tls():
            return None
        address = await resolve(actor.open_link.remote(tcp=True), LINK_OPEN_TIMEOUT_S)
        return await SocketLink.open_remote(address, REMOTE_LINK_CONNECT_TIMEOUT_S, types,
                                            max_frame_bytes=limits.max_frame_bytes)
    except Exception as error:  # a speed-up only: without it batches go by Ray
        _log.warning("no link to the actor (%s); its calls go by Ray", error)
        return None


def localize(groups: list[RowGroup]) -> list[RowGroup]:
    """``groups`` with each shared-memory :class:`RegionSlice` read into an array here (for an
    actor that cannot read this node's shared memory); a slice that cannot be read is left for
    the actor, which then answers that request alone with the region's error."""
    if not any(isinstance(part, RegionSlice) for group in groups for part in group.logits):
        return groups
    out = []
    for group in groups:
        parts = []
        for part in group.logits:
            if isinstance(part, RegionSlice):
                with contextlib.suppress(RegionError):
                    part = read_array(part)
            parts.append(part)
        out.append(dataclasses.replace(group, logits=parts))
    return out


async def _store(groups: list[RowGroup], nbytes: int) -> Any:
    """What ``sample_batch`` is called with by Ray: the batch itself when small
    (:data:`INLINE_BYTES`), else its reference after one ``ray.put`` (in a thread when large,
    :data:`COPY_ON_LOOP_BYTES`)."""
    if nbytes < INLINE_BYTES:
        return groups
    if nbytes <= COPY_ON_LOOP_BYTES:
        return ray.put(groups)
    return await asyncio.to_thread(ray.put, groups)
