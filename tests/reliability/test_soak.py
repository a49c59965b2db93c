"""``samplerd bench soak``, briefly: mixed traffic while sampler actors are killed loses nothing."""

from __future__ import annotations

import asyncio

import pytest
from reliability_support import serve

from samplerd.service.bench.soak import soak
from samplerd.service.cli.main import parse_args

pytestmark = pytest.mark.e2e


def test_soak_options() -> None:
    args = parse_args(["bench", "soak", "--seconds", "5", "--kill-every", "2", "--concurrency", "4"])
    assert (args.target, args.seconds, args.kill_every, args.concurrency) == ("soak", 5.0, 2.0, 4)


def test_short_soak_with_actor_kills_loses_nothing(ray_address: str, ray_connected: str) -> None:
    """8 s of mixed traffic, an actor killed every 2.5 s: every request answered, the seeded ones
    with the library's tokens, only the expected codes, health SERVING at the end."""
    server = serve(ray_address, "--workers", "2", "--max-queue", "256")
    try:
        report = asyncio.run(soak(server.target, server.process.pid, seconds=8.0, concurrency=4, kill_every=2.5,
                                  request_timeout=60.0, seed=1))
    finally:
        server.terminate()
    print("\n".join(report.lines()))
    assert report.ok(), report
    assert report.sent == report.answered + report.lost and report.sent > 100
    assert report.actors_killed >= 2
    assert {"OK", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED"} <= set(report.codes)
    assert report.health_at_end == "SERVING"
