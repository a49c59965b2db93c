"""Generation events as plain tuples (workers.generation.wire): what the event channel carries."""

from __future__ import annotations

import json
import pickle

from sampling import SamplingParams
from workers.generation import FinishEvent, GenerationRequest, TokenEvent
from workers.generation.wire import decode_events, encode_events


def test_events_round_trip_as_plain_values(engine):
    result = engine.generate(GenerationRequest(prompt="The", max_tokens=5, ignore_eos=True,
                                               params=SamplingParams(top_p=0.9, seed=3, top_logprobs=2)))
    events = [*result.tokens, result.finish]
    rows = encode_events(events)
    assert decode_events(pickle.loads(pickle.dumps(rows))) == events
    # Plain values only: JSON carries them too (its tuples come back as lists).
    assert decode_events(json.loads(json.dumps(rows))) == events
    assert all(t.top_logprobs and isinstance(t.top_logprobs[0], tuple) for t in decode_events(rows)[:-1])
    decoded = decode_events(rows)
    assert isinstance(decoded[0], TokenEvent) and isinstance(decoded[-1], FinishEvent)
    assert decoded[-1].stats == result.finish.stats
