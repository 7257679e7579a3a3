"""The pump's Postgres access: plain SQL on asyncio connections of its own.

The pump runs on one event loop; ORM calls would need threads, and threads that wait on
the network hand the GIL back and forth with the loop (each hand-over can cost the
interpreter's switch interval). One connection serves the pump's own claims, another the
results its calls store. Every change is one conditional UPDATE (status and claim token in
its WHERE), so two workers never run the same attempt and a stale one cannot overwrite a
result.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from django.conf import settings
from psycopg.types.json import Jsonb

from gateway.jobs.models import run_request_id
from gateway.jobs.services import send_callback
from gateway.postgres import conninfo

# Results of calls ending together are written in one statement, this many at most.
RESULTS_PER_WRITE = 64

COLUMNS = (
    "id, org_id, api_key_id, feature, endpoint, provider_id, request, request_headers, "
    "priority, rank, lane, attempts, created_at, callback_url, runs, expires_at"
)


@dataclass(frozen=True)
class JobRow:
    """What the pump needs of a claimed job."""

    id: uuid.UUID
    org_id: int
    api_key_id: int | None
    feature: str
    endpoint: str
    provider_id: int | None
    request: dict[str, Any]
    request_headers: dict[str, str]
    priority: int
    rank: int
    lane: str
    attempts: int
    created_at: datetime
    callback_url: str
    runs: int
    expires_at: datetime

    @property
    def pk(self) -> uuid.UUID:
        return self.id

    @property
    def request_id(self) -> str:
        return run_request_id(self.id, self.runs)

    @property
    def order(self) -> tuple[int, int, datetime]:
        """Its place in the order of service: tier priority, then fair rank."""
        return (-self.priority, self.rank, self.created_at)


@dataclass(frozen=True)
class Claim:
    job: JobRow
    token: uuid.UUID


class _Connection:
    """One autocommit connection, opened on first use and again after a failure."""

    def __init__(self) -> None:
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.lock = asyncio.Lock()

    async def execute(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        async with self.lock:
            if self.conn is None or self.conn.closed:
                self.conn = await psycopg.AsyncConnection.connect(**conninfo())
            try:
                cursor = await self.conn.execute(sql, params)
                return await cursor.fetchall() if cursor.description else []
            except psycopg.OperationalError:
                await self.conn.close()  # Postgres restarted: connect again next time
                raise

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


@dataclass(frozen=True)
class _Result:
    claim: Claim
    status: str
    response_status: int | None
    response_body: str
    cost_usd: Decimal | None
    error: dict[str, Any] | None
    dead_letter: bool


class JobStore:
    def __init__(self) -> None:
        self.claims = _Connection()
        self.results = _Connection()
        self._finishing: list[tuple[_Result, asyncio.Future[bool]]] = []
        self._finisher: asyncio.Task[None] | None = None

    async def close(self) -> None:
        await self.claims.close()
        await self.results.close()

    async def claim(
        self,
        *,
        skip_lanes: Sequence[str] = (),
        only_lanes: Sequence[str] | None = None,
        skip_providers: list[int],
        limit: int,
    ) -> list[Claim]:
        """Take up to ``limit`` of the best queued jobs that may run now (SKIP LOCKED), in
        order of service: tier priority, then fair rank; outside ``skip_lanes``, or only in
        ``only_lanes``."""
        token = uuid.uuid4()
        lanes = "lane = ANY(%s)" if only_lanes is not None else "NOT (lane = ANY(%s))"
        rows = await self.claims.execute(
            f"""
            UPDATE gateway_job SET status = 'running', claim_token = %s,
                   lease_until = now() + make_interval(secs => %s)
            WHERE id IN (
                SELECT id FROM gateway_job
                WHERE status = 'queued' AND not_before <= now() AND expires_at > now()
                  AND {lanes}
                  AND (provider_id IS NULL OR NOT (provider_id = ANY(%s)))
                ORDER BY priority DESC, rank, created_at
                FOR UPDATE SKIP LOCKED
                LIMIT %s)
            RETURNING {COLUMNS}
            """,  # noqa: S608 - constant column list and lane condition
            (
                token,
                settings.TOLLGATE_JOB_LEASE_SECONDS,
                list(only_lanes if only_lanes is not None else skip_lanes),
                skip_providers,
                limit,
            ),
        )
        jobs = sorted((JobRow(*row) for row in rows), key=lambda j: j.order)
        return [Claim(job, token) for job in jobs]

    async def release(self, *, claims: list[Claim]) -> None:
        """Not admitted yet: back to the queue, keeping their places."""
        if claims:
            await self.claims.execute(
                "UPDATE gateway_job SET status = 'queued', claim_token = NULL, lease_until = NULL "
                "WHERE id = ANY(%s) AND claim_token = ANY(%s) AND status = 'running'",
                ([c.job.id for c in claims], list({c.token for c in claims})),
            )

    async def admitted(self, *, admitted: list[tuple[Claim, int]]) -> set[uuid.UUID]:
        """The limiter admitted these attempts (Redis time of each, ms); the ids whose
        claims still hold."""
        if not admitted:
            return set()
        rows = await self.claims.execute(
            """
            UPDATE gateway_job AS j SET admitted_at_ms = v.at_ms, attempts = j.attempts + 1,
                   started_at = now()
            FROM unnest(%s::uuid[], %s::uuid[], %s::bigint[]) AS v(id, token, at_ms)
            WHERE j.id = v.id AND j.claim_token = v.token AND j.status = 'running'
            RETURNING j.id
            """,
            (
                [c.job.id for c, _ in admitted],
                [c.token for c, _ in admitted],
                [at for _, at in admitted],
            ),
        )
        return {row[0] for row in rows}

    async def renew(self, *, claims: list[Claim]) -> None:
        """Extend the leases of jobs still in flight."""
        if claims:
            await self.claims.execute(
                "UPDATE gateway_job SET lease_until = now() + make_interval(secs => %s) "
                "WHERE status = 'running' AND claim_token = ANY(%s)",
                (settings.TOLLGATE_JOB_LEASE_SECONDS, list({c.token for c in claims})),
            )

    async def next_eligible_in(
        self, *, skip_lanes: list[str], skip_providers: list[int]
    ) -> float | None:
        """Seconds until a queued job (outside the skipped lanes) may run; None if none."""
        rows = await self.claims.execute(
            """
            SELECT EXTRACT(EPOCH FROM (MIN(not_before) - now())) FROM gateway_job
            WHERE status = 'queued' AND expires_at > now() AND NOT (lane = ANY(%s))
              AND (provider_id IS NULL OR NOT (provider_id = ANY(%s)))
            """,
            (skip_lanes, skip_providers),
        )
        value = rows[0][0] if rows else None
        return None if value is None else max(float(value), 0.0)

    async def retry(self, *, claim: Claim, delay: float, error: dict[str, Any]) -> bool:
        rows = await self.results.execute(
            """
            UPDATE gateway_job SET status = 'queued', claim_token = NULL, lease_until = NULL,
                   not_before = now() + make_interval(secs => %s), error = %s
            WHERE id = %s AND claim_token = %s AND status = 'running' RETURNING id
            """,
            (delay, Jsonb(error), claim.job.id, claim.token),
        )
        return bool(rows)

    async def finish(
        self,
        *,
        claim: Claim,
        status: str,
        response_status: int | None = None,
        response_body: str = "",
        cost_usd: Decimal | None = None,
        error: dict[str, Any] | None = None,
        dead_letter: bool = False,
    ) -> bool:
        """Store the result once; False when another attempt owns the job now. A job with
        a callback URL gets its webhook. Results of calls ending at the same moment are
        written together, in one statement."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._finishing.append(
            (
                _Result(
                    claim, status, response_status, response_body, cost_usd, error, dead_letter
                ),
                done,
            )
        )
        if self._finisher is None or self._finisher.done():
            self._finisher = asyncio.get_running_loop().create_task(self._write_results())
        stored = await done
        if stored and claim.job.callback_url:
            await asyncio.to_thread(send_callback, str(claim.job.id))
        return stored

    async def _write_results(self) -> None:
        while self._finishing:
            batch = self._finishing[:RESULTS_PER_WRITE]
            del self._finishing[:RESULTS_PER_WRITE]
            try:
                stored = await self._write([result for result, _ in batch])
            except psycopg.OperationalError as exc:  # Postgres away: each caller tries again
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            except Exception:
                # One result Postgres refuses must not fail the others: one at a time.
                stored = set()
                for result, done in batch:
                    try:
                        stored |= await self._write([result])
                    except Exception as exc:
                        if not done.done():
                            done.set_exception(exc)
            for result, done in batch:
                if not done.done():
                    done.set_result(result.claim.job.id in stored)

    async def _write(self, results: list[_Result]) -> set[uuid.UUID]:
        rows = await self.results.execute(
            """
            UPDATE gateway_job AS j SET status = v.status,
                   response_status = v.response_status, response_body = v.body,
                   cost_usd = v.cost_usd, error = v.error, dead_letter = v.dead_letter,
                   finished_at = now(), claim_token = NULL, lease_until = NULL,
                   callback_status = CASE WHEN j.callback_url <> '' THEN 'pending'
                                          ELSE j.callback_status END
            FROM unnest(%s::uuid[], %s::uuid[], %s::text[], %s::int[], %s::text[],
                        %s::numeric[], %s::jsonb[], %s::bool[])
                 AS v(id, token, status, response_status, body, cost_usd, error,
                      dead_letter)
            WHERE j.id = v.id AND j.claim_token = v.token AND j.status = 'running'
            RETURNING j.id
            """,
            (
                [r.claim.job.id for r in results],
                [r.claim.token for r in results],
                [r.status for r in results],
                [r.response_status for r in results],
                # Postgres text cannot hold NUL.
                [r.response_body.replace("\x00", "\ufffd") for r in results],
                [r.cost_usd for r in results],
                [Jsonb(r.error) if r.error is not None else None for r in results],
                [r.dead_letter for r in results],
            ),
        )
        return {row[0] for row in rows}
