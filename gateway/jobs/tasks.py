"""Celery tasks of the burst queue: the pump that runs jobs, the sweep, the callbacks.

The broker carries wake-ups only; jobs themselves are rows in Postgres. A pump message
lost with a broker restart is replaced by the next sweep (every second, from beat).
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

# Imported here, by the worker before it forks its pool, so no pump pays for the imports.
from gateway.jobs.runner import pump_run
from gateway.redis import get_redis, key

log = logging.getLogger(__name__)

# A burst of submissions sends at most one pump wake-up per this many milliseconds.
KICK_EVERY_MS = 100
# Callback retries: 2 s, 4 s, 8 s, ... at most 5 minutes apart.
CALLBACK_BACKOFF_SECONDS = 2
CALLBACK_BACKOFF_MAX_SECONDS = 300


def jobs_kick() -> None:
    """Wake a pump (deduplicated across gateway processes)."""
    try:
        fresh = get_redis().set(key("jobs", "kick"), 1, nx=True, px=KICK_EVERY_MS)
    except Exception:  # Redis down: the sweep wakes a pump within a second anyway
        fresh = True
    if fresh:
        try:
            jobs_pump.apply_async()
        except Exception as exc:  # the broker is away: the sweep wakes a pump once it is back
            log.warning("jobs: pump not woken (%s)", exc)


# A pump works TOLLGATE_JOB_PUMP_SECONDS, then finishes the calls it has in flight (each
# bounded by the upstream read timeout): the task's time limits leave room for both.
PUMP_SOFT_LIMIT = int(
    settings.TOLLGATE_JOB_PUMP_SECONDS + settings.TOLLGATE_UPSTREAM_READ_TIMEOUT + 60
)


@shared_task(ignore_result=True, soft_time_limit=PUMP_SOFT_LIMIT, time_limit=PUMP_SOFT_LIMIT + 60)
def jobs_pump() -> None:
    pump_run()


@shared_task(ignore_result=True, acks_late=False)
def jobs_sweep() -> None:
    from gateway.jobs.services import callbacks_never_sent, jobs_waiting
    from gateway.jobs.services import jobs_sweep as sweep

    expired, requeued = sweep()
    if expired or requeued:
        log.info("jobs: %s expired, %s put back after their worker stopped", expired, requeued)
    for job_id in callbacks_never_sent():
        # Once per CALLBACK_LOST_SECONDS per job, however long the workers are backed up.
        if get_redis().set(key("jobs", "callback-resent", str(job_id)), 1, nx=True, ex=60):
            job_callback.delay(str(job_id))
    if jobs_waiting():
        jobs_pump.apply_async()


@shared_task(ignore_result=True, acks_late=False)
def jobs_purge() -> int:
    from gateway.jobs.services import jobs_purge as purge

    return purge()


@shared_task(bind=True, ignore_result=True, max_retries=None)
def job_callback(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    from gateway.jobs.callbacks import job_callback_deliver

    outcome = job_callback_deliver(job_id=job_id)
    if outcome == "retry":
        delay = min(
            CALLBACK_BACKOFF_SECONDS * 2**self.request.retries, CALLBACK_BACKOFF_MAX_SECONDS
        )
        raise self.retry(countdown=delay)
    return outcome
