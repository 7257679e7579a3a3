"""The job pump: claims queued jobs in order, admits them through the policy engine and
runs their provider calls concurrently, on one asyncio loop inside one worker slot.

* A job its limits do not admit yet goes back to its place in the queue, and its lane
  (API key + feature: the same limits) is skipped until the limiter's ``retry`` time, so
  capacity is used the moment it returns, without polling the limiter. When that time is
  near (a busy per-second limit frees some capacity every few milliseconds), the pump keeps
  the job claimed and ready instead, and admits it then without going back to Postgres.
* A pump keeps its slot only while jobs are in flight or capacity returns within
  ``HAND_BACK_SECONDS``; otherwise it ends and the sweep (every second) wakes a new one.
* Leases: a pump renews its running jobs every second; a job whose pump died is put back
  by the sweep after ``TOLLGATE_JOB_LEASE_SECONDS`` and runs again. Its result is stored
  only by the attempt that still owns the claim, and usage is recorded under the job's id,
  so a job is charged and answered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from gateway.jobs import services
from gateway.jobs.breaker import ProviderBreaker
from gateway.jobs.models import Job
from gateway.jobs.store import Claim, JobRow, JobStore
from gateway.metrics import JOB_RUNS, JOB_WAIT, observe_request
from gateway.proxy.app import Call, Prepared, ProxyApp
from gateway.proxy.catalog import KeyInfo
from gateway.proxy.http import ProxyError
from gateway.proxy.limits import Queued
from gateway.redis import get_redis, key

log = logging.getLogger(__name__)

# Wait in the slot for capacity coming back sooner than this; hand the slot back otherwise.
HAND_BACK_SECONDS = 2.0
# When one held lane opens, lanes due within this many seconds open with it.
LANE_SLACK = 0.05
# A result that cannot be stored is tried again after these pauses (seconds).
STORE_RETRY_SECONDS = (0.5, 1.0, 2.0, 4.0)
# Jobs claimed per query at most (then admitted in one Redis round trip, in order).
CLAIM_BATCH = 16
# With nothing to claim, look again after at most this long (jobs accepted meanwhile).
IDLE_LOOK_SECONDS = 0.25
# Leases of in-flight jobs and of the pump's slot are renewed this often.
RENEW_SECONDS = 1.0
# A job its limits admit within this long stays claimed and ready (no release and claim
# again); for this long at most in all, so its "running" status never hides a long wait.
KEEP_SECONDS = 0.25
KEEP_MAX_SECONDS = 1.0
RELEASE_SLOT = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
RENEW_SLOT = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
# Provider failures worth another attempt (the provider's 429 and 5xx, timeouts).
RETRIABLE = frozenset({429, 500, 502, 503, 504})


async def _never_receive() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


async def _no_send(message: MutableMapping[str, Any]) -> None:
    raise RuntimeError("a job's answer is stored, never sent")


def job_call(job: JobRow) -> Call:
    """The stored request as the proxy's handlers see one."""
    headers = {
        name.encode(): value.encode("latin-1") for name, value in job.request_headers.items()
    }
    if job.feature:
        headers[b"x-tollgate-feature"] = job.feature.encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": f"/v1/{job.endpoint}",
        "headers": list(headers.items()),
    }
    call = Call(scope, _never_receive, _no_send, headers, job.request_id, time.perf_counter())
    call.anthropic = job.endpoint == "messages"
    call.job = True
    return call


def _error_of(exc: ProxyError) -> dict[str, Any]:
    return {
        "type": exc.error_type or ("rate_limit_exceeded" if exc.status == 429 else "job_failed"),
        "code": exc.code,
        "message": exc.message,
        "status": exc.status,
    }


def _retry_after(exc: ProxyError) -> float | None:
    for name, value in exc.headers:
        if name.lower() == b"retry-after":
            try:
                return float(value)
            except ValueError:
                return None
    return None


@dataclass
class Ready:
    """A claimed job prepared for admission (and, once admitted, for its provider call)."""

    claim: Claim
    call: Call
    key: KeyInfo
    prepared: Prepared
    provider: int
    # Since when (monotonic) it is kept claimed while its lane is held; None if it is not.
    kept_since: float | None = None


DONE = object()  # a claimed job that already failed for good


class Slot:
    """One of ``TOLLGATE_JOB_PUMPS`` pump slots, held in Redis with a TTL."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.name: str | None = None
        # The slot of a pump whose worker died frees up after a job lease.
        self.ttl_ms = int(settings.TOLLGATE_JOB_LEASE_SECONDS * 1000)

    def acquire(self) -> bool:
        client = get_redis()
        for i in range(settings.TOLLGATE_JOB_PUMPS):
            name = key("jobs", "pump", str(i))
            if client.set(name, self.token, nx=True, px=self.ttl_ms):
                self.name = name
                return True
        return False

    def renew(self) -> None:
        if self.name:
            get_redis().eval(RENEW_SLOT, 1, self.name, self.token, self.ttl_ms)

    def release(self) -> None:
        if self.name:
            get_redis().eval(RELEASE_SLOT, 1, self.name, self.token)


class Pump:
    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.app = ProxyApp()
        self.store = JobStore()
        self.breaker = ProviderBreaker()
        self.inflight: dict[asyncio.Task[None], Claim] = {}
        self.calling = 0  # of those, the ones waiting on their provider
        # Lanes and providers skipped until a monotonic time.
        self.lanes: dict[str, float] = {}
        self.providers: dict[int, float] = {}
        self.batch = 1
        self.call_ended = asyncio.Event()
        self.next_claim_at = 0.0
        # Jobs claimed and prepared whose lane is held for a moment, in order of service.
        self.kept: list[Ready] = []
        # Held lanes whose next jobs were claimed ahead (until the hold they were claimed in).
        self.topped: dict[str, float] = {}

    async def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self.renewed = time.monotonic()
        try:
            while time.monotonic() < deadline:
                try:
                    if not await self._step():
                        return  # the queue is empty, or nothing to do for a while
                except Exception:
                    # Postgres or Redis away for a moment: calls in flight go on, and so
                    # does the pump once they are back.
                    log.exception("job pump: step failed; trying again in a second")
                    await self._settle_some(1.0)
            # Time is up with work left: the next pump takes over now, while this one
            # only finishes the calls it has in flight.
            await self._give_back_kept()
            await asyncio.to_thread(self.slot.release)
            await asyncio.to_thread(_wake_next_pump)
        finally:
            with contextlib.suppress(Exception):
                await self._give_back_kept()
            while self.inflight:
                await self._settle_some(RENEW_SECONDS)
                with contextlib.suppress(Exception):
                    await self._renew()
            await self.app.close()
            await self.store.close()

    async def _step(self) -> bool:
        """Claim, admit and start what may run now; False when the pump should end."""
        now = time.monotonic()
        if now - self.renewed >= RENEW_SECONDS:
            self.renewed = now
            await self._renew()
        if now < self.next_claim_at:
            await self._settle_some(self.next_claim_at - now)
            return True
        # Lanes held by one shared limit open together, so the claim's order (priority,
        # then fair rank) decides among them, not a microsecond.
        horizon = now + LANE_SLACK if any(t <= now for t in self.lanes.values()) else now
        self.lanes = {k: t for k, t in self.lanes.items() if t > horizon}
        self.topped = {k: t for k, t in self.topped.items() if k in self.lanes}
        self.providers = {k: t for k, t in self.providers.items() if t > now}
        room = settings.TOLLGATE_JOB_CONCURRENCY - self.calling
        if room <= 0:
            await self._settle_some(RENEW_SECONDS)
            return True
        due = await self._due_kept(room)
        if due:
            await self._start_batch(due)
            return True
        claims = await self.store.claim(
            skip_lanes=list(self.lanes),
            skip_providers=list(self.providers),
            limit=min(self.batch, room),
        )
        if claims:
            returned = await self._start_batch(await self._ready(claims))
            # Claim about as many as the limits take: claiming jobs only to put them back
            # costs two writes each (jobs kept for a moment cost nothing).
            taken = len(claims) - returned
            self.batch = min(self.batch * 2, CLAIM_BATCH) if not returned else max(taken, 1)
            return True
        if await self._top_up(now, room):
            return True
        wait = await self._next_work_in()
        if wait is None and not self.inflight:
            return False  # the queue is empty
        if not self.inflight and wait is not None and wait > HAND_BACK_SECONDS:
            return False  # nothing to do for a while: give the slot back
        # Look again when a lane opens, or soon for jobs accepted meanwhile.
        self.next_claim_at = time.monotonic() + min(
            wait if wait is not None else IDLE_LOOK_SECONDS, IDLE_LOOK_SECONDS
        )
        return True

    async def _renew(self) -> None:
        await self.store.renew(claims=[*self.inflight.values(), *(r.claim for r in self.kept)])
        await asyncio.to_thread(self.slot.renew)

    async def _top_up(self, now: float, room: int) -> bool:
        """While lanes are held for a moment, claim and prepare their next jobs, so they are
        admitted the moment the lanes open, without a Postgres round trip then. True if it
        claimed any."""
        want = min(CLAIM_BATCH, room) - len(self.kept)
        soon = [
            lane
            for lane, until in self.lanes.items()
            if until <= now + KEEP_SECONDS and self.topped.get(lane) != until
        ]
        if want <= 0 or not soon:
            return False
        for lane in soon:
            self.topped[lane] = self.lanes[lane]
        claims = await self.store.claim(
            only_lanes=soon, skip_providers=list(self.providers), limit=want
        )
        for ready in await self._ready(claims, ahead=True):
            ready.kept_since = now
            self.kept.append(ready)
        self.kept.sort(key=lambda r: r.claim.job.order)
        return bool(claims)

    async def _give_back_kept(self) -> None:
        if self.kept:
            await self.store.release(claims=[r.claim for r in self.kept])
        self.kept = []

    async def _due_kept(self, room: int) -> list[Ready]:
        """Kept jobs whose lane is open again (at most ``room``), in order of service; those
        kept too long, past their max age or whose provider's breaker opened go back to the
        queue."""
        due: list[Ready] = []
        keep: list[Ready] = []
        back: list[Ready] = []
        now, clock = datetime.now(tz=UTC), time.monotonic()
        for ready in self.kept:
            job = ready.claim.job
            if ready.kept_since is not None and clock - ready.kept_since > KEEP_MAX_SECONDS:
                back.append(ready)  # its lane stayed held longer than planned
            elif job.lane in self.lanes or len(due) >= room:
                keep.append(ready)
            elif job.expires_at <= now or not await self._provider_allows(job, ready.provider):
                back.append(ready)  # the sweep expires it, or it waits for its provider
            else:
                due.append(ready)
        if back:
            await self.store.release(claims=[r.claim for r in back])  # on failure all stay kept
        self.kept = keep
        return due

    async def _next_work_in(self) -> float | None:
        now = time.monotonic()
        waits = [t - now for t in (*self.lanes.values(), *self.providers.values())]
        queued = await self.store.next_eligible_in(
            skip_lanes=list(self.lanes),
            skip_providers=list(self.providers),
        )
        if queued is not None:
            waits.append(queued)
        return max(min(waits), 0.001) if waits else None

    async def _settle_some(self, timeout: float) -> None:
        """Wait until a call in flight ends (or ``timeout``): one event, not a wait on every
        task, since the pump looks many times a second."""
        self.call_ended.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.call_ended.wait(), timeout=max(timeout, 0.0))

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.inflight.pop(task, None)
        self.call_ended.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("job run failed", exc_info=task.exception())

    async def _ready(self, claims: list[Claim], *, ahead: bool = False) -> list[Ready]:
        """Claimed jobs prepared for admission; those whose provider is held go back (and
        those whose lane is, unless they were claimed ahead of its opening)."""
        held: list[Claim] = []
        candidates: list[Ready] = []
        catalog = await self.app.catalog.get()
        for claim in claims:
            job = claim.job
            if (job.lane in self.lanes and not ahead) or (job.provider_id or 0) in self.providers:
                held.append(claim)  # held by an earlier job of the batch (its breaker)
                continue
            ready = await self._prepare(claim, catalog)
            if ready is None:
                held.append(claim)
            elif ready is not DONE:
                assert isinstance(ready, Ready)
                candidates.append(ready)
        await self.store.release(claims=held)
        return candidates

    async def _start_batch(self, candidates: list[Ready]) -> int:
        """Admit prepared jobs (one Redis round trip, in their order) and start the admitted
        ones' provider calls; the others are kept for a moment, or go back to their places
        (how many is returned)."""
        held: list[Claim] = []
        if not candidates:
            return 0
        try:
            outcomes = await self.app.gate.admit_jobs(
                await self.app.catalog.get(),
                [
                    (r.call, r.key, r.prepared.estimate.input_tokens, r.prepared.max_tokens)
                    for r in candidates
                ],
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self.store.release(claims=[r.claim for r in candidates])
            raise
        admitted = [r for r, outcome in zip(candidates, outcomes, strict=True) if outcome is None]
        started: set[Any] = set()
        try:
            for ready, outcome in zip(candidates, outcomes, strict=True):
                job = ready.claim.job
                if outcome is None:
                    continue
                if isinstance(outcome, Queued):
                    now = time.monotonic()
                    until = now + max(outcome.retry_seconds, 0.001)
                    self.lanes[job.lane] = max(self.lanes.get(job.lane, 0.0), until)
                    if ready.kept_since is None:
                        ready.kept_since = now
                    if (
                        outcome.retry_seconds <= KEEP_SECONDS
                        and until - ready.kept_since <= KEEP_MAX_SECONDS
                    ):
                        self.kept.append(ready)
                    else:
                        held.append(ready.claim)
                elif isinstance(outcome, ProxyError) and outcome.status == 503:
                    # The limiter's store is down and a limit fails closed.
                    self.lanes[job.lane] = time.monotonic() + 1.0
                    held.append(ready.claim)
                else:  # this call alone exceeds a whole limit: it can never run
                    assert isinstance(outcome, ProxyError)
                    await self._fail(ready.claim, ready.call, outcome)
            self.kept.sort(key=lambda r: r.claim.job.order)
            await self.store.release(claims=held)
            if not admitted:
                return len(held)
            # Redis time of each admission (the limiter's, or ours if no limit applied).
            stamps = [r.call.admitted_ms or int(time.time() * 1000) for r in admitted]
            owned = await self.store.admitted(
                admitted=[(r.claim, at) for r, at in zip(admitted, stamps, strict=True)]
            )
            for r, at in zip(admitted, stamps, strict=True):
                if r.claim.job.pk not in owned:  # the claim was lost meanwhile
                    continue
                JOB_WAIT.labels(str(r.claim.job.priority)).observe(
                    max(at / 1000 - r.claim.job.created_at.timestamp(), 0.0)
                )
                task = asyncio.get_running_loop().create_task(self._call(r))
                self.calling += 1
                self.inflight[task] = r.claim
                task.add_done_callback(self._ended)
                started.add(r.claim.job.pk)
        finally:
            # Whatever was admitted but not started gives its reservations back now, not
            # when their leases run out (its claim expires and the job runs later).
            for r in admitted:
                if r.claim.job.pk not in started:
                    with contextlib.suppress(Exception):
                        await self.app.gate.settle(r.call, tokens=0, cost_usd=Decimal(0))
        return len(held) + len(admitted) - len(started)

    async def _prepare(self, claim: Claim, catalog: Any) -> Ready | object | None:
        """A claimed job made ready for admission: Ready, DONE (it failed for good) or None
        (its provider's breaker is open)."""
        job = claim.job
        call = job_call(job)
        api_key = catalog.keys_by_id.get(job.api_key_id or 0)
        if api_key is None:
            error = ProxyError(
                401,
                "The API key that queued this job was revoked or has expired.",
                code="invalid_api_key",
            )
            await self._fail(claim, call, error)
            return DONE
        call.key = api_key
        call.event.org_id = api_key.org_id
        call.event.api_key_id = api_key.id
        try:
            prepared = self.app.prepare(job.endpoint, call, catalog, api_key, dict(job.request))
        except ProxyError as exc:  # the model or feature changed since the job was queued
            await self._fail(claim, call, exc)
            return DONE
        assert call.model is not None
        provider = call.model.provider.id
        if not await self._provider_allows(job, provider):
            return None
        return Ready(claim, call, api_key, prepared, provider)

    async def _provider_allows(self, job: JobRow, provider: int) -> bool:
        """False while the provider's breaker is open: its jobs (and their lanes) wait."""
        allowed, wait = await self.breaker.allow(provider)
        if not allowed:
            until = time.monotonic() + max(wait, 0.05)
            self.providers[provider] = until
            # Also its lane: the job may still name the provider it was accepted for.
            self.lanes[job.lane] = max(self.lanes.get(job.lane, 0.0), until)
        return allowed

    async def _store(self, write: Any, **kwargs: Any) -> bool:
        """A result write, tried again while Postgres is briefly away (else the job runs
        again after its lease, and the provider is paid twice)."""
        for delay in (*STORE_RETRY_SECONDS, None):
            try:
                return bool(await write(**kwargs))
            except Exception:
                if delay is None:
                    log.exception("job pump: could not store a job's result")
                    return False
                await asyncio.sleep(delay)
        return False

    async def _call(self, ready: Ready) -> None:
        claim, call, prepared, provider = ready.claim, ready.call, ready.prepared, ready.provider
        attempt = claim.job.attempts + 1
        finished = False
        try:
            try:
                try:
                    await self.app.relay(call, prepared)
                finally:
                    # The provider answered (counted from the task's start in _start_batch):
                    # its result is stored beside the next calls.
                    self.calling -= 1
                    self.call_ended.set()
            except ProxyError as exc:
                upstream = exc.outcome == "upstream_error"
                if upstream and exc.status >= 500:
                    await self.breaker.failure(provider)
                retriable = upstream and exc.status in RETRIABLE
                call.event.status_code = exc.status
                call.event.outcome = exc.outcome
                call.event.error = exc.message[:300]
                if retriable and attempt < settings.TOLLGATE_JOB_MAX_ATTEMPTS:
                    delay = services.retry_delay(attempt, _retry_after(exc))
                    await self._store(
                        self.store.retry, claim=claim, delay=delay, error=_error_of(exc)
                    )
                    JOB_RUNS.labels("retried").inc()
                    return
                finished = await self._store(
                    self.store.finish,
                    claim=claim,
                    status=Job.Status.FAILED,
                    response_status=exc.status,
                    response_body=exc.render(call.anthropic).decode(),
                    error=_error_of(exc),
                    dead_letter=retriable,
                )
                JOB_RUNS.labels("dead_letter" if retriable else "failed").inc()
                return
            await self.breaker.success(provider)
            assert call.plain is not None
            status, data, cost = call.plain
            finished = await self._store(
                self.store.finish,
                claim=claim,
                status=Job.Status.SUCCEEDED,
                response_status=status,
                response_body=data.decode("utf-8", "replace"),
                cost_usd=cost,
            )
            JOB_RUNS.labels("succeeded").inc()
        finally:
            call.event.overhead_ms = None
            tokens = call.event.input_tokens + call.event.output_tokens
            await self.app.gate.settle(call, tokens=tokens, cost_usd=Decimal(call.event.cost_usd))
            if finished:
                observe_request(call.event, org=call.key.org_slug if call.key else "")
                await self.app.recorder.record(call.event)

    async def _fail(self, claim: Claim, call: Call, exc: ProxyError) -> None:
        await self._store(
            self.store.finish,
            claim=claim,
            status=Job.Status.FAILED,
            response_status=exc.status,
            response_body=exc.render(call.anthropic).decode(),
            error=_error_of(exc),
        )
        JOB_RUNS.labels("failed").inc()


def _wake_next_pump() -> None:
    from gateway.jobs.tasks import jobs_pump

    try:
        jobs_pump.apply_async()
    except Exception as exc:  # the broker is away: the sweep wakes a pump once it is back
        log.warning("job pump: the next pump was not woken (%s)", exc)


def pump_run() -> None:
    """One pump, if a slot is free and jobs wait (the body of the ``jobs_pump`` task)."""
    if not services.jobs_waiting():
        return
    slot = Slot()
    if not slot.acquire():
        return  # enough pumps run already
    # The process's long-lived objects (modules, settings, the catalog's rows) are left out
    # of the cyclic collector while the pump runs: its full collections would otherwise
    # stall the event loop for tens of milliseconds, a few times a minute.
    gc.collect()
    gc.freeze()
    try:
        asyncio.run(Pump(slot).run(settings.TOLLGATE_JOB_PUMP_SECONDS))
    finally:
        gc.unfreeze()
        slot.release()
        close_old_connections()
