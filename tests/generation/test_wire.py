"""Generation events as plain tuples (samplerd.workers.generation.wire): what the event channel carries."""

from __future__ import annotations

import json
import pickle

from samplerd.sampling import SamplingParams
from samplerd.workers.generation import FinishEvent, GenerationRequest, TokenEvent
from samplerd.workers.generation.wire import decode_events, decode_request, encode_events, encode_request


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


def test_requests_round_trip_as_plain_values():
    request = GenerationRequest(prompt_token_ids=(5, 6), params=SamplingParams(top_p=0.8, seed=4, logit_bias={7: 1.5},
                                                                               temperature=0.7),
                                max_tokens=9, stop=("\n",), stop_token_ids=(3,), ignore_eos=True, request_id="r1")
    values = encode_request(request)
    assert decode_request(pickle.loads(pickle.dumps(values))) == request
    assert decode_request(json.loads(json.dumps(values))) == request
    assert values[2] == {"top_p": 0.8, "seed": 4, "logit_bias": ((7, 1.5),), "temperature": 0.7}
    text = GenerationRequest(prompt="Hi")
    assert decode_request(encode_request(text)) == text
