"""Helpers of the deploy/ tests: paths, tools, metric names in /metrics and in PromQL."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

from external_tools import require_tool  # noqa: F401  (re-exported for the deploy tests)
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
# CI clones the repository next to a copy of shared/; so is the development checkout.
SHARED_SCHEMAS = REPO_ROOT.parent / "shared" / "schemas"
DASHBOARD = DEPLOY / "grafana" / "samplerd-dashboard.json"

# The sample names a metric family of each type exposes (prometheus-client's text format).
_SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


def fetch_metrics_text(metrics_port: int) -> str:
    """One scrape of a samplerd's /metrics, as text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        return response.read().decode()


def exported_sample_names(metrics_text: str) -> set[str]:
    """Every sample name the exposition declares, including those of labelled families that
    have no child yet (prometheus-client prints their HELP/TYPE only)."""
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or labels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    keywords = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
                "and", "or", "unless", "atan2", "inf", "nan", "Inf", "NaN"}
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][\w:]*", text):
        if text[match.end():].lstrip().startswith("(") or match.group() in keywords:
            continue
        names.add(match.group())
    return names


def dashboard_expressions(strategies: str = "greedy|top_k") -> list[str]:
    """Every panel query of the dashboard with its template variables substituted as Grafana
    does before a query reaches Prometheus (a multi-value $strategy becomes an alternation)."""
    values = {"$__rate_interval": "1m", "$strategy": strategies}
    expressions = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in values.items():
                expr = expr.replace(variable, value)
            expressions.append(expr)
    return expressions
