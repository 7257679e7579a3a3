"""Fixtures for the burst queue: a Celery worker with beat on the session gateway's
database and Redis, and waiting for jobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.jobs.models import Job
from gateway.redis import get_redis
from tests.proxy_fixtures import GATEWAY_PREFIX, _database_url


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def submit_job(base: str, key: str, model: str) -> httpx.Response:
    """A one-message chat call to the gateway at ``base``, asking to run it as a job."""
    return httpx.post(
        f"{base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}", "Prefer": "respond-async"},
        json={"model": model, "messages": [{"role": "user", "content": "one two three"}]},
        timeout=30,
    )


def finished(count: int) -> Callable[[], bool]:
    return lambda: Job.objects.filter(status__in=Job.FINISHED).count() >= count


@pytest.fixture
def worker(start_worker, tmp_path) -> Callable[..., Any]:  # type: ignore[no-untyped-def]
    """Start a Celery worker with beat on the session gateway's database and Redis."""
    client = get_redis()
    stale = list(client.scan_iter(f"{GATEWAY_PREFIX}:jobs:*"))
    stale += list(client.scan_iter(f"{GATEWAY_PREFIX}:breaker:*"))
    if stale:
        client.delete(*stale)

    def start(**env: str) -> Any:
        settings = {
            "DATABASE_URL": _database_url(),
            "TOLLGATE_REDIS_PREFIX": GATEWAY_PREFIX,
            "TOLLGATE_JOB_RETRY_BASE_SECONDS": "0.2",
            "TOLLGATE_JOB_RETRY_MAX_SECONDS": "1",
            "TOLLGATE_JOB_CALLBACK_PRIVATE": "true",
            **env,
        }
        return start_worker(
            "--pool",
            "prefork",
            "--concurrency",
            "3",
            "--beat",
            "--schedule",
            str(tmp_path / f"beat-{time.monotonic_ns()}"),
            **settings,
        )

    return start


def usage_records(request_ids: list[str], *, expected: int | None = None) -> int:
    """Usage records of these request ids once in Postgres (a worker's own flush may hold
    some for a moment): waits until ``expected`` arrive, or returns what is there."""
    from gateway.models import UsageRecord
    from tests.proxy_fixtures import flush_usage

    def count() -> int:
        flush_usage()
        return UsageRecord.objects.filter(request_id__in=request_ids).count()

    if expected is not None:
        wait_for(lambda: count() >= expected, timeout=30, what=f"{expected} usage records")
    return count()
