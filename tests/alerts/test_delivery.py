"""Alerts fire once per cooldown, resolve, retry transient errors, stop on permanent ones,
and survive a worker killed mid-delivery, with real Redis, Postgres and worker processes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator

import pytest

from alerts import rules, services
from alerts.models import Alert, AlertChannel, AlertRule, Delivery
from audit.models import AuditEvent
from tests.alerts.processes import fire_many
from tests.alerts.receivers import Receiver

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def webhook(receiver: Receiver, **fields) -> AlertChannel:  # type: ignore[no-untyped-def]
    channel = AlertChannel(name="hook", kind="webhook", **fields)
    channel.secret = receiver.url
    channel.signing_key = "k"
    channel.save()
    return channel


def threshold_rule(channel: AlertChannel, **fields) -> AlertRule:  # type: ignore[no-untyped-def]
    rule = AlertRule.objects.create(name="limits", kind="limit_threshold", **fields)
    rule.channels.add(channel)
    return rule


def crossing(org, threshold: int = 100, limit_id: int = 7) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return {
        "kind": "limit.threshold_crossed",
        "at": time.time(),
        "limit_id": limit_id,
        "limit": "60 requests per minute",
        "code": "org_requests_per_minute",
        "scope": "org",
        "metric": "requests",
        "threshold": threshold,
        "used": 60,
        "amount": 60,
        "org_id": org.pk,
        "org": org.slug,
        "feature": "chat",
    }


def send_all() -> list[str]:
    return [services.delivery_attempt(d.pk)[0] for d in Delivery.objects.order_by("pk")]


def test_a_sustained_breach_gives_one_alert_per_cooldown(org_a, receiver) -> None:  # type: ignore[no-untyped-def]
    threshold_rule(webhook(receiver), cooldown_seconds=600)
    fired = sum(rules.handle_event(crossing(org_a)) for _ in range(200))
    assert fired == 1
    assert Alert.objects.count() == 1
    alert = Alert.objects.get()
    assert alert.title.startswith("Rate limit 100%")
    assert send_all() == ["sent"]
    assert len(receiver.received) == 1
    assert receiver.received[0]["body"]["alert"]["title"] == alert.title
    assert AuditEvent.objects.filter(action="alert.sent").count() == 1


def test_thresholds_a_rule_does_not_watch_do_not_fire(org_a, receiver) -> None:  # type: ignore[no-untyped-def]
    threshold_rule(webhook(receiver), params={"thresholds": [100]})
    assert rules.handle_event(crossing(org_a, threshold=80)) == 0
    assert rules.handle_event(crossing(org_a, threshold=100)) == 1


def test_severity_routing_picks_the_channels(org_a, receiver) -> None:  # type: ignore[no-untyped-def]
    pager = webhook(receiver, severities=["critical"])
    chat_ops = webhook(receiver, severities=["info", "warning"])
    rule = AlertRule.objects.create(name="warn", kind="limit_threshold", severity="warning")
    rule.channels.add(pager, chat_ops)
    rules.handle_event(crossing(org_a))
    assert [d.channel_id for d in Delivery.objects.all()] == [chat_ops.pk]


def test_ten_thousand_crossings_from_four_processes_give_one_alert_per_channel(
    org_a, receiver, redis_prefix
) -> None:  # type: ignore[no-untyped-def]
    from tests.proxy_fixtures import _database_url

    rule = threshold_rule(webhook(receiver))
    second = webhook(receiver)
    rule.channels.add(second)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=fire_many, args=(_database_url(), redis_prefix, org_a.pk, 2500, out))
        for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    fired = sum(out.get(timeout=240) for _ in procs)
    for proc in procs:
        proc.join(30)
    assert fired == 1
    assert Alert.objects.count() == 1
    assert Delivery.objects.count() == 2


def test_a_transient_error_is_retried_until_it_is_sent(org_a) -> None:  # type: ignore[no-untyped-def]
    flaky = Receiver(statuses=[500, 500])
    try:
        threshold_rule(webhook(flaky))
        rules.handle_event(crossing(org_a))
        delivery = Delivery.objects.get()
        assert services.delivery_attempt(delivery.pk)[0] == "retry"
        assert services.delivery_attempt(delivery.pk)[0] == "retry"
        assert services.delivery_attempt(delivery.pk)[0] == "sent"
        delivery.refresh_from_db()
        assert delivery.state == "sent" and delivery.attempts == 3
        assert len(flaky.received) == 1
    finally:
        flaky.close()


def test_a_permanent_error_stops_retries_and_marks_the_channel_failing(org_a) -> None:  # type: ignore[no-untyped-def]
    gone = Receiver(statuses=[404])
    try:
        channel = webhook(gone)
        threshold_rule(channel)
        rules.handle_event(crossing(org_a))
        delivery = Delivery.objects.get()
        assert services.delivery_attempt(delivery.pk)[0] == "failed"
        assert services.delivery_attempt(delivery.pk)[0] == "skip"  # nothing left to do
        channel.refresh_from_db()
        assert channel.status == "failing" and "404" in channel.last_error
        assert AuditEvent.objects.filter(action="alert.failed").count() == 1
    finally:
        gone.close()


def test_a_resolved_notice_follows_when_the_condition_clears(org_a, receiver) -> None:  # type: ignore[no-untyped-def]
    from policies.models import Limit

    limit = Limit.objects.create(
        scope="org", org=org_a, metric="requests", window="second", amount=60
    )
    threshold_rule(webhook(receiver))
    rules.handle_event(crossing(org_a, limit_id=limit.pk))
    assert rules.resolve_cleared() == 1  # nothing used in the current second
    kinds = list(Alert.objects.order_by("pk").values_list("kind", flat=True))
    assert kinds == ["firing", "resolved"]
    assert rules.resolve_cleared() == 0
    assert send_all() == ["sent", "sent"]
    assert receiver.received[1]["body"]["event"] == "alert.resolved"


def test_a_worker_killed_mid_delivery_loses_nothing_and_sends_once(
    org_a, start_worker, redis_prefix, settings
) -> None:  # type: ignore[no-untyped-def]
    from tests.proxy_fixtures import _database_url

    slow = Receiver()
    slow.hold.clear()  # the first attempt hangs until its sender is gone
    try:
        threshold_rule(webhook(slow))
        env = {
            "DATABASE_URL": _database_url(),
            "TOLLGATE_REDIS_PREFIX": redis_prefix,
            "TOLLGATE_ALERT_STUCK_SECONDS": "2",
        }
        worker = start_worker(**env)
        rules.handle_event(crossing(org_a))
        delivery = Delivery.objects.get()
        deadline = time.monotonic() + 30
        while slow.attempts == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.attempts == 1, worker.output()[-2000:]
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
        slow.hold.set()
        delivery.refresh_from_db()
        assert delivery.state == "sending"

        settings.TOLLGATE_ALERT_STUCK_SECONDS = 2
        replacement = start_worker(**env)
        time.sleep(2.5)
        from alerts.tasks import sweep_deliveries

        sweep_deliveries.delay()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            delivery.refresh_from_db()
            if delivery.state == "sent":
                break
            time.sleep(0.1)
        assert delivery.state == "sent", replacement.output()[-2000:]
        assert len(slow.received) == 1
    finally:
        slow.close()
