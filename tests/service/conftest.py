"""Fixtures of the service tests."""

from __future__ import annotations

import pytest
from external_tools import require_tool


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of ``promtool``: skips without it outside CI, fails in CI (see tests/external_tools.py)."""
    return require_tool("promtool")
