"""Windowed rules evaluated from the usage tables: fire once, then resolve when clear."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from alerts.evaluate import evaluate_windowed
from alerts.models import Alert, AlertChannel, AlertRule
from gateway.models import UsageRecord, UsageRollup

pytestmark = pytest.mark.django_db


@pytest.fixture
def channel() -> AlertChannel:
    hook = AlertChannel(name="hook", kind="webhook")
    hook.secret = "http://127.0.0.1:9/hook"
    hook.signing_key = "k"
    hook.save()
    return hook


def rule(channel: AlertChannel, kind: str, **params) -> AlertRule:  # type: ignore[no-untyped-def]
    made = AlertRule.objects.create(name=kind, kind=kind, params=params, cooldown_seconds=60)
    made.channels.add(channel)
    return made


def rollup(org, minutes_ago: int = 1, **sums) -> None:  # type: ignore[no-untyped-def]
    minute = (timezone.now() - timedelta(minutes=minutes_ago)).replace(second=0, microsecond=0)
    UsageRollup.objects.create(minute=minute, org=org, feature="chat", model="m", **sums)


def kinds() -> list[str]:
    return list(Alert.objects.order_by("pk").values_list("kind", flat=True))


def test_daily_spend_above_an_amount_fires_then_resolves(org_a, channel) -> None:  # type: ignore[no-untyped-def]
    rule(channel, "daily_spend", amount_usd="1.00")
    rollup(org_a, requests=10, cost_usd=Decimal("0.60"))
    assert evaluate_windowed() == 0
    rollup(org_a, minutes_ago=2, requests=10, cost_usd=Decimal("0.50"))
    assert evaluate_windowed() == 1
    assert evaluate_windowed() == 0  # still firing: no second alert
    alert = Alert.objects.get()
    assert alert.figures["spent_usd"] == "1.100000000000"
    assert alert.title.startswith("Daily spend")


def test_an_error_rate_needs_the_minimum_requests(org_a, channel) -> None:  # type: ignore[no-untyped-def]
    rule(channel, "error_rate", percent=20, window_minutes=15, min_requests=20)
    rollup(org_a, requests=10, errors=9)
    assert evaluate_windowed() == 0
    rollup(org_a, minutes_ago=3, requests=20, errors=0)
    assert evaluate_windowed() == 1  # 9 of 30 = 30 %
    assert kinds() == ["firing"]


def test_a_cost_spike_compares_the_last_hour_with_the_week(org_a, channel) -> None:  # type: ignore[no-untyped-def]
    rule(channel, "cost_spike", factor=3)
    for hours in range(2, 50):
        rollup(org_a, minutes_ago=hours * 60, requests=1, cost_usd=Decimal("0.01"))
    rollup(org_a, requests=1, cost_usd=Decimal("0.01"))
    assert evaluate_windowed() == 0
    rollup(org_a, minutes_ago=2, requests=1, cost_usd=Decimal("5.00"))
    assert evaluate_windowed() == 1


def test_p95_latency_above_the_bound_fires_and_resolves(org_a, channel) -> None:  # type: ignore[no-untyped-def]
    rule(channel, "latency_p95", p95_ms=1000, window_minutes=15)
    now = timezone.now()
    for i in range(40):
        UsageRecord.objects.create(
            request_id=f"r{i}",
            created_at=now - timedelta(minutes=1),
            org=org_a,
            endpoint="chat",
            status_code=200,
            outcome="ok",
            upstream_latency_ms=5000 if i % 10 < 2 else 100,
        )
    assert evaluate_windowed() == 1
    UsageRecord.objects.filter(upstream_latency_ms=5000).update(created_at=now - timedelta(hours=1))
    assert evaluate_windowed() == 1
    assert kinds() == ["firing", "resolved"]


def test_a_dependency_down_fires(channel, settings) -> None:  # type: ignore[no-untyped-def]
    rule(channel, "dependency_down")
    # No worker heartbeat in this test's Redis prefix: the worker dependency is down.
    assert evaluate_windowed() == 1
    assert "worker" in Alert.objects.get().figures["down"]
