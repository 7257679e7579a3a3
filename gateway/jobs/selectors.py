"""Reads of jobs: one org's job, its place in the queue, and its JSON."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.db.models import Q
from django.utils import timezone

from gateway.jobs.models import Job
from gateway.jobs.services import unix

# Drain rate for wait estimates: jobs admitted over this many recent seconds.
RATE_SAMPLE_SECONDS = 60
ENDPOINT_PATHS = {
    "chat/completions": "/v1/chat/completions",
    "embeddings": "/v1/embeddings",
    "messages": "/v1/messages",
}


def job_for_org(*, org_id: int, public_id: str) -> Job | None:
    text = public_id.removeprefix("job_")
    try:
        job_id = uuid.UUID(hex=text)
    except ValueError:
        return None
    return Job.objects.filter(pk=job_id, org_id=org_id).first()


def job_position(job: Job) -> tuple[int, float | None]:
    """Queued jobs served before this one, and the seconds that should take at the recent
    drain rate (None when nothing was admitted lately)."""
    ahead = Job.objects.filter(status=Job.Status.QUEUED).filter(
        Q(priority__gt=job.priority)
        | Q(priority=job.priority, rank__lt=job.rank)
        | Q(priority=job.priority, rank=job.rank, created_at__lt=job.created_at)
    )
    position = ahead.count()
    since_ms = int((timezone.now().timestamp() - RATE_SAMPLE_SECONDS) * 1000)
    recent = Job.objects.filter(admitted_at_ms__gte=since_ms).count()
    if not recent:
        return position, None
    return position, round((position + 1) / (recent / RATE_SAMPLE_SECONDS), 1)


def job_json(job: Job, *, with_position: bool = True) -> dict[str, Any]:
    """The job as ``GET /v1/jobs/{id}`` and the callback show it."""
    data: dict[str, Any] = {
        "id": job.public_id,
        "object": "job",
        "status": job.status,
        "endpoint": ENDPOINT_PATHS.get(job.endpoint, job.endpoint),
        "model": job.model,
        "feature": job.feature or None,
        "reason": job.reason,
        "created_at": unix(job.created_at),
        "expires_at": unix(job.expires_at),
        "started_at": unix(job.started_at),
        "finished_at": unix(job.finished_at),
        "attempts": job.attempts,
        "response": None,
        "error": job.error if job.status != Job.Status.SUCCEEDED else None,
    }
    if job.status == Job.Status.QUEUED and with_position:
        position, wait = job_position(job)
        data["position"] = position
        data["estimated_wait_seconds"] = wait
        if job.not_before > timezone.now():
            data["retry_at"] = unix(job.not_before)
    if job.response_status is not None:
        try:
            body: Any = json.loads(job.response_body)
        except ValueError:
            body = job.response_body
        data["response"] = {
            "status_code": job.response_status,
            "body": body,
            "cost_usd": format(job.cost_usd.normalize(), "f") if job.cost_usd is not None else None,
        }
    if job.callback_url:
        data["callback"] = {
            "url": job.callback_url,
            "status": job.callback_status or "waiting",
            "attempts": job.callback_attempts,
        }
    return data
