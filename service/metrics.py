"""Prometheus metrics of the front end; docs/metrics.md lists every name, label and unit.

Every series whose label values are known up front (each strategy, each RPC method) is
created at start, so dashboards see zeros instead of missing series. Metrics live in their
own registry, served on ``--metrics-port`` at ``/metrics``. The ``_created`` timestamp series
prometheus-client adds to every counter and histogram are switched off: each would be exported
as a gauge of its own, tripling /metrics for nothing a query uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from samplerd.sampling.registry import STRATEGY_LABELS

METHODS = ("Sample", "ListStrategies", "SampleStream", "Generate", "ModelInfer")
# Codes the service answers with; pre-created so error-rate queries have a denominator of zeros.
CODES = (
    "OK", "CANCELLED", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "FAILED_PRECONDITION", "NOT_FOUND", "UNAUTHENTICATED",
    "PERMISSION_DENIED",
)
WORKER_STATES = ("alive", "starting", "dead")

# Latency: 10 microseconds (one small kernel) to 10 seconds (a request stuck in a queue).
LATENCY_BUCKETS = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
# Entropy in nats: 0 (one token) to ln(262144) ~ 12.5 (uniform over a large vocabulary).
ENTROPY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0,
                   10.0, 11.0, 12.0, 13.0)
# Surprise -ln p(token) in nats: like entropy, with a tail for improbable draws (p ~ 1e-9).
SURPRISE_BUCKETS = (*ENTROPY_BUCKETS, 16.0, 20.0, 30.0)
# Kept tokens and batch rows: powers of two, 1 up to 262144 (the largest vocabularies).
KEPT_TOKENS_BUCKETS = tuple(float(2**i) for i in range(19))
BATCH_ROWS_BUCKETS = tuple(float(2**i) for i in range(13))
# Time to a Generate stream's first token: a prefill (milliseconds) up to a long wait for a batch slot.
TTFT_BUCKETS = (1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
KEPT_MASS_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.999, 1.0)


@dataclass(frozen=True)
class _RowSeries:
    """The per-row series of one strategy label."""

    rows: Counter
    entropy_full: Histogram
    entropy_truncated: Histogram
    kept_tokens: Histogram
    kept_mass: Histogram
    surprise: Histogram


class Metrics:
    """The front end's metrics, in a registry of their own."""

    def __init__(self, device: str = "cpu", strategies: Iterable[str] = STRATEGY_LABELS) -> None:
        disable_created_metrics()  # process-wide, and this process serves only samplerd's metrics
        self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        r = self.registry
        self.requests = Counter("samplerd_requests", "RPCs answered, by method and gRPC status code.",
                                ["method", "code"], registry=r)
        self.request_duration = Histogram(
            "samplerd_request_duration_seconds", "Time from receiving an RPC to answering it.", ["method"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.sample_duration = Histogram(
            "samplerd_sample_duration_seconds", "Kernel time of one strategy group of a batch on a worker.",
            ["strategy", "device"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "samplerd_queue_wait_seconds", "Time a request's rows waited for a worker.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram(
            "samplerd_batch_rows", "Rows per batch a worker sampled in one call.",
            buckets=BATCH_ROWS_BUCKETS, registry=r)
        self.rows = Counter("samplerd_rows", "Rows sampled, by the strategy that decided them.", ["strategy"],
                            registry=r)
        self.entropy = Histogram(
            "samplerd_entropy_nats", "Entropy per row in nats; label stage: full (the distribution before "
            "truncation) or truncated (the one sampled from), not a pipeline stage.",
            ["strategy", "stage"], buckets=ENTROPY_BUCKETS, registry=r)
        self.kept_tokens = Histogram(
            "samplerd_kept_tokens", "Tokens the truncation kept per row.", ["strategy"],
            buckets=KEPT_TOKENS_BUCKETS, registry=r)
        self.kept_mass = Histogram(
            "samplerd_kept_mass", "Probability mass the truncation kept per row (Z).", ["strategy"],
            buckets=KEPT_MASS_BUCKETS, registry=r)
        self.surprise = Histogram(
            "samplerd_surprise_nats", "Surprise -ln p of each sampled token under the full distribution.",
            ["strategy"], buckets=SURPRISE_BUCKETS, registry=r)
        self.generated_tokens = Counter(
            "samplerd_generated_tokens", "Tokens generated by Generate, by the strategy that decided them.",
            ["strategy"], registry=r)
        self._generated: dict[str, Counter] = {}  # generated_tokens children, looked up once
        self.time_to_first_token = Histogram(
            "samplerd_time_to_first_token_seconds", "Time from receiving a Generate call to sending its "
            "first token, by the strategy that decided that token.", ["strategy"], buckets=TTFT_BUCKETS,
            registry=r)
        self.inter_token_latency = Histogram(
            "samplerd_inter_token_latency_seconds", "Time between two consecutive tokens sent on one "
            "Generate stream, by the strategy that decided the later one.", ["strategy"],
            buckets=LATENCY_BUCKETS, registry=r)
        self._first_token: dict[str, Histogram] = {}  # children, looked up once
        self._token_gap: dict[str, Histogram] = {}
        self.generate_sequences = Gauge(
            "samplerd_generate_sequences", "Generate sequences on the language model: running (in the "
            "decode batch) or waiting for a batch slot.", ["state"], registry=r)
        for state in ("running", "waiting"):
            self.generate_sequences.labels(state)
        self.inflight = Gauge("samplerd_inflight_requests", "RPCs being handled now.", registry=r)
        self.queue_depth = Gauge("samplerd_queue_depth", "Rows waiting for a worker.", registry=r)
        self.workers = Gauge("samplerd_workers", "Sampler workers by state.", ["state"], registry=r)
        self.sessions_active = Gauge("samplerd_sessions_active", "SampleStream sessions open now.", registry=r)
        self._row_series: dict[str, _RowSeries] = {}
        self._preinitialise(device, tuple(strategies))

    def _preinitialise(self, device: str, strategies: tuple[str, ...]) -> None:
        self._answered: dict[tuple[str, str], Counter] = {}  # requests children, looked up once
        self._durations: dict[str, Histogram] = {}
        for method in METHODS:
            self._durations[method] = self.request_duration.labels(method)
            for code in CODES:
                self._answered[method, code] = self.requests.labels(method, code)
        for strategy in strategies:
            self.sample_duration.labels(strategy, device)
            self._add_row_series(strategy)
            self._generated[strategy] = self.generated_tokens.labels(strategy)
            self._first_token[strategy] = self.time_to_first_token.labels(strategy)
            self._token_gap[strategy] = self.inter_token_latency.labels(strategy)
        for state in WORKER_STATES:
            self.workers.labels(state)

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        """One answered RPC."""
        answered = self._answered.get((method, code))
        if answered is None:
            answered = self._answered[method, code] = self.requests.labels(method, code)
        answered.inc()
        duration = self._durations.get(method)
        if duration is None:
            duration = self._durations[method] = self.request_duration.labels(method)
        duration.observe(seconds)

    def observe_rows(self, out, row_samples: Iterable[int]) -> None:
        """The statistics of sampled rows: ``out`` is a sampler output, ``row_samples`` the
        number of samples (``n``) of each row."""
        stats = out.stats
        columns = zip(
            out.strategies, row_samples, stats.entropy.tolist(), stats.truncated_entropy.tolist(),
            stats.kept_tokens.tolist(), stats.kept_mass.tolist(), stats.surprise.tolist(),
            strict=True,
        )
        for strategy, n, entropy, truncated, kept_tokens, kept_mass, surprise in columns:
            series = self._row_series.get(strategy) or self._add_row_series(strategy)
            series.rows.inc()
            series.entropy_full.observe(entropy)
            series.entropy_truncated.observe(truncated)
            series.kept_tokens.observe(kept_tokens)
            series.kept_mass.observe(kept_mass)
            for value in surprise[:n]:
                if not math.isnan(value):
                    series.surprise.observe(value)

    def observe_generated_token(self, token) -> None:
        """One token generated by Generate (a ``samplerd.workers.generation.TokenEvent``): counted in
        ``samplerd_generated_tokens_total`` and in the same per-strategy row metrics as Sample's
        rows (rows, entropy full/truncated, kept tokens, kept mass, surprise)."""
        strategy = token.strategy
        counter = self._generated.get(strategy)
        if counter is None:
            counter = self._generated[strategy] = self.generated_tokens.labels(strategy)
        counter.inc()
        series = self._row_series.get(strategy) or self._add_row_series(strategy)
        series.rows.inc()
        series.entropy_full.observe(token.entropy)
        series.entropy_truncated.observe(token.truncated_entropy)
        series.kept_tokens.observe(token.kept_tokens)
        series.kept_mass.observe(token.kept_mass)
        if not math.isnan(token.surprise):
            series.surprise.observe(token.surprise)

    def observe_token_latency(self, strategy: str, seconds: float, first: bool) -> None:
        """A Generate stream sent a token decided by ``strategy``: ``seconds`` since the call
        arrived (``first``: time to first token) or since its previous token (inter-token latency)."""
        children, family = ((self._first_token, self.time_to_first_token) if first
                            else (self._token_gap, self.inter_token_latency))
        child = children.get(strategy)
        if child is None:
            child = children[strategy] = family.labels(strategy)
        child.observe(seconds)

    def _add_row_series(self, strategy: str) -> _RowSeries:
        # Looking children up by label costs more than the observation itself, so each
        # strategy's are looked up once.
        series = _RowSeries(
            rows=self.rows.labels(strategy),
            entropy_full=self.entropy.labels(strategy, "full"),
            entropy_truncated=self.entropy.labels(strategy, "truncated"),
            kept_tokens=self.kept_tokens.labels(strategy),
            kept_mass=self.kept_mass.labels(strategy),
            surprise=self.surprise.labels(strategy),
        )
        self._row_series[strategy] = series
        return series

    def observe_batch(self, batch_rows: int, kernel_seconds_by_strategy: Mapping[str, float], device: str) -> None:
        """One batch a worker ran: its size and each strategy group's kernel time (the
        dispatcher's batch observer)."""
        self.batch_rows.observe(batch_rows)
        for strategy, seconds in kernel_seconds_by_strategy.items():
            self.sample_duration.labels(strategy, device).observe(seconds)

    def set_workers(self, states: Mapping[str, int]) -> None:
        """Worker counts by state; states not in ``states`` are set to 0."""
        for state in {*WORKER_STATES, *states}:
            self.workers.labels(state).set(states.get(state, 0))

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` over HTTP on a background thread; return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port
