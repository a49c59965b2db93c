"""How batches reach the sampler actors: over a link (a Unix socket to each actor on this node),
or by an actor call each, stored once with ``ray.put``.

Either way every job gets the library's own answer, whatever its batch's size: small enough to
travel inline in a call, stored on the event loop, or stored off it (and several times a
socket's buffer). A link that breaks costs no job its answer: its batches go by Ray to the same
actor, which stays alive, until the health monitor has opened a new link.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import torch
from test_dispatcher import assert_same_output, direct

from samplerd.sampling import SamplingParams
from samplerd.service.config import DispatcherConfig
from samplerd.service.dispatcher import Dispatcher, SampleJob
from samplerd.workers import WorkerState
from samplerd.workers.config import PoolConfig
from samplerd.workers.pool import COPY_ON_LOOP_BYTES, INLINE_BYTES

on_the_session_loop = pytest.mark.asyncio(loop_scope="session")

#: (rows, V, dtype) per job: inline-sized, stored on the event loop, stored off it, and larger
#: still; fp16 and bf16 travel as their bits.
JOB_SHAPES = [
    (1, 64, torch.float32),
    (3, 32000, torch.bfloat16),
    (9, 131072, torch.float32),
    (36, 131072, torch.float16),
]


def test_the_job_shapes_cover_every_size_class() -> None:
    sizes = sorted(rows * vocab * dtype.itemsize for rows, vocab, dtype in JOB_SHAPES)
    assert sizes[0] < INLINE_BYTES < sizes[1] <= COPY_ON_LOOP_BYTES < sizes[2] < sizes[3]


def mixed_jobs(seed: int) -> list[SampleJob]:
    jobs = []
    for i, (rows, vocab, dtype) in enumerate(JOB_SHAPES):
        generator = torch.Generator().manual_seed(seed + i)
        logits = (torch.randn(rows, vocab, generator=generator) * 3).to(dtype)
        params = SamplingParams(top_p=0.9, seed=seed + i) if i % 2 else SamplingParams(typical_p=0.8, seed=seed + i)
        jobs.append(SampleJob(logits, params, steps=i))
    return jobs


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["socket", "put"])
async def transport_dispatcher(request: pytest.FixtureRequest, ray_instance: None) -> AsyncIterator[Dispatcher]:
    """Two CPU actors, two batches in flight each, batches sent by the given transport."""
    config = DispatcherConfig(pool=PoolConfig(num_workers=2, device="cpu", num_gpus_per_worker=0.0,
                                                 max_batches_per_worker=2, batch_transport=request.param))
    d = Dispatcher(config)
    await d.start()
    yield d
    await d.stop()


@on_the_session_loop
async def test_every_job_gets_the_librarys_answer_over_either_transport(transport_dispatcher: Dispatcher) -> None:
    jobs = [job for seed in range(0, 60, 10) for job in mixed_jobs(seed)]

    results = await asyncio.gather(*(transport_dispatcher.submit(job) for job in jobs))

    for job, result in zip(jobs, results, strict=True):
        assert_same_output(result, direct(job))
    linked = transport_dispatcher._config.pool.batch_transport == "socket"
    assert [w.linked for w in transport_dispatcher.pool.workers()] == [linked, linked]


@on_the_session_loop
async def test_a_link_that_breaks_mid_batch_falls_back_to_ray(ray_instance: None) -> None:
    d = Dispatcher(DispatcherConfig(pool=PoolConfig(num_workers=1, device="cpu", num_gpus_per_worker=0.0)))
    await d.start()
    try:
        [worker] = d.pool._workers
        assert worker.link is not None
        jobs = mixed_jobs(seed=7) * 3
        answers = asyncio.gather(*(d.submit(job) for job in jobs))
        while worker.inflight_batches == 0:  # a batch is on the link
            await asyncio.sleep(0.001)

        worker.link._sock.shutdown(socket.SHUT_RDWR)  # as a link broken by the kernel would look

        for job, result in zip(jobs, await answers, strict=True):
            assert_same_output(result, direct(job))
        assert [(w.linked, w.state) for w in d.pool.workers()] == [(False, WorkerState.ALIVE)]
        again = mixed_jobs(seed=8)
        for job, result in zip(again, [await d.submit(job) for job in again], strict=True):
            assert_same_output(result, direct(job))

        for _ in range(200):  # the health monitor (every 2 s) opens a new link
            if worker.link is not None:
                break
            await asyncio.sleep(0.1)
        assert [(w.linked, w.state) for w in d.pool.workers()] == [(True, WorkerState.ALIVE)]
        for job, result in zip(again, [await d.submit(job) for job in again], strict=True):
            assert_same_output(result, direct(job))
        assert worker.link is not None and worker.link.is_open
    finally:
        await d.stop()
