"""The language-model actors on a real local Ray instance: streaming over the one event channel,
cancellation, load errors, and replicas (one killed mid-generation)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from samplerd.sampling import SamplingParams
from samplerd.workers.generation import (
    FinishEvent,
    GenerationRequest,
    InvalidGenerationRequest,
    ModelLoadError,
    TokenEvent,
)
from samplerd.workers.lm_actor import LanguageModelClient, LMActorConfig, ModelReplicaLost
from samplerd.workers.lm_replicas import LanguageModelReplicas


@pytest.fixture(scope="module")
def ray_for_module(ray_connected: str) -> Iterator[None]:
    """The session's Ray instance (tests/conftest.py), joined by this process."""
    yield


async def assert_idle_soon(lm: LanguageModelClient) -> None:
    """The actor runs and queues nothing within a second (a cancel takes effect at its next step)."""
    for _ in range(50):
        if await lm.load() == {"running": 0, "waiting": 0, "submitted": 0}:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the actor is still busy: {await lm.load()}")


async def test_actor_streams_batches_and_cancels(ray_for_module, tiny_model_dir: Path, engine):
    # Two actor threads for eight streams: the streams hold none (one channel serves them all).
    lm = await LanguageModelClient.start(LMActorConfig(model_dir=str(tiny_model_dir), device="cpu",
                                                       torch_threads=1, poll_timeout_s=0.2, max_concurrency=2))
    try:
        assert lm.info.architecture == "GPT2LMHeadModel" and lm.info.device == "cpu"
        assert lm.linked  # the channel is a link, as the sampler actors' batches are
        requests = [GenerationRequest(prompt=p, params=SamplingParams(temperature=0.0 if i == 0 else 0.9, seed=i),
                                      max_tokens=20, ignore_eos=True)
                    for i, p in enumerate(["The", "A model", "Sampling", "Entropy"] * 2)]

        async def collect(request):
            return [event async for event in lm.generate(request)]

        streams = await asyncio.gather(*(collect(r) for r in requests))
        for request, events in zip(requests, streams, strict=True):
            finish = events[-1]
            assert isinstance(finish, FinishEvent) and finish.finish_reason == "length"
            assert [e.index for e in events[:-1]] == list(range(20))
            assert "".join(e.text for e in events) == finish.output_text
            assert finish.token_ids == engine.generate(request).finish.token_ids

        # Leaving the stream early cancels the generation and frees the actor...
        long_request = GenerationRequest(prompt="The", max_tokens=200, ignore_eos=True, request_id="leaves-early")
        async with contextlib.aclosing(lm.generate(long_request)) as events:
            async for event in events:
                assert isinstance(event, TokenEvent)
                break
        await assert_idle_soon(lm)
        assert lm.live == 0

        # ... and so does a caller that is cancelled (a client gone, a deadline passed).
        streaming = asyncio.Event()

        async def consume_all():
            request = GenerationRequest(prompt="A", max_tokens=200, ignore_eos=True, request_id="deadline")
            async for _ in lm.generate(request):
                streaming.set()

        task = asyncio.create_task(consume_all())
        await asyncio.wait_for(streaming.wait(), timeout=60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await assert_idle_soon(lm)

        with pytest.raises(InvalidGenerationRequest) as caught:
            async for _ in lm.generate(GenerationRequest(prompt_token_ids=(10_000,))):
                pass
        assert caught.value.field == "prompt_token_ids"
    finally:
        await lm.close()


async def test_without_links_everything_goes_by_ray(ray_for_module, tiny_model_dir: Path, engine):
    lm = await LanguageModelClient.start(LMActorConfig(model_dir=str(tiny_model_dir), device="cpu", torch_threads=1,
                                                       poll_timeout_s=0.2, links=False))
    try:
        assert not lm.linked
        requests = [GenerationRequest(prompt=p, params=SamplingParams(seed=i), max_tokens=12, ignore_eos=True)
                    for i, p in enumerate(["The", "A model", "Entropy"])]

        async def collect(request):
            return [event async for event in lm.generate(request)]

        streams = await asyncio.gather(*(collect(r) for r in requests))
        for request, events in zip(requests, streams, strict=True):
            assert events[-1].token_ids == engine.generate(request).finish.token_ids
            assert [e.index for e in events[:-1]] == list(range(12))
        with pytest.raises(InvalidGenerationRequest) as caught:
            async for _ in lm.generate(GenerationRequest(prompt_token_ids=(10_000,))):
                pass
        assert caught.value.field == "prompt_token_ids"
        async with contextlib.aclosing(lm.generate(GenerationRequest(prompt="The", max_tokens=200,
                                                                     ignore_eos=True))) as events:
            async for _ in events:
                break
        await assert_idle_soon(lm)
    finally:
        await lm.close()


async def test_actor_reports_a_bad_model_directory(ray_for_module, tmp_path: Path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        await LanguageModelClient.start(LMActorConfig(model_dir=str(tmp_path), device="cpu"))


async def test_replicas_route_to_the_least_loaded_and_a_killed_one_ends_its_streams_and_is_replaced(
        ray_for_module, tiny_model_dir: Path, engine):
    config = LMActorConfig(model_dir=str(tiny_model_dir), device="cpu", torch_threads=1, max_batch_size=4)
    replicas = LanguageModelReplicas(config, replicas=2, restart_backoff_s=0.2)
    await replicas.start()
    try:
        started = [asyncio.Event() for _ in range(4)]

        async def consume(i: int) -> list:
            request = GenerationRequest(prompt="The", max_tokens=4000, ignore_eos=True,
                                        params=SamplingParams(seed=i), request_id=f"long-{i}")
            events = []
            async for event in replicas.generate(request):
                events.append(event)
                started[i].set()
            return events

        tasks = [asyncio.create_task(consume(i)) for i in range(4)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), timeout=60)
        first, second = replicas.replicas
        assert first is not None and second is not None
        assert (first.live, second.live) == (2, 2)  # least-loaded routing spread them
        on_first = {int(request_id.split("-")[1]) for request_id in first._streams}

        import ray

        ray.kill(first._actor, no_restart=True)  # the replica dies mid-generation
        # Its two streams end with ModelReplicaLost at once (never hang); the others go on.
        for i in on_first:
            with pytest.raises(ModelReplicaLost):
                await asyncio.wait_for(tasks[i], timeout=10)
        for i in set(range(4)) - on_first:
            events = await asyncio.wait_for(tasks[i], timeout=120)
            assert events[-1].finish_reason == "length" and len(events) == events[-1].generated_tokens + 1
        assert first.lost and replicas.replicas[1] is second

        for _ in range(600):  # the replacement loads its model
            if replicas.alive() == 2:
                break
            await asyncio.sleep(0.1)
        assert replicas.alive() == 2 and replicas.replicas[0] is not first
        request = GenerationRequest(prompt="A model", max_tokens=6, ignore_eos=True,
                                    params=SamplingParams(temperature=0.0))

        async def collect() -> list:
            return [event async for event in replicas.generate(request)]

        streams = await asyncio.gather(collect(), collect())
        expected = engine.generate(request).finish.token_ids
        assert [events[-1].token_ids for events in streams] == [expected, expected]
    finally:
        await replicas.close()
