"""How batches reach the sampler actors: shared-memory batch channels, or one ``ray.put`` each.

Either way every job gets the library's own answer, whatever its batch's size: small enough to
travel inline, a channel's worth written on the event loop, large enough to be written off it,
or larger than a channel (it goes by ``ray.put``, and the channel does not grow: Ray never
frees a channel's old buffer). A channel that stops taking batches costs no job its answer:
it is retired and its batches go by ``ray.put``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
import torch
from test_dispatcher import assert_same_output, direct

from sampling import SamplingParams
from service.dispatcher import Dispatcher, DispatcherConfig, SampleJob
from workers import channels
from workers.pool import COPY_ON_LOOP_BYTES, INLINE_BYTES

on_the_session_loop = pytest.mark.asyncio(loop_scope="session")

#: (rows, V, dtype) per job: inline-sized, written on the event loop, written off it, and larger
#: than a channel; fp16 and bf16 travel as their bits.
JOB_SHAPES = [
    (1, 64, torch.float32),
    (3, 32000, torch.bfloat16),
    (9, 131072, torch.float32),
    (36, 131072, torch.float16),
]


def test_the_job_shapes_cover_every_size_class() -> None:
    sizes = sorted(rows * vocab * dtype.itemsize for rows, vocab, dtype in JOB_SHAPES)
    assert sizes[0] < INLINE_BYTES < sizes[1] <= COPY_ON_LOOP_BYTES < sizes[2] <= channels.CHANNEL_BYTES < sizes[3]


def mixed_jobs(seed: int) -> list[SampleJob]:
    jobs = []
    for i, (rows, vocab, dtype) in enumerate(JOB_SHAPES):
        generator = torch.Generator().manual_seed(seed + i)
        logits = (torch.randn(rows, vocab, generator=generator) * 3).to(dtype)
        params = SamplingParams(top_p=0.9, seed=seed + i) if i % 2 else SamplingParams(typical_p=0.8, seed=seed + i)
        jobs.append(SampleJob(logits, params, steps=i))
    return jobs


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["channel", "put"])
async def transport_dispatcher(request: pytest.FixtureRequest, ray_instance: None) -> AsyncIterator[Dispatcher]:
    """Two CPU actors, two batches in flight each, batches sent by the given transport."""
    config = DispatcherConfig(num_workers=2, device="cpu", num_gpus_per_worker=0.0, max_batches_per_worker=2,
                              batch_transport=request.param)
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
    want = 2 if transport_dispatcher._config.batch_transport == "channel" else 0
    assert [w.channels for w in transport_dispatcher.pool.workers()] == [want, want]
    for worker in transport_dispatcher.pool._workers:
        for channel in worker.channels:  # never grown (Ray's private field: no public size)
            assert channel._typ.buffer_size_bytes == channels.CHANNEL_BYTES


@on_the_session_loop
async def test_a_channel_that_stops_taking_batches_falls_back_to_put(
    ray_instance: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channels, "WRITE_TIMEOUT_S", 0.5)
    d = Dispatcher(DispatcherConfig(num_workers=1, device="cpu", num_gpus_per_worker=0.0))
    await d.start()
    try:
        [worker] = d.pool.workers()
        assert worker.channels == 1
        # Break the channel: the actor reads a value and keeps it, so its buffer is never released.
        assert channels.write(d.pool._workers[0].channels[0], np.zeros(1000, dtype=np.float32), 4000)

        def keep_what_is_read(actor: object) -> None:
            actor._kept = channels.read(actor._channels[0])

        await worker.actor.__ray_call__.remote(keep_what_is_read)
        jobs = mixed_jobs(seed=7)

        results = [await d.submit(job) for job in jobs]

        for job, result in zip(jobs, results, strict=True):
            assert_same_output(result, direct(job))
        assert [w.channels for w in d.pool.workers()] == [0]
    finally:
        await d.stop()
