"""Windowed rules, evaluated by Celery beat every minute from the usage tables."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Min, Q, Sum
from django.utils import timezone

from alerts.models import AlertRule
from alerts.notifiers.message import alert_title
from alerts.services import alert_fire, alert_resolve
from gateway.models import UsageRecord, UsageRollup

log = logging.getLogger(__name__)

WINDOWED = [
    AlertRule.Kind.DAILY_SPEND,
    AlertRule.Kind.COST_SPIKE,
    AlertRule.Kind.ERROR_RATE,
    AlertRule.Kind.LATENCY_P95,
    AlertRule.Kind.DEPENDENCY_DOWN,
]


def _filter(rule: AlertRule) -> Q:
    q = Q()
    if rule.org_id:
        q &= Q(org_id=rule.org_id)
    if rule.feature_id:
        q &= Q(feature=rule.feature.name)  # type: ignore[union-attr]
    return q


def _scope(rule: AlertRule) -> str:
    return f"org:{rule.org_id or '*'}:feature:{rule.feature.name if rule.feature_id else '*'}"  # type: ignore[union-attr]


def check(rule: AlertRule) -> tuple[bool, dict[str, Any]] | None:
    """Whether a windowed rule's condition holds now, with the figures; None: no data."""
    now = timezone.now()
    params = rule.params or {}
    if rule.kind == AlertRule.Kind.DAILY_SPEND:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        spent = UsageRollup.objects.filter(_filter(rule), minute__gte=start).aggregate(
            total=Sum("cost_usd")
        )["total"] or Decimal(0)
        limit = Decimal(str(params.get("amount_usd", 0)))
        return spent > limit, {
            "spent_usd": str(spent),
            "amount_usd": str(limit),
            "window": "today (UTC)",
        }
    if rule.kind == AlertRule.Kind.COST_SPIKE:
        hour = UsageRollup.objects.filter(_filter(rule), minute__gte=now - timedelta(hours=1))
        last_hour = hour.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)
        week = UsageRollup.objects.filter(
            _filter(rule),
            minute__gte=now - timedelta(days=7),
            minute__lt=now - timedelta(hours=1),
        ).aggregate(total=Sum("cost_usd"), first=Min("minute"))
        # The mean over the hours the week actually has data for (a new org has less).
        hours = 0.0
        if week["first"] is not None:
            hours = max((now - timedelta(hours=1) - week["first"]).total_seconds() / 3600, 1.0)
        mean = (
            (week["total"] or Decimal(0)) / Decimal(str(round(hours, 6))) if hours else Decimal(0)
        )
        factor = Decimal(str(params.get("factor", 3)))
        amount = params.get("amount_usd")
        spiking = (mean > 0 and last_hour > factor * mean) or (
            amount is not None and last_hour > Decimal(str(amount))
        )
        return bool(spiking), {
            "last_hour_usd": str(last_hour),
            "hourly_mean_7d_usd": str(mean.quantize(Decimal("0.000001"))),
            "factor": str(factor),
            "window": "last hour",
        }
    if rule.kind == AlertRule.Kind.ERROR_RATE:
        minutes = int(params.get("window_minutes", 15))
        rows = UsageRollup.objects.filter(
            _filter(rule), minute__gte=now - timedelta(minutes=minutes)
        )
        sums = rows.aggregate(requests=Sum("requests"), errors=Sum("errors"))
        requests, errors = sums["requests"] or 0, sums["errors"] or 0
        if requests < int(params.get("min_requests", 20)):
            return False, {"requests": requests, "errors": errors}
        rate = 100 * errors / requests
        return rate > float(params.get("percent", 20)), {
            "error_rate_percent": round(rate, 2),
            "requests": requests,
            "errors": errors,
            "window": f"{minutes} minutes",
        }
    if rule.kind == AlertRule.Kind.LATENCY_P95:
        minutes = int(params.get("window_minutes", 15))
        records = UsageRecord.objects.filter(
            _filter(rule),
            created_at__gte=now - timedelta(minutes=minutes),
            upstream_latency_ms__isnull=False,
        )
        sql, sql_params = records.values("upstream_latency_ms").query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY upstream_latency_ms), "  # noqa: S608
                f"count(*) FROM ({sql}) AS recent",
                sql_params,
            )
            p95, count = cursor.fetchone()
        if not count:
            return None
        return float(p95) > float(params.get("p95_ms", 10_000)), {
            "p95_ms": round(float(p95), 1),
            "requests": count,
            "window": f"{minutes} minutes",
        }
    if rule.kind == AlertRule.Kind.DEPENDENCY_DOWN:
        from gateway.health import health_report

        report = asyncio.run(health_report())
        down = sorted(k for k, v in report["dependencies"].items() if v["status"] != "ok")
        return bool(down), {
            "down": ", ".join(down) or "none",
            **{
                f"{k}_error": v.get("error", "")
                for k, v in report["dependencies"].items()
                if v["status"] != "ok"
            },
        }
    return None


def evaluate_windowed() -> int:
    """Fire or resolve every active windowed rule; returns the alerts created."""
    created = 0
    for rule in AlertRule.objects.filter(is_active=True, kind__in=WINDOWED).select_related(
        "org", "feature"
    ):
        try:
            result = check(rule)
        except Exception:
            log.exception("alerts: evaluating rule %s failed", rule.pk)
            continue
        if result is None:
            continue
        firing, figures = result
        org = rule.org.slug if rule.org_id else ""  # type: ignore[union-attr]
        feature = rule.feature.name if rule.feature_id else ""  # type: ignore[union-attr]
        title = alert_title(rule.kind, figures, org, feature)
        if firing:
            alert = alert_fire(
                rule=rule,
                scope=_scope(rule),
                title=title,
                figures=figures,
                org_id=rule.org_id,
                feature=feature,
            )
        else:
            alert = alert_resolve(
                rule=rule,
                scope=_scope(rule),
                title=title,
                figures=figures,
                org_id=rule.org_id,
                feature=feature,
            )
        created += 1 if alert else 0
    return created
