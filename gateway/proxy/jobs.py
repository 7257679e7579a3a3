"""``/v1`` side of the burst queue: accept a call as a job (202), show and cancel jobs.

A call becomes a job when the client sends ``Prefer: respond-async`` (RFC 7240) or when a
limit whose action is ``queue`` denies it. Options ride in headers so that the body stays
the provider's: ``X-Tollgate-Callback-Url``, ``X-Tollgate-Job-Max-Age`` (seconds) and
``Idempotency-Key``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.db import DatabaseError

from gateway.jobs.db import db_call
from gateway.proxy.http import ProxyError, send_response

if TYPE_CHECKING:
    from gateway.proxy.app import Call, ProxyApp
    from gateway.proxy.catalog import KeyInfo

# Paths whose calls may run as jobs, and the job's endpoint name.
JOB_ENDPOINTS = {
    "/v1/chat/completions": "chat/completions",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "messages",
}
# Client headers a job keeps for its provider call.
KEPT_HEADERS = (b"anthropic-version", b"anthropic-beta")
# Body fields dropped from a job: its answer is one JSON document, never a stream.
STREAM_FIELDS = ("stream", "stream_options")
MAX_IDEMPOTENCY_KEY = 200
MAX_CALLBACK_URL = 2000


def wants_async(headers: dict[bytes, bytes], path: str) -> bool:
    """``Prefer: respond-async`` given; 400 on an endpoint that cannot answer that way."""
    prefer = headers.get(b"prefer")
    if not prefer:
        return False
    tokens = {part.split(b";")[0].split(b"=")[0].strip().lower() for part in prefer.split(b",")}
    if b"respond-async" not in tokens or path.startswith("/v1/jobs/"):
        return False  # jobs themselves are read and cancelled as usual
    if path not in JOB_ENDPOINTS:
        raise ProxyError(
            400,
            f"{path} cannot answer asynchronously; 'Prefer: respond-async' works on "
            + ", ".join(JOB_ENDPOINTS)
            + ".",
            param="Prefer",
            code="async_not_supported",
        )
    return True


@dataclass(frozen=True)
class JobOptions:
    callback_url: str = ""
    max_age_seconds: int | None = None
    idempotency_key: str = ""


def job_options(headers: dict[bytes, bytes]) -> JobOptions:
    """The job headers of a request, checked (400 naming the header)."""
    callback = headers.get(b"x-tollgate-callback-url", b"").decode("latin-1").strip()
    if callback:
        parts = urlsplit(callback)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or len(callback) > MAX_CALLBACK_URL
        ):
            raise ProxyError(
                400,
                "X-Tollgate-Callback-Url must be an http:// or https:// URL "
                f"(at most {MAX_CALLBACK_URL} characters).",
                param="X-Tollgate-Callback-Url",
                code="invalid_callback_url",
            )
        from gateway.jobs.callbacks import callback_allowed

        if not callback_allowed(callback, resolve=False):
            raise ProxyError(
                400,
                "X-Tollgate-Callback-Url must point to a public address.",
                param="X-Tollgate-Callback-Url",
                code="invalid_callback_url",
            )
    max_age: int | None = None
    raw_age = headers.get(b"x-tollgate-job-max-age")
    if raw_age is not None:
        try:
            max_age = int(raw_age)
        except ValueError:
            max_age = 0
        if max_age < 1:
            raise ProxyError(
                400,
                "X-Tollgate-Job-Max-Age must be a whole number of seconds, at least 1.",
                param="X-Tollgate-Job-Max-Age",
                code="invalid_job_max_age",
            )
    key = headers.get(b"idempotency-key", b"").decode("latin-1").strip()
    if len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ProxyError(
            400,
            f"Idempotency-Key must be at most {MAX_IDEMPOTENCY_KEY} printable characters.",
            param="Idempotency-Key",
            code="invalid_idempotency_key",
        )
    return JobOptions(callback, max_age, key)


def _accept(new: Any) -> dict[str, Any]:
    from gateway.jobs.selectors import job_json
    from gateway.jobs.services import job_create
    from gateway.jobs.tasks import jobs_kick

    job, created = job_create(new=new)
    if created:
        jobs_kick()
    # The place in the queue costs two counts; GET /v1/jobs/{id} tells it.
    return job_json(job, with_position=False)


async def _jobs_db(fn: Any, **kwargs: Any) -> Any:
    try:
        return await db_call(fn, **kwargs)
    except DatabaseError:
        raise ProxyError(
            503,
            "The job store (PostgreSQL) is unavailable; try again shortly.",
            code="job_store_unavailable",
            outcome="upstream_error",
            headers=[(b"retry-after", b"1")],
        ) from None


def _show(org_id: int, public_id: str) -> dict[str, Any] | None:
    from gateway.jobs.selectors import job_for_org, job_json

    job = job_for_org(org_id=org_id, public_id=public_id)
    return job_json(job) if job is not None else None


def _cancel(org_id: int, public_id: str) -> tuple[dict[str, Any] | None, bool]:
    from gateway.jobs.selectors import job_for_org, job_json
    from gateway.jobs.services import job_cancel

    job = job_for_org(org_id=org_id, public_id=public_id)
    if job is None:
        return None, False
    cancelled = job_cancel(job=job)
    return job_json(job), cancelled


class JobEndpoints:
    def __init__(self, app: ProxyApp) -> None:
        self.app = app

    def route(self, method: str) -> tuple[str, Any]:
        if method == "DELETE":
            return "DELETE", self.cancel
        return "GET", self.show

    async def accept(
        self,
        call: Call,
        key: KeyInfo,
        endpoint: str,
        data: dict[str, Any],
        options: JobOptions,
        *,
        reason: str,
    ) -> None:
        from gateway.jobs.services import NewJob

        assert call.model is not None
        new = NewJob(
            org_id=key.org_id,
            api_key_id=key.id,
            priority=key.tier_priority,
            feature=call.event.feature,
            endpoint=endpoint,
            model=call.model.name,
            provider_id=call.model.provider.id,
            request={k: v for k, v in data.items() if k not in STREAM_FIELDS},
            request_headers={
                name.decode(): call.headers[name].decode("latin-1")
                for name in KEPT_HEADERS
                if name in call.headers
            },
            reason=reason,
            callback_url=options.callback_url,
            idempotency_key=options.idempotency_key,
            max_age_seconds=options.max_age_seconds,
        )
        body = await _jobs_db(_accept, new=new)
        call.event.outcome = "queued"
        call.event.status_code = 202
        headers = [
            (b"x-request-id", call.request_id.encode()),
            (b"location", f"/v1/jobs/{body['id']}".encode()),
            *call.rate_headers,
        ]
        if call.respond_async:
            headers.append((b"preference-applied", b"respond-async"))
        await send_response(call.send, 202, json.dumps(body).encode(), headers)

    def _public_id(self, call: Call) -> str:
        return str(call.scope["path"]).removeprefix("/v1/jobs/")

    def _not_found(self, public_id: str) -> ProxyError:
        return ProxyError(
            404, f"No job {public_id[:80]!r} for this organization.", code="job_not_found"
        )

    async def show(self, call: Call) -> None:
        _catalog, key = await self.app.authenticate(call)
        public_id = self._public_id(call)
        body = await _jobs_db(_show, org_id=key.org_id, public_id=public_id)
        if body is None:
            raise self._not_found(public_id)
        call.event.status_code = 200
        await send_response(
            call.send, 200, json.dumps(body).encode(), [(b"x-request-id", call.request_id.encode())]
        )

    async def cancel(self, call: Call) -> None:
        _catalog, key = await self.app.authenticate(call)
        public_id = self._public_id(call)
        body, cancelled = await _jobs_db(_cancel, org_id=key.org_id, public_id=public_id)
        if body is None:
            raise self._not_found(public_id)
        if not cancelled:
            status = body["status"]
            raise ProxyError(
                409,
                f"Job {body['id']} is {status}; only a queued job can be cancelled.",
                code="job_running" if status == "running" else "job_finished",
            )
        call.event.status_code = 200
        await send_response(
            call.send, 200, json.dumps(body).encode(), [(b"x-request-id", call.request_id.encode())]
        )
