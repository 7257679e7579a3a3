"""Firing and resolving alerts, and delivering them once per channel.

A sustained breach gives one alert per cooldown per (rule, scope), cluster-wide (a Redis
``SET NX`` with the cooldown as its expiry), then a "resolved" notice when it clears.
Each alert gets one Delivery row per channel before anything is sent; a worker claims a
delivery atomically (``UPDATE ... WHERE state IN (...)``), so two workers never send the
same one, and every attempt updates the row.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from alerts.models import Alert, AlertChannel, AlertRule, AlertState, Delivery
from audit.context import Actor
from audit.services import audit_record
from gateway.metrics import ALERT_DELIVERIES
from gateway.redis import get_redis, key

log = logging.getLogger(__name__)

# Attempts per delivery before it is marked failed; waits between them grow from this.
MAX_ATTEMPTS = 6
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 300.0
# A delivery left in "sending" this long was being sent by a worker that died.
STUCK_SENDING_SECONDS = settings.TOLLGATE_ALERT_STUCK_SECONDS
WORKER = Actor(type="system", name="alert worker")


def backoff(attempts: int) -> float:
    return min(BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0), BACKOFF_MAX_SECONDS)


def _cooldown_key(rule: AlertRule, scope: str) -> str:
    return key("alerts", "cooldown", str(rule.pk), scope)


def alert_fire(
    *,
    rule: AlertRule,
    scope: str,
    title: str,
    figures: dict[str, Any],
    org_id: int | None = None,
    feature: str = "",
    observed_at: datetime | None = None,
) -> Alert | None:
    """Fire ``rule`` for ``scope`` unless it already fired within its cooldown."""
    client = get_redis()
    cooldown = _cooldown_key(rule, scope)
    try:
        if not client.set(cooldown, int(time.time()), nx=True, ex=rule.cooldown_seconds):
            return None
    except redis.RedisError:
        log.warning("alerts: cooldown store unreachable; sending without a cooldown check")
    try:
        with transaction.atomic():
            alert = _create(
                rule, scope, Alert.Kind.FIRING, title, figures, org_id, feature, observed_at
            )
            state, _ = AlertState.objects.select_for_update().get_or_create(rule=rule, scope=scope)
            if not state.firing:
                state.firing, state.since = True, timezone.now()
            state.last_value = figures
            state.save()
    except Exception:
        # The alert was not recorded: let the next crossing try again.
        with contextlib.suppress(redis.RedisError):
            client.delete(cooldown)
        raise
    return alert


def alert_resolve(
    *,
    rule: AlertRule,
    scope: str,
    title: str,
    figures: dict[str, Any],
    org_id: int | None = None,
    feature: str = "",
) -> Alert | None:
    """Send a "resolved" notice if ``rule`` was firing for ``scope``."""
    with transaction.atomic():
        state = (
            AlertState.objects.select_for_update()
            .filter(rule=rule, scope=scope, firing=True)
            .first()
        )
        if state is None:
            return None
        state.firing, state.since, state.last_value = False, timezone.now(), figures
        state.save()
        alert = _create(rule, scope, Alert.Kind.RESOLVED, title, figures, org_id, feature, None)
    with contextlib.suppress(redis.RedisError):
        get_redis().delete(_cooldown_key(rule, scope))  # a new breach alerts at once
    return alert


def _create(
    rule: AlertRule,
    scope: str,
    kind: str,
    title: str,
    figures: dict[str, Any],
    org_id: int | None,
    feature: str,
    observed_at: datetime | None,
) -> Alert:
    alert = Alert.objects.create(
        rule=rule,
        scope=scope[:200],
        kind=kind,
        severity=rule.severity,
        title=title[:300],
        figures=figures,
        org_id=org_id,
        feature=feature[:64],
        observed_at=observed_at or timezone.now(),
    )
    channels = [
        c for c in rule.channels.filter(is_active=True) if rule.severity in (c.severities or [])
    ]
    deliveries = Delivery.objects.bulk_create(
        [Delivery(alert=alert, channel=channel) for channel in channels]
    )
    ids = [d.pk for d in deliveries]
    transaction.on_commit(lambda: _enqueue(ids))
    return alert


def _enqueue(ids: list[int], countdown: float = 0) -> None:
    from alerts.tasks import deliver

    for delivery_id in ids:
        deliver.apply_async((delivery_id,), countdown=countdown)


def delivery_claim(delivery_id: int) -> Delivery | None:
    """Take a delivery for sending; None if another worker has it or it is done."""
    now = timezone.now()
    claimable = Q(state__in=[Delivery.State.PENDING, Delivery.State.RETRYING]) | Q(
        state=Delivery.State.SENDING, claimed_at__lt=now - timedelta(seconds=STUCK_SENDING_SECONDS)
    )
    claimed = Delivery.objects.filter(claimable, pk=delivery_id).update(
        state=Delivery.State.SENDING, claimed_at=now, attempts=F("attempts") + 1
    )
    if not claimed:
        return None
    return Delivery.objects.select_related("alert", "alert__rule", "alert__org", "channel").get(
        pk=delivery_id
    )


def delivery_attempt(delivery_id: int) -> tuple[str, float]:
    """Send one delivery. Returns (outcome, retry_in_seconds): sent, failed, retry, skip."""
    from alerts.notifiers.base import PermanentError
    from alerts.notifiers.message import message_for
    from alerts.notifiers.registry import notifier_for

    delivery = delivery_claim(delivery_id)
    if delivery is None:
        return "skip", 0.0
    channel = delivery.channel
    if not channel.is_active:
        Delivery.objects.filter(pk=delivery.pk).update(state=Delivery.State.SKIPPED)
        return "skip", 0.0
    started = time.perf_counter()
    try:
        receipt = notifier_for(channel).send(delivery.alert, message_for(delivery.alert))
    except Exception as exc:
        duration = (time.perf_counter() - started) * 1000
        permanent = isinstance(exc, PermanentError)
        error = f"{type(exc).__name__}: {exc}"[:2000]
        if permanent or delivery.attempts >= MAX_ATTEMPTS:
            _finish_failed(delivery, error, duration, permanent=permanent)
            return "failed", 0.0
        wait = backoff(delivery.attempts)
        Delivery.objects.filter(pk=delivery.pk).update(
            state=Delivery.State.RETRYING,
            last_error=error,
            duration_ms=duration,
            next_attempt_at=timezone.now() + timedelta(seconds=wait),
        )
        return "retry", wait
    duration = (time.perf_counter() - started) * 1000
    ALERT_DELIVERIES.labels(channel.kind, "sent").inc()
    with transaction.atomic():
        Delivery.objects.filter(pk=delivery.pk).update(
            state=Delivery.State.SENT,
            sent_at=timezone.now(),
            duration_ms=duration,
            last_error="",
        )
        if channel.status != AlertChannel.Status.OK:
            AlertChannel.objects.filter(pk=channel.pk).update(
                status=AlertChannel.Status.OK, failing_since=None
            )
        audit_record(
            action="alert.sent",
            target=delivery.alert,
            actor=WORKER,
            org=(delivery.alert.org_id, delivery.alert.org.slug if delivery.alert.org else ""),
            changes={
                "channel": str(channel),
                "attempts": delivery.attempts,
                "receipt": str(receipt)[:300],
            },
        )
    return "sent", 0.0


def _finish_failed(delivery: Delivery, error: str, duration: float, *, permanent: bool) -> None:
    channel = delivery.channel
    ALERT_DELIVERIES.labels(channel.kind, "failed").inc()
    with transaction.atomic():
        Delivery.objects.filter(pk=delivery.pk).update(
            state=Delivery.State.FAILED, last_error=error, duration_ms=duration
        )
        if permanent:
            # A permanent error (a webhook that is gone, SMTP auth refused) will not fix
            # itself: the channel is shown as failing in the admin.
            AlertChannel.objects.filter(pk=channel.pk).update(
                status=AlertChannel.Status.FAILING,
                last_error=error,
                failing_since=channel.failing_since or timezone.now(),
            )
        alert = delivery.alert
        audit_record(
            action="alert.failed",
            target=alert,
            actor=WORKER,
            org=(alert.org_id, alert.org.slug if alert.org else ""),
            changes={
                "channel": str(channel),
                "attempts": delivery.attempts,
                "permanent": permanent,
                "error": error[:500],
            },
        )


def deliveries_due(limit: int = 500) -> list[int]:
    """Deliveries a sweep should (re)enqueue: never picked up, due to retry, or stuck."""
    now = timezone.now()
    due = (
        Delivery.objects.filter(
            Q(state=Delivery.State.PENDING, created_at__lt=now - timedelta(seconds=10))
            | Q(state=Delivery.State.RETRYING, next_attempt_at__lte=now)
            | Q(
                state=Delivery.State.SENDING,
                claimed_at__lt=now - timedelta(seconds=STUCK_SENDING_SECONDS),
            )
        )
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    return list(due)
