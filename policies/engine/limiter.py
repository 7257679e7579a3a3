"""The async limiter of the proxy: one script call per decision, bounded waits, a circuit
breaker and each limit's failure mode when Redis is unreachable."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings

from gateway.metrics import (
    DEGRADED_NOW,
    DEGRADED_SECONDS,
    LIMITER_DEGRADED,
    REDIS_ERRORS,
    WAITING,
)
from gateway.redis import shared_async_client
from policies import events
from policies.engine.core import (
    SCRIPT,
    Crossing,
    Decision,
    merge,
    parse,
    script_args,
    slot_groups,
)
from policies.engine.specs import LimitSpec

log = logging.getLogger(__name__)

MICRO = Decimal(1_000_000)
# No single charge exceeds this (a larger one never fits any limit anyway, and the script's
# numbers must stay exact integers).
MAX_CHARGE = 10**13


class LimiterUnavailable(Exception):
    """Redis is unreachable and a fail-closed limit applies."""

    def __init__(self, limit: LimitSpec) -> None:
        super().__init__(limit.description)
        self.limit = limit


class CircuitBreaker:
    """Stops calling a failing Redis for a while, then lets one probe through."""

    def __init__(self, failures: int, reset_seconds: float) -> None:
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self.failures = 0
        self.open_until = 0.0
        self.probing = False

    def allow(self) -> bool:
        if self.failures < self.threshold:
            return True
        now = time.monotonic()
        if now >= self.open_until and not self.probing:
            self.probing = True  # half-open: one request tries Redis again
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= self.threshold:
            self.open_until = time.monotonic() + self.reset_seconds


def charges_for(
    limits: Sequence[LimitSpec],
    *,
    input_tokens: int,
    max_tokens: int | None,
    input_price: Decimal,
    output_price: Decimal,
) -> list[int]:
    """What a request reserves against each limit before its upstream call."""
    charges = []
    for spec in limits:
        if spec.metric in ("tokens", "cost"):
            output = max_tokens if max_tokens is not None else spec.default_output_tokens
            if spec.metric == "tokens":
                charges.append(input_tokens + output)
            else:
                usd = (input_tokens * input_price + output * output_price) / MICRO
                charges.append(min(micro_usd(usd), MAX_CHARGE))
        else:
            charges.append(1)
    return [min(c, MAX_CHARGE) for c in charges]


def micro_usd(usd: Decimal) -> int:
    """Micro-dollars, rounded up: a budget is never undercharged."""
    return math.ceil(usd * MICRO)


def actuals_for(limits: Sequence[LimitSpec], *, tokens: int, cost_usd: Decimal) -> list[int]:
    return [
        min(
            tokens if s.metric == "tokens" else micro_usd(cost_usd) if s.metric == "cost" else 0,
            MAX_CHARGE,
        )
        for s in limits
    ]


class Limiter:
    def __init__(self) -> None:
        self._script: Any = None
        self.breaker = CircuitBreaker(
            settings.TOLLGATE_LIMITER_BREAKER_FAILURES, settings.TOLLGATE_LIMITER_BREAKER_SECONDS
        )
        self._wait_locks: dict[int, asyncio.Lock] = {}
        # While Redis is unreachable: up to when that time has been counted in the metric.
        self._degraded_counted: float | None = None

    def _client(self) -> aioredis.Redis:
        client = shared_async_client()
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(SCRIPT)
        return client

    async def _call(
        self,
        mode: str,
        request_id: str,
        limits: Sequence[LimitSpec],
        charges: Sequence[int],
        org_id: int,
        now_ms: int,
    ) -> Decision:
        groups = slot_groups(limits, org_id) if settings.REDIS_CLUSTER else []
        if len(groups) <= 1:
            return await self._call_one(mode, request_id, limits, charges, org_id, now_ms)
        # Redis Cluster: one script call per hash slot. An admit denied (or failed) in a
        # later slot takes back what earlier slots charged, so all-or-nothing still holds.
        parts: list[tuple[list[int], Decision]] = []
        try:
            for indices in groups:
                sub = [limits[i] for i in indices]
                sub_charges = [charges[i] for i in indices]
                decision = await self._call_one(mode, request_id, sub, sub_charges, org_id, now_ms)
                parts.append((indices, decision))
                if mode == "admit" and not decision.admitted:
                    await self._undo(request_id, parts[:-1], limits, charges, org_id)
                    break
        except BaseException:
            if mode == "admit":
                await self._undo(request_id, parts, limits, charges, org_id)
            raise
        return merge(parts, limits, charges)

    async def _undo(
        self,
        request_id: str,
        parts: list[tuple[list[int], Decision]],
        limits: Sequence[LimitSpec],
        charges: Sequence[int],
        org_id: int,
    ) -> None:
        for done, decision in parts:
            try:
                await self._call_one(
                    "undo",
                    request_id,
                    [limits[i] for i in done],
                    [charges[i] for i in done],
                    org_id,
                    decision.now_ms,  # in the bucket or period the admit charged
                )
            except Exception:
                log.warning("limiter: could not take back a partial admit of %s", request_id)

    async def _call_one(
        self,
        mode: str,
        request_id: str,
        limits: Sequence[LimitSpec],
        charges: Sequence[int],
        org_id: int,
        now_ms: int,
    ) -> Decision:
        self._client()
        keys, argv = script_args(
            mode,
            request_id,
            limits,
            charges,
            org_id=org_id,
            now_ms=now_ms,
        )
        raw = await self._script(keys=keys, args=argv)
        return parse(raw, limits, charges)

    async def admit(
        self,
        request_id: str,
        limits: Sequence[LimitSpec],
        charges: Sequence[int],
        *,
        org_id: int,
        now_ms: int = 0,
        wait: bool = True,
    ) -> Decision:
        """One decision; with ``wait`` a denial by a `wait` limit waits for capacity."""
        started = time.monotonic()
        waiting = [s for s in limits if s.action == "wait" and self._lock(s).locked()]
        if waiting:
            # Others already wait for this limit: queue behind them, in arrival order.
            decision = Decision(
                admitted=False, limits=limits, charges=charges, denied=waiting[0], retry_ms=0
            )
        else:
            decision = await self._guarded(request_id, limits, charges, org_id, now_ms)
        spec = decision.denied
        if (
            not wait
            or decision.admitted
            or spec is None
            or spec.action != "wait"
            or decision.retry_ms < 0
        ):
            return decision
        deadline = started + (spec.max_wait_seconds or 0)
        WAITING.inc()
        try:
            decision = await self._wait(spec, request_id, limits, charges, org_id, now_ms, deadline)
        finally:
            WAITING.dec()
        decision.waited_ms = round((time.monotonic() - started) * 1000, 3)
        return decision

    async def admit_many(
        self, items: Sequence[tuple[str, Sequence[LimitSpec], Sequence[int], int]]
    ) -> list[Decision | LimiterUnavailable]:
        """Several decisions (request id, limits, charges, org id) in one round trip, made
        by Redis in the given order; never waits. Redis Cluster: one at a time."""
        if not items:
            return []
        if settings.REDIS_CLUSTER or len(items) == 1:
            results: list[Decision | LimiterUnavailable] = []
            for request_id, limits, charges, org_id in items:
                try:
                    results.append(
                        await self.admit(request_id, limits, charges, org_id=org_id, wait=False)
                    )
                except LimiterUnavailable as exc:
                    results.append(exc)
            return results
        raw: list[Any] | None = None
        if self.breaker.allow():
            try:
                client = self._client()
                pipe = client.pipeline(transaction=False)
                for request_id, limits, charges, org_id in items:
                    keys, argv = script_args(
                        "admit",
                        request_id,
                        limits,
                        charges,
                        org_id=org_id,
                    )
                    await self._script(keys=keys, args=argv, client=pipe)
                raw = await pipe.execute(raise_on_error=False)
            except Exception as exc:
                self._unreachable(exc)
            else:
                self._reached()
            finally:
                self.breaker.probing = False
        decisions: list[Decision | LimiterUnavailable] = []
        for i, (_request_id, limits, charges, _org_id) in enumerate(items):
            answer = raw[i] if raw is not None else None
            if isinstance(answer, list):
                decisions.append(parse(answer, limits, charges))
                continue
            if answer is not None:  # the script failed for this one: a bug, not an outage
                REDIS_ERRORS.labels("limiter").inc()
                log.error("limiter: the script failed (%s); applying failure modes", answer)
            try:
                decisions.append(self._degraded(limits, charges))
            except LimiterUnavailable as exc:
                decisions.append(exc)
        return decisions

    async def _wait(
        self,
        spec: LimitSpec,
        request_id: str,
        limits: Sequence[LimitSpec],
        charges: Sequence[int],
        org_id: int,
        now_ms: int,
        deadline: float,
    ) -> Decision:
        async with self._lock(spec):
            # Our turn: capacity may have come back while we queued, so look again.
            decision = await self._guarded(request_id, limits, charges, org_id, now_ms)
            if decision.admitted or decision.denied is None or decision.denied.action != "wait":
                return decision
            while True:
                wait = decision.retry_ms / 1000
                if decision.retry_ms < 0 or time.monotonic() + wait > deadline:
                    return decision
                await asyncio.sleep(max(wait, 0.001))
                decision = await self._guarded(request_id, limits, charges, org_id, now_ms)
                if decision.admitted or decision.denied is None or decision.denied.action != "wait":
                    return decision

    def _lock(self, spec: LimitSpec) -> asyncio.Lock:
        lock = self._wait_locks.get(spec.id)
        if lock is None:
            lock = self._wait_locks[spec.id] = asyncio.Lock()
        return lock

    async def _guarded(
        self,
        request_id: str,
        limits: Sequence[LimitSpec],
        charges: Sequence[int],
        org_id: int,
        now_ms: int,
    ) -> Decision:
        if self.breaker.allow():
            try:
                decision = await self._call("admit", request_id, limits, charges, org_id, now_ms)
            except redis.ResponseError:
                # The script itself failed: a bug, not an outage; the breaker stays as is.
                REDIS_ERRORS.labels("limiter").inc()
                log.exception("limiter: the script failed; applying failure modes")
                self.breaker.probing = False
            except Exception as exc:
                self._unreachable(exc)
            else:
                self._reached()
                return decision
            finally:
                self.breaker.probing = False  # also when the probe was cancelled
        return self._degraded(limits, charges)

    def _unreachable(self, exc: Exception) -> None:
        REDIS_ERRORS.labels("limiter").inc()
        if self.breaker.failures == 0:
            log.warning("limiter: Redis unavailable (%s); applying failure modes", exc)
        self.breaker.failure()

    def _reached(self) -> None:
        self.breaker.success()
        if self._degraded_counted is not None:
            self._count_degraded(ended=True)

    def _count_degraded(self, *, ended: bool = False) -> None:
        now = time.monotonic()
        if self._degraded_counted is None:
            DEGRADED_NOW.set(1)
        else:
            DEGRADED_SECONDS.inc(now - self._degraded_counted)
        self._degraded_counted = None if ended else now
        if ended:
            DEGRADED_NOW.set(0)

    def _degraded(self, limits: Sequence[LimitSpec], charges: Sequence[int]) -> Decision:
        LIMITER_DEGRADED.inc()
        self._count_degraded()
        closed = [s for s in limits if s.failure_mode == "fail_closed" and s.action != "monitor"]
        if closed:
            raise LimiterUnavailable(closed[0])
        return Decision(
            admitted=True,
            limits=limits,
            charges=charges,
            used=[0] * len(limits),
            reset_ms=[0] * len(limits),
            degraded=True,
        )

    async def settle(
        self,
        request_id: str,
        limits: Sequence[LimitSpec],
        actuals: Sequence[int],
        *,
        org_id: int,
        now_ms: int = 0,
    ) -> list[Crossing]:
        """Release leases and replace reservations by what the request really used."""
        # Tried even while the breaker is open: only requests admitted while Redis answered
        # get here, and giving their leases back early matters more than a failed call.
        if not any(s.charge_class != "n" for s in limits):
            return []
        try:
            decision = await self._call("settle", request_id, limits, actuals, org_id, now_ms)
        except Exception as exc:
            REDIS_ERRORS.labels("limiter").inc()
            log.warning("limiter: could not settle %s (%s)", request_id, exc)
            return []
        return decision.crossings

    async def publish(self, items: list[dict[str, Any]]) -> None:
        await events.emit_async(self._client(), items)


def crossing_event(
    crossing: Crossing, *, org_id: int, org_slug: str, feature: str
) -> dict[str, Any]:
    spec = crossing.limit
    return events.event(
        "limit.threshold_crossed",
        limit_id=spec.id,
        limit=spec.description,
        code=spec.code,
        scope=spec.scope,
        metric=spec.metric,
        threshold=crossing.threshold,
        used=crossing.used,
        amount=spec.amount,
        org_id=org_id if spec.scope not in ("global", "feature") else None,
        org=org_slug if spec.scope not in ("global", "feature") else None,
        feature=spec.feature or feature or None,
    )


def fail_open_event(limits: Sequence[LimitSpec], *, org_id: int, org_slug: str) -> dict[str, Any]:
    return events.event(
        "limit.fail_open", limit_ids=[s.id for s in limits], org_id=org_id, org=org_slug
    )
