"""``samplerd bench step``: its cases, and one short real run that prints every row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from samplerd.service.bench.step import Case, parse_cases

TRITON_PYTHON = Path(os.environ.get("SAMPLERD_TRITONCLIENT_VENV", ".venv-tritonclient")) / "bin" / "python"


def test_cases_parse_and_bad_ones_are_refused() -> None:
    assert parse_cases("64:fp16, 8:fp32", 128256) == [Case(64, 128256, "fp16"), Case(8, 128256, "fp32")]
    assert Case(64, 128256, "fp16").nbytes == 64 * 128256 * 2
    with pytest.raises(ValueError, match="ROWS:fp16"):
        parse_cases("64:fp64", 100)


def test_a_short_run_prints_every_row_and_the_targets() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "samplerd.service.cli", "bench", "step", "--cases", "2:fp16,3:bf16", "--vocab", "3000",
         "--rounds", "1", "--calls", "1", "--tritonclient-python", str(TRITON_PYTHON)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for case in ("B=2 V=3000 fp16", "B=3 V=3000 bf16"):
        assert case in run.stdout
    rows = ["in-process", "Sample inline", "Sample shm", "empty handler (inline message)"]
    if TRITON_PYTHON.exists():
        rows.append("OIP shm (tritonclient)")
    for row in rows:
        assert run.stdout.count(f"  {row} ") == 2, run.stdout
    assert run.stdout.count("target: Sample shm / in-process") == 2
