"""Per-provider circuit breaker for queued jobs, shared by all workers through Redis.

After ``TOLLGATE_PROVIDER_BREAKER_FAILURES`` failed calls in a row (5xx, timeouts,
unreachable) a provider's breaker opens: its jobs stay queued instead of hammering it. After
``TOLLGATE_PROVIDER_BREAKER_SECONDS`` one probe call may go (half-open); its success closes
the breaker, its failure opens it for another pause.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from gateway.redis import get_redis, key, shared_async_client

log = logging.getLogger(__name__)

SCRIPT = (Path(__file__).parent / "breaker.lua").read_text()
CLOSED, PROBE, OPEN = 1, 2, 0


def _keys(provider_id: int) -> list[str]:
    return [key("breaker", str(provider_id)), key("breaker", str(provider_id), "probe")]


def _argv(mode: str) -> list[Any]:
    return [
        mode,
        settings.TOLLGATE_PROVIDER_BREAKER_FAILURES,
        int(settings.TOLLGATE_PROVIDER_BREAKER_SECONDS * 1000),
    ]


# A pump trusts a closed breaker without failures this long before asking Redis again.
CLOSED_CACHE_SECONDS = 0.1


class ProviderBreaker:
    """The async side, used by the job pump. Calls to a healthy provider cost no Redis
    round trip: a closed, failure-free breaker is trusted for ``CLOSED_CACHE_SECONDS``, and
    a success is only reported where failures may have been counted."""

    def __init__(self) -> None:
        self._script: Any = None
        self._healthy_until: dict[int, float] = {}
        self._may_have_failures: set[int] = set()

    def _call(self, provider_id: int, mode: str) -> Any:
        client = shared_async_client()
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(SCRIPT)
        return self._script(keys=_keys(provider_id), args=_argv(mode))

    async def allow(self, provider_id: int) -> tuple[bool, float]:
        """May a call go to this provider now? If not, seconds until one may."""
        now = time.monotonic()
        if self._healthy_until.get(provider_id, 0.0) > now:
            return True, 0.0
        try:
            verdict, ms, *failures = await self._call(provider_id, "allow")
        except Exception as exc:  # Redis away: calls go on (the limiter decides on its own)
            log.warning("provider breaker unreadable (%s); allowing the call", exc)
            return True, 0.0
        if int(verdict) == CLOSED and failures and int(failures[0]) == 0:
            self._healthy_until[provider_id] = now + CLOSED_CACHE_SECONDS
        else:
            self._may_have_failures.add(provider_id)
        return int(verdict) != OPEN, int(ms) / 1000

    async def success(self, provider_id: int) -> None:
        if provider_id in self._may_have_failures:
            with contextlib.suppress(Exception):
                await self._call(provider_id, "success")
                self._may_have_failures.discard(provider_id)

    async def failure(self, provider_id: int) -> bool:
        """Count a failed call; True when the breaker is (now) open."""
        self._healthy_until.pop(provider_id, None)
        self._may_have_failures.add(provider_id)
        try:
            verdict, _ms = await self._call(provider_id, "failure")
        except Exception as exc:
            log.warning("provider breaker not updated (%s)", exc)
            return False
        if int(verdict) == OPEN:
            log.warning("provider %s: circuit breaker open", provider_id)
        return int(verdict) == OPEN


def breaker_states(provider_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Each provider's breaker for the admin and /health: state closed, open or half_open."""
    client = get_redis()
    pipe = client.pipeline(transaction=False)
    for pid in provider_ids:
        pipe.hgetall(_keys(pid)[0])
    pipe.time()
    *rows, (seconds, micros) = pipe.execute()
    now = seconds * 1000 + micros // 1000
    states: dict[int, dict[str, Any]] = {}
    for pid, row in zip(provider_ids, rows, strict=True):
        failures = int(row.get(b"failures", 0))
        open_until = int(row.get(b"open_until", 0))
        if not open_until:
            state = "closed"
        elif now < open_until:
            state = "open"
        else:
            state = "half_open"
        entry: dict[str, Any] = {"state": state, "failures": failures}
        if state == "open":
            entry["retry_in_seconds"] = round((open_until - now) / 1000, 1)
        states[pid] = entry
    return states


def breaker_reset(provider_id: int) -> None:
    get_redis().delete(*_keys(provider_id))
