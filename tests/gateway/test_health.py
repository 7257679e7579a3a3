"""/health against real servers that the test starts and stops."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from gateway.devstack.servers import EmbeddedPostgres, EmbeddedRedis


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:  # noqa: S310 - local URL
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for_status(
    url: str, dependency: str, status: str, timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _code, body = get_json(url)
        if body["dependencies"][dependency]["status"] == status:
            return body
        time.sleep(0.3)
    raise AssertionError(f"{dependency} never became {status}: {body}")


def test_live_answers_without_touching_dependencies(start_gateway) -> None:  # type: ignore[no-untyped-def]
    # Nothing listens on these ports: /health/live must not care.
    base = start_gateway(
        DATABASE_URL="postgres://u@127.0.0.1:9/x", REDIS_URL="redis://127.0.0.1:9/0"
    )
    code, body = get_json(f"{base}/health/live")
    assert code == 200
    assert body["status"] == "ok"


def test_health_is_ok_with_every_dependency_and_degraded_when_redis_stops(
    start_gateway, start_worker, throwaway_redis: EmbeddedRedis
) -> None:  # type: ignore[no-untyped-def]
    env = {"REDIS_URL": throwaway_redis.url, "CELERY_BROKER_URL": throwaway_redis.url}
    start_worker(**env)
    base = start_gateway(**env)
    body = wait_for_status(f"{base}/health", "worker", "ok")
    code, body = get_json(f"{base}/health")
    assert code == 200, body
    assert body["status"] == "ok"
    assert set(body["dependencies"]) == {"postgres", "redis", "broker", "worker"}
    for dependency in body["dependencies"].values():
        assert dependency["status"] == "ok"
        assert dependency["latency_ms"] >= 0
    assert body["version"]

    throwaway_redis.stop()
    started = time.monotonic()
    code, body = get_json(f"{base}/health")
    elapsed = time.monotonic() - started
    assert code == 503
    assert body["status"] == "degraded"
    assert body["dependencies"]["redis"]["status"] == "down"
    assert "error" in body["dependencies"]["redis"]
    assert body["dependencies"]["broker"]["status"] == "down"
    assert body["dependencies"]["postgres"]["status"] == "ok"
    # Each check has its own timeout and they run side by side (a generous bound).
    assert elapsed < 12


def test_health_is_degraded_when_postgres_stops(
    start_gateway, throwaway_postgres: EmbeddedPostgres
) -> None:  # type: ignore[no-untyped-def]
    base = start_gateway(DATABASE_URL=throwaway_postgres.url)
    body = wait_for_status(f"{base}/health", "postgres", "ok")
    assert body["dependencies"]["redis"]["status"] == "ok"

    throwaway_postgres.stop()
    code, body = get_json(f"{base}/health")
    assert code == 503
    assert body["status"] == "degraded"
    assert body["dependencies"]["postgres"]["status"] == "down"
    assert body["dependencies"]["postgres"]["error"]
    assert body["dependencies"]["redis"]["status"] == "ok"


def test_a_hanging_dependency_times_out_instead_of_hanging_health(
    start_gateway, throwaway_redis: EmbeddedRedis
) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal

    base = start_gateway(REDIS_URL=throwaway_redis.url, TOLLGATE_HEALTH_TIMEOUT_SECONDS="1")
    wait_for_status(f"{base}/health", "redis", "ok")
    assert throwaway_redis.process is not None and throwaway_redis.process.pid
    os.kill(throwaway_redis.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        code, body = get_json(f"{base}/health")
        elapsed = time.monotonic() - started
    finally:
        os.kill(throwaway_redis.process.pid, signal.SIGCONT)
    assert code == 503
    assert body["dependencies"]["redis"]["status"] == "down"
    assert elapsed < 6


@pytest.mark.django_db
def test_health_reports_no_worker_when_none_has_a_heartbeat(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/health")
    body = response.json()
    assert response.status_code == 503
    assert body["dependencies"]["worker"]["status"] == "down"
    assert "heartbeat" in body["dependencies"]["worker"]["error"]
