"""Prometheus metrics. Labels come only from the admin's lists (orgs, features, models,
providers, limits) or small fixed sets, never from raw client strings, so cardinality is
bounded; TOLLGATE_METRICS_OMIT_LABELS drops the org, feature or model names altogether.

With several processes (uvicorn workers, Celery workers) set PROMETHEUS_MULTIPROC_DIR to
an empty directory shared by them; ``/metrics`` then sums every process (``make run`` and
compose.yaml do this). Figures read at scrape time (budgets used, queue depth) come from
``gateway.metrics_collectors``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from typing import Any

from django.conf import settings
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
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
# Reservations are counted in the limit's own unit: tokens, or USD for budgets.
UNIT = {"tokens": 1.0, "cost": 1e-6}

REQUESTS = Counter(
    "tollgate_requests",
    "Requests through /v1, by outcome.",
    ["org", "feature", "model", "provider", "status", "decision"],
)
TOKENS = Counter(
    "tollgate_tokens",
    "Tokens counted, input and output.",
    ["org", "feature", "model", "direction"],
)
COST = Counter("tollgate_cost_usd", "Cost in USD of the requests.", ["org", "feature", "model"])
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
LIMITER_DECISIONS = Counter(
    "tollgate_limiter_decisions",
    "Limit checks by limit kind (requests, tokens, cost, concurrent) and result.",
    ["kind", "result"],
)
LIMIT_HITS = Counter(
    "tollgate_limit_hits",
    "Requests a limit rejected, made wait, or let through unchecked (fail open/closed).",
    ["limit", "kind", "result"],
)
RESERVATIONS = Counter(
    "tollgate_limiter_reservations", "Requests that reserved tokens or cost.", ["kind"]
)
RESERVED = Counter(
    "tollgate_limiter_reserved",
    "Amount reserved before upstream calls (tokens, or USD for cost).",
    ["kind"],
)
REFUNDED = Counter(
    "tollgate_limiter_refunded",
    "Amount given back at settlement: reserved but not used.",
    ["kind"],
)
OVERRUN = Counter(
    "tollgate_limiter_overrun",
    "Amount charged at settlement beyond the reservation.",
    ["kind"],
)
LIMITER_DEGRADED = Counter(
    "tollgate_limiter_degraded_decisions",
    "Decisions taken by failure modes because Redis was unreachable.",
)
DEGRADED_SECONDS = Counter(
    "tollgate_limiter_degraded_seconds",
    "Seconds the limiter ran on failure modes (Redis unreachable), summed over processes.",
)
DEGRADED_NOW = Gauge(
    "tollgate_limiter_degraded",
    "1 while a gateway process cannot reach the limiter's Redis.",
    multiprocess_mode="livemax",
)
REDIS_ERRORS = Counter(
    "tollgate_redis_errors", "Redis calls that failed, by component.", ["component"]
)
IN_FLIGHT = Gauge(
    "tollgate_in_flight_requests", "Requests being served.", multiprocess_mode="livesum"
)
WAITING = Gauge(
    "tollgate_waiting_requests",
    "Requests waiting for capacity at a limit with action wait.",
    multiprocess_mode="livesum",
)
ALERT_DELIVERIES = Counter(
    "tollgate_alert_deliveries", "Alert deliveries by channel kind.", ["channel", "result"]
)
TASK_WAIT = Histogram(
    "tollgate_job_wait_seconds",
    "Time background jobs waited in the broker queue before a worker started them.",
    ["task"],
    buckets=WAIT_BUCKETS,
)

# The burst queue: time from a job's acceptance to its admission, by tier priority, and
# how its runs ended.
JOB_WAIT = Histogram(
    "tollgate_queued_job_wait_seconds",
    "Time a queued LLM call waited from acceptance until its limits admitted it.",
    ["priority"],
    buckets=WAIT_BUCKETS,
)
JOB_RUNS = Counter(
    "tollgate_queued_job_runs_total",
    "Runs of queued LLM calls by result (succeeded, failed, dead_letter, retried).",
    ["result"],
)


@cache
def _omitted() -> frozenset[str]:
    return frozenset(getattr(settings, "TOLLGATE_METRICS_OMIT_LABELS", ()))


def label(dimension: str, value: str | None) -> str:
    """A label value for an org, feature or model name: "none" if empty, "-" if opted out."""
    if dimension in _omitted():
        return "-"
    return value or "none"


def observe_request(event: Any, *, org: str = "") -> None:
    """Count one finished /v1 request from its usage event."""
    org_label = label("org", org)
    feature = label("feature", event.feature)
    model = label("model", event.model)
    provider = event.provider or "none"
    REQUESTS.labels(
        org_label, feature, model, provider, str(event.status_code), event.decision or "plain"
    ).inc()
    if event.input_tokens:
        TOKENS.labels(org_label, feature, model, "input").inc(event.input_tokens)
    if event.output_tokens:
        TOKENS.labels(org_label, feature, model, "output").inc(event.output_tokens)
    cost = float(event.cost_usd or 0)
    if cost:
        COST.labels(org_label, feature, model).inc(cost)
    if event.upstream_latency_ms is not None:
        UPSTREAM_LATENCY.labels(provider, model).observe(event.upstream_latency_ms / 1000)
    if event.ttft_ms is not None:
        TTFT.labels(provider, model).observe(event.ttft_ms / 1000)
    if event.overhead_ms is not None:
        OVERHEAD.observe(max(event.overhead_ms, 0) / 1000)


def limit_label(spec: Any) -> str:
    # The limit's id and code: bounded by the admin's list, and free of org names.
    return f"#{spec.id} {spec.code}"


def observe_decision(limits: Sequence[Any], result: str, deciding: Any | None = None) -> None:
    """One limit check: every limit counts under ``result`` ("admitted", "rejected",
    "waited", "queued", "fail_open", "fail_closed"); the limit that decided is also counted
    by name."""
    for spec in limits:
        LIMITER_DECISIONS.labels(spec.metric, result).inc()
    if deciding is not None:
        LIMIT_HITS.labels(limit_label(deciding), deciding.metric, result).inc()


def observe_reserved(limits: Sequence[Any], reserved: Sequence[int]) -> None:
    """Tokens and cost reserved at admission."""
    for spec, held in zip(limits, reserved, strict=True):
        unit = UNIT.get(spec.metric)
        if unit is not None:
            RESERVATIONS.labels(spec.metric).inc()
            RESERVED.labels(spec.metric).inc(held * unit)


def observe_settled(limits: Sequence[Any], reserved: Sequence[int], used: Sequence[int]) -> None:
    """What settlement gave back (reserved but unused) or charged beyond the reservation."""
    for spec, held, actual in zip(limits, reserved, used, strict=True):
        unit = UNIT.get(spec.metric)
        if unit is None or actual == held:
            continue
        if actual < held:
            REFUNDED.labels(spec.metric).inc((held - actual) * unit)
        else:
            OVERRUN.labels(spec.metric).inc((actual - held) * unit)


def metrics_view(request: HttpRequest) -> HttpResponse:
    from gateway.metrics_collectors import scrape_time_collectors

    registry = registry_for_scrape()
    for collector in scrape_time_collectors():
        registry.register(collector)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def registry_for_scrape() -> CollectorRegistry:
    """Every process's figures in multi-process mode, this process's otherwise."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    # A fresh registry reading the process-wide one, so scrape-time collectors added
    # for one response never stay registered.
    registry = CollectorRegistry()
    registry.register(_Forward())
    return registry


class _Forward:
    def collect(self) -> Any:
        return REGISTRY.collect()
