"""The language-model actor: a :class:`~samplerd.workers.generation.GenerationEngine` in a Ray actor.

How the gRPC ``Generate`` handler uses it (everything it needs is in this module and in
:mod:`samplerd.workers.generation`; the front end never imports ray)::

    from samplerd.workers.generation import FinishEvent, GenerationRequest, InvalidGenerationRequest, ModelLoadError
    from samplerd.workers.lm_actor import LanguageModelClient, LMActorConfig

    # at startup (``samplerd serve --model DIR``); Ray must be connected (samplerd.workers.cluster.connect)
    lm = await LanguageModelClient.start(LMActorConfig(model_dir=DIR, device="auto", dtype="auto"))
    lm.info                      # ModelInfo: architecture, device, dtype, vocab_size, max_positions, ...

    # per Generate call (one GenerationRequest per prompt)
    request = GenerationRequest(prompt="Once upon", params=SamplingParams(top_p=0.9, seed=7),
                                max_tokens=64, stop=("\\n\\n",), stop_token_ids=(), ignore_eos=False)
    async with contextlib.aclosing(lm.generate(request)) as events:   # raises InvalidGenerationRequest
        async for event in events:                                     # (-> INVALID_ARGUMENT)
            if isinstance(event, FinishEvent): ...  # last event: finish_reason, stats, output_text
            else: ...                               # TokenEvent: token_id, text, logprob, statistics

    await lm.close()

* ``LanguageModelClient.start(config) -> LanguageModelClient`` creates the actor and waits for
  the model to load; raises :class:`~samplerd.workers.generation.ModelLoadError` (the directory holds
  no loadable model: FAILED_PRECONDITION at startup) and ``TimeoutError``.
* ``LanguageModelClient.generate(request) -> AsyncIterator[TokenEvent | FinishEvent]``: the
  request's events in order: one :class:`~samplerd.workers.generation.TokenEvent` per generated token
  (``request_id, index, token_id, text, logprob, surprise, entropy, varentropy,
  truncated_entropy, kept_tokens, kept_mass, top_k_entropy, top_k_mass, strategy,
  top_logprobs, mirostat_mu``), then exactly one :class:`~samplerd.workers.generation.FinishEvent`
  (``request_id, finish_reason in {length, stop, eos, cancelled, error}, text, output_text,
  token_ids, prompt_tokens, stats: SessionStats(tokens, mean_surprise, log_perplexity,
  perplexity, mean_entropy, detection_gap), stop_reason, error``). The concatenated ``text`` of
  all events is the generated text. Closing the generator early (``aclosing`` above, or
  leaving the ``async for``, which closes it when it is collected), or cancelling the task
  that runs it (client gone, deadline passed), cancels the generation: it stops at the
  actor's next step and frees its batch slot.
* ``LanguageModelClient.cancel(request_id) -> bool`` cancels by id (the id is
  ``request.request_id`` when given, else the ``request_id`` of the events).
* ``LanguageModelClient.load() -> dict``: ``running`` / ``waiting`` / ``submitted`` counts.
* ``LanguageModelClient.live`` is the number of its requests in flight (what a router balances).
  When the actor dies or its event channel breaks, every stream in flight raises
  :class:`ModelReplicaLost` (UNAVAILABLE; a front end never waits on a dead actor) and
  ``on_lost`` (given to :meth:`LanguageModelClient.start`) is called once.

Underneath, the actor (:class:`LanguageModelActor`, a threaded Ray actor) runs the engine's
decode loop in a background thread, so every request in flight is batched together. Its
events come back on one channel per actor: the client's reader task asks for
``events(timeout_s)``, the events of every live request produced since the last ask (waiting
up to the timeout for one), and hands each request's events to its stream. So one round trip
per decode step serves all streams (not one per stream), and no actor thread is held per
stream. The asks go over a link (:mod:`samplerd.workers.socket_link`, as the sampler actors' batches
do: ~0.25 ms of the front end's CPU against ~1.6 ms for a Ray call), and requests over a
second one (by Ray where no link opens); cancellations are actor calls
(``cancel(request_id)``). Requests and events travel as plain values
(:mod:`samplerd.workers.generation.wire`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError

from samplerd.sampling import SamplingError
from samplerd.workers.config import DEVICES, LinkLimits
from samplerd.workers.generation.engine import GenerationEngine
from samplerd.workers.generation.loader import ModelInfo
from samplerd.workers.generation.request import (
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    InvalidGenerationRequest,
)
from samplerd.workers.generation.wire import decode_events, decode_request, encode_events, encode_request
from samplerd.workers.pool import open_link
from samplerd.workers.socket_link import LinkServer

_log = logging.getLogger(__name__)

#: Language-model actors are named ``samplerd-lm-<front-end pid>-<n>`` (found by operators and
#: fault-injection tests with ``ray.util.list_named_actors(all_namespaces=True)``).
ACTOR_NAME_PREFIX = "samplerd-lm-"
_SPAWNED = itertools.count()


class ModelReplicaLost(ConnectionError):
    """The language-model actor died, or its event channel broke, while a request was in
    flight (or before it was sent): nothing more will come for it; retryable elsewhere."""


@dataclass(frozen=True)
class LMActorConfig:
    """Where the model is and what the actor may use.

    ``num_gpus`` None means 1 for ``device="cuda"``, and for ``device="auto"`` 1 when the
    cluster has GPUs, else 0 (Ray hides GPUs from actors that reserve none).
    ``max_concurrency`` is the actor's threads for calls (submit, cancel, load, and the event
    channel when it goes by Ray); streams hold none. ``poll_timeout_s`` is how long one ask of
    the event channel waits for an event. ``torch_threads`` sets the actor's intra-op threads
    on CPU (None: Ray's default, one per reserved CPU). ``links`` False sends everything by Ray
    calls (as where no link can open).
    """

    model_dir: str
    device: str = "auto"
    dtype: str = "auto"
    num_gpus: float | None = None
    num_cpus: float = 1.0
    max_batch_size: int = 32
    batching: str = "auto"
    max_concurrency: int = 8
    poll_timeout_s: float = 0.5
    startup_timeout_s: float = 600.0
    torch_threads: int | None = None
    links: bool = True

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ValueError(f"num_gpus must be >= 0, got {self.num_gpus}")
        if self.device == "cuda" and self.num_gpus == 0:
            raise ValueError("device 'cuda' needs num_gpus > 0: Ray hides GPUs from actors without")
        if self.max_concurrency < 2:
            raise ValueError(f"max_concurrency must be >= 2, got {self.max_concurrency}")
        if self.poll_timeout_s <= 0:
            raise ValueError(f"poll_timeout_s must be > 0, got {self.poll_timeout_s}")

    def gpus(self) -> float:
        """The GPUs the actor reserves."""
        if self.num_gpus is not None:
            return self.num_gpus
        if self.device == "cuda":
            return 1.0
        if self.device == "auto":
            return 1.0 if ray.cluster_resources().get("GPU", 0.0) >= 1 else 0.0
        return 0.0


class LanguageModelWorker:
    """The actor's body (a plain class; :data:`LanguageModelActor` is its Ray actor class).

    A model that fails to load does not kill the actor: :meth:`ready` raises the
    :class:`~samplerd.workers.generation.ModelLoadError`, so the caller gets the real reason.
    """

    def __init__(self, model_dir: str, device: str = "auto", dtype: str = "auto", max_batch_size: int = 32,
                 batching: str = "auto", torch_threads: int | None = None) -> None:
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)
        self._engine: GenerationEngine | None = None
        self._error: BaseException | None = None
        self._link: LinkServer | None = None
        try:
            self._engine = GenerationEngine(model_dir, device, dtype, max_batch_size=max_batch_size,
                                            batching=batching)
            self._engine.start()
        except Exception as error:  # reported by ready()
            self._error = error

    def ready(self) -> ModelInfo:
        """The loaded model's description; raises the load error when loading failed."""
        return self._live().info

    def submit(self, request: GenerationRequest) -> str:
        """Queue a request, its events for the channel; return its id (raises InvalidGenerationRequest)."""
        return self._live().submit(request, feed=True)

    def events(self, timeout_s: float = 0.5) -> list[tuple[Any, ...]]:
        """The events of every live request not read yet (:mod:`samplerd.workers.generation.wire`
        tuples), waiting up to ``timeout_s`` for at least one."""
        return encode_events(self._live().poll_feed(timeout_s))

    def open_link(self, tcp: bool = False) -> Any:
        """Listen for the front end's links (with ``tcp`` also on this node's address); where to
        connect. The front end opens two: the event channel, whose calls are :meth:`events`
        timeouts, and one for submits (see :meth:`link_call`)."""
        if self._link is None:
            self._link = LinkServer(self.link_call)
        if tcp:
            self._link.listen_tcp(ray.util.get_node_ip_address())
        return self._link.address(ray.get_runtime_context().get_node_id())

    def link_call(self, call: Any) -> Any:
        """One call over a link: a number is an :meth:`events` timeout; ``("submit", request)``
        (a :func:`~samplerd.workers.generation.wire.encode_request` tuple) answers ``("ok", request_id)``
        or ``("invalid", field, reason)`` (the field must survive the trip: INVALID_ARGUMENT names it)."""
        if isinstance(call, (int, float)):
            return self.events(float(call))
        kind, payload = call
        if kind != "submit":
            raise ValueError(f"unknown link call {kind!r}")
        try:
            return ("ok", self.submit(decode_request(payload)))
        except SamplingError as error:  # InvalidGenerationRequest too
            return ("invalid", error.field, error.reason)

    def cancel(self, request_id: str) -> bool:
        """Cancel a request (False when unknown or already finished)."""
        return self._live().cancel(request_id)

    def load(self) -> dict[str, int]:
        """Running / waiting / submitted request counts."""
        return self._live().load()

    def pid(self) -> int:
        """The actor's process id (for fault-injection tests)."""
        return os.getpid()

    def shutdown(self) -> None:
        """Stop the decode loop; live requests end as ``cancelled``."""
        if self._engine is not None:
            self._engine.stop()

    def _live(self) -> GenerationEngine:
        if self._engine is None:
            assert self._error is not None
            raise self._error
        return self._engine


#: The Ray actor class; options (num_cpus, num_gpus, max_concurrency) are set at creation.
LanguageModelActor = ray.remote(LanguageModelWorker)


def _unwrapped(error: BaseException) -> BaseException:
    """The exception an actor method raised, out of Ray's RayTaskError wrapper."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


class LanguageModelClient:
    """The front end's handle on one language-model actor (asyncio; see the module docstring)."""

    def __init__(self, actor: Any, info: ModelInfo, config: LMActorConfig,
                 on_lost: Callable[[LanguageModelClient], None] | None = None) -> None:
        self._actor = actor
        self.info = info
        self.config = config
        self._on_lost = on_lost
        self._streams: dict[str, asyncio.Queue[list[GenerationEvent] | BaseException]] = {}
        self._ids = itertools.count()
        self._prefix = f"lm-{os.getpid()}-{id(self):x}-"
        self._lost: ModelReplicaLost | None = None
        self._link: Any = None  # the event channel's link (None: by Ray)
        self._submits: Any = None  # the link that submits go over (None: by Ray)
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, config: LMActorConfig,
                    on_lost: Callable[[LanguageModelClient], None] | None = None) -> LanguageModelClient:
        """Create the actor, wait until its model is loaded (Ray must be connected) and open its
        event channel."""
        name = f"{ACTOR_NAME_PREFIX}{os.getpid()}-{next(_SPAWNED)}"
        actor = LanguageModelActor.options(
            num_cpus=config.num_cpus, num_gpus=config.gpus(), max_concurrency=config.max_concurrency,
            max_restarts=0, name=name,
        ).remote(config.model_dir, config.device, config.dtype, config.max_batch_size, config.batching,
                 config.torch_threads)
        try:
            info = await asyncio.wait_for(_call(actor.ready.remote()), config.startup_timeout_s)
            client = cls(actor, info, config, on_lost)
            client._link = await open_link(actor, LinkLimits(), ()) if config.links else None
            if client._link is not None:
                client._submits = await open_link(actor, LinkLimits(), ())
        except BaseException as error:
            ray.kill(actor)
            if isinstance(error, asyncio.TimeoutError):
                raise TimeoutError(f"the language model did not load within {config.startup_timeout_s} s") from None
            raise
        client._reader = asyncio.create_task(client._read(), name=f"lm-events-{name}")
        return client

    @property
    def live(self) -> int:
        """Requests in flight on this actor (submitted, not yet finished or left)."""
        return len(self._streams)

    @property
    def lost(self) -> bool:
        """True once the actor died or its channel broke (see :class:`ModelReplicaLost`)."""
        return self._lost is not None

    @property
    def linked(self) -> bool:
        """True when the event channel is a link, False when it goes by Ray."""
        return self._link is not None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Run ``request``; yield its events in order, ending with the FinishEvent."""
        if self._lost is not None:
            raise self._lost
        request_id = request.request_id or f"{self._prefix}{next(self._ids)}"
        if request_id in self._streams:
            raise InvalidGenerationRequest("request_id", f"request_id {request_id!r} is already in use")
        # Registered before the submit: its first events may come before the submit's answer.
        stream: asyncio.Queue[list[GenerationEvent] | BaseException] = asyncio.Queue()
        self._streams[request_id] = stream
        submitted = finished = False
        try:
            # Set before the await: a caller cancelled while the submit is on its way must still
            # cancel what the actor may have started.
            submitted = True
            try:
                await self._submit(dataclasses.replace(request, request_id=request_id))
            except InvalidGenerationRequest:
                submitted = False
                raise
            while not finished:
                events = await stream.get()
                if isinstance(events, BaseException):
                    raise events
                for event in events:
                    finished = isinstance(event, FinishEvent)
                    yield event
        finally:
            self._streams.pop(request_id, None)
            if submitted and not finished and self._lost is None:  # the caller left: stop the generation
                self._actor.cancel.remote(request_id)

    async def cancel(self, request_id: str) -> bool:
        """Cancel a request by id."""
        return await _call(self._actor.cancel.remote(request_id))

    async def load(self) -> dict[str, int]:
        """Running / waiting / submitted request counts."""
        return await _call(self._actor.load.remote())

    async def close(self) -> None:
        """Stop the decode loop and the actor; streams still open raise :class:`ModelReplicaLost`."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._fail_streams(ModelReplicaLost("the language model was stopped"))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_call(self._actor.shutdown.remote()), 30.0)
        self.kill()

    def kill(self) -> None:
        """Kill the actor at once (its streams end through the channel's loss)."""
        for link in (self._link, self._submits):
            if link is not None:
                link.close()
        with contextlib.suppress(Exception):
            ray.kill(self._actor, no_restart=True)

    async def _submit(self, request: GenerationRequest) -> None:
        """Start ``request`` on the actor: over the submit link (a fraction of a Ray call's cost
        and latency, which matters when many prompts arrive at once: the engine batches what has
        arrived by its next step), else by Ray. Raises InvalidGenerationRequest, or
        ModelReplicaLost when the actor is gone."""
        if self._submits is None:
            try:
                await _call(self._actor.submit.remote(request))
            except RayError as error:  # the actor is gone (or going): nothing was started
                raise self.mark_lost(error) from None
            return
        try:
            answer = await self._submits.call(("submit", encode_request(request)))
        except Exception as error:  # the link broke: the actor died, or cannot be trusted
            raise self.mark_lost(error) from None
        if answer[0] == "invalid":
            raise InvalidGenerationRequest(answer[1], answer[2])

    async def _ask(self) -> list[tuple[Any, ...]]:
        if self._link is not None:
            return await self._link.call(self.config.poll_timeout_s)
        return await _call(self._actor.events.remote(self.config.poll_timeout_s))

    async def _read(self) -> None:
        """The event channel: ask for every live request's events, hand each stream its own."""
        try:
            while True:
                rows = await self._ask()
                by_request: dict[str, list[GenerationEvent]] = {}
                for event in decode_events(rows):
                    by_request.setdefault(event.request_id, []).append(event)
                for request_id, events in by_request.items():
                    stream = self._streams.get(request_id)
                    if stream is not None:  # else its caller left; the actor was told to cancel it
                        stream.put_nowait(events)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the actor died, or the channel broke: no stream will hear more
            self.mark_lost(error)

    def mark_lost(self, error: BaseException) -> ModelReplicaLost:
        """Mark the actor lost (once): fail every open stream, kill it, tell ``on_lost``."""
        if self._lost is None:
            _log.error("language-model actor lost: %s", error)
            self._lost = ModelReplicaLost(f"the language-model worker is gone: {_describe(error)}")
            self._fail_streams(self._lost)
            self.kill()
            if self._on_lost is not None:
                self._on_lost(self)
        return self._lost

    def _fail_streams(self, error: ModelReplicaLost) -> None:
        for stream in self._streams.values():
            stream.put_nowait(error)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


async def _call(ref: Any) -> Any:
    """Await an ObjectRef, raising the actor method's own exception rather than Ray's wrapper."""
    try:
        return await ref
    except RayTaskError as error:
        raise _unwrapped(error) from None
