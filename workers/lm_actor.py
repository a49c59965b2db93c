"""The language-model actor: a :class:`~workers.generation.GenerationEngine` in a Ray actor.

How the gRPC ``Generate`` handler uses it (everything it needs is in this module and in
:mod:`workers.generation`; the front end never imports ray)::

    from workers.generation import FinishEvent, GenerationRequest, InvalidGenerationRequest, ModelLoadError
    from workers.lm_actor import LanguageModelClient, LMActorConfig

    # at startup (``samplerd serve --model DIR``); Ray must be connected (workers.cluster.connect)
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
  the model to load; raises :class:`~workers.generation.ModelLoadError` (the directory holds
  no loadable model: FAILED_PRECONDITION at startup) and ``TimeoutError``.
* ``LanguageModelClient.generate(request) -> AsyncIterator[TokenEvent | FinishEvent]``: the
  request's events in order: one :class:`~workers.generation.TokenEvent` per generated token
  (``request_id, index, token_id, text, logprob, surprise, entropy, varentropy,
  truncated_entropy, kept_tokens, kept_mass, top_k_entropy, top_k_mass, strategy,
  top_logprobs, mirostat_mu``), then exactly one :class:`~workers.generation.FinishEvent`
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

Underneath, the actor (:class:`LanguageModelActor`, a threaded Ray actor) runs the engine's
decode loop in a background thread, so every request in flight is batched together, and
answers ``start(request) -> request_id``, ``poll(request_id, timeout_s) -> list[event]``
(blocks until at least one event or the timeout) and ``cancel(request_id) -> bool`` on its
other threads (``max_concurrency`` of them: one per concurrently polled stream). Polling
returns every event produced since the last poll, so a fast decode loop costs one round trip
per batch of events, not per token. Polling rather than Ray's streaming generators keeps
cancellation explicit and independent of how Ray cancels running actor tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayTaskError

from workers.config import DEVICES
from workers.generation.engine import GenerationEngine
from workers.generation.loader import ModelInfo
from workers.generation.request import FinishEvent, GenerationEvent, GenerationRequest


@dataclass(frozen=True)
class LMActorConfig:
    """Where the model is and what the actor may use.

    ``num_gpus`` None means 1 for ``device="cuda"``, and for ``device="auto"`` 1 when the
    cluster has GPUs, else 0 (Ray hides GPUs from actors that reserve none).
    ``max_concurrency`` bounds the streams polled at once (each holds an actor thread while
    it waits); ``torch_threads`` sets the actor's intra-op threads on CPU (None: Ray's default,
    one per reserved CPU).
    """

    model_dir: str
    device: str = "auto"
    dtype: str = "auto"
    num_gpus: float | None = None
    num_cpus: float = 1.0
    max_batch_size: int = 32
    batching: str = "auto"
    max_concurrency: int = 256
    poll_timeout_s: float = 0.5
    startup_timeout_s: float = 600.0
    torch_threads: int | None = None

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
    :class:`~workers.generation.ModelLoadError`, so the caller gets the real reason.
    """

    def __init__(self, model_dir: str, device: str = "auto", dtype: str = "auto", max_batch_size: int = 32,
                 batching: str = "auto", torch_threads: int | None = None) -> None:
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)
        self._engine: GenerationEngine | None = None
        self._error: BaseException | None = None
        try:
            self._engine = GenerationEngine(model_dir, device, dtype, max_batch_size=max_batch_size,
                                            batching=batching)
            self._engine.start()
        except Exception as error:  # reported by ready()
            self._error = error

    def ready(self) -> ModelInfo:
        """The loaded model's description; raises the load error when loading failed."""
        return self._live().info

    def start(self, request: GenerationRequest) -> str:
        """Queue a request; return its id (raises InvalidGenerationRequest)."""
        return self._live().submit(request)

    def poll(self, request_id: str, timeout_s: float = 0.5) -> list[GenerationEvent]:
        """Events not read yet, waiting up to ``timeout_s`` for at least one."""
        return self._live().poll(request_id, timeout_s)

    def cancel(self, request_id: str) -> bool:
        """Cancel a request (False when unknown or already finished)."""
        return self._live().cancel(request_id)

    def load(self) -> dict[str, int]:
        """Running / waiting / submitted request counts."""
        return self._live().load()

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

    def __init__(self, actor: Any, info: ModelInfo, config: LMActorConfig) -> None:
        self._actor = actor
        self.info = info
        self.config = config

    @classmethod
    async def start(cls, config: LMActorConfig) -> LanguageModelClient:
        """Create the actor and wait until its model is loaded (Ray must be connected)."""
        actor = LanguageModelActor.options(
            num_cpus=config.num_cpus, num_gpus=config.gpus(), max_concurrency=config.max_concurrency,
        ).remote(config.model_dir, config.device, config.dtype, config.max_batch_size, config.batching,
                 config.torch_threads)
        try:
            info = await asyncio.wait_for(_call(actor.ready.remote()), config.startup_timeout_s)
        except BaseException as error:
            ray.kill(actor)
            if isinstance(error, asyncio.TimeoutError):
                raise TimeoutError(f"the language model did not load within {config.startup_timeout_s} s") from None
            raise
        return cls(actor, info, config)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Run ``request``; yield its events in order, ending with the FinishEvent."""
        request_id = await _call(self._actor.start.remote(request))
        finished = False
        try:
            while not finished:
                events = await _call(self._actor.poll.remote(request_id, self.config.poll_timeout_s))
                for event in events:
                    finished = isinstance(event, FinishEvent)
                    yield event
        finally:
            if not finished:  # the caller left early or was cancelled: stop the generation
                self._actor.cancel.remote(request_id)

    async def cancel(self, request_id: str) -> bool:
        """Cancel a request by id."""
        return await _call(self._actor.cancel.remote(request_id))

    async def load(self) -> dict[str, int]:
        """Running / waiting / submitted request counts."""
        return await _call(self._actor.load.remote())

    async def close(self) -> None:
        """Stop the decode loop and the actor."""
        with contextlib.suppress(Exception):
            await _call(self._actor.shutdown.remote())
        ray.kill(self._actor)


async def _call(ref: Any) -> Any:
    """Await an ObjectRef, raising the actor method's own exception rather than Ray's wrapper."""
    try:
        return await ref
    except RayTaskError as error:
        raise _unwrapped(error) from None
