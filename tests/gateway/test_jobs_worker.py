"""Queued jobs run by real Celery worker processes (with beat) against the fake provider:
results, order by tier, fairness between orgs, retries, the provider breaker, expiry, a
worker killed mid-job, and signed callbacks."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from gateway.devstack.servers import free_port
from gateway.jobs.callbacks import callback_secret
from gateway.jobs.models import Job
from gateway.models import UsageRecord
from policies.models import Feature, Organization, Tier
from tests.gateway.test_jobs_api import submit
from tests.gateway.test_proxy_limits import fresh_key, limit
from tests.job_fixtures import finished, usage_records, wait_for
from tests.proxy_fixtures import Setup

pytestmark = pytest.mark.django_db(transaction=True)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_queued_job_runs_and_its_org_reads_the_providers_answer(
    proxy: Setup, worker: Any
) -> None:
    job_id = submit(proxy, proxy.key_a).json()["id"]
    worker()
    wait_for(finished(1), what="the job to finish")
    body = httpx.get(f"{proxy.v1}/jobs/{job_id}", headers=auth(proxy.key_a)).json()
    assert body["status"] == "succeeded", body
    assert body["attempts"] == 1
    assert body["response"]["status_code"] == 200
    answer = body["response"]["body"]
    assert answer["object"] == "chat.completion"
    assert answer["usage"]["prompt_tokens"] == 5
    assert body["response"]["cost_usd"]
    assert len(proxy.fake.requests) == 1
    sent = proxy.fake.requests[0]
    assert sent.json["model"] == "upstream-gpt"
    assert sent.headers["x-request-id"] == job_id.removeprefix("job_")
    usage_records([job_id.removeprefix("job_")], expected=1)
    record = UsageRecord.objects.get(request_id=job_id.removeprefix("job_"))
    assert record.org == proxy.org_a
    assert record.feature == "chat"
    assert record.input_tokens == 5


def premium_org() -> Organization:
    tier = Tier.objects.get_or_create(slug="premium", defaults={"name": "Premium", "priority": 10})[
        0
    ]
    return Organization.objects.create(name="Initech", slug="initech", tier=tier)


def admitted_order() -> list[Job]:
    # Jobs admitted in one Redis round trip share a millisecond; Redis ran them in the
    # pump's order of service, which breaks the tie.
    return list(Job.objects.order_by("admitted_at_ms", "-priority", "rank", "created_at"))


def test_premium_jobs_are_admitted_before_free_jobs_queued_at_the_same_time(
    proxy: Setup, worker: Any
) -> None:
    limit(
        scope="feature",
        feature=Feature.objects.get(name="chat"),
        window="second",
        amount=5,
        action="queue",
    )
    free_key = fresh_key(proxy, proxy.org_a)
    premium_key = fresh_key(proxy, premium_org())
    for _ in range(12):
        assert submit(proxy, free_key).status_code == 202
    for _ in range(12):
        assert submit(proxy, premium_key).status_code == 202
    worker()
    wait_for(finished(24), timeout=60, what="24 jobs")
    order = admitted_order()
    assert all(j.status == "succeeded" for j in order)
    tiers = [j.priority for j in order]
    assert tiers == [10] * 12 + [0] * 12


def test_two_orgs_bursts_interleave_fairly(proxy: Setup, worker: Any) -> None:
    limit(
        scope="feature",
        feature=Feature.objects.get(name="chat"),
        window="second",
        amount=10,
        action="queue",
    )
    key_a = fresh_key(proxy, proxy.org_a)
    key_b = fresh_key(proxy, proxy.org_b)
    for _ in range(30):
        submit(proxy, key_a)  # org A's burst is queued first ...
    for _ in range(10):
        submit(proxy, key_b)  # ... and org B's smaller one after it
    worker()
    wait_for(finished(40), timeout=60, what="40 jobs")
    order = [j.org_id for j in admitted_order()]
    # B is not starved behind A's 30: its 10 jobs are among the first 20 admitted, in turns.
    assert order[:20].count(proxy.org_b.pk) == 10
    assert order[:20] == [proxy.org_a.pk, proxy.org_b.pk] * 10


def test_a_provider_429_is_retried_after_its_retry_after(proxy: Setup, worker: Any) -> None:
    proxy.fake.configure(error="429", error_times=1, retry_after=1)
    job_id = submit(proxy, proxy.key_a).json()["id"]
    worker()
    wait_for(finished(1), what="the job")
    job = Job.objects.get()
    assert job.status == "succeeded"
    assert job.attempts == 2
    assert (job.finished_at - job.created_at).total_seconds() >= 1.0
    assert len(proxy.fake.requests) == 2
    body = httpx.get(f"{proxy.v1}/jobs/{job_id}", headers=auth(proxy.key_a)).json()
    assert body["error"] is None


def test_a_job_failing_every_attempt_goes_to_the_dead_letters_and_can_run_again(
    proxy: Setup, worker: Any
) -> None:
    from gateway.jobs.services import job_rerun

    proxy.fake.configure(error="500")
    submit(proxy, proxy.key_a)
    worker(TOLLGATE_JOB_MAX_ATTEMPTS="3", TOLLGATE_PROVIDER_BREAKER_FAILURES="100")
    wait_for(finished(1), what="the job")
    job = Job.objects.get()
    assert (job.status, job.dead_letter, job.attempts) == ("failed", True, 3)
    assert job.error["status"] == 502
    assert job.error["code"] == "upstream_error"
    assert len(proxy.fake.requests) == 3
    proxy.fake.configure(error=None)
    assert job_rerun(job=job)
    wait_for(lambda: Job.objects.get().status == "succeeded", what="the re-run")
    job = Job.objects.get()
    assert (job.attempts, job.dead_letter, job.error, job.runs) == (1, False, None, 2)
    # Each run is its own usage record: the failed one and the re-run.
    assert usage_records([job.id.hex, f"{job.id.hex}.2"], expected=2) == 2


def test_a_provider_client_error_fails_the_job_without_retries(proxy: Setup, worker: Any) -> None:
    proxy.fake.configure(error="400")
    submit(proxy, proxy.key_a)
    worker()
    wait_for(finished(1), what="the job")
    job = Job.objects.get()
    assert (job.status, job.dead_letter, job.attempts) == ("failed", False, 1)
    assert job.response_status == 400
    assert json.loads(job.response_body)["error"]["type"] == "invalid_request_error"


def health_breaker(proxy: Setup) -> str:
    report = httpx.get(f"{proxy.url}/health", timeout=10).json()
    return str(report["providers"]["fake-openai"]["state"])


def test_the_provider_breaker_opens_on_failures_and_closes_after_recovery(
    proxy: Setup, worker: Any
) -> None:
    proxy.fake.configure(error="500")
    for _ in range(5):
        submit(proxy, proxy.key_a)
    worker(
        TOLLGATE_PROVIDER_BREAKER_FAILURES="3",
        TOLLGATE_PROVIDER_BREAKER_SECONDS="1",
        TOLLGATE_JOB_MAX_ATTEMPTS="50",
    )
    wait_for(lambda: health_breaker(proxy) == "open", what="the breaker to open")
    # While open, no retry storm: at most one probe per pause reaches the provider.
    calls_before = proxy.fake.state.count
    time.sleep(2.5)
    assert proxy.fake.state.count - calls_before <= 3
    assert Job.objects.filter(status="queued").count() == 5
    proxy.fake.configure(error=None)
    wait_for(finished(5), what="the jobs after recovery")
    assert set(Job.objects.values_list("status", flat=True)) == {"succeeded"}
    assert health_breaker(proxy) == "closed"


def test_a_job_not_started_before_its_max_age_expires_and_a_cancelled_one_never_runs(
    proxy: Setup, worker: Any
) -> None:
    limit(scope="org", org=proxy.org_a, window="minute", amount=1, action="queue")
    key = fresh_key(proxy, proxy.org_a)
    assert submit(proxy, key, {"Prefer": ""}).status_code == 200  # uses the minute's one call
    expiring = submit(proxy, key, {"X-Tollgate-Job-Max-Age": "2"}).json()["id"]
    cancelled = submit(proxy, key).json()["id"]
    assert httpx.delete(f"{proxy.v1}/jobs/{cancelled}", headers=auth(key)).status_code == 200
    worker()
    body = wait_for(
        lambda: (
            (r := httpx.get(f"{proxy.v1}/jobs/{expiring}", headers=auth(key)).json())["status"]
            == "expired"
            and r
        ),
        what="the job to expire",
    )
    assert body["error"]["code"] == "job_expired"
    assert body["response"] is None
    assert Job.objects.get(id=cancelled.removeprefix("job_")).status == "cancelled"
    assert len(proxy.fake.requests) == 1  # only the direct call


class Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []
    handler = type("Handler", (Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def test_the_callback_carries_the_result_with_a_valid_signature(
    proxy: Setup, worker: Any, receiver: Any
) -> None:
    url, received = receiver
    job_id = submit(proxy, proxy.key_a, {"X-Tollgate-Callback-Url": url}).json()["id"]
    worker()
    wait_for(lambda: received, what="the callback")
    headers, body = received[0]
    assert headers["x-tollgate-job-id"] == job_id
    fields = dict(part.split("=", 1) for part in headers["x-tollgate-signature"].split(","))
    secret = callback_secret(proxy.org_a.pk)
    expected = hmac.new(
        secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    assert abs(int(fields["t"]) - time.time()) < 60
    payload = json.loads(body)
    assert (payload["id"], payload["status"]) == (job_id, "succeeded")
    assert payload["response"]["body"]["object"] == "chat.completion"
    wait_for(
        lambda: Job.objects.get().callback_status == "delivered", what="the delivery to be noted"
    )
    time.sleep(1)
    assert len(received) == 1


def test_a_worker_killed_mid_job_leaves_it_to_complete_exactly_once(
    proxy: Setup, worker: Any, receiver: Any
) -> None:
    url, received = receiver
    proxy.fake.configure(latency_ms=5000)
    job_id = submit(proxy, proxy.key_a, {"X-Tollgate-Callback-Url": url}).json()["id"]
    env = {"TOLLGATE_JOB_LEASE_SECONDS": "2"}
    first = worker(**env)
    wait_for(lambda: proxy.fake.state.count >= 1, what="the provider call")
    assert Job.objects.get().status == "running"
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    proxy.fake.configure(latency_ms=0)
    worker(**env)
    wait_for(finished(1), timeout=60, what="the job after the kill")
    job = Job.objects.get()
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert proxy.fake.state.count == 2  # the killed attempt's call, and the one that counted
    wait_for(lambda: received, what="the callback")
    time.sleep(1.5)
    assert len(received) == 1  # delivered once
    usage_records([job_id.removeprefix("job_")], expected=1)
    time.sleep(1)
    assert usage_records([job_id.removeprefix("job_")]) == 1
