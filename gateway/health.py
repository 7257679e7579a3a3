"""``/health``: one check per dependency, each with its own timeout, run in parallel."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any, cast

import psycopg
import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from kombu import Connection

import gateway
from gateway.postgres import conninfo
from gateway.redis import get_redis, key, new_client

WORKERS_KEY = ("workers", "heartbeat")


def worker_heartbeat_write(hostname: str) -> None:
    """Called by every Celery worker every few seconds (see ``gateway.celery``)."""
    client = get_redis()
    now = time.time()
    pipe = client.pipeline()
    pipe.zadd(key(*WORKERS_KEY), {hostname: now})
    # Forget workers that stopped long ago, so the set stays small.
    pipe.zremrangebyscore(key(*WORKERS_KEY), 0, now - 24 * 3600)
    pipe.execute()


def worker_heartbeat_clear(hostname: str) -> None:
    with contextlib.suppress(redis.RedisError):
        get_redis().zrem(key(*WORKERS_KEY), hostname)


def _timeout() -> float:
    return float(settings.TOLLGATE_HEALTH_TIMEOUT_SECONDS)


def check_postgres() -> dict[str, Any]:
    with psycopg.connect(**conninfo(connect_timeout=max(1, math.ceil(_timeout())))) as conn:
        conn.execute("SELECT 1")
    return {}


def check_redis() -> dict[str, Any]:
    client = new_client(timeout=_timeout())
    try:
        client.ping()
    finally:
        client.close()
    return {}


def check_broker() -> dict[str, Any]:
    timeout = _timeout()
    with Connection(
        settings.CELERY_BROKER_URL,
        connect_timeout=timeout,
        transport_options={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    ) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        transport = conn.transport.driver_name
    return {"transport": transport}


def check_worker() -> dict[str, Any]:
    client = new_client(timeout=_timeout())
    try:
        # Without decode_responses, WITHSCORES gives (member bytes, float score) pairs.
        newest = cast(
            "list[tuple[bytes, float]]",
            client.zrevrange(key(*WORKERS_KEY), 0, -1, withscores=True),
        )
    finally:
        client.close()
    now = time.time()
    alive = [
        score for _host, score in newest if now - score <= settings.TOLLGATE_WORKER_STALE_SECONDS
    ]
    if not alive:
        raise RuntimeError(
            f"no Celery worker heartbeat in the last {settings.TOLLGATE_WORKER_STALE_SECONDS}s"
        )
    return {"workers": len(alive), "last_heartbeat_seconds": round(now - max(alive), 1)}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "postgres": check_postgres,
    "redis": check_redis,
    "broker": check_broker,
    "worker": check_worker,
}


async def _run(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        extra = await asyncio.wait_for(asyncio.to_thread(check), timeout=_timeout())
    except TimeoutError:
        result: dict[str, Any] = {"status": "down", "error": f"timed out after {_timeout():g}s"}
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        result = {"status": "down", "error": f"{type(exc).__name__}: {message}"[:500]}
    else:
        result = {"status": "ok", **extra}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


def provider_breakers() -> dict[str, Any]:
    """Each active provider's circuit breaker (closed, open, half_open) for queued jobs."""
    from gateway.jobs.breaker import breaker_states
    from gateway.models import Provider

    try:
        providers = dict(Provider.objects.filter(is_active=True).values_list("pk", "name"))
    finally:
        connection.close()  # this runs on a pool thread: keep no connection there
    states = breaker_states(list(providers))
    return {providers[pid]: state for pid, state in states.items()}


async def health_report() -> dict[str, Any]:
    names = list(CHECKS)
    results = await asyncio.gather(
        *(_run(CHECKS[name]) for name in names), _run(lambda: {"breakers": provider_breakers()})
    )
    dependencies = dict(zip(names, results, strict=False))
    ok = all(dep["status"] == "ok" for dep in dependencies.values())
    # Providers are reported, not judged: one provider's outage is no reason to take the
    # gateway out of a load balancer (its other providers still serve).
    providers = results[-1].get("breakers", {})
    return {
        "status": "ok" if ok else "degraded",
        "version": gateway.__version__,
        "dependencies": dependencies,
        "providers": providers,
    }


async def health(request: HttpRequest) -> JsonResponse:
    report = await health_report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)


async def health_live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "version": gateway.__version__})
