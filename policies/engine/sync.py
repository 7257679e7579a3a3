"""A synchronous client of the same script, for Django code outside the proxy (the DRF
throttle and the middleware) and for tests that pin the clock."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import redis
from django.conf import settings

from gateway.redis import get_redis
from policies.engine.core import SCRIPT, Crossing, Decision, merge, parse, script_args, slot_groups
from policies.engine.specs import LimitSpec

_scripts: dict[int, Any] = {}


def _script(client: redis.Redis) -> Any:
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(SCRIPT)
    return script


def _one(
    mode: str,
    request_id: str,
    limits: Sequence[LimitSpec],
    charges: Sequence[int],
    org_id: int,
    now_ms: int,
    client: redis.Redis,
) -> Decision:
    keys, argv = script_args(
        mode,
        request_id,
        limits,
        charges,
        org_id=org_id,
        now_ms=now_ms,
    )
    return parse(_script(client)(keys=keys, args=argv), limits, charges)


def _call(
    mode: str,
    request_id: str,
    limits: Sequence[LimitSpec],
    charges: Sequence[int],
    org_id: int,
    now_ms: int,
    client: redis.Redis | None,
) -> Decision:
    client = client or get_redis()
    groups = slot_groups(limits, org_id) if settings.REDIS_CLUSTER else []
    if len(groups) <= 1:
        return _one(mode, request_id, limits, charges, org_id, now_ms, client)
    # Redis Cluster: one call per hash slot; a later denial (or failure) takes back what
    # earlier slots charged, in the bucket or period each admit charged.
    parts: list[tuple[list[int], Decision]] = []

    def undo(done_parts: list[tuple[list[int], Decision]]) -> None:
        for done, decision in done_parts:
            with contextlib.suppress(Exception):  # best effort; holds and leases expire
                _one(
                    "undo",
                    request_id,
                    [limits[i] for i in done],
                    [charges[i] for i in done],
                    org_id,
                    decision.now_ms,
                    client,
                )

    try:
        for indices in groups:
            decision = _one(
                mode,
                request_id,
                [limits[i] for i in indices],
                [charges[i] for i in indices],
                org_id,
                now_ms,
                client,
            )
            parts.append((indices, decision))
            if mode == "admit" and not decision.admitted:
                undo(parts[:-1])
                break
    except BaseException:
        if mode == "admit":
            undo(parts)
        raise
    return merge(parts, limits, charges)


def admit(
    request_id: str,
    limits: Sequence[LimitSpec],
    charges: Sequence[int],
    *,
    org_id: int,
    now_ms: int = 0,
    client: redis.Redis | None = None,
) -> Decision:
    return _call("admit", request_id, limits, charges, org_id, now_ms, client)


def settle(
    request_id: str,
    limits: Sequence[LimitSpec],
    actuals: Sequence[int],
    *,
    org_id: int,
    now_ms: int = 0,
    client: redis.Redis | None = None,
) -> list[Crossing]:
    return _call("settle", request_id, limits, actuals, org_id, now_ms, client).crossings
