"""Path-aware top-p steps on the sampler actors: batched with the other jobs of the moment, in one
actor call, and equal to the library's answer (``filter_logits`` per path, then
``path_aware_step``), over a link and by Ray alike; a bad job fails alone."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import torch
from batch_log import BatchLog

from samplerd.sampling import SamplingError, SamplingParams, SequenceState, filter_logits
from samplerd.sampling.strategies.path_top_p import path_aware_step
from samplerd.service.config import DispatcherConfig
from samplerd.service.dispatcher import Dispatcher, PathStepJob, PathStepResult, SampleJob, SampleResult
from samplerd.workers.config import PoolConfig

pytestmark = pytest.mark.asyncio(loop_scope="session")

V = 500


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["socket", "put"])
async def one_actor(request: pytest.FixtureRequest, ray_instance: None) -> AsyncIterator[Dispatcher]:
    """One CPU sampler actor, batches over its link or by Ray, and a batch window long enough for
    jobs submitted together to share a call."""
    pool = PoolConfig(num_workers=1, device="cpu", num_gpus_per_worker=0.0, batch_transport=request.param)
    d = Dispatcher(DispatcherConfig(pool=pool, batch_window_s=0.05))
    await d.start()
    yield d
    await d.stop()


def path_job(seed: int, paths: int, step: int, **params) -> PathStepJob:
    generator = torch.Generator().manual_seed(seed)
    histories = [tuple(torch.randint(0, V, (3 + i,), generator=generator).tolist()) for i in range(paths)]
    return PathStepJob(
        logits=torch.randn(paths, V, generator=generator) * 3,
        params=SamplingParams(path_beams=paths + 1, seed=seed, **params), step=step, seed=seed,
        path_logprobs=sorted((-torch.rand(paths, generator=generator).double() * 5).tolist(), reverse=True),
        states=[SequenceState(history=h) for h in histories])


def library_step(job: PathStepJob):
    per_path = dataclasses.replace(job.params, path_beams=1, path_top_p=1.0)
    filtered = filter_logits(job.logits, per_path, job.step, list(job.states))
    return path_aware_step(filtered, torch.tensor(job.path_logprobs, dtype=torch.float64), job.params.path_beams,
                           job.params.path_top_p, job.seed, job.step)


async def test_path_steps_ride_with_other_jobs_and_equal_the_library(one_actor, batch_log: BatchLog):
    one_actor.set_batch_observer(batch_log)
    try:
        jobs = [path_job(1, 3, 4, top_p=0.9, path_top_p=0.95), path_job(2, 2, 0, top_k=50, repetition_penalty=1.3),
                path_job(3, 4, 7, min_p=0.05, temperature=0.8, path_top_p=0.9)]
        ordinary = SampleJob(torch.randn(2, V), SamplingParams(top_p=0.8, seed=5))
        bad = path_job(4, 2, 1)
        bad.logits[1, 3] = float("nan")  # its rows fail in the sampler; its neighbours do not
        results = await asyncio.gather(*(one_actor.submit(j) for j in [*jobs, ordinary, bad]),
                                       return_exceptions=True)
    finally:
        one_actor.set_batch_observer(None)
    for job, result in zip(jobs, results[:3], strict=True):
        assert isinstance(result, PathStepResult)
        expected = library_step(job)
        assert result.step.parent.tolist() == expected.parent.tolist()
        assert result.step.token.tolist() == expected.token.tolist()
        assert torch.allclose(result.step.path_logprob, expected.path_logprob)
        assert torch.allclose(result.step.token_logprob, expected.token_logprob)
    assert isinstance(results[3], SampleResult) and results[3].token_ids.shape == (2, 1)
    assert isinstance(results[4], SamplingError) and results[4].field == "logits"
    # One actor call took the path steps and the ordinary job together (the queue was empty, so
    # the first job waited the batch window for the rest).
    rows, seconds_by_strategy, _ = batch_log.batches[0]
    assert rows == 3 + 2 + 4 + 2 + 2
    assert {"path_top_p", "top_p"} <= set(seconds_by_strategy)


async def test_malformed_path_steps_are_refused_at_once(one_actor):
    job = path_job(1, 2, 0)
    with pytest.raises(ValueError, match="path log-probability"):
        await one_actor.submit(dataclasses.replace(job, path_logprobs=[0.0]))
    with pytest.raises(ValueError, match="path_beams"):
        await one_actor.submit(dataclasses.replace(job, params=SamplingParams()))
