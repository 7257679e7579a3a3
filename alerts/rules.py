"""Which rules an engine event fires, and the periodic check that resolves them."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from django.db.models import Q

from alerts.models import AlertRule, AlertState
from alerts.notifiers.message import alert_title
from alerts.services import alert_fire, alert_resolve
from gateway.redis import key
from gateway.streams import consume
from policies import events
from policies.models import Organization

log = logging.getLogger(__name__)

GROUP = "alert-rules"
CLAIM_IDLE_MS = 60_000
DEFAULT_THRESHOLDS = [80, 100]
# Events older than this when read (say, after the workers were down) do not alert.
STALE_EVENT_SECONDS = 600


def _rules(kinds: Sequence[str], org_id: int | None, feature: str | None) -> list[AlertRule]:
    qs = AlertRule.objects.filter(is_active=True, kind__in=kinds)
    qs = (
        qs.filter(Q(org__isnull=True) | Q(org_id=org_id)) if org_id else qs.filter(org__isnull=True)
    )
    if feature:
        qs = qs.filter(Q(feature__isnull=True) | Q(feature__name=feature))
    else:
        qs = qs.filter(feature__isnull=True)
    return list(qs.prefetch_related("channels"))


def handle_event(data: dict[str, Any]) -> int:
    """Fire the rules an engine event matches; returns how many alerts went out."""
    kind = data.get("kind")
    observed = datetime.fromtimestamp(float(data.get("at", 0)), tz=UTC)
    if time.time() - observed.timestamp() > STALE_EVENT_SECONDS:
        return 0  # a backlog after an outage: old crossings are history, not alerts
    if data.get("org_id") and not Organization.objects.filter(pk=data["org_id"]).exists():
        data = {**data, "org_id": None}  # the org is gone; the alert still goes out
    fired = 0
    if kind == "limit.threshold_crossed":
        budget = data.get("metric") == "cost"
        kinds = [AlertRule.Kind.BUDGET_THRESHOLD if budget else AlertRule.Kind.LIMIT_THRESHOLD]
        if budget:
            kinds.append(AlertRule.Kind.LIMIT_THRESHOLD)
        org_id, feature = data.get("org_id"), data.get("feature") or ""
        threshold = int(data.get("threshold", 0))
        for rule in _rules(kinds, org_id, feature or None):
            if threshold not in (rule.params.get("thresholds") or DEFAULT_THRESHOLDS):
                continue
            figures = {
                k: data.get(k)
                for k in (
                    "threshold",
                    "used",
                    "amount",
                    "limit",
                    "limit_id",
                    "scope",
                    "metric",
                    "code",
                )
            }
            scope = f"limit:{data.get('limit_id')}:org:{org_id or '-'}:t{threshold}"
            title = alert_title("limit_threshold", figures, data.get("org") or "", feature)
            if alert_fire(
                rule=rule,
                scope=scope,
                title=title,
                figures=figures,
                org_id=org_id,
                feature=feature,
                observed_at=observed,
            ):
                fired += 1
    elif kind in ("limit.fail_open", "limit.fail_closed"):
        org_id = data.get("org_id")
        for rule in _rules([AlertRule.Kind.REDIS_DEGRADED], org_id, None):
            figures = {"mode": kind.removeprefix("limit."), "limits": data.get("limit_ids")}
            title = alert_title("redis_degraded", figures, data.get("org") or "", "")
            if alert_fire(
                rule=rule,
                scope="redis",
                title=title,
                figures=figures,
                org_id=None,
                observed_at=observed,
            ):
                fired += 1
    return fired


def consume_events(*, consumer: str, batch_size: int = 200, max_batches: int = 20) -> int:
    """Read the engine's event stream (its own consumer group) and fire matching rules."""

    def handle(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        fired = 0
        for entry_id, fields in entries:
            try:
                fired += handle_event(json.loads(fields[b"d"]))
            except (KeyError, ValueError, TypeError):
                log.error("alerts: discarding malformed engine event %s", entry_id)
            except Exception:
                # One bad event must not hold up every alert behind it.
                log.exception("alerts: event %s could not be handled; skipped", entry_id)
        # A crash before the acknowledgement re-reads the batch; the cooldowns keep a
        # re-read from alerting twice.
        return fired

    return consume(
        stream=key(*events.STREAM),
        group=GROUP,
        consumer=consumer,
        handle=handle,
        batch_size=batch_size,
        max_batches=max_batches,
        claim_idle_ms=CLAIM_IDLE_MS,
    )


def resolve_cleared() -> int:
    """Send "resolved" for limit-threshold states whose limit is back under the threshold."""
    from policies.engine.peek import current_usage
    from policies.engine.specs import spec_from_limit
    from policies.models import Limit

    resolved = 0
    states = AlertState.objects.filter(
        firing=True,
        rule__kind__in=[AlertRule.Kind.LIMIT_THRESHOLD, AlertRule.Kind.BUDGET_THRESHOLD],
    ).select_related("rule")
    for state in states:
        try:
            _, limit_id, _, org, threshold = state.scope.split(":")
            limit = Limit.objects.select_related("feature", "api_key").get(pk=int(limit_id))
        except (ValueError, Limit.DoesNotExist):
            continue
        org_id = int(org) if org.isdigit() else 0
        used = current_usage(spec_from_limit(limit), org_id=org_id)
        if used is None:
            continue
        level = int(threshold.removeprefix("t")) * limit.amount / 100
        if used < level:
            figures = {**state.last_value, "used": used}
            title = alert_title(
                "limit_threshold", figures, str(state.last_value.get("org", "")), ""
            )
            if alert_resolve(
                rule=state.rule,
                scope=state.scope,
                title=title,
                figures=figures,
                org_id=org_id or None,
            ):
                resolved += 1
    return resolved
