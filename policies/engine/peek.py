"""Read-only view of a limit's current usage (for the admin and the API), without charging."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import cast

import redis
from django.conf import settings

from gateway.redis import get_redis
from policies.engine.specs import LimitSpec


def current_usage(spec: LimitSpec, *, org_id: int, client: redis.Redis | None = None) -> int | None:
    """Committed plus reserved usage in the current window; None if Redis is unreachable."""
    client = client or get_redis()
    base = spec.counter_key(settings.TOLLGATE_REDIS_PREFIX, org_id)
    try:
        seconds, micros = client.time()
        now = seconds * 1000 + micros // 1000
        if spec.charge_class == "c":
            return int(client.zcount(f"{base}:h", f"({now}", "+inf"))
        raw = cast(dict[bytes, bytes], client.hgetall(f"{base}:c"))
        fields = {k.decode(): v.decode() for k, v in raw.items()}
    except redis.RedisError:
        return None
    held = int(fields.get("held", 0)) if spec.charge_class == "h" else 0
    if spec.kind == "r":
        # The bucket width the counter was made with (see limiter.lua's ring()).
        bucket_ms = max(spec.window_ms // 100, 1)
        old = max(spec.window_ms // 60, 1)
        if fields.get("g") == str(old) or ("g" not in fields and "lp" in fields):
            bucket_ms = old
        buckets = math.ceil(spec.window_ms / bucket_ms)
        current = now // bucket_ms
        total = 0
        for name, value in fields.items():
            if name.startswith("b"):
                bucket, _, amount = value.partition(":")
                if current - buckets <= int(bucket) <= current:
                    total += int(amount)
        return total + held
    # Calendar windows: a counter of an earlier period means nothing was used in this one.
    moment = datetime.fromtimestamp(now / 1000, tz=UTC)
    period = now // 86_400_000 if spec.kind == "d" else moment.year * 12 + moment.month
    if fields.get("pid") != str(period):
        return held
    return int(fields.get("pv", 0)) + held
