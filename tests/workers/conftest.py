"""Fixtures for the worker and dispatcher tests: one real local Ray instance per test session.

Dispatchers created by these tests join that instance (and leave it running when they
stop); the session fixture shuts it down at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from batch_log import BatchLog

from samplerd.service.config import DispatcherConfig
from samplerd.service.dispatcher import Dispatcher
from samplerd.workers.config import PoolConfig


@pytest.fixture(scope="session")
def ray_instance(ray_connected: str) -> Iterator[None]:
    """The session's local Ray instance (tests/conftest.py), joined by this process."""
    yield


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def dispatcher(ray_instance: None) -> AsyncIterator[Dispatcher]:
    """Two CPU sampler actors with the default batching settings."""
    d = Dispatcher(DispatcherConfig(pool=PoolConfig(num_workers=2, device="cpu", num_gpus_per_worker=0.0)))
    await d.start()
    yield d
    await d.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def small_dispatcher(ray_instance: None) -> AsyncIterator[Dispatcher]:
    """One CPU actor, one batch in flight at a time, room for 8 waiting rows: a queue that
    fills while the actor is busy."""
    config = DispatcherConfig(
        pool=PoolConfig(num_workers=1, device="cpu", num_gpus_per_worker=0.0, max_batches_per_worker=1),
        max_queue_rows=8,
        batch_window_s=0.0,
    )
    d = Dispatcher(config)
    await d.start()
    yield d
    await d.stop()


@pytest.fixture
def batch_log() -> BatchLog:
    """A fresh :class:`BatchLog`; install it with ``d.set_batch_observer(batch_log)``."""
    return BatchLog()
