"""Prometheus metrics. Labels come only from the admin's lists (features, models,
providers) or small fixed sets, never from raw client strings, so cardinality is bounded.

With several processes (uvicorn workers, Celery workers) set PROMETHEUS_MULTIPROC_DIR to
an empty directory shared by them; ``/metrics`` then sums every process (``make run`` and
compose.yaml do this).
"""

from __future__ import annotations

import os

from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

REQUESTS = Counter(
    "tollgate_requests",
    "Requests through /v1, by outcome.",
    ["feature", "model", "provider", "status", "decision"],
)
TOKENS = Counter(
    "tollgate_tokens", "Tokens counted, input and output.", ["feature", "model", "direction"]
)
COST = Counter("tollgate_cost_usd", "Cost in USD of the requests.", ["feature", "model"])
UPSTREAM_LATENCY = Histogram(
    "tollgate_upstream_latency_seconds",
    "Time the provider took.",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
)
TTFT = Histogram(
    "tollgate_time_to_first_token_seconds",
    "Streams: time to the first token.",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "tollgate_gateway_overhead_seconds",
    "Time a request spent in the gateway itself.",
    buckets=OVERHEAD_BUCKETS,
)
LIMIT_DECISIONS = Counter(
    "tollgate_limit_decisions", "Non-plain limit decisions.", ["decision", "feature"]
)
LIMITER_DEGRADED = Counter(
    "tollgate_limiter_degraded_decisions",
    "Decisions taken by failure modes because Redis was unreachable.",
)
IN_FLIGHT = Gauge(
    "tollgate_in_flight_requests", "Requests being served.", multiprocess_mode="livesum"
)
ALERT_DELIVERIES = Counter(
    "tollgate_alert_deliveries", "Alert deliveries by channel kind.", ["channel", "result"]
)


def observe_request(event: object) -> None:
    """Count one finished /v1 request from its usage event."""
    feature = getattr(event, "feature", "") or "none"
    model = getattr(event, "model", "") or "none"
    provider = getattr(event, "provider", "") or "none"
    decision = getattr(event, "decision", "") or "plain"
    REQUESTS.labels(feature, model, provider, str(getattr(event, "status_code", 0)), decision).inc()
    input_tokens = getattr(event, "input_tokens", 0)
    output_tokens = getattr(event, "output_tokens", 0)
    if input_tokens:
        TOKENS.labels(feature, model, "input").inc(input_tokens)
    if output_tokens:
        TOKENS.labels(feature, model, "output").inc(output_tokens)
    cost = float(getattr(event, "cost_usd", "0") or 0)
    if cost:
        COST.labels(feature, model).inc(cost)
    upstream = getattr(event, "upstream_latency_ms", None)
    if upstream is not None:
        UPSTREAM_LATENCY.labels(provider, model).observe(upstream / 1000)
    ttft = getattr(event, "ttft_ms", None)
    if ttft is not None:
        TTFT.labels(provider, model).observe(ttft / 1000)
    overhead = getattr(event, "overhead_ms", None)
    if overhead is not None:
        OVERHEAD.observe(max(overhead, 0) / 1000)
    if decision != "plain":
        LIMIT_DECISIONS.labels(decision, feature).inc()


def metrics_view(request: HttpRequest) -> HttpResponse:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
