"""End to end: a real Prometheus server scrapes a running samplerd while mixed traffic flows,
and PromQL over Prometheus' HTTP API shows per strategy what the traffic was.

Prometheus (the Debian package) runs on loopback with a temporary data directory, a 1 s
scrape and rule interval, and loads deploy/prometheus/alerts.yml, so the recording rules and
alerts are evaluated on real data too.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import grpc
import numpy as np
import pytest
import yaml
from deploy_helpers import DEPLOY, dashboard_expressions, fetch_metrics_text, require_tool

pytestmark = pytest.mark.e2e

VOCAB = 1000
ROWS_PER_REQUEST = 8
ROUNDS = 6
# One parameter set per strategy label; the label is what the service reports per row.
TRAFFIC = {
    "greedy": {"temperature": 0.0},
    "top_k": {"top_k": 5},
    "top_p": {"top_p": 0.9},
    "min_p": {"min_p": 0.05},
}
STRATEGIES = "|".join(TRAFFIC)
INVALID_REQUESTS = 3


class PrometheusAPI:
    """Instant queries against a Prometheus server's HTTP API."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def get(self, path: str, **params: str) -> dict:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """The instant vector ``expr`` evaluates to now."""
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return data["result"]

    def by_label(self, expr: str, label: str = "strategy") -> dict[str, float]:
        """``expr``'s values keyed by one label."""
        return {item["metric"].get(label, ""): float(item["value"][1]) for item in self.query(expr)}

    def scalar(self, expr: str) -> float:
        (item,) = self.query(expr)
        return float(item["value"][1])

    def wait_for_rule_evaluation(self, timeout_s: float = 10.0) -> None:
        """Wait until every rule group has been evaluated again after this call."""
        started = time.time()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            groups = self.get("/api/v1/rules")["groups"]
            if groups and all(_unix_seconds(group["lastEvaluation"]) > started for group in groups):
                return
            time.sleep(0.25)
        raise AssertionError(f"the rules were not evaluated within {timeout_s} s")

    def wait_for(self, expr: str, predicate, timeout_s: float = 20.0):
        """Poll ``expr`` (by strategy) until ``predicate`` holds; return the last values."""
        deadline = time.monotonic() + timeout_s
        while True:
            values = self.by_label(expr)
            if predicate(values) or time.monotonic() > deadline:
                return values
            time.sleep(0.25)


def _unix_seconds(rfc3339: str) -> float:
    """Prometheus' RFC 3339 timestamps (nanoseconds, Z) as Unix seconds."""
    seconds, _, fraction = rfc3339.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(seconds).replace(tzinfo=timezone.utc).timestamp()
    return stamp + float("0." + (fraction or "0"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus(samplerd_server, tmp_path_factory) -> PrometheusAPI:
    """A Prometheus server scraping the test's samplerd every second."""
    binary = require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "scrape_configs": [{
            "job_name": "samplerd",
            "static_configs": [{"targets": [f"127.0.0.1:{samplerd_server.metrics_port}"]}],
        }],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    api = PrometheusAPI(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (workdir / "prometheus.log").read_text()
            try:
                if api.by_label('up{job="samplerd"}', "job") == {"samplerd": 1.0}:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape samplerd within 30 s"
            time.sleep(0.25)
        yield api
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def _entropy(logits: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row's softmax."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -(np.exp(log_p) * log_p).sum(axis=1)


@dataclass
class Traffic:
    """What the test sent: rows per strategy and the true entropy of each row's logits."""

    rows: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    entropies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    ok_requests: int = 0


@pytest.fixture(scope="module")
def traffic(samplerd_server, prometheus) -> Traffic:
    """Mixed traffic from four threads: single-strategy requests, requests mixing strategies
    row by row, and a few invalid ones. Returns once Prometheus has scraped all of it."""
    from samplerd.service.client import SamplerClient

    before = prometheus.by_label("sum by (strategy) (samplerd_rows_total)")
    assert not any(before.values()), f"the server already sampled rows before the test: {before}"
    rng = np.random.default_rng(20261127)
    sent = Traffic()
    jobs = []
    for _ in range(ROUNDS):
        for params in TRAFFIC.values():
            jobs.append((rng.standard_normal((ROWS_PER_REQUEST, VOCAB)).astype(np.float32) * 3, params, None))
        mixed = [TRAFFIC[s] for s in TRAFFIC] * (ROWS_PER_REQUEST // len(TRAFFIC))
        jobs.append((rng.standard_normal((ROWS_PER_REQUEST, VOCAB)).astype(np.float32) * 3, {}, mixed))

    with SamplerClient(samplerd_server.target, timeout=30) as client:
        def send(job):
            logits, params, row_params = job
            return logits, client.sample(logits, row_params=row_params, **params)

        with ThreadPoolExecutor(max_workers=4) as pool:
            for logits, result in pool.map(send, jobs):
                sent.ok_requests += 1
                for row, entropy in zip(result, _entropy(logits), strict=True):
                    sent.rows[row.strategy] += 1
                    sent.entropies[row.strategy].append(float(entropy))
        for _ in range(INVALID_REQUESTS):
            with pytest.raises(grpc.RpcError) as error:
                client.sample(np.zeros((1, VOCAB), np.float32), top_p=1.5)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert set(sent.rows) == set(TRAFFIC), f"the service labelled rows {set(sent.rows)}"
    expected = {strategy: float(rows) for strategy, rows in sent.rows.items()}
    scraped = prometheus.wait_for("sum by (strategy) (samplerd_rows_total)",
                                  lambda values: all(values.get(s) == n for s, n in expected.items()))
    assert {s: scraped.get(s) for s in expected} == expected
    prometheus.wait_for('samplerd_requests_total{method="Sample", code="INVALID_ARGUMENT"}',
                        lambda values: sum(values.values()) == INVALID_REQUESTS)
    return sent


def _mean(api: PrometheusAPI, metric: str, selector: str = "", by: str = "strategy") -> dict[str, float]:
    return api.by_label(f"sum by ({by}) ({metric}_sum{{{selector}}}) / sum by ({by}) ({metric}_count{{{selector}}})",
                        by.split(",")[0])


def test_dashboard_strategy_variable_lists_every_strategy_that_sampled(prometheus, traffic):
    values = prometheus.get("/api/v1/label/strategy/values", **{"match[]": "samplerd_rows_total"})
    assert set(TRAFFIC) <= set(values)


def test_request_counts_and_rate_match_the_traffic(prometheus, traffic):
    codes = prometheus.by_label('samplerd_requests_total{method="Sample"} > 0', "code")
    assert codes == {"OK": traffic.ok_requests, "INVALID_ARGUMENT": INVALID_REQUESTS}
    assert prometheus.scalar('sum(rate(samplerd_requests_total{method="Sample"}[1m]))') > 0
    error_ratio = prometheus.scalar(
        'sum(rate(samplerd_requests_total{method="Sample", code!="OK"}[1m]))'
        ' / sum(rate(samplerd_requests_total{method="Sample"}[1m]))')
    assert error_ratio == pytest.approx(INVALID_REQUESTS / (INVALID_REQUESTS + traffic.ok_requests))


def test_row_rate_is_positive_for_every_strategy(prometheus, traffic):
    rates = prometheus.by_label(f'sum by (strategy) (rate(samplerd_rows_total{{strategy=~"{STRATEGIES}"}}[1m]))')
    assert set(rates) == set(TRAFFIC)
    assert all(rate > 0 for rate in rates.values()), rates


def test_p99_kernel_latency_per_strategy_is_present_and_plausible(prometheus, traffic):
    p99 = prometheus.by_label(
        "histogram_quantile(0.99, sum by (strategy, le) "
        f'(rate(samplerd_sample_duration_seconds_bucket{{strategy=~"{STRATEGIES}", device="cpu"}}[1m])))')
    assert set(p99) == set(TRAFFIC)
    assert all(0 < seconds < 10 for seconds in p99.values()), p99


def test_p99_request_latency_is_present_and_plausible(prometheus, traffic):
    p99 = prometheus.scalar('histogram_quantile(0.99, sum by (le) '
                            '(rate(samplerd_request_duration_seconds_bucket{method="Sample"}[1m])))')
    assert 0 < p99 < 30


def test_mean_full_entropy_equals_the_entropy_of_the_logits_sent(prometheus, traffic):
    full = _mean(prometheus, "samplerd_entropy_nats", f'stage="full", strategy=~"{STRATEGIES}"')
    expected = {strategy: float(np.mean(values)) for strategy, values in traffic.entropies.items()}
    assert full == pytest.approx(expected, rel=1e-4)


def test_mean_truncated_entropy_is_zero_for_greedy_and_below_full_for_truncations(prometheus, traffic):
    truncated = _mean(prometheus, "samplerd_entropy_nats", f'stage="truncated", strategy=~"{STRATEGIES}"')
    full = _mean(prometheus, "samplerd_entropy_nats", f'stage="full", strategy=~"{STRATEGIES}"')
    assert truncated["greedy"] == 0.0
    assert 0 < truncated["top_k"] <= math.log(5) + 1e-6
    for strategy in ("top_k", "top_p", "min_p"):
        assert 0 < truncated[strategy] < full[strategy], strategy


def test_kept_tokens_distribution_shows_top_k_5_and_greedy_1(prometheus, traffic):
    mean = _mean(prometheus, "samplerd_kept_tokens", f'strategy=~"{STRATEGIES}"')
    assert mean["top_k"] == 5.0
    assert mean["greedy"] == 1.0
    assert mean["top_p"] > 5 and mean["min_p"] > 1
    buckets = prometheus.by_label('samplerd_kept_tokens_bucket{strategy="top_k"}', "le")
    rows = traffic.rows["top_k"]
    assert buckets["4.0"] == 0 and buckets["8.0"] == rows and buckets["+Inf"] == rows
    p99 = prometheus.scalar('histogram_quantile(0.99, sum by (le) (samplerd_kept_tokens_bucket{strategy="top_k"}))')
    assert 4 < p99 <= 8


def test_kept_mass_and_surprise_are_plausible(prometheus, traffic):
    kept_mass = _mean(prometheus, "samplerd_kept_mass", f'strategy=~"{STRATEGIES}"')
    assert kept_mass["top_p"] >= 0.9
    assert all(0 < mass <= 1 + 1e-6 for mass in kept_mass.values()), kept_mass
    surprise = _mean(prometheus, "samplerd_surprise_nats", f'strategy=~"{STRATEGIES}"')
    assert all(value >= 0 for value in surprise.values())
    assert surprise["greedy"] < surprise["top_p"]


def test_recording_rules_of_alerts_yml_evaluate_on_the_scraped_data(prometheus, traffic):
    rule = 'strategy:samplerd_entropy_nats:mean5m{job="samplerd", stage="truncated"}'
    raw = _mean(prometheus, "samplerd_entropy_nats", f'stage="truncated", strategy=~"{STRATEGIES}"')
    recorded = prometheus.wait_for(rule, lambda values: all(
        s in values and math.isclose(values[s], raw[s], rel_tol=1e-6, abs_tol=1e-9) for s in TRAFFIC))
    assert {s: recorded[s] for s in TRAFFIC} == pytest.approx(raw, rel=1e-6, abs=1e-9)


def test_worker_alerts_stay_silent_for_a_healthy_service(prometheus, traffic):
    prometheus.wait_for_rule_evaluation()
    assert prometheus.scalar('sum(samplerd_workers{state="alive"})') >= 1
    alerts = prometheus.get("/api/v1/alerts")["alerts"]
    raised = {alert["labels"]["alertname"] for alert in alerts}
    assert not raised & {"SamplerdNoHealthyWorkers", "SamplerdTargetDown"}, alerts


def test_every_dashboard_query_returns_data(prometheus, traffic):
    empty = [expr for expr in dashboard_expressions(STRATEGIES) if not prometheus.query(expr)]
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


def test_promtool_check_metrics_is_clean_on_a_live_scrape(samplerd_server, traffic):
    scrape = fetch_metrics_text(samplerd_server.metrics_port)
    result = subprocess.run([require_tool("promtool"), "check", "metrics"], input=scrape,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr)
