"""The dispatcher and the sampler actors, against a real local Ray instance.

Read as the specification of the dynamic batcher: concurrent jobs share actor calls, results
do not depend on the batch a row travelled in, admission control answers at once, expired
or cancelled work never runs, and a dying actor never leaves a job without an answer.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import pytest
import ray
import torch
from batch_log import BatchLog

from samplerd.sampling import SampleOutput, SamplingError, SamplingParams, SequenceState, sample
from samplerd.service.config import DispatcherConfig
from samplerd.service.dispatcher import Dispatcher, SampleJob, SampleResult
from samplerd.service.errors import DeadlineExceededError, QueueFullError, WorkersUnavailableError
from samplerd.workers.config import PoolConfig

pytestmark = pytest.mark.asyncio(loop_scope="session")

ALL_ALIVE_2 = {"alive": 2, "starting": 0, "dead": 0}


def slow_job(seed: int = 1) -> SampleJob:
    """A job that keeps a sampler actor busy for about a tenth of a second or more (4 rows,
    V = 2**19, a chain of the costliest fused strategies: a third of a second on a loaded
    2-core machine; every strategy is on a fused path, so only the work keeps it slow)."""
    generator = torch.Generator().manual_seed(seed)
    params = SamplingParams(top_h=0.95, entropy_top_k=10**6, optimal_k=1e-6, typical_p=0.95, eta=1e-9, epsilon=1e-9,
                            logit_bias={0: 0.5}, seed=seed)
    return SampleJob(torch.randn(4, 2**19, generator=generator), params)


def small_job(rows: int, vocab: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32) -> SampleJob:
    """A quick seeded job."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=generator).to(dtype)
    return SampleJob(logits, SamplingParams(top_k=8, seed=seed), steps=list(range(rows)))


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll ``predicate`` on the event loop until it holds; fail the test after ``timeout_s``."""
    give_up = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > give_up:
            pytest.fail(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.005)


def busy(d: Dispatcher) -> bool:
    """True when an actor has a batch in flight and nothing waits in the queue."""
    return d.queue_depth() == 0 and any(w.inflight_batches for w in d.pool.workers())


def direct(job: SampleJob) -> SampleOutput:
    """What the library answers for the job's rows on their own."""
    return sample(job.logits, job.params, job.steps, job.states)


def assert_same_output(got: SampleResult, want: SampleOutput) -> None:
    """Every field of the sampler's output is the same, NaN padding included."""
    assert torch.equal(got.token_ids, want.token_ids)
    torch.testing.assert_close(got.logprobs, want.logprobs, equal_nan=True)
    torch.testing.assert_close(got.mirostat_mu, want.mirostat_mu, equal_nan=True)
    assert got.strategies == want.strategies
    for name in ("entropy", "varentropy", "truncated_entropy", "kept_tokens", "kept_mass", "top_k_entropy",
                 "top_k_mass", "surprise"):
        torch.testing.assert_close(getattr(got.stats, name), getattr(want.stats, name), equal_nan=True)
    if want.top_logprobs is None:
        assert got.top_logprobs is None
    else:
        assert got.top_logprobs is not None
        assert torch.equal(got.top_logprobs[0], want.top_logprobs[0])
        torch.testing.assert_close(got.top_logprobs[1], want.top_logprobs[1], equal_nan=True)


def strategy_jobs() -> list[SampleJob]:
    """Seeded jobs over a spread of strategies, vocabulary sizes and dtypes."""
    params = [
        SamplingParams(top_p=0.9, seed=11),
        SamplingParams(top_k=20, temperature=0.8, seed=12),
        SamplingParams(min_p=0.05, seed=13),
        SamplingParams(typical_p=0.9, seed=14),
        SamplingParams(temperature=0.0),
        SamplingParams(mirostat=2, seed=15),
        SamplingParams(top_p=0.95, n=3, top_logprobs=5, seed=16),
        SamplingParams(epsilon=0.001, seed=17),
    ]
    shapes = [(1, 1000), (3, 32000), (2, 1000), (1, 257)]
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    jobs = []
    for i, p in enumerate(params):
        rows, vocab = shapes[i % len(shapes)]
        generator = torch.Generator().manual_seed(100 + i)
        logits = (3 * torch.randn(rows, vocab, generator=generator)).to(dtypes[i % len(dtypes)])
        jobs.append(SampleJob(logits, p, steps=[5 * i + r for r in range(rows)]))
    history = SequenceState(history=(1, 2, 3, 3))
    penalised = torch.randn(2, 1000, generator=torch.Generator().manual_seed(99))
    jobs.append(SampleJob(penalised, SamplingParams(repetition_penalty=1.5, seed=18), [7, 8], states=[history, None]))
    return jobs


# -- batching ------------------------------------------------------------------------------


async def test_concurrent_jobs_share_actor_calls(dispatcher: Dispatcher, batch_log: BatchLog) -> None:
    dispatcher.set_batch_observer(batch_log)
    jobs = [small_job(1, vocab=32000, seed=i) for i in range(64)]

    results = await asyncio.gather(*(dispatcher.submit(job) for job in jobs))

    assert len(results) == 64
    assert sum(batch_log.rows) == 64
    assert len(batch_log.batches) < 64 / 4, f"rows per actor call: {batch_log.rows}"
    assert all(device == "cpu" for _, _, device in batch_log.batches)


async def test_waiting_rows_are_shared_over_idle_actors(dispatcher: Dispatcher, batch_log: BatchLog) -> None:
    dispatcher.set_batch_observer(batch_log)

    await asyncio.gather(*(dispatcher.submit(small_job(1, seed=i)) for i in range(8)))

    assert batch_log.rows == [4, 4]


async def test_results_equal_direct_sampling_alone_and_in_a_crowd(dispatcher: Dispatcher) -> None:
    jobs = strategy_jobs()
    crowd = [small_job(3, vocab=1000, seed=200 + i) for i in range(20)]

    alone = [await dispatcher.submit(job) for job in jobs]
    together = await asyncio.gather(*(dispatcher.submit(job) for job in [*crowd, *jobs]))

    for job, got_alone, got_together in zip(jobs, alone, together[len(crowd):], strict=True):
        want = direct(job)
        assert_same_output(got_alone, want)
        assert_same_output(got_together, want)


async def test_mixed_vocab_sizes_and_dtypes_share_actor_calls(dispatcher: Dispatcher, batch_log: BatchLog) -> None:
    dispatcher.set_batch_observer(batch_log)
    jobs = [
        small_job(rows, vocab=vocab, seed=10 * rows + vocab, dtype=dtype)
        for rows, vocab in ((1, 50), (2, 1000), (1, 32000))
        for dtype in (torch.float32, torch.float16, torch.bfloat16)
    ]

    results = await asyncio.gather(*(dispatcher.submit(job) for job in jobs))

    # 9 (V, dtype) groups, shared between the two idle actors: each call carries several groups.
    assert sum(batch_log.rows) == sum(int(job.logits.shape[0]) for job in jobs)
    assert len(batch_log.batches) <= 2
    for job, result in zip(jobs, results, strict=True):
        assert_same_output(result, direct(job))


async def test_observer_gets_kernel_seconds_by_strategy(dispatcher: Dispatcher, batch_log: BatchLog) -> None:
    dispatcher.set_batch_observer(batch_log)
    jobs = [
        SampleJob(torch.randn(2, 1000), SamplingParams(top_p=0.9, seed=1)),
        SampleJob(torch.randn(2, 1000), SamplingParams(min_p=0.1, seed=2)),
    ]

    await asyncio.gather(*(dispatcher.submit(job) for job in jobs))

    assert sum(batch_log.rows) == 4
    seconds = {label: s for _, by_strategy, _ in batch_log.batches for label, s in by_strategy.items()}
    assert set(seconds) == {"top_p", "min_p"}
    assert all(s > 0 for s in seconds.values())


async def test_a_bad_job_fails_alone_and_its_batch_neighbours_succeed(dispatcher: Dispatcher) -> None:
    good = [small_job(2, vocab=100, seed=i) for i in range(3)]
    bad_logits = torch.randn(2, 100)
    bad_logits[1, 5] = math.nan
    bad = SampleJob(bad_logits, SamplingParams(seed=1))

    results = await asyncio.gather(*(dispatcher.submit(job) for job in [good[0], bad, *good[1:]]),
                                   return_exceptions=True)

    assert isinstance(results[1], SamplingError) and results[1].field == "logits"
    for job, result in zip(good, [results[0], *results[2:]], strict=True):
        assert_same_output(result, direct(job))


async def test_result_reports_queue_wait(dispatcher: Dispatcher) -> None:
    result = await dispatcher.submit(small_job(1))

    assert 0.0 <= result.queue_wait_s < 5.0


async def test_ready_with_live_workers(dispatcher: Dispatcher) -> None:
    assert dispatcher.ready()
    assert dispatcher.worker_states() == ALL_ALIVE_2
    assert dispatcher.queue_depth() == 0


# -- admission, deadlines, cancellation ------------------------------------------------------


async def test_queue_full_is_refused_at_once(small_dispatcher: Dispatcher) -> None:
    blocker = asyncio.create_task(small_dispatcher.submit(slow_job()))
    await wait_until(lambda: busy(small_dispatcher))
    waiting = asyncio.create_task(small_dispatcher.submit(small_job(8)))
    await asyncio.sleep(0)
    assert small_dispatcher.queue_depth() == 8

    started = time.monotonic()
    with pytest.raises(QueueFullError):
        await small_dispatcher.submit(small_job(1))

    assert time.monotonic() - started < 0.05
    await blocker
    await waiting


async def test_expired_job_is_dropped_before_it_runs(small_dispatcher: Dispatcher, batch_log: BatchLog) -> None:
    small_dispatcher.set_batch_observer(batch_log)
    blocker = asyncio.create_task(small_dispatcher.submit(slow_job()))
    await wait_until(lambda: busy(small_dispatcher))
    job = small_job(3)
    job.deadline = time.monotonic() + 0.05

    with pytest.raises(DeadlineExceededError):
        await small_dispatcher.submit(job)

    assert small_dispatcher.queue_depth() == 0
    await blocker
    await asyncio.sleep(0.05)
    assert batch_log.rows == [4]  # only the blocker ran


async def test_job_past_its_deadline_is_refused_at_submit(small_dispatcher: Dispatcher) -> None:
    job = small_job(1)
    job.deadline = time.monotonic() - 0.001

    with pytest.raises(DeadlineExceededError):
        await small_dispatcher.submit(job)


async def test_cancelling_a_waiting_job_frees_its_slot(small_dispatcher: Dispatcher, batch_log: BatchLog) -> None:
    small_dispatcher.set_batch_observer(batch_log)
    blocker = asyncio.create_task(small_dispatcher.submit(slow_job()))
    await wait_until(lambda: busy(small_dispatcher))
    cancelled = asyncio.create_task(small_dispatcher.submit(small_job(8, seed=1)))
    await asyncio.sleep(0)
    assert small_dispatcher.queue_depth() == 8

    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled

    assert small_dispatcher.queue_depth() == 0
    replacement = small_job(8, seed=2)
    result = await small_dispatcher.submit(replacement)  # the freed slot admits it
    assert_same_output(result, direct(replacement))
    await blocker
    assert batch_log.rows == [4, 8]  # the cancelled job never ran


async def test_stop_answers_running_and_queued_jobs_then_refuses(ray_instance: None) -> None:
    pool = PoolConfig(num_workers=1, device="cpu", num_gpus_per_worker=0.0, max_batches_per_worker=1)
    config = DispatcherConfig(pool=pool)
    d = Dispatcher(config)
    await d.start()
    running = asyncio.create_task(d.submit(slow_job()))
    await wait_until(lambda: busy(d))
    queued_job = small_job(2, seed=3)
    queued = asyncio.create_task(d.submit(queued_job))
    await asyncio.sleep(0)

    await d.stop()

    assert running.done() and queued.done()
    assert_same_output(queued.result(), direct(queued_job))
    assert not d.ready() and d.worker_states() == {"alive": 0, "starting": 0, "dead": 1}
    with pytest.raises(WorkersUnavailableError):
        await d.submit(small_job(1))


async def test_full_batch_bytes_are_sent_without_waiting_out_the_window(ray_instance: None,
                                                                       batch_log: BatchLog) -> None:
    window_s = 1.0
    pool = PoolConfig(num_workers=1, device="cpu", num_gpus_per_worker=0.0)
    d = Dispatcher(DispatcherConfig(pool=pool, batch_window_s=window_s, full_batch_bytes=1 << 20))
    await d.start()
    try:
        d.set_batch_observer(batch_log)
        large = small_job(2, vocab=1 << 18, seed=1)  # 2 MiB: one job fills a batch
        crowd = [small_job(1, vocab=1 << 15, seed=10 + i) for i in range(12)]  # 128 KiB each: 1.5 MiB together
        small = small_job(2, seed=2)
        large_result = await d.submit(large)
        crowd_results = await asyncio.gather(*(d.submit(job) for job in crowd))
        small_result = await d.submit(small)
    finally:
        await d.stop()

    assert large_result.queue_wait_s < window_s / 2
    assert max(result.queue_wait_s for result in crowd_results) < window_s / 2
    assert batch_log.rows[1] == 12  # the crowd still went as one batch
    assert small_result.queue_wait_s >= window_s * 0.9  # less than full_batch_bytes waits for company
    for job, result in ((large, large_result), (small, small_result), *zip(crowd, crowd_results, strict=True)):
        assert_same_output(result, direct(job))


async def test_submit_before_start_is_unavailable() -> None:
    with pytest.raises(WorkersUnavailableError):
        await Dispatcher(DispatcherConfig(pool=PoolConfig(device="cpu"))).submit(small_job(1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a cluster without GPUs")
async def test_start_fails_instead_of_hanging_when_no_actor_can_be_placed(ray_instance: None) -> None:
    d = Dispatcher(DispatcherConfig(pool=PoolConfig(num_workers=1, device="cuda", num_gpus_per_worker=1.0,
                                                         startup_timeout_s=2.0)))

    with pytest.raises(WorkersUnavailableError, match="no sampler actor came up"):
        await d.start()

    assert not d.ready() and d.worker_states()["alive"] == 0


# -- worker death ----------------------------------------------------------------------------


async def test_idle_actor_death_is_noticed_and_repaired(dispatcher: Dispatcher) -> None:
    victim = dispatcher.pool.workers()[0].actor

    ray.kill(victim)

    await wait_until(lambda: dispatcher.worker_states()["alive"] < 2, timeout_s=30)
    await wait_until(lambda: dispatcher.worker_states() == ALL_ALIVE_2, timeout_s=60)
    assert victim not in [w.actor for w in dispatcher.pool.workers()]


async def test_killed_actor_batch_is_retried_and_actor_replaced(dispatcher: Dispatcher) -> None:
    job = slow_job(seed=3)
    task = asyncio.create_task(dispatcher.submit(job))
    await wait_until(lambda: busy(dispatcher))
    [victim] = [w for w in dispatcher.pool.workers() if w.inflight_batches]

    ray.kill(victim.actor)

    result = await asyncio.wait_for(task, timeout=60)
    assert_same_output(result, direct(job))
    await wait_until(lambda: dispatcher.worker_states() == ALL_ALIVE_2, timeout_s=60)
    assert victim.actor not in [w.actor for w in dispatcher.pool.workers()]


async def test_all_actors_killed_answers_every_job_and_recovers(dispatcher: Dispatcher) -> None:
    jobs = [slow_job(seed=4), small_job(2, seed=5)]
    tasks = [asyncio.create_task(dispatcher.submit(job)) for job in jobs]
    await wait_until(lambda: busy(dispatcher))

    for worker in dispatcher.pool.workers():
        ray.kill(worker.actor)

    answers = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    for job, answer in zip(jobs, answers, strict=True):
        if not isinstance(answer, WorkersUnavailableError):
            assert_same_output(answer, direct(job))
    await wait_until(lambda: dispatcher.worker_states() == ALL_ALIVE_2, timeout_s=60)
    assert_same_output(await dispatcher.submit(jobs[1]), direct(jobs[1]))
