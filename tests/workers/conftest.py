"""Fixtures for the worker and dispatcher tests: one real local Ray instance per test session.

Dispatchers created by these tests join that instance (and leave it running when they
stop); the session fixture shuts it down at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import ray

from service.dispatcher import Dispatcher, DispatcherConfig


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[None]:
    """A local Ray instance for the whole session (no dashboard), shut down at the end."""
    started = not ray.is_initialized()
    if started:
        # Logical CPUs: each sampler actor reserves one, and both dispatchers below (plus a
        # replacement being started) may hold actors at once; the machine's cores are shared.
        ray.init(include_dashboard=False, num_cpus=6, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


class BatchLog:
    """A batch observer that records every executed batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, dict[str, float], str]] = []

    def __call__(self, rows: int, kernel_seconds_by_strategy: dict[str, float], device: str) -> None:
        self.batches.append((rows, kernel_seconds_by_strategy, device))

    @property
    def rows(self) -> list[int]:
        """Rows of each executed batch, in order."""
        return [rows for rows, _, _ in self.batches]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def dispatcher(ray_instance: None) -> AsyncIterator[Dispatcher]:
    """Two CPU sampler actors with the default batching settings."""
    d = Dispatcher(DispatcherConfig(num_workers=2, device="cpu", num_gpus_per_worker=0.0))
    await d.start()
    yield d
    await d.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def small_dispatcher(ray_instance: None) -> AsyncIterator[Dispatcher]:
    """One CPU actor, one batch in flight at a time, room for 8 waiting rows: a queue that
    fills while the actor is busy."""
    config = DispatcherConfig(
        num_workers=1,
        device="cpu",
        num_gpus_per_worker=0.0,
        max_queue_rows=8,
        batch_window_s=0.0,
        max_batches_per_worker=1,
    )
    d = Dispatcher(config)
    await d.start()
    yield d
    await d.stop()


@pytest.fixture
def batch_log() -> BatchLog:
    """A fresh :class:`BatchLog`; install it with ``d.set_batch_observer(batch_log)``."""
    return BatchLog()
