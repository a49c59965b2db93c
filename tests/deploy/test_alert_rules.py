"""The Prometheus alert rules in deploy/prometheus/: valid, unit-tested by promtool, complete."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from deploy_helpers import DEPLOY, promql_metric_names, require_tool

PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
RUNBOOK = PROMETHEUS_DIR / "runbook.md"

REQUIRED_ALERTS = {
    "SamplerdHighErrorRatio",
    "SamplerdStrategyP99LatencyHigh",
    "SamplerdQueueSaturated",
    "SamplerdNoHealthyWorkers",
    "SamplerdEntropyCollapse",
    "SamplerdOverTruncation",
}


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _alerts() -> list[dict]:
    return [rule for rule in _rules() if "alert" in rule]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)


def test_promtool_check_rules_accepts_the_rules_file():
    result = _run(require_tool("promtool"), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass():
    result = _run(require_tool("promtool"), "test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_scrape_config_for_a_local_samplerd_is_valid():
    result = _run(require_tool("promtool"), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_the_issue_asks_for_exists():
    assert REQUIRED_ALERTS <= {rule["alert"] for rule in _alerts()}


@pytest.mark.parametrize("alert", _alerts(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_summary_description_and_runbook(alert):
    assert alert["labels"]["severity"] in ("critical", "warning")
    for annotation in ("summary", "description", "runbook"):
        assert alert["annotations"].get(annotation, "").strip(), f"{alert['alert']} lacks {annotation}"
    anchor = f"runbook.md#{alert['alert'].lower()}"
    assert anchor in alert["annotations"]["runbook"]
    assert re.search(rf"^## {alert['alert']}$", RUNBOOK.read_text(), flags=re.MULTILINE), (
        f"runbook.md has no section for {alert['alert']}")


@pytest.mark.parametrize("alert", _alerts(), ids=lambda rule: rule["alert"])
def test_alert_has_a_unit_test_that_fires_it_and_one_where_it_stays_silent(alert):
    cases = [case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
             for case in test.get("alert_rule_test", []) if case["alertname"] == alert["alert"]]
    assert any(case["exp_alerts"] for case in cases), f"no test fires {alert['alert']}"
    assert any(not case["exp_alerts"] for case in cases), f"no test shows {alert['alert']} staying silent"


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule.get("alert") or rule["record"])
def test_rules_use_only_metrics_the_service_exports(rule, live_metric_names):
    recorded = {r["record"] for r in _rules() if "record" in r}
    # `up` is Prometheus' own series for each scrape target.
    unknown = promql_metric_names(rule["expr"]) - live_metric_names - recorded - {"up"}
    assert not unknown, f"{rule.get('alert') or rule['record']} uses unknown metrics {unknown}"
