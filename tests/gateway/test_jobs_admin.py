"""Jobs in the admin: each org's own, dead letters re-run by an admin (and audited), the
providers' circuit breakers shown and closed, the callback secret on the org's page."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent
from gateway.jobs.callbacks import callback_secret
from gateway.jobs.models import Job
from gateway.models import Provider
from gateway.redis import get_redis, key
from policies.models import Organization

pytestmark = pytest.mark.django_db

URL = "/admin/gateway/job/"


def a_job(org: Organization, **fields) -> Job:  # type: ignore[no-untyped-def]
    now = timezone.now()
    defaults = {
        "endpoint": "chat/completions",
        "model": "gpt-test",
        "request": {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]},
        "reason": "requested",
        "lane": "1:chat",
        "not_before": now,
        "expires_at": now + timedelta(hours=1),
        "created_at": now,
    }
    return Job.objects.create(org=org, **{**defaults, **fields})


def login(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


def test_an_org_admin_sees_only_their_orgs_jobs(alice, charlie, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    mine = a_job(org_a)
    theirs = a_job(org_b)
    page = login(alice).get(URL).content.decode()
    assert str(mine) in page
    assert str(theirs) not in page
    assert login(charlie).get(f"{URL}{mine.pk}/change/").status_code == 302  # not found
    detail = login(alice).get(f"{URL}{mine.pk}/change/")
    assert detail.status_code == 200
    assert "gpt-test" in detail.content.decode()


def test_a_dead_letter_is_queued_again_by_the_rerun_action(alice, org_a) -> None:  # type: ignore[no-untyped-def]
    dead = a_job(
        org_a,
        status="failed",
        dead_letter=True,
        attempts=5,
        finished_at=timezone.now(),
        error={"type": "job_failed", "code": "upstream_error", "message": "x", "status": 502},
    )
    done = a_job(org_a, status="succeeded", finished_at=timezone.now())
    client = login(alice)
    listing = client.get(URL, {"dead_letter__exact": "1"}).content.decode()
    assert str(dead) in listing and str(done) not in listing
    response = client.post(
        URL, {"action": "rerun", "_selected_action": [str(dead.pk), str(done.pk)]}, follow=True
    )
    text = response.content.decode()
    assert "1 job(s) queued again." in text
    assert "1 job(s) left as they are" in text
    dead.refresh_from_db()
    assert (dead.status, dead.attempts, dead.dead_letter, dead.error) == ("queued", 0, False, None)
    assert Job.objects.get(pk=done.pk).status == "succeeded"
    event = AuditEvent.objects.get(action="job.rerun")
    assert event.target_id == str(dead.pk)
    assert event.actor == "alice"


def test_a_member_cannot_rerun_jobs(bob, org_a) -> None:  # type: ignore[no-untyped-def]
    dead = a_job(org_a, status="failed", dead_letter=True, finished_at=timezone.now())
    client = login(bob)
    assert 'value="rerun"' not in client.get(URL).content.decode()
    client.post(URL, {"action": "rerun", "_selected_action": [str(dead.pk)]})
    assert Job.objects.get(pk=dead.pk).status == "failed"


def test_providers_show_their_circuit_breaker_and_staff_can_close_it(staff, settings) -> None:  # type: ignore[no-untyped-def]
    settings.TOLLGATE_REDIS_PREFIX = f"test:{uuid.uuid4().hex[:8]}"
    provider = Provider.objects.create(
        name="flaky", kind="openai_compatible", base_url="http://127.0.0.1:9/v1"
    )
    until = int(time.time() * 1000) + 30_000
    get_redis().hset(key("breaker", str(provider.pk)), mapping={"failures": 5, "open_until": until})
    client = login(staff)
    page = client.get("/admin/gateway/provider/").content.decode()
    assert "open (5 failures; probe in" in page
    client.post(
        "/admin/gateway/provider/",
        {"action": "close_breaker", "_selected_action": [str(provider.pk)]},
    )
    assert not get_redis().exists(key("breaker", str(provider.pk)))
    page = client.get("/admin/gateway/provider/").content.decode()
    assert '<td class="field-breaker">closed</td>' in page
    assert AuditEvent.objects.filter(action="provider.breaker_closed").exists()


def test_the_org_page_shows_its_callback_signing_secret_to_its_admins_only(
    alice, bob, org_a, org_b
) -> None:  # type: ignore[no-untyped-def]
    url = f"/admin/policies/organization/{org_a.pk}/change/"
    page = login(alice).get(url).content.decode()
    assert callback_secret(org_a.pk) in page
    assert callback_secret(org_b.pk) not in page
    member_page = login(bob).get(url)
    assert member_page.status_code == 200
    assert callback_secret(org_a.pk) not in member_page.content.decode()


def test_a_job_whose_worker_died_at_every_attempt_goes_to_the_dead_letters(org_a, settings) -> None:  # type: ignore[no-untyped-def]
    from gateway.jobs.services import jobs_sweep

    past = timezone.now() - timedelta(seconds=5)
    doomed = a_job(
        org_a, status="running", attempts=settings.TOLLGATE_JOB_MAX_ATTEMPTS, lease_until=past
    )
    again = a_job(org_a, status="running", attempts=1, lease_until=past)
    jobs_sweep()
    doomed.refresh_from_db()
    again.refresh_from_db()
    assert (doomed.status, doomed.dead_letter, doomed.error["code"]) == (
        "failed",
        True,
        "worker_lost",
    )
    assert (again.status, again.claim_token) == ("queued", None)


def test_a_callback_to_a_private_address_is_not_sent_unless_allowed(org_a, settings) -> None:  # type: ignore[no-untyped-def]
    from gateway.jobs.callbacks import job_callback_deliver

    settings.TOLLGATE_JOB_CALLBACK_PRIVATE = False
    job = a_job(
        org_a,
        status="succeeded",
        finished_at=timezone.now(),
        callback_url="http://127.0.0.1:9/hook",
        callback_status="pending",
    )
    assert job_callback_deliver(job_id=str(job.pk)) == "failed"
    job.refresh_from_db()
    assert job.callback_status == "failed"
    assert "not a public address" in job.callback_error
