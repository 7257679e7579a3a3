"""Nothing queued is lost when the Celery broker restarts: the broker carries only wake-ups,
so jobs accepted before, during and after its outage all run, each once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.devstack.servers import EmbeddedRedis
from gateway.jobs.models import Job
from policies.models import Feature
from tests.gateway.test_proxy_limits import limit
from tests.job_fixtures import finished, submit_job, usage_records, wait_for
from tests.proxy_fixtures import GATEWAY_PREFIX, Setup, _database_url

pytestmark = pytest.mark.django_db(transaction=True)


def submit(base: str, key: str) -> httpx.Response:
    return submit_job(base, key, "gpt-test")  # the proxy fixture's model


def test_a_broker_restart_loses_no_job_and_runs_none_twice(
    proxy: Setup, worker: Any, start_gateway: Any, tmp_path: Path
) -> None:
    # A broker of this test's own, without persistence: its restart drops every message.
    broker = EmbeddedRedis(tmp_path / "broker", log_path=tmp_path / "broker.log", durable=False)
    broker.start()
    try:
        env = {"CELERY_BROKER_URL": broker.url}
        base = start_gateway(
            DATABASE_URL=_database_url(), TOLLGATE_REDIS_PREFIX=GATEWAY_PREFIX, **env
        )
        limit(
            scope="feature",
            feature=Feature.objects.get(name="chat"),
            window="second",
            amount=5,
            action="queue",
        )
        before = [submit(base, proxy.key_a) for _ in range(20)]
        assert {r.status_code for r in before} == {202}
        # Short pump turns: pumps hand over (and wake the next one) while the broker is down.
        worker(TOLLGATE_JOB_PUMP_SECONDS="1", **env)
        wait_for(lambda: proxy.fake.state.count >= 5, what="the first jobs to run")

        broker.stop()
        during = [submit(base, proxy.key_a) for _ in range(5)]
        assert {r.status_code for r in during} == {202}
        time.sleep(2)  # pump turns end meanwhile, and the beat's wake-ups fail
        broker.start(port=broker.port)

        after = [submit(base, proxy.key_a) for _ in range(5)]
        assert {r.status_code for r in after} == {202}
        wait_for(finished(30), timeout=90, what="every job after the broker restart")
        jobs = list(Job.objects.all())
        assert len(jobs) == 30
        assert {(j.status, j.attempts) for j in jobs} == {("succeeded", 1)}
        assert proxy.fake.state.count == 30  # one provider call per job
        ids = [str(j.pk.hex) for j in jobs]
        assert usage_records(ids, expected=30) == 30
    finally:
        broker.stop()
