"""Several language-model actors behind one ``generate``: least-loaded routing and replacement.

``samplerd serve --model DIR --model-replicas N`` runs N actors of the same model
(:mod:`samplerd.workers.lm_actor`), each with ``--model-gpus-per-replica`` GPUs. Each request goes to
the live replica with the fewest requests in flight; the engine of each batches its own
requests. A replica that dies (its event channel breaks, or a call finds it dead) ends its
requests in flight with :class:`~samplerd.workers.lm_actor.ModelReplicaLost` at once, never leaving
them waiting, and is replaced in the background, with back-off while creation keeps failing,
as the sampler pool replaces its actors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from samplerd.workers.generation.loader import ModelInfo
from samplerd.workers.generation.request import GenerationEvent, GenerationRequest
from samplerd.workers.lm_actor import LanguageModelClient, LMActorConfig, ModelReplicaLost
from samplerd.workers.pool import ACTOR_LOST

_log = logging.getLogger(__name__)

#: Longest pause between attempts to replace a replica.
MAX_RESTART_BACKOFF_S = 30.0


class LanguageModelReplicas:
    """``replicas`` language-model actors of one model; see the module docstring."""

    def __init__(self, config: LMActorConfig, replicas: int = 1, restart_backoff_s: float = 1.0) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.config = config
        self._slots: list[LanguageModelClient | None] = [None] * replicas  # None: being (re)started
        self._restart_backoff_s = restart_backoff_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.info: ModelInfo | None = None

    async def start(self) -> None:
        """Start every replica and wait for their models; raises the first start's error
        (``ModelLoadError``, ``TimeoutError``) after stopping the others."""
        results = await asyncio.gather(
            *(LanguageModelClient.start(self.config, self._lost) for _ in self._slots), return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        for i, result in enumerate(results):
            if isinstance(result, LanguageModelClient):
                self._slots[i] = result
        if failed is not None:
            await self.close()
            raise failed
        first = self._slots[0]
        assert first is not None
        self.info = first.info

    @property
    def replicas(self) -> list[LanguageModelClient | None]:
        """The replica slots in order (None: being replaced), for diagnostics and tests."""
        return list(self._slots)

    def alive(self) -> int:
        """How many replicas are up."""
        return sum(1 for c in self._slots if c is not None and not c.lost)

    def ready(self) -> bool:
        """True while at least one replica is up."""
        return self.alive() > 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Run ``request`` on the least-loaded live replica; yield its events (see
        :meth:`LanguageModelClient.generate`). Raises ModelReplicaLost when none is up, or when
        its replica is lost mid-generation."""
        live = [c for c in self._slots if c is not None and not c.lost]
        if not live:
            raise ModelReplicaLost("no language-model replica is up (one is being started); retry")
        replica = min(live, key=lambda c: c.live)
        async with contextlib.aclosing(replica.generate(request)) as events:
            async for event in events:
                yield event

    async def load(self) -> dict[str, int]:
        """Running / waiting / submitted requests summed over the live replicas; a replica found
        dead is replaced. Raises ModelReplicaLost when none answers."""
        live = [c for c in self._slots if c is not None and not c.lost]
        answers = await asyncio.gather(*(c.load() for c in live), return_exceptions=True)
        total: dict[str, int] = {}
        answered = 0
        for client, answer in zip(live, answers, strict=True):
            if isinstance(answer, ACTOR_LOST):
                client.mark_lost(answer)
            elif isinstance(answer, BaseException):
                _log.warning("a language-model replica did not report its load: %s", answer)
            else:
                answered += 1
                for key, value in answer.items():
                    total[key] = total.get(key, 0) + value
        if not answered:
            raise ModelReplicaLost("no language-model replica answers")
        return total

    async def close(self) -> None:
        """Stop replacing, and stop every replica."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        clients = [c for c in self._slots if c is not None]
        self._slots = [None] * len(self._slots)
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    def _lost(self, client: LanguageModelClient) -> None:
        """A replica was lost (its streams already ended): start its replacement."""
        if self._stopping or client not in self._slots:
            return
        index = self._slots.index(client)
        self._slots[index] = None
        task = asyncio.get_running_loop().create_task(self._replace(index), name=f"lm-replace-{index}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, index: int) -> None:
        backoff = self._restart_backoff_s
        while not self._stopping:
            try:
                client = await LanguageModelClient.start(self.config, self._lost)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                _log.error("could not replace language-model replica %d: %s (again in %.0f s)", index, error,
                           backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_RESTART_BACKOFF_S)
                continue
            if self._stopping:
                await client.close()
                return
            self._slots[index] = client
            _log.info("language-model replica %d replaced", index)
            return
