"""Reading a Redis stream with a consumer group: at-least-once, acknowledged after the work
is done, and entries of a consumer that died are taken over after ``claim_idle_ms``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import redis

from gateway.redis import get_redis

Entry = tuple[bytes, dict[bytes, bytes]]


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def consume(
    *,
    stream: str,
    group: str,
    consumer: str,
    handle: Callable[[list[Entry]], int],
    batch_size: int,
    max_batches: int,
    claim_idle_ms: int,
    delete: bool = False,
) -> int:
    """Hand batches to ``handle`` (which commits its work), then acknowledge them.

    Returns the sum of what ``handle`` returned. ``delete`` also removes handled entries
    from the stream (for streams with a single reader group).
    """
    client = get_redis()
    ensure_group(client, stream, group)
    total = 0
    for _ in range(max_batches):
        _next, entries, *_rest = cast(
            list[Any],
            client.xautoclaim(
                stream,
                group,
                consumer,
                min_idle_time=claim_idle_ms,
                start_id="0-0",
                count=batch_size,
            ),
        )
        if not entries:
            response = cast(
                list[Any], client.xreadgroup(group, consumer, {stream: ">"}, count=batch_size)
            )
            entries = response[0][1] if response else []
        if not entries:
            break
        total += handle(entries)
        ids = [entry_id for entry_id, _fields in entries]
        pipe = client.pipeline(transaction=False)
        pipe.xack(stream, group, *ids)
        if delete:
            pipe.xdel(stream, *ids)
        pipe.execute()
    return total
