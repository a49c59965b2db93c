"""Generate the deploy/ files that are derived from another source, so each fact lives once.

- ``deploy/grafana/samplerd-dashboard.json`` from the panel list below;
- ``deploy/k8s/base/prometheusrule.yaml`` (a Prometheus Operator ``PrometheusRule``) from
  ``deploy/prometheus/alerts.yml``, the rules a plain Prometheus loads.

Run ``python deploy/generate.py`` after editing either source and commit the output;
``tests/deploy`` fails when a generated file is stale (``--check`` does the same here).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
DASHBOARD_PATH = DEPLOY / "grafana" / "samplerd-dashboard.json"
ALERTS_PATH = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS_RULE_PATH = DEPLOY / "k8s" / "base" / "prometheusrule.yaml"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
STRATEGY = 'strategy=~"$strategy"'
RATE = "$__rate_interval"


def _series(metric: str, selector: str = "") -> str:
    """A series selector: the metric name and, if any, its label matchers."""
    return f"{metric}{{{selector}}}" if selector else metric


def _quantiles(metric: str, by: str, quantiles: tuple[float, ...], selector: str = "") -> list[dict]:
    """One target per quantile of a histogram, grouped by ``by``."""
    group = f"{by}, le" if by else "le"
    legend_by = " ".join("{{" + label.strip() + "}}" for label in by.split(",")) if by else ""
    buckets = _series(metric + "_bucket", selector)
    return [
        {
            "expr": f"histogram_quantile({q}, sum by ({group}) (rate({buckets}[{RATE}])))",
            "legendFormat": f"{legend_by} p{round(q * 100)}".strip(),
        }
        for q in quantiles
    ]


def _mean(metric: str, by: str, selector: str = "") -> dict:
    """The mean of a histogram's observations over the rate interval, grouped by ``by``."""
    return {
        "expr": (
            f"sum by ({by}) (rate({_series(metric + '_sum', selector)}[{RATE}]))"
            f" / sum by ({by}) (rate({_series(metric + '_count', selector)}[{RATE}]))"
        ),
        "legendFormat": " ".join("{{" + label.strip() + "}}" for label in by.split(",")) + " mean",
    }


def _heatmap(metric: str, selector: str) -> list[dict]:
    return [
        {
            "expr": f"sum by (le) (increase({_series(metric + '_bucket', selector)}[{RATE}]))",
            "legendFormat": "{{le}}",
            "format": "heatmap",
        }
    ]


# (row title, [(panel title, panel type, unit, description, targets)])
PANELS: list[tuple[str, list[tuple[str, str, str, str, list[dict]]]]] = [
    (
        "Requests",
        [
            (
                "Request rate by method and code",
                "timeseries",
                "reqps",
                "gRPC requests per second (samplerd_requests_total).",
                [
                    {
                        "expr": f"sum by (method, code) (rate(samplerd_requests_total[{RATE}]))",
                        "legendFormat": "{{method}} {{code}}",
                    }
                ],
            ),
            (
                "Error ratio by method",
                "timeseries",
                "percentunit",
                "Share of requests that ended with a non-OK status. Requests carry no strategy "
                "label (one request may mix strategies), so errors are per method.",
                [
                    {
                        "expr": (
                            f'sum by (method) (rate(samplerd_requests_total{{code!="OK"}}[{RATE}]))'
                            f" / sum by (method) (rate(samplerd_requests_total[{RATE}]))"
                        ),
                        "legendFormat": "{{method}}",
                    }
                ],
            ),
            (
                "Request latency by method",
                "timeseries",
                "s",
                "p50 / p90 / p99 of the request duration (streaming methods: the stream's life).",
                _quantiles("samplerd_request_duration_seconds", "method", (0.5, 0.9, 0.99)),
            ),
            (
                "In-flight requests",
                "timeseries",
                "short",
                "Requests accepted and not yet answered.",
                [{"expr": "sum(samplerd_inflight_requests)", "legendFormat": "in flight"}],
            ),
        ],
    ),
    (
        "Per strategy: speed",
        [
            (
                "Throughput (rows/s)",
                "timeseries",
                "short",
                "Rows sampled per second, per strategy.",
                [
                    {
                        "expr": f"sum by (strategy) (rate(samplerd_rows_total{{{STRATEGY}}}[{RATE}]))",
                        "legendFormat": "{{strategy}}",
                    }
                ],
            ),
            (
                "Kernel latency per batch group",
                "timeseries",
                "s",
                "p50 / p90 / p99 of the sampling kernel time per batch group, per strategy and device.",
                _quantiles(
                    "samplerd_sample_duration_seconds", "strategy, device", (0.5, 0.9, 0.99), STRATEGY
                ),
            ),
        ],
    ),
    (
        "Per strategy: distributions",
        [
            (
                "Entropy: full vs truncated",
                "timeseries",
                "short",
                "Mean Shannon entropy (nats) of the model distribution (full) and of the "
                "distribution actually sampled (truncated).",
                [_mean("samplerd_entropy_nats", "strategy, stage", STRATEGY)],
            ),
            (
                "Entropy heatmap: full",
                "heatmap",
                "short",
                "Distribution of the per-row entropy (nats) of the model distribution.",
                _heatmap("samplerd_entropy_nats", f'{STRATEGY}, stage="full"'),
            ),
            (
                "Entropy heatmap: truncated",
                "heatmap",
                "short",
                "Distribution of the per-row entropy (nats) of the truncated distribution.",
                _heatmap("samplerd_entropy_nats", f'{STRATEGY}, stage="truncated"'),
            ),
            (
                "Kept tokens",
                "timeseries",
                "short",
                "Tokens left after truncation: mean and p50 / p99 per strategy.",
                [_mean("samplerd_kept_tokens", "strategy", STRATEGY)]
                + _quantiles("samplerd_kept_tokens", "strategy", (0.5, 0.99), STRATEGY),
            ),
            (
                "Kept mass",
                "timeseries",
                "percentunit",
                "Probability mass Z the truncation kept (-log Z is the distortion per token): "
                "mean and p10 per strategy.",
                [_mean("samplerd_kept_mass", "strategy", STRATEGY)]
                + _quantiles("samplerd_kept_mass", "strategy", (0.1,), STRATEGY),
            ),
            (
                "Surprise",
                "timeseries",
                "short",
                "Surprise -log p(token) (nats) of the sampled token: mean and p90 per strategy.",
                [_mean("samplerd_surprise_nats", "strategy", STRATEGY)]
                + _quantiles("samplerd_surprise_nats", "strategy", (0.9,), STRATEGY),
            ),
        ],
    ),
    (
        "Capacity",
        [
            (
                "Queue depth",
                "timeseries",
                "short",
                "Items waiting in the dispatcher queue, per front end.",
                [{"expr": "samplerd_queue_depth", "legendFormat": "{{instance}}"}],
            ),
            (
                "Queue wait",
                "timeseries",
                "s",
                "Time rows wait before a worker takes them: p50 / p99.",
                _quantiles("samplerd_queue_wait_seconds", "", (0.5, 0.99)),
            ),
            (
                "Batch rows",
                "timeseries",
                "short",
                "Rows per batch a worker runs: mean and p50 / p99 (dynamic batching at work).",
                [
                    {
                        "expr": (
                            f"sum(rate(samplerd_batch_rows_sum[{RATE}]))"
                            f" / sum(rate(samplerd_batch_rows_count[{RATE}]))"
                        ),
                        "legendFormat": "mean",
                    }
                ]
                + _quantiles("samplerd_batch_rows", "", (0.5, 0.99)),
            ),
            (
                "Workers by state",
                "timeseries",
                "short",
                "Sampler workers per state, per front end.",
                [
                    {
                        "expr": "sum by (instance, state) (samplerd_workers)",
                        "legendFormat": "{{instance}} {{state}}",
                    }
                ],
            ),
        ],
    ),
    (
        "Sessions",
        [
            (
                "Open SampleStream sessions",
                "timeseries",
                "short",
                "Decoding sessions open now, per front end (each holds its sequences' state).",
                [{"expr": "sum by (instance) (samplerd_sessions_active)", "legendFormat": "{{instance}}"}],
            ),
        ],
    ),
    (
        "Generate",
        [
            (
                "Generated tokens/s",
                "timeseries",
                "short",
                "Tokens Generate produced per second, by the strategy that decided them.",
                [
                    {
                        "expr": f"sum by (strategy) (rate(samplerd_generated_tokens_total{{{STRATEGY}}}[{RATE}]))",
                        "legendFormat": "{{strategy}}",
                    }
                ],
            ),
            (
                "Generate sequences",
                "timeseries",
                "short",
                "Generate sequences on the language model: running in the decode batch, or waiting "
                "for a batch slot.",
                [{"expr": "sum by (state) (samplerd_generate_sequences)", "legendFormat": "{{state}}"}],
            ),
            (
                "Time to first token",
                "timeseries",
                "s",
                "From receiving a Generate call to sending its first token (waiting for a batch slot, "
                "the prefill, the first step): p50 / p99 by strategy.",
                _quantiles("samplerd_time_to_first_token_seconds", "strategy", (0.5, 0.99), STRATEGY),
            ),
            (
                "Inter-token latency",
                "timeseries",
                "s",
                "Time between consecutive tokens of one Generate stream (a decode step of the whole "
                "batch, and the stream's share of the front end): p50 / p99 by strategy.",
                _quantiles("samplerd_inter_token_latency_seconds", "strategy", (0.5, 0.99), STRATEGY),
            ),
        ],
    ),
]


def _panel(panel_id: int, title: str, kind: str, unit: str, description: str, targets: list[dict],
           x: int, y: int) -> dict:
    panel = {
        "id": panel_id,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "targets": [
            {"refId": chr(ord("A") + index), "datasource": DATASOURCE, **target}
            for index, target in enumerate(targets)
        ],
    }
    if kind == "heatmap":
        panel["options"] = {
            "calculate": False,
            "yAxis": {"unit": unit},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Spectral", "steps": 64},
        }
    else:
        panel["fieldConfig"] = {"defaults": {"unit": unit}, "overrides": []}
        panel["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
    return panel


def dashboard() -> dict:
    """The Grafana dashboard, as a JSON-serialisable dict."""
    panels: list[dict] = []
    panel_id = 1
    y = 0
    for row_title, row_panels in PANELS:
        panels.append({"id": panel_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        panel_id += 1
        y += 1
        for index, (title, kind, unit, description, targets) in enumerate(row_panels):
            x = 0 if index % 2 == 0 else 12
            panels.append(_panel(panel_id, title, kind, unit, description, targets, x, y))
            panel_id += 1
            if index % 2 == 1 or index == len(row_panels) - 1:
                y += 8
    return {
        "title": "samplerd",
        "uid": "samplerd",
        "description": "samplerd: requests, per-strategy latency and distribution statistics, capacity.",
        "tags": ["samplerd", "llm", "sampling"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "strategy",
                    "label": "Strategy",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "definition": "label_values(samplerd_rows_total, strategy)",
                    "query": {"query": "label_values(samplerd_rows_total, strategy)", "refId": "strategy"},
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "panels": panels,
    }


def prometheus_rule() -> dict:
    """``alerts.yml`` wrapped as a Prometheus Operator ``PrometheusRule``."""
    rules = yaml.safe_load(ALERTS_PATH.read_text())
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "samplerd", "labels": {"app.kubernetes.io/name": "samplerd"}},
        "spec": {"groups": rules["groups"]},
    }


class _LiteralDumper(yaml.SafeDumper):
    """Dumps multi-line strings (PromQL) as ``|`` blocks so the generated YAML stays readable."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


def rendered() -> dict[Path, str]:
    """Each generated file's path and its exact content."""
    header = "# Generated by `python deploy/generate.py` from deploy/prometheus/alerts.yml. Do not edit.\n"
    return {
        DASHBOARD_PATH: json.dumps(dashboard(), indent=2) + "\n",
        PROMETHEUS_RULE_PATH: header
        + yaml.dump(prometheus_rule(), Dumper=_LiteralDumper, sort_keys=False, width=120),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, content in rendered().items():
        current = path.read_text() if path.exists() else None
        if current == content:
            continue
        if args.check:
            stale.append(path)
        else:
            path.write_text(content)
            print(f"wrote {path.relative_to(DEPLOY.parent)}")
    for path in stale:
        print(f"stale: {path.relative_to(DEPLOY.parent)} (run python deploy/generate.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
