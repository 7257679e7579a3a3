"""The proxy's side of the policy engine: reserve before the upstream call, settle after,
and answer a denial with the 429 contract (body and headers) of DESIGN.md."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from decimal import Decimal
from typing import Any, NoReturn

from gateway.metrics import observe_decision, observe_reserved, observe_settled
from gateway.proxy.catalog import Catalog, KeyInfo
from gateway.proxy.http import Headers, ProxyError
from policies import events
from policies.engine.core import Crossing, Decision
from policies.engine.limiter import (
    Limiter,
    LimiterUnavailable,
    actuals_for,
    charges_for,
    crossing_event,
    fail_open_event,
)
from policies.engine.specs import LimitSpec

log = logging.getLogger(__name__)

# A limit failing open is reported at most once per this many seconds per process.
FAIL_OPEN_REPORT_SECONDS = 60


class Queued(Exception):
    """Not admitted, and the request may wait in the burst queue instead of a 429: a limit
    with action ``queue`` denied it, or it is a queued job already (which always waits)."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.denied.description if decision.denied else "")
        self.decision = decision

    @property
    def retry_seconds(self) -> float:
        return max(self.decision.retry_ms, 0) / 1000


class LimitGate:
    def __init__(self) -> None:
        self.limiter = Limiter()
        self._fail_open_at: dict[int, float] = {}
        self._background: set[asyncio.Task[None]] = set()

    def _charges(
        self, call: Any, catalog: Catalog, key: KeyInfo, input_tokens: int, max_tokens: int | None
    ) -> tuple[tuple[LimitSpec, ...], list[int]]:
        limits = catalog.limits.applicable(
            org_id=key.org_id, tier_id=key.tier_id, feature=call.event.feature, key_id=key.id
        )
        if not limits:
            return (), []
        model = call.model
        charges = charges_for(
            limits,
            input_tokens=input_tokens,
            max_tokens=max_tokens,
            input_price=model.input_price,
            output_price=model.output_price,
        )
        return limits, charges

    async def admit(
        self,
        call: Any,
        catalog: Catalog,
        key: KeyInfo,
        *,
        input_tokens: int,
        max_tokens: int | None,
    ) -> None:
        limits, charges = self._charges(call, catalog, key, input_tokens, max_tokens)
        if not limits:
            return
        try:
            # A job never holds its pump waiting: it goes back to the queue instead.
            decision = await self.limiter.admit(
                call.lease_id, limits, charges, org_id=key.org_id, wait=not call.job
            )
        except LimiterUnavailable as exc:
            self._conclude_unavailable(call, key, limits, exc)
        self._conclude(call, key, limits, charges, decision)

    async def admit_jobs(
        self, catalog: Catalog, items: list[tuple[Any, KeyInfo, int, int | None]]
    ) -> list[BaseException | None]:
        """Admit several queued jobs (call, key, input tokens, max tokens) in one Redis
        round trip, in order; for each, None (admitted) or what ``admit`` would have
        raised."""
        pending: list[tuple[int, tuple[LimitSpec, ...], list[int]]] = []
        outcomes: list[BaseException | None] = [None] * len(items)
        for i, (call, key, input_tokens, max_tokens) in enumerate(items):
            limits, charges = self._charges(call, catalog, key, input_tokens, max_tokens)
            if limits:
                pending.append((i, limits, charges))
        decisions = await self.limiter.admit_many(
            [
                (items[i][0].lease_id, limits, charges, items[i][1].org_id)
                for i, limits, charges in pending
            ]
        )
        for (i, limits, charges), decision in zip(pending, decisions, strict=True):
            call, key = items[i][0], items[i][1]
            try:
                if isinstance(decision, LimiterUnavailable):
                    self._conclude_unavailable(call, key, limits, decision)
                else:
                    self._conclude(call, key, limits, charges, decision)
            except (ProxyError, Queued) as exc:
                outcomes[i] = exc
        return outcomes

    def _conclude_unavailable(
        self, call: Any, key: KeyInfo, limits: tuple[LimitSpec, ...], exc: LimiterUnavailable
    ) -> NoReturn:
        observe_decision(limits, "fail_closed", exc.limit)
        self._report_degraded(limits, key, kind="limit.fail_closed")
        _note(call, "fail_closed", exc.limit)
        raise ProxyError(
            503,
            "Limits cannot be checked right now (the limiter's store is "
            f"unreachable) and {exc.limit.description} is set to fail closed.",
            code="limiter_unavailable",
            outcome="rate_limited",
            headers=[(b"retry-after", b"1")],
        ) from None

    def _conclude(
        self,
        call: Any,
        key: KeyInfo,
        limits: tuple[LimitSpec, ...],
        charges: list[int],
        decision: Decision,
    ) -> None:
        feature = call.event.feature
        if decision.admitted and not decision.degraded:
            call.limits = limits  # from here on, settle gives the reservations back
            call.charges = charges
            call.admitted_ms = decision.now_ms
            observe_reserved(limits, charges)
        self._publish_crossings(decision.crossings, key, feature)
        if not decision.degraded and events.has_pending():
            self._publish([])  # Redis is back: send what waited in memory
        if decision.degraded:
            observe_decision(limits, "fail_open", limits[0])
            self._report_degraded(limits, key, kind="limit.fail_open")
            call.event.error = "limits not checked: fail-open"
            _note(call, "fail_open", limits[0])
            return
        if not decision.admitted:
            assert decision.denied is not None
            if decision.retry_ms >= 0 and (call.job or decision.denied.action == "queue"):
                observe_decision(limits, "queued", decision.denied)
                raise Queued(decision)
            observe_decision(limits, "rejected", decision.denied)
            _note(
                call,
                "budget_exceeded" if decision.denied.metric == "cost" else "rejected",
                decision.denied,
                decision.waited_ms,
            )
            raise denial(decision, key=key, feature=feature)
        if decision.waited_ms:
            waited_for = next((s for s in limits if s.action == "wait"), limits[0])
            _note(call, "waited", waited_for, decision.waited_ms)
            observe_decision(limits, "waited", waited_for)
        else:
            observe_decision(limits, "admitted")
        call.rate_headers = rate_headers(decision)

    async def settle(self, call: Any, *, tokens: int, cost_usd: Decimal) -> None:
        if not call.limits:
            return
        key: KeyInfo = call.key
        actuals = actuals_for(call.limits, tokens=tokens, cost_usd=cost_usd)
        crossings = await self.limiter.settle(
            call.lease_id, call.limits, actuals, org_id=key.org_id
        )
        observe_settled(call.limits, call.charges, actuals)
        self._publish_crossings(crossings, key, call.event.feature)

    def _publish_crossings(self, crossings: list[Crossing], key: KeyInfo, feature: str) -> None:
        if crossings:
            self._publish(
                [
                    crossing_event(c, org_id=key.org_id, org_slug=key.org_slug, feature=feature)
                    for c in crossings
                ]
            )

    def _report_degraded(self, limits: tuple[LimitSpec, ...], key: KeyInfo, *, kind: str) -> None:
        # One report per limit per FAIL_OPEN_REPORT_SECONDS per process, not one per request.
        now = time.monotonic()
        fresh = [
            s
            for s in limits
            if now - self._fail_open_at.get(s.id, -1e9) >= FAIL_OPEN_REPORT_SECONDS
        ]
        if fresh:
            for spec in fresh:
                self._fail_open_at[spec.id] = now
            event = fail_open_event(fresh, org_id=key.org_id, org_slug=key.org_slug)
            event["kind"] = kind
            self._publish([event])

    def _publish(self, items: list[dict[str, Any]]) -> None:
        # Not awaited by the request: events go out beside it.
        task = asyncio.get_running_loop().create_task(self.limiter.publish(items))
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _note(call: Any, decision: str, spec: LimitSpec, waited_ms: float = 0.0) -> None:
    """Mark the request's usage event with a non-plain decision, for the audit trail."""
    call.event.decision = decision
    call.event.limit_id = spec.id
    call.event.limit = f"{spec.code}: {spec.description}"[:200]
    call.event.waited_ms = waited_ms or None


def duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1s, 6m0s, 1h2m3s."""
    if seconds < 1:
        return f"{max(math.ceil(seconds * 1000), 0)}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _tightest(decision: Decision, metric: str) -> int | None:
    best: int | None = None
    for i, spec in enumerate(decision.limits):
        if spec.metric != metric or spec.action == "monitor" or i >= len(decision.used):
            continue
        if best is None or decision.remaining(i) < decision.remaining(best):
            best = i
    return best


def rate_headers(decision: Decision, denied: int | None = None) -> Headers:
    headers: Headers = []
    overall = denied
    for metric in ("requests", "tokens"):
        i = (
            denied
            if denied is not None and decision.limits[denied].metric == metric
            else _tightest(decision, metric)
        )
        if i is None:
            continue
        reset = decision.reset_ms[i] / 1000
        headers += [
            (f"x-ratelimit-limit-{metric}".encode(), str(decision.limits[i].amount).encode()),
            (f"x-ratelimit-remaining-{metric}".encode(), str(decision.remaining(i)).encode()),
            (f"x-ratelimit-reset-{metric}".encode(), duration(reset).encode()),
        ]
        if overall is None:
            overall = i
    if overall is None:
        overall = min(
            range(len(decision.limits)),
            key=lambda i: decision.remaining(i) / max(decision.limits[i].amount, 1),
            default=None,
        )
    if overall is not None and overall < len(decision.used):
        reset_ms = (
            decision.retry_ms
            if denied is not None and decision.retry_ms > 0
            else decision.reset_ms[overall]
        )
        headers += [
            (b"x-ratelimit-limit", str(decision.limits[overall].amount).encode()),
            (b"x-ratelimit-remaining", str(decision.remaining(overall)).encode()),
            (b"x-ratelimit-reset", str(math.ceil(max(reset_ms, 0) / 1000)).encode()),
        ]
    return headers


def _subject(spec: LimitSpec, key: KeyInfo, feature: str) -> str:
    if spec.scope == "global":
        return "this gateway"
    if spec.scope == "org":
        return f"org {key.org_slug}"
    if spec.scope == "org_feature":
        return f"feature {spec.feature or feature}"
    if spec.scope == "feature":
        return f"feature {spec.feature} (all organizations)"
    return f"API key {key.name}"


def denial(decision: Decision, *, key: KeyInfo, feature: str) -> ProxyError:
    spec = decision.denied
    assert spec is not None
    index = list(decision.limits).index(spec)
    budget = spec.metric == "cost"
    never = decision.retry_ms < 0
    reset = spec.window_seconds if never else max(math.ceil(decision.retry_ms / 1000), 1)
    kind = "Budget exceeded" if budget else "Rate limit exceeded"
    message = f"{kind} for {_subject(spec, key, feature)}: {spec.description}"
    if never:
        message += (
            " (this request alone needs more than the whole limit; lower max_tokens or the input)"
        )
    headers = rate_headers(decision, denied=index)
    headers.append((b"retry-after", str(reset).encode()))
    return ProxyError(
        429,
        message,
        error_type="budget_exceeded" if budget else "rate_limit_exceeded",
        code=spec.code,
        headers=headers,
        outcome="rate_limited",
        extra={
            "scope": spec.scope,
            "feature": spec.feature or (feature if spec.scope == "org_feature" else None),
            "limit": spec.amount,
            "window_seconds": spec.window_seconds,
            "reset_in_seconds": reset,
        },
    )
