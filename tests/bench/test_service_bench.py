"""``samplerd bench service``: its pooling of alternating rounds, and one short real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from samplerd.service.bench.service import Measurement, Sampled, check_status, format_targets, target_verdicts


def test_rounds_pool_into_one_rate_and_one_latency_distribution() -> None:
    pooled = Sampled()
    pooled.add(Sampled(1.0, [0.010] * 100, errors=1))
    pooled.add(Sampled(2.0, [0.030] * 50))

    m = pooled.measurement("samplerd", 4, rows=2)

    assert m.requests_per_s == pytest.approx(150 / 3.0) and m.rows_per_s == pytest.approx(2 * 150 / 3.0)
    assert m.p50_ms == pytest.approx(10.0) and m.p99_ms == pytest.approx(30.0) and m.errors == 1


def _measured(target: str, concurrency: int, rate: float, p50: float, p99: float) -> Measurement:
    return Measurement(target, concurrency, rate, rate, p50, p99, 0)


def test_check_exits_non_zero_exactly_when_a_target_is_missed() -> None:
    good = [_measured("empty", 16, 1000, 1, 2), _measured("samplerd", 16, 500, 10, 20)]
    slow = [_measured("empty", 16, 1000, 1, 2), _measured("samplerd", 16, 100, 10, 20)]  # 0.1 < 0.4
    jittery = [_measured("empty", 16, 1000, 1, 2), _measured("samplerd", 16, 500, 10, 35)]  # p99/p50 3.5

    assert all(v.met for v in target_verdicts(good)) and check_status(target_verdicts(good), check=True) == 0
    assert check_status(target_verdicts(slow), check=True) == 1
    assert check_status(target_verdicts(jittery), check=True) == 1
    assert check_status(target_verdicts(slow), check=False) == 0  # without --check: figures only
    assert "FAIL" in format_targets(target_verdicts(slow)) and "FAIL" not in format_targets(target_verdicts(good))


def test_a_short_run_measures_both_targets_at_each_concurrency(tmp_path: Path) -> None:
    out = tmp_path / "service.json"
    run = subprocess.run(
        [sys.executable, "-m", "samplerd.service.cli", "bench", "service", "--concurrency", "1,16", "--seconds", "0.6",
         "--rounds", "2", "--warmup-seconds", "0.2", "--no-progress", "--json", str(out), "--check"],
        capture_output=True, text=True, timeout=240,
    )

    # --check: the exit status follows the printed verdicts (either may come out on a shared machine).
    assert "PASS" in run.stdout or "FAIL" in run.stdout, run.stdout + run.stderr
    assert run.returncode == (1 if "FAIL" in run.stdout else 0), run.stdout + run.stderr
    measured = json.loads(out.read_text())
    assert sorted((m["target"], m["concurrency"]) for m in measured) == [
        ("empty", 1), ("empty", 16), ("samplerd", 1), ("samplerd", 16)]
    assert all(m["requests_per_s"] > 0 and m["errors"] == 0 for m in measured), run.stdout
    assert "samplerd means over the run" in run.stdout and "2 alternating rounds" in run.stdout
