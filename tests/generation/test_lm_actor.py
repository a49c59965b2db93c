"""The language-model actor on a real local Ray instance: streaming, cancellation, load errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from sampling import SamplingParams
from workers.generation import (
    FinishEvent,
    GenerationRequest,
    InvalidGenerationRequest,
    ModelLoadError,
    TokenEvent,
    UnknownRequestError,
)
from workers.lm_actor import LanguageModelClient, LMActorConfig


@pytest.fixture(scope="module")
def ray_for_module(ray_connected: str) -> Iterator[None]:
    """The session's Ray instance (tests/conftest.py), joined by this process."""
    yield


async def finish_of(lm: LanguageModelClient, request_id: str) -> FinishEvent:
    """Read the rest of a request's events straight from the actor (its stream was left)."""
    while True:
        events = await lm._actor.poll.remote(request_id, 1.0)
        if events and isinstance(events[-1], FinishEvent):
            return events[-1]


async def assert_cancelled_and_idle(lm: LanguageModelClient, request_id: str) -> None:
    finish = await finish_of(lm, request_id)
    assert finish.finish_reason == "cancelled" and len(finish.token_ids) < 200
    assert await lm.load() == {"running": 0, "waiting": 0, "submitted": 0}


async def test_actor_streams_batches_and_cancels(ray_for_module, tiny_model_dir: Path, engine):
    lm = await LanguageModelClient.start(LMActorConfig(model_dir=str(tiny_model_dir), device="cpu",
                                                       torch_threads=1, poll_timeout_s=0.2))
    try:
        assert lm.info.architecture == "GPT2LMHeadModel" and lm.info.device == "cpu"
        requests = [GenerationRequest(prompt=p, params=SamplingParams(temperature=0.0 if i == 0 else 0.9, seed=i),
                                      max_tokens=20, ignore_eos=True) for i, p in enumerate(["The", "A model"])]

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
        await assert_cancelled_and_idle(lm, "leaves-early")

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
        try:
            await assert_cancelled_and_idle(lm, "deadline")
        except UnknownRequestError:
            # The poll in flight when the task was cancelled read the finish event (nobody
            # receives it, as nobody needs it); the request is gone and the actor is idle.
            assert await lm.load() == {"running": 0, "waiting": 0, "submitted": 0}

        with pytest.raises(InvalidGenerationRequest) as caught:
            async for _ in lm.generate(GenerationRequest(prompt_token_ids=(10_000,))):
                pass
        assert caught.value.field == "prompt_token_ids"
    finally:
        await lm.close()


async def test_actor_reports_a_bad_model_directory(ray_for_module, tmp_path: Path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        await LanguageModelClient.start(LMActorConfig(model_dir=str(tmp_path), device="cpu"))
