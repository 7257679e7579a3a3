"""Celery tasks of the gateway: thin wrappers around services."""

from __future__ import annotations

import socket

from celery import shared_task

from gateway.usage import usage_flush as usage_flush_service


@shared_task(ignore_result=True, acks_late=False)
def usage_flush() -> int:
    # Entries are acknowledged in Redis only after their rows commit, so the task itself
    # needs no late ack: a worker dying mid-flush leaves them pending for the next run.
    return usage_flush_service(consumer=f"usage-{socket.gethostname()}")


# The burst queue's tasks live beside its code.
from gateway.jobs.tasks import job_callback, jobs_pump, jobs_purge, jobs_sweep  # noqa: E402

__all__ = ["job_callback", "jobs_pump", "jobs_purge", "jobs_sweep", "usage_flush"]
