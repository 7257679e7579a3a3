"""Job lifecycle: accept, claim, admit, retry, finish, cancel, expire, re-run.

Every state change is one conditional UPDATE (``status`` and the claim token in its WHERE),
so two workers never run the same attempt and a stale worker cannot overwrite a result.

Order of service: ``priority`` (the org's tier) first; within a priority, ``rank``, a
virtual start time: an org's next job is ranked after its own earlier jobs but never before
the head of the queue. A burst of one org therefore interleaves with jobs other orgs queue
meanwhile instead of starving them (start-time fair queueing).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from audit.services import audit_record
from gateway.jobs.models import Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewJob:
    org_id: int
    api_key_id: int
    priority: int
    feature: str
    endpoint: str
    model: str
    provider_id: int | None
    request: dict[str, Any]
    request_headers: dict[str, str]
    reason: str
    callback_url: str = ""
    idempotency_key: str = ""
    max_age_seconds: int | None = None


def _fair_rank(cursor: Any, *, org_id: int, priority: int) -> int:
    cursor.execute(
        """
        SELECT GREATEST(
            COALESCE((SELECT MAX(rank) FROM gateway_job
                      WHERE org_id = %s AND priority = %s AND status IN ('queued', 'running')), 0),
            COALESCE((SELECT MIN(rank) FROM gateway_job
                      WHERE priority = %s AND status = 'queued'), 1) - 1
        ) + 1
        """,
        [org_id, priority, priority],
    )
    return int(cursor.fetchone()[0])


def job_create(*, new: NewJob) -> tuple[Job, bool]:
    """Accept a job; with an idempotency key already used by the org, the earlier job."""
    if new.idempotency_key:
        earlier = Job.objects.filter(org_id=new.org_id, idempotency_key=new.idempotency_key)
        found = earlier.first()
        if found is not None:
            return found, False
    now = timezone.now()
    max_age = settings.TOLLGATE_JOB_MAX_AGE_SECONDS
    if new.max_age_seconds is not None:
        max_age = min(max_age, new.max_age_seconds)
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                rank = _fair_rank(cursor, org_id=new.org_id, priority=new.priority)
            job = Job.objects.create(
                org_id=new.org_id,
                api_key_id=new.api_key_id,
                feature=new.feature,
                endpoint=new.endpoint,
                model=new.model,
                provider_id=new.provider_id,
                request=new.request,
                request_headers=new.request_headers,
                reason=new.reason,
                priority=new.priority,
                rank=rank,
                lane=f"{new.api_key_id}:{new.feature}",
                idempotency_key=new.idempotency_key,
                callback_url=new.callback_url,
                not_before=now,
                expires_at=now + timedelta(seconds=max_age),
                created_at=now,
            )
    except IntegrityError:
        # The same idempotency key, accepted meanwhile by another request.
        earlier = Job.objects.filter(org_id=new.org_id, idempotency_key=new.idempotency_key)
        found = earlier.first() if new.idempotency_key else None
        if found is None:
            raise  # not a duplicate: the org or key went away meanwhile
        return found, False
    return job, True


def job_cancel(*, job: Job) -> bool:
    """Cancel a queued job; False when it already runs or finished."""
    changed = Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
        status=Job.Status.CANCELLED, finished_at=timezone.now()
    )
    if changed:
        _after_finish([job.pk])
    job.refresh_from_db()
    return bool(changed)


# --- the worker's side -------------------------------------------------------------------


def retry_delay(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with jitter (half fixed, half random); never before the
    provider's Retry-After."""
    ceiling = min(
        settings.TOLLGATE_JOB_RETRY_MAX_SECONDS,
        settings.TOLLGATE_JOB_RETRY_BASE_SECONDS * 2 ** max(attempt - 1, 0),
    )
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


def jobs_sweep() -> tuple[int, int]:
    """Expire queued jobs past their age; put back jobs whose worker died (lease over)."""
    now = timezone.now()
    with transaction.atomic():
        expired = list(
            Job.objects.filter(status=Job.Status.QUEUED, expires_at__lte=now)
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[:1000]
        )
        if expired:
            Job.objects.filter(pk__in=expired).update(
                status=Job.Status.EXPIRED,
                finished_at=now,
                error={
                    "type": "job_expired",
                    "code": "job_expired",
                    "message": "The job was not started before its maximum age.",
                },
            )
            _after_finish(expired)
    stale = Job.objects.filter(status=Job.Status.RUNNING, lease_until__lt=now)
    # A job whose every attempt ended with its worker gone (killed, out of memory) stops
    # here instead of taking down one worker after another.
    with transaction.atomic():
        lost = list(
            stale.filter(attempts__gte=settings.TOLLGATE_JOB_MAX_ATTEMPTS)
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)
        )
        if lost:
            Job.objects.filter(pk__in=lost).update(
                status=Job.Status.FAILED,
                dead_letter=True,
                finished_at=now,
                claim_token=None,
                lease_until=None,
                error={
                    "type": "job_failed",
                    "code": "worker_lost",
                    "message": "The worker running this job stopped during each attempt.",
                },
            )
            _after_finish(lost)
    requeued = stale.filter(attempts__lt=settings.TOLLGATE_JOB_MAX_ATTEMPTS).update(
        status=Job.Status.QUEUED, claim_token=None, lease_until=None
    )
    return len(expired), requeued


# A finished job's callback not tried this long after it finished was never handed to the
# broker (the broker was down at that moment): it is sent again.
CALLBACK_LOST_SECONDS = 60


def callbacks_never_sent() -> list[Any]:
    cutoff = timezone.now() - timedelta(seconds=CALLBACK_LOST_SECONDS)
    waiting = Job.objects.filter(
        callback_status=Job.Callback.PENDING, callback_attempts=0, finished_at__lt=cutoff
    )
    return list(waiting.values_list("pk", flat=True)[:1000])


def jobs_purge(*, batch: int = 5000) -> int:
    """Delete finished jobs older than TOLLGATE_JOB_RETENTION_DAYS; returns how many."""
    cutoff = timezone.now() - timedelta(days=settings.TOLLGATE_JOB_RETENTION_DAYS)
    total = 0
    while True:
        old = Job.objects.filter(status__in=Job.FINISHED, finished_at__lt=cutoff)
        ids = list(old.values_list("pk", flat=True)[:batch])
        if not ids:
            return total
        total += Job.objects.filter(pk__in=ids).delete()[0]


def jobs_waiting() -> bool:
    return Job.objects.filter(status=Job.Status.QUEUED).exists()


def job_rerun(*, job: Job) -> bool:
    """Queue a failed, expired or cancelled job again, as a new job would be (admin)."""
    now = timezone.now()
    with transaction.atomic():
        with connection.cursor() as cursor:
            rank = _fair_rank(cursor, org_id=job.org_id, priority=job.priority)
        changed = Job.objects.filter(
            pk=job.pk,
            status__in=(Job.Status.FAILED, Job.Status.EXPIRED, Job.Status.CANCELLED),
        ).update(
            status=Job.Status.QUEUED,
            rank=rank,
            runs=F("runs") + 1,
            attempts=0,
            dead_letter=False,
            error=None,
            response_status=None,
            response_body="",
            cost_usd=None,
            not_before=now,
            expires_at=now + timedelta(seconds=settings.TOLLGATE_JOB_MAX_AGE_SECONDS),
            admitted_at_ms=None,
            started_at=None,
            finished_at=None,
            callback_status=Job.Callback.NONE,
            callback_attempts=0,
            callback_error="",
        )
        if changed:
            audit_record(
                action="job.rerun",
                target=job,
                changes={"status": [job.status, Job.Status.QUEUED]},
            )
    return bool(changed)


def _after_finish(job_ids: list[Any]) -> None:
    """A finished job with a callback URL gets its webhook (sent after the commit)."""
    pending = list(
        Job.objects.filter(pk__in=job_ids)
        .exclude(callback_url="")
        .exclude(callback_status=Job.Callback.DELIVERED)
        .values_list("pk", flat=True)
    )
    if not pending:
        return
    Job.objects.filter(pk__in=pending).update(callback_status=Job.Callback.PENDING)
    for pk in pending:
        transaction.on_commit(partial(send_callback, str(pk)))


def send_callback(job_id: str) -> None:
    """Hand a finished job's callback to the broker (the sweep sends it later if the broker
    is away)."""
    from gateway.jobs.tasks import job_callback

    try:
        job_callback.delay(job_id)
    except Exception as exc:
        log.warning("job %s: callback not queued (%s)", job_id, exc)


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None
