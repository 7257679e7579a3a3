"""The Celery app (``celery -A gateway worker|beat``); every periodic task is defined here."""

from __future__ import annotations

import os
import time

from celery import Celery, bootsteps, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

app = Celery("tollgate")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# All periodic tasks, in one place.
app.conf.beat_schedule = {
    # Usage records go from the Redis stream to Postgres about once a second.
    "usage-flush": {
        "task": "gateway.tasks.usage_flush",
        "schedule": 1.0,
        # A run that could not start within 5 s is skipped: the next one does its work.
        "options": {"expires": 5},
    },
    # Engine events into alerts: read about once a second, so an alert leaves in ~1-2 s.
    "alerts-consume-events": {
        "task": "alerts.tasks.consume_events",
        "schedule": 1.0,
        "options": {"expires": 5},
    },
    # Deliveries never picked up, due for a retry, or left by a worker that died.
    "alerts-sweep-deliveries": {
        "task": "alerts.tasks.sweep_deliveries",
        "schedule": 15.0,
        "options": {"expires": 30},
    },
    # Limit-threshold alerts whose limit went back under the threshold get "resolved".
    "alerts-resolve-cleared": {
        "task": "alerts.tasks.resolve_cleared",
        "schedule": 60.0,
        "options": {"expires": 60},
    },
    # Windowed rules (spend, spikes, error rate, p95 latency, dependencies) every minute.
    "alerts-evaluate-windowed": {
        "task": "alerts.tasks.evaluate_windowed",
        "schedule": 60.0,
        "options": {"expires": 60},
    },
    # Burst queue: expire old jobs, put back those of dead workers, wake a pump if any wait.
    "jobs-sweep": {
        "task": "gateway.jobs.tasks.jobs_sweep",
        "schedule": 1.0,
        "options": {"expires": 2},
    },
    # Finished jobs past their retention.
    "jobs-purge": {
        "task": "gateway.jobs.tasks.jobs_purge",
        "schedule": 3600.0,
        "options": {"expires": 600},
    },
    # Engine events (threshold crossings) into the audit trail.
    "audit-flush-events": {
        "task": "audit.tasks.flush_events",
        "schedule": 2.0,
        "options": {"expires": 10},
    },
}


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Writes a short-lived Redis key while the worker runs; ``/health`` reads it."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(worker, **kwargs)
        self.tref = None

    def start(self, worker):  # type: ignore[no-untyped-def]
        from django.conf import settings

        from gateway.health import worker_heartbeat_write

        worker_heartbeat_write(worker.hostname)
        self.tref = worker.timer.call_repeatedly(
            settings.TOLLGATE_WORKER_HEARTBEAT_SECONDS,
            worker_heartbeat_write,
            (worker.hostname,),
            priority=10,
        )

    def stop(self, worker):  # type: ignore[no-untyped-def]
        from gateway.health import worker_heartbeat_clear

        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        worker_heartbeat_clear(worker.hostname)


app.steps["worker"].add(WorkerHeartbeat)


class WorkerMetrics(bootsteps.StartStopStep):
    """Serves this worker's Prometheus metrics (all its pool processes) on
    TOLLGATE_WORKER_METRICS_PORT, for Prometheus to scrape beside the gateway's."""

    def __init__(self, worker, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(worker, **kwargs)
        self.server = None

    def start(self, worker):  # type: ignore[no-untyped-def]
        from django.conf import settings
        from prometheus_client import start_http_server

        from gateway.metrics import registry_for_scrape

        if settings.TOLLGATE_WORKER_METRICS_PORT:
            self.server, _ = start_http_server(
                settings.TOLLGATE_WORKER_METRICS_PORT, registry=registry_for_scrape()
            )

    def stop(self, worker):  # type: ignore[no-untyped-def]
        if self.server is not None:
            self.server.shutdown()
            self.server = None


app.steps["worker"].add(WorkerMetrics)

# A job's time in the queue: stamped when published, observed when a worker starts it.
SENT_AT_HEADER = "tollgate_sent_at"


@signals.before_task_publish.connect
def _stamp_sent_at(headers=None, **kwargs):  # type: ignore[no-untyped-def]
    if headers is not None:
        headers.setdefault(SENT_AT_HEADER, time.time())


@signals.task_prerun.connect
def _observe_job_wait(task=None, **kwargs):  # type: ignore[no-untyped-def]
    from gateway.metrics import TASK_WAIT

    sent_at = getattr(task.request, SENT_AT_HEADER, None) if task is not None else None
    if isinstance(sent_at, int | float):
        TASK_WAIT.labels(task.name).observe(max(time.time() - sent_at, 0.0))


@signals.worker_process_shutdown.connect
def _forget_dead_process(pid=None, **kwargs):  # type: ignore[no-untyped-def]
    # Live gauges (in-flight, waiting) of a pool process that exited stop counting.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())
