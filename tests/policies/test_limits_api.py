"""The REST API for limits (/api/limits/), against a real DB and a real Redis.

The cast (tests/conftest.py): ``staff`` is global staff, ``alice`` administers org A
(acme), ``bob`` is a read-only member of org A, ``charlie`` administers org B (globex).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from policies.engine import sync
from policies.engine.specs import spec_from_limit
from policies.models import ApiKey, Feature, Limit, Organization, Tier
from policies.services import apikey_create

pytestmark = pytest.mark.django_db

URL = "/api/limits/"
ORG_LIMIT = {"scope": "org", "metric": "requests", "window": "minute", "amount": 60}


def results(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content
    body = response.json()
    return body["results"] if isinstance(body, dict) and "results" in body else body


def ids(response: Any) -> set[int]:
    return {row["id"] for row in results(response)}


def make_limit(**fields: Any) -> Limit:
    values = {"metric": "requests", "window": "minute", "amount": 60, **fields}
    limit = Limit(**values)
    limit.full_clean()
    limit.save()
    return limit


def charge(limit: Limit, amount: int, *, org_id: int) -> None:
    limit = Limit.objects.select_related("feature", "api_key").get(pk=limit.pk)
    decision = sync.admit(uuid.uuid4().hex, [spec_from_limit(limit)], [amount], org_id=org_id)
    assert decision.admitted


@pytest.fixture
def premium_tier(db: None) -> Tier:
    return Tier.objects.get_or_create(slug="premium", defaults={"name": "Premium"})[0]


@pytest.fixture
def org_a_key(org_a: Organization) -> ApiKey:
    return apikey_create(org=org_a, name="acme-ci")[0]


@pytest.fixture
def org_b_key(org_b: Organization) -> ApiKey:
    return apikey_create(org=org_b, name="globex-ci")[0]


@pytest.fixture
def a_limit(org_a: Organization) -> Limit:
    return make_limit(scope="org", org=org_a, name="acme-rpm")


@pytest.fixture
def b_limit(org_b: Organization) -> Limit:
    return make_limit(scope="org", org=org_b, name="globex-rpm")


@pytest.fixture
def global_limit(db: None) -> Limit:
    return make_limit(scope="global", amount=10_000, name="global-rpm")


@pytest.fixture
def feature_limit(chat: Feature) -> Limit:
    return make_limit(scope="feature", feature=chat, amount=5_000, name="chat-rpm")


@pytest.fixture
def free_default(free_tier: Tier) -> Limit:
    return make_limit(scope="org", tier=free_tier, amount=30, name="free-default")


@pytest.fixture
def premium_default(premium_tier: Tier) -> Limit:
    return make_limit(scope="org", tier=premium_tier, amount=600, name="premium-default")


# --- creation -------------------------------------------------------------------------------


def test_staff_create_an_org_limit_that_reaches_the_db(api_staff, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post(
        URL,
        {**ORG_LIMIT, "org": "acme", "name": "acme rpm", "thresholds": [50, 90]},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["org"] == "acme"
    assert body["tier"] is None and body["feature"] is None and body["api_key"] is None
    assert body["amount_display"] == "60 requests per minute"
    assert body["current_usage"] == 0
    assert "amount_usd" not in body
    limit = Limit.objects.get(pk=body["id"])
    assert (limit.scope, limit.org, limit.metric, limit.window, limit.amount) == (
        "org",
        org_a,
        "requests",
        "minute",
        60,
    )
    assert limit.name == "acme rpm"
    assert limit.thresholds == [50, 90]
    assert limit.action == "reject" and limit.failure_mode == "fail_open"
    assert limit.is_active is True


def test_staff_create_every_scope(api_staff, org_a, chat, free_tier, org_a_key) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ({"scope": "global"}, {}),
        ({"scope": "feature", "feature": "chat"}, {"feature": chat}),
        ({"scope": "org_feature", "org": "acme", "feature": "chat"}, {"org": org_a}),
        ({"scope": "org", "tier": "free"}, {"tier": free_tier, "org": None}),
        ({"scope": "api_key", "api_key": org_a_key.pk}, {"api_key": org_a_key, "org": org_a}),
    ]
    for data, expected in cases:
        response = api_staff.post(URL, {**ORG_LIMIT, **data}, format="json")
        assert response.status_code == 201, (data, response.content)
        limit = Limit.objects.get(pk=response.json()["id"])
        for field, value in expected.items():
            assert getattr(limit, field) == value, (data, field)


def test_an_api_key_limit_gets_its_keys_org(api_staff, org_a_key) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post(
        URL,
        {
            "scope": "api_key",
            "api_key": org_a_key.pk,
            "metric": "concurrent",
            "window": "none",
            "amount": 4,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["org"] == "acme"
    assert response.json()["amount_display"] == "4 concurrent requests"
    assert Limit.objects.get(pk=response.json()["id"]).org_id == org_a_key.org_id


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"amount": 0}, "amount"),
        ({"amount": -5}, "amount"),
        ({"amount": None}, "amount"),
        ({"amount": "lots"}, "amount"),
        ({"window": "none"}, "window"),
        ({"metric": "concurrent", "window": "minute"}, "window"),
        ({"metric": "bananas"}, "metric"),
        ({"action": "wait"}, "max_wait_seconds"),
        ({"action": "wait", "max_wait_seconds": 0}, "max_wait_seconds"),
        ({"action": "wait", "max_wait_seconds": 100_000}, "max_wait_seconds"),
        ({"thresholds": [0, 100]}, "thresholds"),
        ({"thresholds": "80"}, "thresholds"),
        ({"org": None}, "org"),
        ({"org": "no-such-org"}, "org"),
        ({"feature": "chat"}, "feature"),
        ({"scope": "org_feature"}, "feature"),
        ({"scope": "global"}, "org"),
        ({"scope": "feature", "feature": "chat"}, "org"),
        ({"scope": "api_key"}, "api_key"),
        ({"scope": "bogus"}, "scope"),
        ({"tier": "free"}, "org"),
        ({"scope": "feature", "org": None, "feature": "chat", "tier": "free"}, "tier"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(  # type: ignore[no-untyped-def]
    api_staff, org_a, chat, free_tier, data, field
) -> None:
    response = api_staff.post(URL, {**ORG_LIMIT, "org": "acme", **data}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert Limit.objects.count() == 0


def test_a_missing_amount_is_a_400(api_staff, org_a) -> None:  # type: ignore[no-untyped-def]
    data = {"scope": "org", "org": "acme", "metric": "requests", "window": "minute"}
    response = api_staff.post(URL, data, format="json")
    assert response.status_code == 400
    assert "amount" in response.json()


def test_an_update_is_validated_against_the_stored_fields(api_staff, a_limit) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.patch(f"{URL}{a_limit.pk}/", {"action": "wait"}, format="json")
    assert response.status_code == 400
    assert "max_wait_seconds" in response.json()
    response = api_staff.patch(f"{URL}{a_limit.pk}/", {"metric": "concurrent"}, format="json")
    assert response.status_code == 400
    assert "window" in response.json()
    response = api_staff.patch(
        f"{URL}{a_limit.pk}/", {"action": "wait", "max_wait_seconds": 2.5}, format="json"
    )
    assert response.status_code == 200, response.content
    a_limit.refresh_from_db()
    assert (a_limit.action, a_limit.max_wait_seconds) == ("wait", 2.5)


# --- amount_usd -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usd", "micros", "display"),
    [
        ("1.00", 1_000_000, "$1.00 per day"),
        ("0.000001", 1, "$0.00 per day"),
        ("12.345678", 12_345_678, "$12.35 per day"),
        ("2500", 2_500_000_000, "$2,500.00 per day"),
    ],
)
def test_amount_usd_sets_micro_usd_exactly(api_staff, org_a, usd, micros, display) -> None:  # type: ignore[no-untyped-def]
    data = {"scope": "org", "org": "acme", "metric": "cost", "window": "calendar_day"}
    response = api_staff.post(URL, {**data, "amount_usd": usd}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["amount"] == micros
    assert body["amount_display"] == display
    assert "amount_usd" not in body
    assert Limit.objects.get(pk=body["id"]).amount == micros


def test_amount_usd_updates_a_cost_limit(api_staff, org_a) -> None:  # type: ignore[no-untyped-def]
    limit = make_limit(scope="org", org=org_a, metric="cost", window="calendar_month", amount=1)
    response = api_staff.patch(f"{URL}{limit.pk}/", {"amount_usd": "250.50"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["amount_display"] == "$250.50 per month"
    limit.refresh_from_db()
    assert limit.amount == 250_500_000


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"metric": "cost", "amount_usd": "0"}, "amount_usd"),
        ({"metric": "cost", "amount_usd": "-1.00"}, "amount_usd"),
        ({"metric": "cost", "amount_usd": "0.0000001"}, "amount_usd"),
        ({"metric": "cost", "amount_usd": "ten"}, "amount_usd"),
        ({"metric": "cost", "amount_usd": "1.00", "amount": 1_000_000}, "amount_usd"),
        ({"metric": "requests", "amount_usd": "1.00"}, "amount_usd"),
    ],
)
def test_bad_amount_usd_is_a_400(api_staff, org_a, data, field) -> None:  # type: ignore[no-untyped-def]
    base = {"scope": "org", "org": "acme", "window": "calendar_day"}
    response = api_staff.post(URL, {**base, **data}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert Limit.objects.count() == 0


# --- current usage --------------------------------------------------------------------------


def test_current_usage_reflects_real_redis_usage(api_staff, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post(URL, {**ORG_LIMIT, "org": "acme", "amount": 10}, format="json")
    assert response.status_code == 201, response.content
    limit = Limit.objects.get(pk=response.json()["id"])
    assert response.json()["current_usage"] == 0
    for _ in range(3):
        charge(limit, 1, org_id=org_a.pk)
    body = api_staff.get(f"{URL}{limit.pk}/").json()
    assert body["current_usage"] == 3
    listed = {row["id"]: row for row in results(api_staff.get(URL))}
    assert listed[limit.pk]["current_usage"] == 3


def test_current_usage_of_tokens_cost_and_concurrency(api_staff, org_a, chat, org_a_key) -> None:  # type: ignore[no-untyped-def]
    tokens = make_limit(
        scope="org_feature", org=org_a, feature=chat, metric="tokens", amount=10_000
    )
    cost = make_limit(
        scope="org", org=org_a, metric="cost", window="calendar_month", amount=5_000_000
    )
    concurrent = make_limit(
        scope="api_key", api_key=org_a_key, org=org_a, metric="concurrent", window="none", amount=3
    )
    charge(tokens, 1500, org_id=org_a.pk)
    charge(cost, 250_000, org_id=org_a.pk)
    charge(concurrent, 1, org_id=org_a.pk)
    charge(concurrent, 1, org_id=org_a.pk)
    rows = {row["id"]: row for row in results(api_staff.get(URL))}
    assert rows[tokens.pk]["current_usage"] == 1500
    assert rows[cost.pk]["current_usage"] == 250_000
    assert rows[concurrent.pk]["current_usage"] == 2


def test_shared_limits_show_their_one_counter_and_tier_defaults_none(  # type: ignore[no-untyped-def]
    api_staff, org_a, global_limit, feature_limit, free_default
) -> None:
    charge(global_limit, 1, org_id=org_a.pk)
    charge(global_limit, 1, org_id=org_a.pk)
    charge(feature_limit, 1, org_id=org_a.pk)
    charge(free_default, 1, org_id=org_a.pk)
    rows = {row["id"]: row for row in results(api_staff.get(URL))}
    assert rows[global_limit.pk]["current_usage"] == 2
    assert rows[feature_limit.pk]["current_usage"] == 1
    # A tier default counts per org: there is no single number for it here.
    assert rows[free_default.pk]["current_usage"] is None


def test_an_org_admin_sees_the_usage_of_their_limits(api_alice, org_a, a_limit) -> None:  # type: ignore[no-untyped-def]
    charge(a_limit, 5, org_id=org_a.pk)
    assert api_alice.get(f"{URL}{a_limit.pk}/").json()["current_usage"] == 5


# --- tenancy --------------------------------------------------------------------------------


def test_staff_see_every_limit(  # type: ignore[no-untyped-def]
    api_staff, a_limit, b_limit, global_limit, feature_limit, free_default, premium_default
) -> None:
    assert ids(api_staff.get(URL)) == {
        a_limit.pk,
        b_limit.pk,
        global_limit.pk,
        feature_limit.pk,
        free_default.pk,
        premium_default.pk,
    }


def test_an_org_admin_sees_their_org_their_tier_and_shared_limits(  # type: ignore[no-untyped-def]
    api_alice,
    org_a,
    org_a_key,
    org_b_key,
    a_limit,
    b_limit,
    global_limit,
    feature_limit,
    free_default,
    premium_default,
) -> None:
    org_b = org_b_key.org
    org_b.tier = premium_default.tier
    org_b.save()
    key_limit = make_limit(scope="api_key", api_key=org_a_key, org=org_a)
    b_key_limit = make_limit(scope="api_key", api_key=org_b_key, org=org_b)
    visible = ids(api_alice.get(URL))
    assert visible == {a_limit.pk, key_limit.pk, global_limit.pk, feature_limit.pk, free_default.pk}
    assert b_limit.pk not in visible and b_key_limit.pk not in visible
    assert premium_default.pk not in visible


def test_an_outsider_gets_404_for_another_orgs_limit(api_charlie, a_limit) -> None:  # type: ignore[no-untyped-def]
    url = f"{URL}{a_limit.pk}/"
    assert api_charlie.get(url).status_code == 404
    assert api_charlie.patch(url, {"amount": 1}, format="json").status_code == 404
    assert api_charlie.put(url, {**ORG_LIMIT, "amount": 1}, format="json").status_code == 404
    assert api_charlie.delete(url).status_code == 404
    missing = api_charlie.get(f"{URL}999999/")
    assert missing.status_code == 404
    assert api_charlie.get(url).json() == missing.json()
    a_limit.refresh_from_db()
    assert a_limit.amount == 60
    assert a_limit.pk not in ids(api_charlie.get(URL))


def test_an_outsider_cannot_use_another_orgs_key(api_charlie, org_a_key, org_b) -> None:  # type: ignore[no-untyped-def]
    data = {**ORG_LIMIT, "scope": "api_key"}
    response = api_charlie.post(URL, {**data, "api_key": org_a_key.pk}, format="json")
    assert response.status_code == 400
    assert "does not exist" in str(response.json()["api_key"])
    missing = api_charlie.post(URL, {**data, "api_key": 999_999}, format="json")
    assert missing.status_code == 400
    assert "does not exist" in str(missing.json()["api_key"])
    assert not Limit.objects.exists()


def test_an_outsider_cannot_move_their_limit_onto_another_orgs_key(  # type: ignore[no-untyped-def]
    api_charlie, org_b, org_a_key
) -> None:
    limit = make_limit(scope="org", org=org_b)
    response = api_charlie.patch(
        f"{URL}{limit.pk}/", {"scope": "api_key", "api_key": org_a_key.pk}, format="json"
    )
    assert response.status_code == 400
    assert "api_key" in response.json()
    limit.refresh_from_db()
    assert limit.scope == "org" and limit.api_key_id is None


@pytest.mark.parametrize(
    "data",
    [
        {"scope": "global"},
        {"scope": "feature", "feature": "chat"},
        {"scope": "org", "tier": "free"},
        {"scope": "org_feature", "tier": "free", "feature": "chat"},
    ],
)
def test_only_global_staff_create_global_feature_and_tier_limits(  # type: ignore[no-untyped-def]
    api_charlie, api_alice, chat, free_tier, data
) -> None:
    for client in (api_charlie, api_alice):
        response = client.post(URL, {**ORG_LIMIT, **data}, format="json")
        assert response.status_code == 403, response.content
    assert not Limit.objects.exists()


def test_an_org_admin_cannot_change_shared_limits(  # type: ignore[no-untyped-def]
    api_alice, global_limit, feature_limit, free_default
) -> None:
    for limit in (global_limit, feature_limit, free_default):
        url = f"{URL}{limit.pk}/"
        assert api_alice.get(url).status_code == 200
        assert api_alice.patch(url, {"amount": 1}, format="json").status_code == 403
        assert api_alice.delete(url).status_code == 403
        limit.refresh_from_db()
        assert limit.amount != 1


def test_an_org_admin_cannot_turn_their_limit_into_a_shared_one(api_alice, a_limit, chat) -> None:  # type: ignore[no-untyped-def]
    url = f"{URL}{a_limit.pk}/"
    for data in (
        {"scope": "global", "org": None},
        {"scope": "feature", "org": None, "feature": "chat"},
        {"tier": "free", "org": None},
    ):
        assert api_alice.patch(url, data, format="json").status_code == 403
    a_limit.refresh_from_db()
    assert (a_limit.scope, a_limit.org_id, a_limit.tier_id) == ("org", a_limit.org_id, None)


def test_an_org_admin_creates_org_feature_limits_for_their_org_only(  # type: ignore[no-untyped-def]
    api_alice, org_a, org_b, chat
) -> None:
    data = {**ORG_LIMIT, "scope": "org_feature", "feature": "chat"}
    response = api_alice.post(URL, data, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["org"] == "acme"
    assert Limit.objects.get(pk=response.json()["id"]).org == org_a

    response = api_alice.post(URL, {**data, "org": "globex"}, format="json")
    assert response.status_code == 400
    assert "org" in response.json()
    assert not Limit.objects.filter(org=org_b).exists()


def test_an_org_admin_changes_and_deletes_their_own_limit(api_alice, a_limit, org_b) -> None:  # type: ignore[no-untyped-def]
    url = f"{URL}{a_limit.pk}/"
    response = api_alice.patch(url, {"amount": 120, "org": "globex"}, format="json")
    assert response.status_code == 400  # another org is "does not exist"
    response = api_alice.patch(url, {"amount": 120}, format="json")
    assert response.status_code == 200, response.content
    a_limit.refresh_from_db()
    assert a_limit.amount == 120 and a_limit.org.slug == "acme"
    assert api_alice.delete(url).status_code == 204
    assert not Limit.objects.filter(pk=a_limit.pk).exists()


def test_an_org_admin_creates_limits_on_their_own_keys(api_alice, org_a, org_a_key) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.post(
        URL, {**ORG_LIMIT, "scope": "api_key", "api_key": org_a_key.pk}, format="json"
    )
    assert response.status_code == 201, response.content
    limit = Limit.objects.get(pk=response.json()["id"])
    assert (limit.api_key, limit.org) == (org_a_key, org_a)


def test_an_org_member_reads_but_cannot_write(api_bob, a_limit, chat) -> None:  # type: ignore[no-untyped-def]
    url = f"{URL}{a_limit.pk}/"
    assert api_bob.get(url).status_code == 200
    assert a_limit.pk in ids(api_bob.get(URL))
    assert api_bob.post(URL, ORG_LIMIT, format="json").status_code == 403
    assert api_bob.patch(url, {"amount": 1}, format="json").status_code == 403
    assert api_bob.put(url, {**ORG_LIMIT, "amount": 1}, format="json").status_code == 403
    assert api_bob.delete(url).status_code == 403
    a_limit.refresh_from_db()
    assert a_limit.amount == 60
    assert Limit.objects.count() == 1


def test_the_limits_api_needs_credentials(a_limit) -> None:  # type: ignore[no-untyped-def]
    assert APIClient().get(URL).status_code == 401
    assert APIClient().post(URL, ORG_LIMIT, format="json").status_code == 401
