"""The generation engine without Ray: exactness against plain transformers and the offline
sampler, batching invariance, stop conditions, streaming, cancellation, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from generation_reference import greedy_loop, sampler_loop

from samplerd.sampling import SamplingParams
from samplerd.workers.generation import (
    FinishEvent,
    GenerationEngine,
    GenerationRequest,
    InvalidGenerationRequest,
    ModelLoadError,
    TokenEvent,
    UnknownRequestError,
)

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = ("The quick brown fox", "Entropy measures", "A language model assigns a probability to")


def run_alone(engine: GenerationEngine, request: GenerationRequest):
    return engine.generate(request)


def prompt_ids(engine: GenerationEngine, text: str) -> list[int]:
    return list(engine.tokenizer(text)["input_ids"])


def drain(engine: GenerationEngine, request_ids: list[str]) -> dict[str, list]:
    engine.run_until_idle()
    return {rid: engine.poll(rid) for rid in request_ids}


# ----------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_plain_transformers_greedy_loop(engine, tiny_model, prompt):
    result = run_alone(engine, GenerationRequest(prompt=prompt, params=GREEDY, max_tokens=40, ignore_eos=True))
    expected = greedy_loop(tiny_model, prompt_ids(engine, prompt), 40)
    assert result.token_ids == expected
    assert result.finish.finish_reason == "length"


def test_greedy_equals_model_generate(engine, tiny_model):
    import torch

    ids = prompt_ids(engine, PROMPTS[0])
    out = tiny_model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=25, min_new_tokens=25,
                              pad_token_id=0)
    result = run_alone(engine, GenerationRequest(prompt_token_ids=ids, params=GREEDY, max_tokens=25,
                                                 ignore_eos=True))
    assert result.token_ids == out[0, len(ids):].tolist()


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.9, top_p=0.9, seed=7),
    SamplingParams(temperature=1.3, top_k=20, min_p=0.02, seed=11),
    SamplingParams(repetition_penalty=1.8, temperature=0.0),
    SamplingParams(frequency_penalty=0.7, presence_penalty=0.5, temperature=0.8, seed=5),
    SamplingParams(mirostat=2, mirostat_tau=2.5, mirostat_eta=0.2, seed=3),
], ids=["top_p", "top_k_min_p", "repetition", "frequency_presence", "mirostat2"])
def test_engine_equals_offline_sampler_loop(engine, tiny_model, params):
    """Every strategy, stateful ones included, gives exactly what the sampler gives offline
    with the step counter and the SequenceState (prompt + generated history, mu) advanced."""
    ids = prompt_ids(engine, "the the the the the the")
    result = run_alone(engine, GenerationRequest(prompt_token_ids=ids, params=params, max_tokens=30, ignore_eos=True))
    expected, mus = sampler_loop(tiny_model, ids, params, 30)
    assert result.token_ids == expected
    if params.mirostat:
        got = [t.mirostat_mu for t in result.tokens]
        assert got == pytest.approx(mus, abs=1e-4)  # KV-cached vs full forward: rounding only
        assert len(set(got)) > 5  # mu moves step by step


def test_seeded_sampling_is_reproducible_and_unseeded_is_not(engine):
    request = GenerationRequest(prompt="The quick", params=SamplingParams(temperature=1.5, seed=123),
                                max_tokens=30, ignore_eos=True)
    first, second = run_alone(engine, request), run_alone(engine, request)
    assert first.token_ids == second.token_ids
    assert [t.logprob for t in first.tokens] == [t.logprob for t in second.tokens]
    unseeded = GenerationRequest(prompt="The quick", params=SamplingParams(temperature=1.5), max_tokens=30,
                                 ignore_eos=True)
    assert run_alone(engine, unseeded).token_ids != run_alone(engine, unseeded).token_ids


def test_repetition_penalty_changes_a_repetitive_output_deterministically(engine):
    prompt = "the the the the the the the the"
    plain = run_alone(engine, GenerationRequest(prompt=prompt, params=GREEDY, max_tokens=30, ignore_eos=True))
    penalised = GenerationRequest(prompt=prompt, params=SamplingParams(temperature=0.0, repetition_penalty=2.0),
                                  max_tokens=30, ignore_eos=True)
    once, twice = run_alone(engine, penalised), run_alone(engine, penalised)
    assert once.token_ids == twice.token_ids
    assert once.token_ids != plain.token_ids
    # The history grows: a penalised run repeats itself less than the plain one.
    assert len(set(once.token_ids)) > len(set(plain.token_ids))
    assert {t.strategy for t in once.tokens} == {"greedy"}


# ----------------------------------------------------------------------------- batching

def mixed_requests() -> list[GenerationRequest]:
    return [
        GenerationRequest(prompt=PROMPTS[0], params=GREEDY, max_tokens=30, ignore_eos=True),
        GenerationRequest(prompt=PROMPTS[1], params=SamplingParams(temperature=1.0, top_k=50, seed=1),
                          max_tokens=12, ignore_eos=True),
        GenerationRequest(prompt=PROMPTS[2] * 3, params=SamplingParams(repetition_penalty=1.5, temperature=0.7,
                                                                       seed=2), max_tokens=25, ignore_eos=True),
        GenerationRequest(prompt="é", params=SamplingParams(mirostat=1, mirostat_tau=3.0, seed=4), max_tokens=20,
                          ignore_eos=True),
        GenerationRequest(prompt=PROMPTS[0], params=SamplingParams(temperature=0.8, seed=9), max_tokens=18,
                          ignore_eos=True),
    ]


def test_batched_results_equal_results_alone(engine):
    """Requests join at different steps, with prompts of different lengths (so rows are
    padded) and leave at different steps; each gets what it gets alone."""
    requests = mixed_requests()
    alone = [run_alone(engine, r) for r in requests]
    ids = [engine.submit(requests[0])]
    engine.step()
    engine.step()
    ids += [engine.submit(r) for r in requests[1:3]]
    engine.step()
    ids += [engine.submit(r) for r in requests[3:]]
    events = drain(engine, ids)
    for rid, expected in zip(ids, alone, strict=True):
        finish = events[rid][-1]
        assert list(finish.token_ids) == expected.token_ids
        logprobs = [e.logprob for e in events[rid] if isinstance(e, TokenEvent)]
        assert logprobs == pytest.approx([t.logprob for t in expected.tokens], abs=1e-4)
    assert engine.load() == {"running": 0, "waiting": 0, "submitted": 0}


def test_solo_batching_gives_the_same_tokens(tiny_model_dir, engine):
    solo = GenerationEngine(tiny_model_dir, device="cpu", batching="solo")
    assert solo.info.batching == "solo" and engine.info.batching == "padded"
    requests = mixed_requests()
    ids = [solo.submit(r) for r in requests]
    events = drain(solo, ids)
    for rid, request in zip(ids, requests, strict=True):
        assert events[rid][-1].token_ids == engine.generate(request).finish.token_ids


def test_max_batch_size_queues_the_rest(tiny_model_dir):
    small = GenerationEngine(tiny_model_dir, device="cpu", max_batch_size=2)
    ids = [small.submit(GenerationRequest(prompt=p, params=GREEDY, max_tokens=5, ignore_eos=True)) for p in PROMPTS]
    small.step()
    assert small.load() == {"running": 2, "waiting": 1, "submitted": 0}
    events = drain(small, ids)
    assert all(events[rid][-1].finish_reason == "length" for rid in ids)


# ----------------------------------------------------------------------------- stop conditions

def reference_text(engine, prompt: str, tokens: int = 40):
    return run_alone(engine, GenerationRequest(prompt=prompt, params=GREEDY, max_tokens=tokens, ignore_eos=True))


def test_stop_string_stops_and_is_not_emitted(engine):
    full = reference_text(engine, PROMPTS[0])
    text = full.text
    start = next(i for i in range(3, len(text) - 3) if "\ufffd" not in text[i:i + 3])
    stop = text[start:start + 3]
    cut = text.find(stop)
    result = run_alone(engine, GenerationRequest(prompt=PROMPTS[0], params=GREEDY, max_tokens=40, ignore_eos=True,
                                                 stop=("never seen", stop)))
    assert result.finish.finish_reason == "stop"
    assert result.finish.stop_reason == stop
    assert result.text == text[:cut]
    assert "".join(t.text for t in result.tokens) + result.finish.text == text[:cut]
    # It stopped at the token that completed the stop string.
    assert result.token_ids == full.token_ids[:len(result.token_ids)]
    assert stop in engine.tokenizer.decode(result.token_ids)
    assert stop not in engine.tokenizer.decode(result.token_ids[:-1])


def test_stop_token_ids_stop(engine):
    full = reference_text(engine, PROMPTS[1])
    token = full.token_ids[6]
    result = run_alone(engine, GenerationRequest(prompt=PROMPTS[1], params=GREEDY, max_tokens=40, ignore_eos=True,
                                                 stop_token_ids=(token,)))
    first = full.token_ids.index(token)
    assert result.token_ids == full.token_ids[:first + 1]
    assert result.finish.finish_reason == "stop" and result.finish.stop_reason == token


def test_eos_stops_unless_ignored(engine):
    eos = engine.info.eos_token_ids[0]
    forced = SamplingParams(temperature=0.0, logit_bias={eos: 100.0})
    result = run_alone(engine, GenerationRequest(prompt="The", params=forced, max_tokens=10))
    assert result.token_ids == [eos]
    assert result.finish.finish_reason == "eos" and result.text == ""
    ignored = run_alone(engine, GenerationRequest(prompt="The", params=forced, max_tokens=10, ignore_eos=True))
    assert ignored.token_ids == [eos] * 10 and ignored.finish.finish_reason == "length"


def test_max_tokens_and_context_end_with_length(engine):
    assert len(reference_text(engine, "The", tokens=7).token_ids) == 7
    limit = engine.info.max_positions
    long_prompt = prompt_ids(engine, "The quick brown fox jumps over the lazy dog. " * 40)[: limit - 5]
    result = run_alone(engine, GenerationRequest(prompt_token_ids=long_prompt, params=GREEDY, max_tokens=50,
                                                 ignore_eos=True))
    assert result.finish.finish_reason == "length"
    assert len(result.token_ids) == 5  # prompt + generated fill the model's positions


# ----------------------------------------------------------------------------- streaming

def test_streaming_order_text_and_statistics(engine):
    events = list(engine.stream(GenerationRequest(prompt="Les modèles", params=SamplingParams(
        temperature=1.0, seed=42, top_logprobs=3), max_tokens=40, ignore_eos=True)))
    tokens, finish = events[:-1], events[-1]
    assert isinstance(finish, FinishEvent) and all(isinstance(e, TokenEvent) for e in tokens)
    assert [e.index for e in tokens] == list(range(40))
    assert [e.token_id for e in tokens] == list(finish.token_ids)
    text = "".join(e.text for e in events)
    assert text == finish.output_text == engine.tokenizer.decode(list(finish.token_ids), skip_special_tokens=True)
    assert finish.prompt_tokens == len(prompt_ids(engine, "Les modèles"))
    stats = finish.stats
    assert stats.tokens == 40
    assert stats.log_perplexity == pytest.approx(sum(e.surprise for e in tokens) / 40)
    assert stats.mean_surprise == stats.log_perplexity
    assert stats.mean_entropy == pytest.approx(sum(e.entropy for e in tokens) / 40)
    assert stats.detection_gap == pytest.approx(stats.log_perplexity - stats.mean_entropy)
    assert stats.perplexity == pytest.approx(math.exp(stats.log_perplexity))
    assert all(len(e.top_logprobs) == 3 and e.strategy == "temperature" for e in tokens)
    assert all(e.mirostat_mu is None and 0 < e.kept_mass <= 1 for e in tokens)


def test_multibyte_text_streams_whole_characters(engine):
    """Prompted with accented and CJK text, a random model emits byte pieces; no event may
    carry half a character, and the pieces add up to the full decode."""
    for seed in range(3):
        result = run_alone(engine, GenerationRequest(prompt="日本語 é ü 🙂", params=SamplingParams(
            temperature=1.0, seed=seed), max_tokens=30, ignore_eos=True))
        assert "".join(t.text for t in result.tokens) + result.finish.text == result.text
        assert result.text == engine.tokenizer.decode(result.token_ids, skip_special_tokens=True)


# ----------------------------------------------------------------------------- cancellation

def test_cancellation_frees_the_slot_and_reports_cancelled(tiny_model_dir):
    engine = GenerationEngine(tiny_model_dir, device="cpu", max_batch_size=1)
    engine.start()
    try:
        long_id = engine.submit(GenerationRequest(prompt="The", params=GREEDY, max_tokens=200, ignore_eos=True))
        queued_id = engine.submit(GenerationRequest(prompt="A", params=GREEDY, max_tokens=5, ignore_eos=True))
        first = engine.poll(long_id, timeout_s=30)
        assert first and isinstance(first[0], TokenEvent)
        assert engine.cancel(long_id)
        events = first
        while not isinstance(events[-1], FinishEvent):
            events += engine.poll(long_id, timeout_s=30)
        finish = events[-1]
        assert finish.finish_reason == "cancelled"
        assert 1 <= len(finish.token_ids) < 200
        assert "".join(e.text for e in events) == finish.output_text
        queued = []
        while not queued or not isinstance(queued[-1], FinishEvent):
            queued += engine.poll(queued_id, timeout_s=30)
        assert queued[-1].finish_reason == "length" and len(queued[-1].token_ids) == 5
        assert engine.load() == {"running": 0, "waiting": 0, "submitted": 0}
        assert not engine.cancel(long_id)
        with pytest.raises(UnknownRequestError):
            engine.poll(long_id)
    finally:
        engine.stop()


def test_cancel_while_waiting_and_closing_a_stream(engine):
    rid = engine.submit(GenerationRequest(prompt="The", max_tokens=10))
    assert engine.cancel(rid)
    engine.step()
    [finish] = engine.poll(rid)
    assert finish.finish_reason == "cancelled" and finish.token_ids == ()
    stream = engine.stream(GenerationRequest(prompt="The", params=GREEDY, max_tokens=100, ignore_eos=True,
                                             request_id="closed-early"))
    next(stream)
    stream.close()  # the reader left: the generation is cancelled
    engine.step()
    assert engine.poll("closed-early")[-1].finish_reason == "cancelled"
    assert engine.load()["running"] == 0


def test_the_feed_carries_every_request_and_a_cancel_frees_the_slot_at_the_next_step(tiny_model_dir, engine):
    feed_engine = GenerationEngine(tiny_model_dir, device="cpu", max_batch_size=1)
    feed_engine.submit(GenerationRequest(prompt="The", params=GREEDY, max_tokens=200, ignore_eos=True,
                                         request_id="long"), feed=True)
    queued = GenerationRequest(prompt="A", params=GREEDY, max_tokens=3, ignore_eos=True, request_id="queued")
    feed_engine.submit(queued, feed=True)
    with pytest.raises(InvalidGenerationRequest):  # ids are unique across the feed's live requests
        feed_engine.submit(queued, feed=True)
    feed_engine.step()
    assert [(e.request_id, e.index) for e in feed_engine.poll_feed()] == [("long", 0)]
    assert feed_engine.load() == {"running": 1, "waiting": 1, "submitted": 0}
    assert feed_engine.cancel("long")
    feed_engine.step()  # the very next step ends "long" and gives its slot to "queued"
    events = feed_engine.poll_feed()
    assert isinstance(events[0], FinishEvent) and events[0].request_id == "long"
    assert events[0].finish_reason == "cancelled"
    assert [(e.request_id, e.index) for e in events[1:]] == [("queued", 0)]
    assert feed_engine.load() == {"running": 1, "waiting": 0, "submitted": 0}
    feed_engine.run_until_idle()
    rest = feed_engine.poll_feed()
    assert [e.request_id for e in rest] == ["queued"] * 3 and rest[-1].finish_reason == "length"
    assert rest[-1].token_ids == engine.generate(queued).finish.token_ids
    assert not feed_engine.cancel("queued") and not feed_engine.cancel("long")
    assert feed_engine.poll_feed(timeout_s=0.01) == []


def test_stop_cancels_live_requests(tiny_model_dir):
    engine = GenerationEngine(tiny_model_dir, device="cpu")
    engine.start()
    rid = engine.submit(GenerationRequest(prompt="The", max_tokens=200, ignore_eos=True))
    engine.poll(rid, timeout_s=30)
    engine.stop()
    assert not engine.running
    events = engine.poll(rid)
    assert events[-1].finish_reason == "cancelled"


# ----------------------------------------------------------------------------- errors

def test_bad_model_directory_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        GenerationEngine(tmp_path / "missing", device="cpu")
    with pytest.raises(ModelLoadError, match="no config.json"):
        GenerationEngine(tmp_path, device="cpu")
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelLoadError, match="cannot load"):
        GenerationEngine(tmp_path, device="cpu")


def test_invalid_requests_name_the_field(engine):
    cases = [
        (lambda: GenerationRequest(prompt="a", prompt_token_ids=(1,)), "prompt"),
        (lambda: GenerationRequest(), "prompt"),
        (lambda: GenerationRequest(prompt="a", max_tokens=0), "max_tokens"),
        (lambda: GenerationRequest(prompt="a", params=SamplingParams(n=2)), "n"),
        (lambda: GenerationRequest(prompt="a", stop=("",)), "stop"),
        (lambda: engine.submit(GenerationRequest(prompt_token_ids=(10_000,))), "prompt_token_ids"),
        (lambda: engine.submit(GenerationRequest(prompt="a", params=SamplingParams(logit_bias={10_000: 1.0}))),
         "logit_bias"),
        (lambda: engine.submit(GenerationRequest(prompt_token_ids=(5,) * 1000)), "prompt"),
    ]
    for make, field in cases:
        with pytest.raises(InvalidGenerationRequest) as caught:
            make()
        assert caught.value.field == field
    engine.submit(GenerationRequest(prompt="a", request_id="same"))
    with pytest.raises(InvalidGenerationRequest, match="already in use"):
        engine.submit(GenerationRequest(prompt="a", request_id="same"))
    engine.run_until_idle()
    engine.poll("same")
