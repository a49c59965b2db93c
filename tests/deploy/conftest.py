"""Fixtures of the deploy/ tests: one live ``samplerd serve`` per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_helpers import exported_sample_names, fetch_metrics_text

HERE = Path(__file__).resolve().parent
_running_servers: list = []


@pytest.fixture(scope="session")
def samplerd_server() -> Iterator[object]:
    """A ``samplerd serve`` on loopback (one CPU worker, embedded Ray), SERVING; shared by the
    deploy tests and stopped after the last of them."""
    from samplerd.service.bench.process import start_server

    server = start_server("--workers", "1", "--device", "cpu", "--ray-address", "none")
    _running_servers.append(server)
    try:
        server.wait_serving(timeout_s=150)
        yield server
    finally:
        server.terminate()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the server once the run leaves this folder: a session fixture would otherwise keep
    it (and its Ray instance) busy on the machine through every other test folder."""
    if nextitem is None or HERE not in Path(nextitem.path).resolve().parents:
        while _running_servers:
            _running_servers.pop().terminate()


@pytest.fixture(scope="session")
def live_metric_names(samplerd_server) -> set[str]:
    """The sample names a running samplerd exports on /metrics."""
    return exported_sample_names(fetch_metrics_text(samplerd_server.metrics_port))
