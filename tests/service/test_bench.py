"""``samplerd bench service``: its pooling of alternating rounds, and one short real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.bench import Sampled


def test_rounds_pool_into_one_rate_and_one_latency_distribution() -> None:
    pooled = Sampled()
    pooled.add(Sampled(1.0, [0.010] * 100, errors=1))
    pooled.add(Sampled(2.0, [0.030] * 50))

    m = pooled.measurement("samplerd", 4, rows=2)

    assert m.requests_per_s == pytest.approx(150 / 3.0) and m.rows_per_s == pytest.approx(2 * 150 / 3.0)
    assert m.p50_ms == pytest.approx(10.0) and m.p99_ms == pytest.approx(30.0) and m.errors == 1


def test_a_short_run_measures_both_targets_at_each_concurrency(tmp_path: Path) -> None:
    out = tmp_path / "service.json"
    run = subprocess.run(
        [sys.executable, "-m", "service.cli", "bench", "service", "--concurrency", "1,4", "--seconds", "0.6",
         "--rounds", "2", "--warmup-seconds", "0.2", "--no-progress", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    measured = json.loads(out.read_text())
    assert sorted((m["target"], m["concurrency"]) for m in measured) == [
        ("empty", 1), ("empty", 4), ("samplerd", 1), ("samplerd", 4)]
    assert all(m["requests_per_s"] > 0 and m["errors"] == 0 for m in measured), run.stdout
    assert "samplerd means over the run" in run.stdout and "2 alternating rounds" in run.stdout
