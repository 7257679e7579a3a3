"""Engine decisions reach the trail through the durable buffers, once each."""

from __future__ import annotations

import time

import httpx
import pytest

from audit.buffer import audit_flush_events
from audit.models import AuditEvent
from audit.verify import audit_verify
from gateway import usage as usage_service
from gateway.proxy.usage import STREAM
from gateway.redis import get_redis, key
from gateway.streams import ensure_group
from policies.models import Feature, Limit
from tests.gateway.test_proxy_limits import chat, fresh_key
from tests.proxy_fixtures import Setup, flush_usage

pytestmark = pytest.mark.django_db(transaction=True)


def wait_for(action: str, count: int = 1, timeout: float = 5.0) -> list[AuditEvent]:
    deadline = time.monotonic() + timeout
    found: list[AuditEvent] = []
    while time.monotonic() < deadline:
        flush_usage()
        audit_flush_events(consumer="test")
        found = list(AuditEvent.objects.filter(action=action).order_by("id"))
        if len(found) >= count:
            return found
        time.sleep(0.05)
    return found


def test_a_rejected_request_through_the_proxy_is_in_the_trail(proxy: Setup) -> None:
    limit = Limit.objects.create(
        scope="org_feature",
        org=proxy.org_a,
        feature=Feature.objects.get(name="chat"),
        metric="requests",
        window="minute",
        amount=1,
        thresholds=[100],
    )
    key_raw = fresh_key(proxy, proxy.org_a)
    assert chat(proxy, key_raw).status_code == 200
    denied = chat(proxy, key_raw)
    assert denied.status_code == 429
    rows = wait_for("request.rejected")
    assert len(rows) == 1
    row = rows[0]
    assert row.request_id == denied.headers["x-request-id"]
    assert row.org_slug == "acme" and row.actor_type == "api_key"
    assert row.target_id == str(limit.pk)
    assert "feature_requests_per_minute" in row.target
    crossed = wait_for("limit.threshold_crossed")
    assert [r.changes["threshold"] for r in crossed] == [100]
    assert audit_verify().ok


def test_a_budget_denial_is_recorded_as_budget_exceeded(proxy: Setup) -> None:
    Limit.objects.create(
        scope="org", org=proxy.org_a, metric="cost", window="calendar_day", amount=1
    )
    key_raw = fresh_key(proxy, proxy.org_a)
    response = httpx.post(
        f"{proxy.v1}/chat/completions",
        headers={"Authorization": f"Bearer {key_raw}"},
        json={
            "model": "gpt-test",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert response.status_code == 429
    assert len(wait_for("budget.exceeded")) == 1


def test_buffered_rows_of_a_worker_that_died_are_written_once(proxy: Setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    Limit.objects.create(scope="org", org=proxy.org_a, metric="requests", window="minute", amount=1)
    key_raw = fresh_key(proxy, proxy.org_a)
    chat(proxy, key_raw)
    denied = chat(proxy, key_raw)
    assert denied.status_code == 429
    client = get_redis()
    stream = key(*STREAM)
    ensure_group(client, stream, usage_service.GROUP)
    # A worker takes the entries and is killed before it commits: nothing is acknowledged.
    deadline = time.monotonic() + 5
    taken = 0
    while time.monotonic() < deadline and taken < 2:
        response = client.xreadgroup(usage_service.GROUP, "killed-worker", {stream: ">"}, count=100)
        taken += len(response[0][1]) if response else 0
        time.sleep(0.05)
    assert usage_service.usage_flush(consumer="next-worker") == 0  # still owned by the dead one
    assert not AuditEvent.objects.filter(action="request.rejected").exists()
    monkeypatch.setattr(usage_service, "CLAIM_IDLE_MS", 0)
    usage_service.usage_flush(consumer="next-worker")
    usage_service.usage_flush(consumer="next-worker")
    rows = AuditEvent.objects.filter(
        action="request.rejected", request_id=denied.headers["x-request-id"]
    )
    assert rows.count() == 1
    assert audit_verify().ok
