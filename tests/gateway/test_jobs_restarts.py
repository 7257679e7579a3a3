"""Nothing queued is lost when PostgreSQL restarts: jobs accepted before it stopped all run
once it is back, calls made while it is down get a clear 503, and the gateway and the
worker reconnect on their own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from gateway.devstack.servers import EmbeddedPostgres
from gateway.fake_upstream import FakeUpstream
from tests.conftest import BASE_DIR, service_env
from tests.job_fixtures import submit_job, wait_for
from tests.proxy_fixtures import wait_until_served


def submit(base: str, key: str) -> httpx.Response:
    return submit_job(base, key, "demo-chat")  # the bootstrapped model


def status(base: str, key: str, job_id: str) -> str:
    response = httpx.get(
        f"{base}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    return str(response.json().get("status")) if response.status_code == 200 else ""


def test_jobs_survive_a_postgres_restart(
    throwaway_postgres: EmbeddedPostgres,
    fake: FakeUpstream,
    start_gateway: Any,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    env = {
        "DATABASE_URL": throwaway_postgres.url,
        "TOLLGATE_REDIS_PREFIX": f"test:pg-restart:{uuid.uuid4().hex[:8]}",
    }
    info = tmp_path / "first-run.json"
    for command in (
        ["migrate", "--noinput", "-v", "0"],
        ["tollgate_bootstrap", "--info-file", str(info), "--fake-upstream", fake.url],
    ):
        subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=BASE_DIR,
            env=service_env(**env),
            check=True,
            capture_output=True,
        )
    key = json.loads(info.read_text())["api_key"]
    base = start_gateway(**env)
    wait_until_served(base, key)
    before = [submit(base, key) for _ in range(10)]
    assert {r.status_code for r in before} == {202}

    throwaway_postgres.stop()
    down = submit(base, key)
    assert down.status_code == 503
    assert down.json()["error"]["code"] == "job_store_unavailable"
    throwaway_postgres.start()

    later = wait_for(
        lambda: (r := submit(base, key)).status_code == 202 and r, what="the gateway back"
    )
    ids = [r.json()["id"] for r in before] + [later.json()["id"]]
    start_worker("--beat", "--schedule", str(tmp_path / "beat"), **env)
    wait_for(
        lambda: all(status(base, key, job_id) == "succeeded" for job_id in ids),
        timeout=60,
        what="every job to succeed",
    )
    # The worker keeps running through a second restart and picks up where it left.
    throwaway_postgres.stop()
    time.sleep(2)
    throwaway_postgres.start()
    more = [
        wait_for(lambda: (r := submit(base, key)).status_code == 202 and r, what="a 202")
        for _ in range(5)
    ]
    ids += [r.json()["id"] for r in more]
    wait_for(
        lambda: all(status(base, key, job_id) == "succeeded" for job_id in ids),
        timeout=60,
        what="the jobs accepted after the second restart",
    )
    sent = [r for r in fake.requests if r.path.endswith("/chat/completions")]
    assert len(sent) == len(ids)  # each job called the provider once
