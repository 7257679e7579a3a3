"""The same admin-managed limits on a team's own Django endpoints."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings

from policies.models import Limit
from policies.services import apikey_create

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.policies.integration_urls")]


@pytest.fixture(autouse=True)
def fresh_limits() -> None:
    # Each test adds limits inside a transaction that never commits, so the change signal
    # (sent on commit) never fires: start each test with an empty cache instead.
    from policies import integrations

    integrations._cache.index = None


def bearer(raw: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_the_drf_throttle_enforces_an_org_limit_with_the_429_contract(org_a, chat) -> None:  # type: ignore[no-untyped-def]
    Limit.objects.create(scope="org", org=org_a, metric="requests", window="minute", amount=2)
    _key, raw = apikey_create(org=org_a, name="svc")
    client = Client()
    statuses = [client.post("/internal/drf", **bearer(raw)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    denied = client.post("/internal/drf", **bearer(raw))
    assert 1 <= int(denied["Retry-After"]) <= 61


def test_the_decorator_limits_a_feature_and_answers_the_contract(org_a, org_b, summarize) -> None:  # type: ignore[no-untyped-def]
    Limit.objects.create(
        scope="org_feature",
        org=org_a,
        feature=summarize,
        metric="requests",
        window="minute",
        amount=1,
    )
    _key, raw_a = apikey_create(org=org_a, name="svc")
    _key, raw_b = apikey_create(org=org_b, name="svc")
    client = Client()
    assert client.post("/internal/plain", **bearer(raw_a)).status_code == 200
    denied = client.post("/internal/plain", **bearer(raw_a))
    assert denied.status_code == 429
    error = denied.json()["error"]
    assert error["code"] == "feature_requests_per_minute"
    assert error["feature"] == "summarize"
    assert denied["X-RateLimit-Remaining"] == "0"
    # Another org is not affected.
    assert client.post("/internal/plain", **bearer(raw_b)).status_code == 200


def test_the_middleware_limits_configured_paths_and_releases_leases(org_a) -> None:  # type: ignore[no-untyped-def]
    Limit.objects.create(scope="org", org=org_a, metric="concurrent", window="none", amount=1)
    Limit.objects.create(scope="org", org=org_a, metric="requests", window="minute", amount=3)
    _key, raw = apikey_create(org=org_a, name="svc")
    middleware = ["policies.integrations.TollgateLimitMiddleware"]
    from django.conf import settings

    with override_settings(
        MIDDLEWARE=[*settings.MIDDLEWARE, *middleware], TOLLGATE_LIMITED_PATHS=["/limited/"]
    ):
        client = Client()
        # One at a time: each lease is released when its response completes.
        statuses = [client.post("/limited/call", **bearer(raw)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        assert client.post("/internal/drf").status_code == 200  # not a limited path, no caller


def test_a_logged_in_org_member_is_limited_as_their_org(org_a, bob) -> None:  # type: ignore[no-untyped-def]
    Limit.objects.create(scope="org", org=org_a, metric="requests", window="minute", amount=1)
    client = Client()
    client.force_login(bob)
    assert client.post("/internal/plain").status_code == 200
    assert client.post("/internal/plain").status_code == 429
