"""A synchronous client of the same script, for Django code outside the proxy (the DRF
throttle and the middleware) and for tests that pin the clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from django.conf import settings

from gateway.redis import get_redis
from policies.engine.core import SCRIPT, Crossing, Decision, parse, script_args
from policies.engine.specs import LimitSpec

_scripts: dict[int, Any] = {}


def _script(client: redis.Redis) -> Any:
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(SCRIPT)
    return script


def admit(
    request_id: str,
    limits: Sequence[LimitSpec],
    charges: Sequence[int],
    *,
    org_id: int,
    now_ms: int = 0,
    client: redis.Redis | None = None,
) -> Decision:
    client = client or get_redis()
    keys, argv = script_args(
        "admit",
        request_id,
        limits,
        charges,
        org_id=org_id,
        prefix=settings.TOLLGATE_REDIS_PREFIX,
        lease_ms=int(settings.TOLLGATE_LIMIT_LEASE_SECONDS * 1000),
        now_ms=now_ms,
    )
    return parse(_script(client)(keys=keys, args=argv), limits, charges)


def settle(
    request_id: str,
    limits: Sequence[LimitSpec],
    actuals: Sequence[int],
    *,
    org_id: int,
    now_ms: int = 0,
    client: redis.Redis | None = None,
) -> list[Crossing]:
    client = client or get_redis()
    keys, argv = script_args(
        "settle",
        request_id,
        limits,
        actuals,
        org_id=org_id,
        prefix=settings.TOLLGATE_REDIS_PREFIX,
        lease_ms=int(settings.TOLLGATE_LIMIT_LEASE_SECONDS * 1000),
        now_ms=now_ms,
    )
    return parse(_script(client)(keys=keys, args=argv), limits, actuals).crossings
