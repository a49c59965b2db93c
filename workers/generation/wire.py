"""Generation events as plain tuples, for the language-model actor's event channel.

The channel (:mod:`workers.lm_actor`) carries every live request's events in one answer, many
times per second, so their form on the wire matters: a tuple of plain values (str, int, float,
None and tuples of them) pickles in a fraction of the time and bytes a dataclass takes, and is
what any wire format of :mod:`workers.socket_link` carries without knowing these types.
Lists where tuples were sent are accepted back (a wire format may not tell them apart).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from typing import Any

from workers.generation.request import FinishEvent, GenerationEvent, SessionStats, TokenEvent

_TOKEN, _FINISH = "t", "f"
_TOKEN_FIELDS = tuple(f.name for f in fields(TokenEvent))
_FINISH_FIELDS = tuple(f.name for f in fields(FinishEvent))
_STATS_FIELDS = tuple(f.name for f in fields(SessionStats))


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
        kind, values = row[0], list(row[1:])
        if kind == _TOKEN:
            event = dict(zip(_TOKEN_FIELDS, values, strict=True))
            event["top_logprobs"] = tuple((int(t), float(lp)) for t, lp in event["top_logprobs"])
            events.append(TokenEvent(**event))
        elif kind == _FINISH:
            event = dict(zip(_FINISH_FIELDS, values, strict=True))
            event["stats"] = SessionStats(*event["stats"])
            event["token_ids"] = tuple(event["token_ids"])
            events.append(FinishEvent(**event))
        else:
            raise ValueError(f"unknown generation event kind {kind!r}")
    return events
