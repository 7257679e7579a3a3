"""The burst queue's HTTP side: calls accepted as jobs (202), shown and cancelled only by
their org, and every bad job option answered with a 400 naming it. No worker runs here, so
accepted jobs stay queued."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.jobs.models import Job
from gateway.models import UsageRecord
from policies.models import Feature
from tests.gateway.test_proxy_limits import PROMPT, chat, fresh_key, limit
from tests.proxy_fixtures import Setup, flush_usage

pytestmark = pytest.mark.django_db(transaction=True)

ASYNC = {"Prefer": "respond-async"}


def submit(setup: Setup, key: str, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return httpx.post(
        f"{setup.v1}/chat/completions",
        headers={"Authorization": f"Bearer {key}", **ASYNC, **(headers or {})},
        json={"model": "gpt-test", "messages": PROMPT, **body},
        timeout=30,
    )


def test_prefer_respond_async_accepts_the_call_as_a_job(proxy: Setup) -> None:
    response = submit(proxy, proxy.key_a)
    assert response.status_code == 202
    body = response.json()
    assert body["object"] == "job"
    assert body["status"] == "queued"
    assert body["reason"] == "requested"
    assert body["endpoint"] == "/v1/chat/completions"
    assert body["model"] == "gpt-test"
    assert response.headers["location"] == f"/v1/jobs/{body['id']}"
    assert response.headers["preference-applied"] == "respond-async"
    job = Job.objects.get()
    assert job.public_id == body["id"]
    assert job.org == proxy.org_a
    assert job.feature == "chat"
    assert job.request["model"] == "gpt-test"
    assert proxy.fake.requests == []  # nothing went upstream yet
    flush_usage()
    # Usage is recorded when the job runs, not for the 202.
    assert not UsageRecord.objects.filter(endpoint="chat/completions").exists()


def test_a_denial_by_a_queue_limit_becomes_a_job_instead_of_a_429(proxy: Setup) -> None:
    limit(
        scope="org_feature",
        org=proxy.org_a,
        feature=Feature.objects.get(name="chat"),
        amount=2,
        action="queue",
    )
    key = fresh_key(proxy, proxy.org_a)
    statuses = [chat(proxy, key).status_code for _ in range(4)]
    assert statuses == [200, 200, 202, 202]
    jobs = list(Job.objects.order_by("rank"))
    assert [j.reason for j in jobs] == ["limit", "limit"]
    assert [j.rank for j in jobs] == [1, 2]
    # A reject limit still answers 429.
    limit(scope="org", org=proxy.org_b, amount=1)
    other = fresh_key(proxy, proxy.org_b)
    assert [chat(proxy, other).status_code for _ in range(2)] == [200, 429]


def test_a_streamed_call_is_queued_without_its_stream(proxy: Setup) -> None:
    response = submit(proxy, proxy.key_a, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 202
    assert "stream" not in Job.objects.get().request
    assert "stream_options" not in Job.objects.get().request


def test_the_jobs_org_sees_it_and_another_org_gets_404(proxy: Setup) -> None:
    job_id = submit(proxy, proxy.key_a).json()["id"]
    url = f"{proxy.v1}/jobs/{job_id}"
    own = httpx.get(url, headers={"Authorization": f"Bearer {proxy.key_a}"})
    assert own.status_code == 200
    assert own.json()["id"] == job_id
    assert own.json()["status"] == "queued"
    other = httpx.get(url, headers={"Authorization": f"Bearer {proxy.key_b}"})
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "job_not_found"
    denied = httpx.delete(url, headers={"Authorization": f"Bearer {proxy.key_b}"})
    assert denied.status_code == 404
    assert Job.objects.get().status == "queued"
    assert httpx.get(url).status_code == 401
    garbage = httpx.get(
        f"{proxy.v1}/jobs/not-a-job", headers={"Authorization": f"Bearer {proxy.key_a}"}
    )
    assert garbage.status_code == 404


def test_a_queued_job_can_be_cancelled_once(proxy: Setup) -> None:
    job_id = submit(proxy, proxy.key_a).json()["id"]
    url = f"{proxy.v1}/jobs/{job_id}"
    auth = {"Authorization": f"Bearer {proxy.key_a}"}
    cancelled = httpx.delete(url, headers=auth)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = httpx.delete(url, headers=auth)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "job_finished"
    assert httpx.get(url, headers=auth).json()["status"] == "cancelled"


def test_a_running_job_cannot_be_cancelled(proxy: Setup) -> None:
    job_id = submit(proxy, proxy.key_a).json()["id"]
    Job.objects.update(status="running")
    response = httpx.delete(
        f"{proxy.v1}/jobs/{job_id}", headers={"Authorization": f"Bearer {proxy.key_a}"}
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "job_running"


def test_the_same_idempotency_key_gives_the_same_job(proxy: Setup) -> None:
    first = submit(proxy, proxy.key_a, {"Idempotency-Key": "order-42"})
    second = submit(proxy, proxy.key_a, {"Idempotency-Key": "order-42"})
    other_org = submit(proxy, proxy.key_b, {"Idempotency-Key": "order-42"})
    assert first.status_code == second.status_code == other_org.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert other_org.json()["id"] != first.json()["id"]
    assert Job.objects.count() == 2


def test_jobs_queue_behind_earlier_jobs_in_order(proxy: Setup) -> None:
    ids = [submit(proxy, proxy.key_a).json()["id"] for _ in range(3)]
    last = httpx.get(
        f"{proxy.v1}/jobs/{ids[-1]}", headers={"Authorization": f"Bearer {proxy.key_a}"}
    )
    assert last.json()["position"] == 2


CALLBACK, MAX_AGE = "X-Tollgate-Callback-Url", "X-Tollgate-Job-Max-Age"


@pytest.mark.parametrize(
    ("headers", "param", "code"),
    [
        ({CALLBACK: "ftp://127.0.0.1/x"}, CALLBACK, "invalid_callback_url"),
        ({CALLBACK: "javascript:alert(1)"}, CALLBACK, "invalid_callback_url"),
        ({CALLBACK: "http:///nohost"}, CALLBACK, "invalid_callback_url"),
        ({MAX_AGE: "soon"}, MAX_AGE, "invalid_job_max_age"),
        ({MAX_AGE: "0"}, MAX_AGE, "invalid_job_max_age"),
        ({"Idempotency-Key": "x" * 201}, "Idempotency-Key", "invalid_idempotency_key"),
    ],
)
def test_bad_job_options_get_a_400_naming_the_header(
    proxy: Setup, headers: dict[str, str], param: str, code: str
) -> None:
    response = submit(proxy, proxy.key_a, headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert not Job.objects.exists()


def test_respond_async_on_an_endpoint_without_jobs_is_a_400(proxy: Setup) -> None:
    response = httpx.get(
        f"{proxy.v1}/models", headers={"Authorization": f"Bearer {proxy.key_a}", **ASYNC}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "async_not_supported"
    assert response.json()["error"]["param"] == "Prefer"


def test_a_job_is_validated_like_a_direct_call(proxy: Setup) -> None:
    response = submit(proxy, proxy.key_a, model="no-such-model")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    response = submit(proxy, proxy.key_a, messages=[])
    assert response.status_code == 400
    assert not Job.objects.exists()


def test_other_preferences_do_not_make_a_job(proxy: Setup) -> None:
    response = submit(proxy, proxy.key_a, {"Prefer": "return=minimal"})
    assert response.status_code == 200
    assert not Job.objects.exists()


def test_a_callback_to_a_private_ip_is_refused_unless_allowed(settings) -> None:  # type: ignore[no-untyped-def]
    from gateway.proxy.http import ProxyError
    from gateway.proxy.jobs import job_options

    settings.TOLLGATE_JOB_CALLBACK_PRIVATE = False
    for url in ("http://127.0.0.1:8000/hook", "http://10.1.2.3/x", "http://[::1]/x"):
        with pytest.raises(ProxyError) as raised:
            job_options({b"x-tollgate-callback-url": url.encode()})
        assert (raised.value.status, raised.value.code) == (400, "invalid_callback_url")
    assert job_options({b"x-tollgate-callback-url": b"https://hooks.example.com/x"}).callback_url
    settings.TOLLGATE_JOB_CALLBACK_PRIVATE = True
    assert job_options({b"x-tollgate-callback-url": b"http://127.0.0.1:8000/hook"}).callback_url


def test_a_client_preferring_async_can_still_read_its_jobs(proxy: Setup) -> None:
    job_id = submit(proxy, proxy.key_a).json()["id"]
    response = httpx.get(
        f"{proxy.v1}/jobs/{job_id}", headers={"Authorization": f"Bearer {proxy.key_a}", **ASYNC}
    )
    assert response.status_code == 200
