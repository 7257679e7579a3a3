"""Redis clients with short timeouts: one shared sync client per process, and a factory
for the proxy's async clients. ``REDIS_CLUSTER`` switches both to Redis Cluster clients."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster
from django.conf import settings


def new_client(url: str | None = None, *, timeout: float | None = None) -> redis.Redis:
    """A new sync client (the caller closes it)."""
    options: dict[str, Any] = {
        "socket_timeout": timeout or settings.REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": timeout or settings.REDIS_CONNECT_TIMEOUT,
    }
    if settings.REDIS_CLUSTER:
        return redis.cluster.RedisCluster.from_url(url or settings.REDIS_URL, **options)  # type: ignore[return-value]
    return redis.Redis.from_url(url or settings.REDIS_URL, health_check_interval=30, **options)


@lru_cache(maxsize=8)
def _client(url: str, socket_timeout: float, connect_timeout: float, cluster: bool) -> redis.Redis:
    return new_client(url)


def get_redis() -> redis.Redis:
    return _client(
        settings.REDIS_URL,
        settings.REDIS_SOCKET_TIMEOUT,
        settings.REDIS_CONNECT_TIMEOUT,
        settings.REDIS_CLUSTER,
    )


def async_client(*, max_connections: int = 512) -> aioredis.Redis:
    """A new asyncio client for the running event loop."""
    options: dict[str, Any] = {
        "socket_timeout": settings.REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": settings.REDIS_CONNECT_TIMEOUT,
        "max_connections": max_connections,
    }
    if settings.REDIS_CLUSTER:
        return aiocluster.RedisCluster.from_url(settings.REDIS_URL, **options)  # type: ignore[return-value]
    return aioredis.Redis.from_url(settings.REDIS_URL, **options)


_shared_async: aioredis.Redis | None = None


def shared_async_client() -> aioredis.Redis:
    """The proxy process's one asyncio client (one pool for limits, usage and config)."""
    global _shared_async
    if _shared_async is None:
        _shared_async = async_client(max_connections=1024)
    return _shared_async


async def close_shared_async_client() -> None:
    global _shared_async
    if _shared_async is not None:
        await _shared_async.aclose()
        _shared_async = None


def key(*parts: str) -> str:
    """A namespaced Redis key: ``<prefix>:<part>:<part>...``."""
    return ":".join((settings.TOLLGATE_REDIS_PREFIX, *parts))
