"""The engine for a team's own Django endpoints: a DRF throttle, a middleware and a view
decorator, enforcing the same admin-managed limits as the proxy.

Who is calling: a Tollgate key (``Authorization: Bearer tg_...`` or ``x-api-key``), else
the logged-in user's organization. The feature: the view's ``tollgate_feature``, else the
``X-Tollgate-Feature`` header, else the key's default feature. Requests and concurrency
limits are enforced (token and cost limits need an LLM call's usage and are left to the
proxy); a concurrency lease is released when the response is complete.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from django.http import HttpRequest, HttpResponse
from rest_framework.throttling import BaseThrottle

from gateway.proxy.catalog import FORCED_RELOAD_SECONDS, REFRESH_SECONDS, VERSION_KEY, KeyInfo
from gateway.proxy.limits import denial
from gateway.redis import get_redis, key
from policies.engine import sync
from policies.engine.core import Decision
from policies.engine.specs import LimitIndex, LimitSpec, load_limit_index

log = logging.getLogger(__name__)


class _IndexCache:
    """The limits of this process, reloaded when the admin changes them."""

    def __init__(self) -> None:
        self.index: LimitIndex | None = None
        self.version: bytes | None = None
        self.checked = 0.0
        self.loaded = 0.0

    def get(self) -> LimitIndex:
        now = time.monotonic()
        if self.index is None or now - self.checked > REFRESH_SECONDS:
            self.checked = now
            try:
                version = get_redis().get(key(*VERSION_KEY))
            except redis.RedisError:
                version = self.version
            if (
                self.index is None
                or version != self.version
                or now - self.loaded > FORCED_RELOAD_SECONDS
            ):
                self.index = load_limit_index()
                self.version = version  # type: ignore[assignment]
                self.loaded = now
        return self.index


_cache = _IndexCache()


@dataclass(frozen=True)
class Caller:
    org_id: int
    org_slug: str
    tier_id: int
    key_id: int
    key_name: str
    default_feature: str | None


def identify(request: HttpRequest) -> Caller | None:
    from policies.selectors import apikey_for_secret

    raw = ""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        raw = auth[7:].strip()
    raw = raw or request.headers.get("x-api-key", "")
    if raw.startswith("tg_"):
        api_key = apikey_for_secret(raw=raw)
        if api_key is not None:
            return Caller(
                api_key.org_id,
                api_key.org.slug,
                api_key.org.tier_id,
                api_key.pk,
                api_key.name,
                api_key.default_feature.name if api_key.default_feature else None,
            )
    user = getattr(request, "user", None)
    membership = (
        getattr(user, "membership", None) if user is not None and user.is_authenticated else None
    )
    if membership is not None:
        org = membership.org
        return Caller(org.pk, org.slug, org.tier_id, 0, f"user {user}", None)  # type: ignore[union-attr]
    return None


@dataclass
class Verdict:
    caller: Caller
    feature: str
    limits: tuple[LimitSpec, ...]
    decision: Decision | None
    request_id: str

    def release(self) -> None:
        leased = tuple(s for s in self.limits if s.metric == "concurrent")
        if leased and self.decision is not None and self.decision.admitted:
            # If Redis is unreachable, the lease expires on its own.
            with contextlib.suppress(redis.RedisError):
                sync.settle(self.request_id, leased, [0] * len(leased), org_id=self.caller.org_id)

    def denied_response(self) -> HttpResponse:
        assert self.decision is not None
        info = KeyInfo(
            id=self.caller.key_id,
            prefix="",
            key_hash="",
            org_id=self.caller.org_id,
            org_slug=self.caller.org_slug,
            tier_id=self.caller.tier_id,
            name=self.caller.key_name,
            default_feature=None,
            allowed_features=None,
            allowed_models=None,
            expires_at=None,
        )
        error = denial(self.decision, key=info, feature=self.feature)
        response = HttpResponse(
            error.render(anthropic=False), status=429, content_type="application/json"
        )
        for name, value in error.headers:
            response[name.decode()] = value.decode()
        return response


def check(request: HttpRequest, *, feature: str | None = None) -> Verdict | None:
    """Charge the caller's requests and concurrency limits; None when nothing applies."""
    caller = identify(request)
    if caller is None:
        return None
    name = feature or request.headers.get("X-Tollgate-Feature") or caller.default_feature or ""
    limits = tuple(
        s
        for s in _cache.get().applicable(
            org_id=caller.org_id, tier_id=caller.tier_id, feature=name, key_id=caller.key_id
        )
        if s.metric in ("requests", "concurrent")
    )
    verdict = Verdict(caller, name, limits, None, uuid.uuid4().hex)
    if not limits:
        return verdict
    try:
        verdict.decision = sync.admit(
            verdict.request_id, limits, [1] * len(limits), org_id=caller.org_id
        )
    except redis.RedisError:
        closed = [s for s in limits if s.failure_mode == "fail_closed" and s.action != "monitor"]
        if closed:
            raise
        log.warning("limits not checked (Redis unavailable); failing open")
    return verdict


class TollgateThrottle(BaseThrottle):
    """``throttle_classes = [TollgateThrottle]``; a view may set ``tollgate_feature``."""

    def allow_request(self, request: Any, view: Any) -> bool:
        verdict = check(request, feature=getattr(view, "tollgate_feature", None))
        self.verdict = verdict
        if verdict is None or verdict.decision is None or verdict.decision.admitted:
            if verdict is not None:
                verdict.release()  # a throttle sees no end of the request: no held leases
            return True
        return False

    def wait(self) -> float | None:
        decision = getattr(self, "verdict", None) and self.verdict.decision  # type: ignore[union-attr]
        if decision is None or decision.retry_ms < 0:
            return None
        return decision.retry_ms / 1000


def tollgate_limited(
    feature: str | None = None,
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """View decorator: 429 with the gateway's contract when a limit denies."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            verdict = check(request, feature=feature)
            if (
                verdict is not None
                and verdict.decision is not None
                and not verdict.decision.admitted
            ):
                return verdict.denied_response()
            try:
                return view(request, *args, **kwargs)
            finally:
                if verdict is not None:
                    verdict.release()

        return wrapped

    return decorate


class TollgateLimitMiddleware:
    """Limits every request whose path starts with one of ``TOLLGATE_LIMITED_PATHS``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        from django.conf import settings

        self.get_response = get_response
        self.prefixes = tuple(getattr(settings, "TOLLGATE_LIMITED_PATHS", ()))

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not self.prefixes or not request.path.startswith(self.prefixes):
            return self.get_response(request)
        verdict = check(request)
        if verdict is not None and verdict.decision is not None and not verdict.decision.admitted:
            return verdict.denied_response()
        try:
            return self.get_response(request)
        finally:
            if verdict is not None:
                verdict.release()
