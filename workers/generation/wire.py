"""Generation requests and events as plain values, for the language-model actor's links.

The event channel (:mod:`samplerd.workers.lm_actor`) carries every live request's events in one answer,
many times per second, so their form on the wire matters: a tuple of plain values (str, int,
float, None and tuples of them) pickles in a fraction of the time and bytes a dataclass takes,
and is what any wire format of :mod:`samplerd.workers.socket_link` carries without knowing these types.
Requests travel the same way (their sampling parameters as a dict of the values that differ
from the defaults), and are validated again when rebuilt on the actor. Lists where tuples were
sent are accepted back (a wire format may not tell them apart).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from samplerd.sampling import SamplingParams
from samplerd.workers.generation.request import (
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    SessionStats,
    TokenEvent,
)

_TOKEN, _FINISH = "t", "f"
_TOKEN_FIELDS = tuple(f.name for f in fields(TokenEvent))
_FINISH_FIELDS = tuple(f.name for f in fields(FinishEvent))
_STATS_FIELDS = tuple(f.name for f in fields(SessionStats))
_DEFAULT_PARAMS = SamplingParams()
_PARAMS_FIELDS = tuple(f.name for f in fields(SamplingParams))


def encode_request(request: GenerationRequest) -> tuple[Any, ...]:
    """``request`` as plain values (see :func:`decode_request`)."""
    params = {name: getattr(request.params, name) for name in _PARAMS_FIELDS
              if getattr(request.params, name) != getattr(_DEFAULT_PARAMS, name)}
    return (request.prompt, request.prompt_token_ids, params, request.max_tokens, request.stop,
            request.stop_token_ids, request.ignore_eos, request.request_id)


def decode_request(values: Any) -> GenerationRequest:
    """The request of :func:`encode_request`'s values, validated again (raises
    InvalidGenerationRequest, or SamplingError for its parameters)."""
    prompt, prompt_ids, params, max_tokens, stop, stop_ids, ignore_eos, request_id = values
    return GenerationRequest(
        prompt=prompt, prompt_token_ids=None if prompt_ids is None else tuple(prompt_ids),
        params=SamplingParams(**params), max_tokens=max_tokens, stop=tuple(stop), stop_token_ids=tuple(stop_ids),
        ignore_eos=ignore_eos, request_id=request_id)


def encode_events(events: Iterable[GenerationEvent]) -> list[tuple[Any, ...]]:
    """``events`` as tuples of plain values (see :func:`decode_events`)."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, TokenEvent):
            out.append((_TOKEN, *(getattr(event, name) for name in _TOKEN_FIELDS)))
        else:
            values = [getattr(event, name) for name in _FINISH_FIELDS]
            values[_FINISH_FIELDS.index("stats")] = tuple(getattr(event.stats, name) for name in _STATS_FIELDS)
            out.append((_FINISH, *values))
    return out


def decode_events(rows: Iterable[Any]) -> list[GenerationEvent]:
    """The events of :func:`encode_events`' tuples."""
    events: list[GenerationEvent] = []
    for row in rows:
        kind = row[0]
        if kind == _TOKEN:
            # The front end decodes every token of every stream: filling the instance's dict costs
            # a fifth of a frozen dataclass's __init__ (one object.__setattr__ per field), and
            # TokenEvent has no checks in __init__ to skip.
            event = object.__new__(TokenEvent)
            values = event.__dict__
            values.update(zip(_TOKEN_FIELDS, row[1:], strict=True))
            top = values["top_logprobs"]
            if top and not isinstance(top[0], tuple):
                values["top_logprobs"] = tuple((int(t), float(lp)) for t, lp in top)
            elif not isinstance(top, tuple):
                values["top_logprobs"] = tuple(top)
            events.append(event)
        elif kind == _FINISH:
            values = dict(zip(_FINISH_FIELDS, row[1:], strict=True))
            values["stats"] = SessionStats(*values["stats"])
            values["token_ids"] = tuple(values["token_ids"])
            events.append(FinishEvent(**values))
        else:
            raise ValueError(f"unknown generation event kind {kind!r}")
    return events
