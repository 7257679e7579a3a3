"""Figures read when Prometheus scrapes ``/metrics``: budgets used (from the limiter's own
counters in Redis) and background queue depth (from the broker). Computed by the gateway's
metrics view only, so several worker processes never report them twice."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.metrics import label

log = logging.getLogger(__name__)

# Labels of counters shared by all orgs (global and feature-wide budgets).
ALL_ORGS = "all"


class BudgetCollector(Collector):
    """``tollgate_budget_used_ratio`` and USD used/limit of every active cost limit, per org
    (a tier's budget applies to each org of the tier) and feature."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        names = ["org", "feature", "limit"]
        ratio = GaugeMetricFamily(
            "tollgate_budget_used_ratio", "Share of a cost limit used in its window.", labels=names
        )
        used = GaugeMetricFamily(
            "tollgate_budget_used_usd", "USD used of a cost limit in its window.", labels=names
        )
        amount = GaugeMetricFamily(
            "tollgate_budget_limit_usd", "USD allowed by a cost limit per window.", labels=names
        )
        for org, feature, limit, micro_used, micro_amount in budget_usage():
            labels = [label("org", org), label("feature", feature), limit]
            used.add_metric(labels, micro_used / 1e6)
            amount.add_metric(labels, micro_amount / 1e6)
            ratio.add_metric(labels, micro_used / micro_amount if micro_amount else 0.0)
        yield from (ratio, used, amount)


def budget_usage() -> Iterator[tuple[str, str, str, int, int]]:
    """(org slug, feature, limit label, micro-USD used, micro-USD allowed) per budget."""
    from gateway.metrics import limit_label
    from gateway.usage_report import budget_orgs
    from policies.engine.peek import current_usage
    from policies.engine.specs import spec_from_limit
    from policies.models import Limit, Organization

    limits = Limit.objects.filter(is_active=True, metric=Limit.Metric.COST).select_related(
        "org", "feature", "api_key__org"
    )
    for limit in limits:
        spec = spec_from_limit(limit)
        feature = limit.feature.name if limit.feature is not None else ALL_ORGS
        for org in budget_orgs(limit, orgs=Organization.objects.all()):
            value = current_usage(spec, org_id=org.pk if org is not None else 0)
            if value is not None:
                slug = org.slug if org is not None else ALL_ORGS
                yield slug, feature, limit_label(spec), value, spec.amount


class QueueCollector(Collector):
    """``tollgate_queue_depth``: messages waiting in each Celery queue of the broker."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "tollgate_queue_depth", "Jobs waiting in the broker, per queue.", labels=["queue"]
        )
        for name, count in queue_depths():
            depth.add_metric([name], count)
        yield depth


def queue_depths() -> list[tuple[str, int]]:
    from gateway.celery import app

    names = sorted(app.amqp.queues) or [app.conf.task_default_queue]
    found: list[tuple[str, int]] = []
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=1)
            channel: Any = conn.default_channel
            for name in names:
                try:
                    declared = channel.queue_declare(queue=name, passive=True)
                except conn.channel_errors:
                    continue  # not declared yet: no worker ever consumed it
                found.append((name, int(declared.message_count)))
    except Exception as exc:  # the broker down shows in /health; the metric is left out
        log.warning("queue depth not read: %s", exc)
    return found


class JobsCollector(Collector):
    """``tollgate_queued_jobs`` waiting or running per tier priority (from Postgres), and
    ``tollgate_provider_breaker_open`` per provider (from Redis)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.db.models import Count

        from gateway.jobs.breaker import breaker_states
        from gateway.jobs.models import Job
        from gateway.models import Provider

        jobs = GaugeMetricFamily(
            "tollgate_queued_jobs",
            "Queued LLM calls waiting or running, per tier priority.",
            labels=["status", "priority"],
        )
        active = (
            Job.objects.filter(status__in=(Job.Status.QUEUED, Job.Status.RUNNING))
            .values("status", "priority")
            .annotate(n=Count("id"))
        )
        for row in active:
            jobs.add_metric([row["status"], str(row["priority"])], row["n"])
        yield jobs
        breaker = GaugeMetricFamily(
            "tollgate_provider_breaker_open",
            "1 while a provider's circuit breaker is open or half-open.",
            labels=["provider"],
        )
        providers = dict(Provider.objects.filter(is_active=True).values_list("pk", "name"))
        try:
            states = breaker_states(list(providers))
        except Exception as exc:  # Redis down shows in /health
            log.warning("breaker states not read: %s", exc)
            states = {}
        for pid, state in states.items():
            breaker.add_metric([providers[pid]], 0.0 if state["state"] == "closed" else 1.0)
        yield breaker


class HealthCollector(Collector):
    """``tollgate_dependency_up`` and check latency of each dependency ``/health`` checks."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        import asyncio

        from gateway.health import health_report

        report = asyncio.run(health_report())
        up = GaugeMetricFamily(
            "tollgate_dependency_up",
            "1 if a dependency's health check passed.",
            labels=["dependency"],
        )
        latency = GaugeMetricFamily(
            "tollgate_dependency_check_seconds",
            "How long a dependency's health check took.",
            labels=["dependency"],
        )
        for name, result in report["dependencies"].items():
            up.add_metric([name], 1.0 if result["status"] == "ok" else 0.0)
            latency.add_metric([name], result["latency_ms"] / 1000)
        yield from (up, latency)


def scrape_time_collectors() -> list[Collector]:
    return [BudgetCollector(), QueueCollector(), JobsCollector(), HealthCollector()]
