"""Engine events (threshold crossings, fail-open) on one Redis stream.

This is the one interface the alerts and audit apps consume: entries on
``<prefix>:events`` with a JSON ``d`` field. The request path never waits for it: the
limiter script already decided which crossings are new (once per window per limit), and
the proxy appends them after the response.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from gateway.redis import key

log = logging.getLogger(__name__)

STREAM = ("events",)
# The stream is trimmed to about this many entries; consumers keep up in seconds.
MAX_EVENTS = 100_000


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "at": time.time(), **fields}


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=str).encode()


# Events that could not be published (Redis down) wait here and go out with the next ones.
PENDING_LIMIT = 10_000
_pending: deque[dict[str, Any]] = deque(maxlen=PENDING_LIMIT)


def has_pending() -> bool:
    return bool(_pending)


async def emit_async(client: aioredis.Redis, events: list[dict[str, Any]]) -> None:
    if not events and not _pending:
        return
    batch = [*_pending, *events]
    try:
        pipe = client.pipeline(transaction=False)
        for data in batch:
            pipe.xadd(key(*STREAM), {"d": encode(data)}, maxlen=MAX_EVENTS, approximate=True)
        await pipe.execute()
    except (redis.RedisError, OSError):
        if not _pending:
            log.warning("engine events held in memory until Redis is back: %s", events[:3])
        _pending.extend(events)
    else:
        _pending.clear()


def emit(client: redis.Redis, events: list[dict[str, Any]]) -> None:
    if not events:
        return
    try:
        pipe = client.pipeline(transaction=False)
        for data in events:
            pipe.xadd(key(*STREAM), {"d": encode(data)}, maxlen=MAX_EVENTS, approximate=True)
        pipe.execute()
    except redis.RedisError:
        log.warning("could not publish %d engine event(s): %s", len(events), events[:3])


def read_all(client: redis.Redis) -> list[dict[str, Any]]:
    """Every event on the stream (for tests and the admin)."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(key(*STREAM)))
    return [json.loads(fields[b"d"]) for _id, fields in entries]
