"""The style gate: ``ruff check`` over the repository, with pyproject.toml's rules.

Among them TID251: every import goes through the one installed namespace (``samplerd.*``); a
bare ``sampling``/``service``/``workers`` import would load a second copy of a module.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing() -> None:
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_bare_package_import_is_refused(tmp_path: Path) -> None:
    module = tmp_path / "bare_import.py"
    module.write_text("from sampling import sample\n\nprint(sample)\n")
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"),
                          str(module)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "TID251" in run.stdout, run.stdout
