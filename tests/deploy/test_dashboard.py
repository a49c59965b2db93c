"""The Grafana dashboard: generated, valid PromQL, only metrics the running service exports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from deploy_helpers import DASHBOARD, REPO_ROOT, dashboard_expressions, promql_metric_names, require_tool

from samplerd.service.metrics import Metrics

# The list: the dashboard shows each of these families.
#: Every samplerd metric family the front end exports (the process and GC collectors aside).
SHOWN_FAMILIES = {family.name for family in Metrics().registry.collect() if family.name.startswith("samplerd_")}


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def test_generated_dashboard_and_prometheusrule_are_up_to_date():
    result = subprocess.run([sys.executable, "deploy/generate.py", "--check"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_every_template_variable_is_substituted():
    assert all("$" not in expr for expr in dashboard_expressions())


def test_strategy_variable_lists_the_strategies_that_sampled_rows():
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["strategy"]["query"]["query"] == "label_values(samplerd_rows_total, strategy)"
    assert variables["strategy"]["multi"] and variables["strategy"]["includeAll"]


def test_every_expression_is_valid_promql(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expression_{i}", "expr": expr} for i, expr in enumerate(dashboard_expressions())
    ]}]}
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump(rules))
    result = subprocess.run([require_tool("promtool"), "check", "rules", str(rules_file)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_invalid_expression_is_caught_by_the_promql_check(tmp_path):
    rules_file = tmp_path / "broken.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "broken", "expr": "sum by (strategy (rate(samplerd_rows_total[1m]))"}]}]}))
    result = subprocess.run([require_tool("promtool"), "check", "rules", str(rules_file)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


@pytest.mark.parametrize("expr", dashboard_expressions())
def test_expression_uses_only_metrics_the_service_exports(expr, live_metric_names):
    names = promql_metric_names(expr)
    assert names, f"no metric in {expr}"
    assert names <= live_metric_names, f"not exported by samplerd: {names - live_metric_names}"


def test_metric_names_are_told_apart_from_functions_labels_and_keywords():
    expr = ('histogram_quantile(0.99, sum by (strategy, le) (rate(samplerd_kept_tokens_bucket{stage="full"}[1m])))'
            ' / on (strategy) group_left samplerd_rows_total offset 5m > bool 1e-3')
    assert promql_metric_names(expr) == {"samplerd_kept_tokens_bucket", "samplerd_rows_total"}


def test_dashboard_shows_every_metric_family_the_service_exports():
    assert {"samplerd_requests", "samplerd_sessions_active", "samplerd_generated_tokens"} <= SHOWN_FAMILIES
    used = set().union(*(promql_metric_names(expr) for expr in dashboard_expressions()))
    missing = {family for family in SHOWN_FAMILIES
               if not any(name == family or name.startswith(family + "_") for name in used)}
    assert not missing


def test_per_strategy_panels_filter_on_the_strategy_variable():
    for panel in _panels():
        for target in panel["targets"]:
            if "strategy" in target["expr"]:
                assert 'strategy=~"$strategy"' in target["expr"], panel["title"]


def test_entropy_is_shown_full_vs_truncated_over_time_and_as_heatmaps():
    panels = _panels()
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    stages = {stage for p in heatmaps for t in p["targets"] for stage in ("full", "truncated")
              if f'stage="{stage}"' in t["expr"] and "samplerd_entropy_nats_bucket" in t["expr"]}
    assert stages == {"full", "truncated"}
    assert all(t.get("format") == "heatmap" for p in heatmaps for t in p["targets"])
    over_time = [t["expr"] for p in panels if p["type"] == "timeseries" for t in p["targets"]
                 if "samplerd_entropy_nats_sum" in t["expr"]]
    assert any("stage" in expr for expr in over_time)


def test_panel_ids_and_target_ref_ids_are_unique():
    ids = [panel["id"] for panel in _dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels():
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_the_generate_row_shows_throughput_time_to_first_token_and_inter_token_latency():
    panels = _dashboard()["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == "Generate")
    row = []
    for panel in panels[start + 1:]:
        if panel["type"] == "row":
            break
        row.append(panel)
    expressions = {panel["title"]: " ".join(t["expr"] for t in panel["targets"]) for panel in row}
    assert "samplerd_generated_tokens_total" in expressions["Generated tokens/s"]
    assert "samplerd_generate_sequences" in expressions["Generate sequences"]
    for title, metric in (("Time to first token", "samplerd_time_to_first_token_seconds_bucket"),
                          ("Inter-token latency", "samplerd_inter_token_latency_seconds_bucket")):
        assert metric in expressions[title] and "sum by (strategy, le)" in expressions[title]
        assert {"0.5", "0.99"} <= {expr.split("(")[1].split(",")[0] for expr in expressions[title].split(
            "histogram_quantile")[1:]}
