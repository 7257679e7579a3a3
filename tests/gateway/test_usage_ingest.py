"""Usage records survive worker restarts and are written to Postgres exactly once."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

import pytest

from gateway import usage as usage_service
from gateway.models import UsageRecord, UsageRollup
from gateway.proxy.usage import STREAM, UsageEvent
from gateway.redis import get_redis, key
from gateway.streams import ensure_group

pytestmark = pytest.mark.django_db


def add_events(org, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    ids = []
    client = get_redis()
    for _ in range(count):
        event = UsageEvent(
            request_id=uuid.uuid4().hex,
            created_at=time.time(),
            endpoint="chat",
            status_code=200,
            outcome="ok",
            org_id=org.pk,
            feature="chat",
            model="m",
            input_tokens=10,
            output_tokens=5,
            cost_usd="0.000123",
        )
        client.xadd(key(*STREAM), {"d": event.encode()})
        ids.append(event.request_id)
    return ids


def test_entries_read_by_a_worker_that_died_are_taken_over(org_a, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ids = add_events(org_a, 5)
    client = get_redis()
    stream = key(*STREAM)
    ensure_group(client, stream, usage_service.GROUP)
    # A worker reads the entries and dies before writing them.
    taken = client.xreadgroup(usage_service.GROUP, "dead-worker", {stream: ">"}, count=100)
    assert len(taken[0][1]) == 5
    assert usage_service.usage_flush(consumer="alive") == 0  # not idle long enough yet
    monkeypatch.setattr(usage_service, "CLAIM_IDLE_MS", 0)
    assert usage_service.usage_flush(consumer="alive") == 5
    assert UsageRecord.objects.filter(request_id__in=ids).count() == 5
    assert client.xlen(stream) == 0


def test_a_batch_written_twice_is_stored_once(org_a) -> None:  # type: ignore[no-untyped-def]
    add_events(org_a, 3)
    client = get_redis()
    stream = key(*STREAM)
    entries = client.xrange(stream)
    assert usage_service.usage_ingest(entries) == 3
    # A crash after the commit but before the acknowledgement redelivers the same entries.
    assert usage_service.usage_ingest(entries) == 0
    rollup = UsageRollup.objects.get(org=org_a)
    assert rollup.requests == 3
    assert rollup.input_tokens == 30
    assert rollup.cost_usd == Decimal("0.000369")


def test_a_malformed_entry_does_not_block_the_stream(org_a) -> None:  # type: ignore[no-untyped-def]
    client = get_redis()
    client.xadd(key(*STREAM), {"d": b"not json"})
    ids = add_events(org_a, 1)
    assert usage_service.usage_flush(consumer="w") == 1
    assert UsageRecord.objects.filter(request_id=ids[0]).exists()
    assert client.xlen(key(*STREAM)) == 0


def test_a_record_for_a_deleted_org_is_kept_without_the_link(org_a) -> None:  # type: ignore[no-untyped-def]
    ids = add_events(org_a, 1)
    org_a.delete()
    assert usage_service.usage_flush(consumer="w") == 1
    assert UsageRecord.objects.get(request_id=ids[0]).org_id is None


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_moves_usage_to_postgres(org_a, start_worker, redis_prefix) -> None:  # type: ignore[no-untyped-def]
    from django.db import connection

    from gateway.tasks import usage_flush

    ids = add_events(org_a, 20)
    params = connection.settings_dict
    database_url = f"postgres://{params['USER']}@{params['HOST']}:{params['PORT']}/{params['NAME']}"
    worker = start_worker(DATABASE_URL=database_url, TOLLGATE_REDIS_PREFIX=redis_prefix)
    usage_flush.delay()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if UsageRecord.objects.filter(request_id__in=ids).count() == 20:
            break
        time.sleep(0.2)
    assert UsageRecord.objects.filter(request_id__in=ids).count() == 20, worker.output()[-3000:]
    assert get_redis().xlen(key(*STREAM)) == 0
