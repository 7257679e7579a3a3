"""One shared Redis client per process, with short timeouts."""

from __future__ import annotations

from functools import lru_cache

import redis
from django.conf import settings


@lru_cache(maxsize=8)
def _client(url: str, socket_timeout: float, connect_timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=30,
        decode_responses=False,
    )


def get_redis() -> redis.Redis:
    return _client(
        settings.REDIS_URL, settings.REDIS_SOCKET_TIMEOUT, settings.REDIS_CONNECT_TIMEOUT
    )


def key(*parts: str) -> str:
    """A namespaced Redis key: ``<prefix>:<part>:<part>...``."""
    return ":".join((settings.TOLLGATE_REDIS_PREFIX, *parts))
