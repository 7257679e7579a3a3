"""The REST management API for organizations, features and API keys, against a real DB.

The cast (tests/conftest.py): ``staff`` is global staff, ``alice`` administers org A
(acme), ``bob`` is a read-only member of org A, ``charlie`` administers org B (globex).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.test import APIClient

from gateway.models import LlmModel
from policies.models import ApiKey, Feature, Organization, Tier
from policies.selectors import apikey_for_secret
from policies.services import apikey_create
from tests.conftest import token_client

pytestmark = pytest.mark.django_db


def results(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content
    body = response.json()
    return body["results"] if isinstance(body, dict) and "results" in body else body


def slugs(response: Any) -> set[str]:
    return {row["slug"] for row in results(response)}


@pytest.fixture
def premium_tier(db: None) -> Tier:
    return Tier.objects.get_or_create(slug="premium", defaults={"name": "Premium"})[0]


@pytest.fixture
def org_a_key(org_a: Organization) -> ApiKey:
    key, _raw = apikey_create(org=org_a, name="acme-ci")
    return key


@pytest.fixture
def org_b_key(org_b: Organization) -> ApiKey:
    key, _raw = apikey_create(org=org_b, name="globex-ci")
    return key


# --- authentication ------------------------------------------------------------------


ENDPOINTS = ["/api/orgs/", "/api/features/", "/api/keys/", "/api/providers/", "/api/models/"]


@pytest.mark.parametrize("url", ENDPOINTS)
def test_a_request_without_credentials_gets_401(url: str) -> None:
    response = APIClient().get(url)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Token")


@pytest.mark.parametrize("url", ENDPOINTS)
def test_a_request_with_a_bad_token_gets_401(url: str, staff) -> None:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert client.get(url).status_code == 401


def test_a_write_without_credentials_gets_401_and_changes_nothing() -> None:
    response = APIClient().post("/api/orgs/", {"name": "Nope", "slug": "nope"}, format="json")
    assert response.status_code == 401
    assert not Organization.objects.filter(slug="nope").exists()


@pytest.mark.parametrize("url", ENDPOINTS)
def test_an_authenticated_non_staff_user_without_a_membership_gets_403(url: str) -> None:
    user = get_user_model().objects.create_user("mallory", "m@example.test", "pw-x")
    response = token_client(user).get(url)
    assert response.status_code == 403


def test_a_staff_flagged_but_inactive_user_gets_no_access(staff) -> None:  # type: ignore[no-untyped-def]
    client = token_client(staff)
    staff.is_active = False
    staff.save()
    assert client.get("/api/orgs/").status_code in (401, 403)


# --- organizations -----------------------------------------------------------------


def test_global_staff_see_every_org(api_staff, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    assert slugs(api_staff.get("/api/orgs/")) == {"acme", "globex"}


def test_an_org_admin_sees_only_their_own_org(api_alice, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    assert slugs(api_alice.get("/api/orgs/")) == {"acme"}
    response = api_alice.get("/api/orgs/acme/")
    assert response.status_code == 200
    assert response.json()["name"] == "Acme"
    assert response.json()["tier"] == "free"


def test_an_org_member_can_read_their_org(api_bob, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    assert slugs(api_bob.get("/api/orgs/")) == {"acme"}
    assert api_bob.get("/api/orgs/acme/").status_code == 200


def test_an_outsider_gets_404_for_another_orgs_detail(api_charlie, org_a) -> None:  # type: ignore[no-untyped-def]
    assert slugs(api_charlie.get("/api/orgs/")) == {"globex"}
    assert api_charlie.get("/api/orgs/acme/").status_code == 404


def test_an_outsider_gets_404_not_403_when_changing_another_org(api_charlie, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_charlie.patch("/api/orgs/acme/", {"name": "Hijacked"}, format="json")
    assert response.status_code == 404
    assert (
        api_charlie.put("/api/orgs/acme/", {"name": "Hijacked"}, format="json").status_code == 404
    )
    assert api_charlie.delete("/api/orgs/acme/").status_code == 404
    org_a.refresh_from_db()
    assert org_a.name == "Acme"


def test_a_missing_org_and_another_orgs_detail_look_the_same_to_an_outsider(  # type: ignore[no-untyped-def]
    api_charlie, org_a
) -> None:
    existing = api_charlie.get("/api/orgs/acme/")
    missing = api_charlie.get("/api/orgs/no-such-org/")
    assert existing.status_code == missing.status_code == 404
    assert existing.json() == missing.json()


def test_global_staff_create_an_org_on_the_default_tier(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/orgs/", {"name": "Initech", "slug": "initech"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["tier"] == "free"
    assert response.json()["is_active"] is True
    assert Organization.objects.get(slug="initech").tier.slug == "free"


def test_global_staff_create_an_org_on_a_given_tier(api_staff, premium_tier) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post(
        "/api/orgs/", {"name": "Initech", "slug": "initech", "tier": "premium"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert Organization.objects.get(slug="initech").tier == premium_tier


def test_an_unknown_tier_is_a_400(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post(
        "/api/orgs/", {"name": "Initech", "slug": "initech", "tier": "platinum"}, format="json"
    )
    assert response.status_code == 400
    assert "tier" in response.json()


def test_an_invalid_slug_is_a_400(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post(
        "/api/orgs/", {"name": "Initech", "slug": "Not A Slug-"}, format="json"
    )
    assert response.status_code == 400
    assert "slug" in response.json()


def test_a_duplicate_org_slug_is_a_400_not_a_500(api_staff, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/orgs/", {"name": "Other", "slug": "acme"}, format="json")
    assert response.status_code == 400
    assert "slug" in response.json()


def test_a_duplicate_org_name_in_another_case_is_a_400_not_a_500(api_staff, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/orgs/", {"name": "ACME", "slug": "acme-2"}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()
    assert Organization.objects.count() == 1


def test_renaming_an_org_to_another_orgs_name_in_another_case_is_a_400(  # type: ignore[no-untyped-def]
    api_staff, org_a, org_b
) -> None:
    response = api_staff.patch("/api/orgs/globex/", {"name": "acme"}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()


def test_an_org_may_change_the_case_of_its_own_name(api_alice, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.patch("/api/orgs/acme/", {"name": "ACME"}, format="json")
    assert response.status_code == 200, response.content
    org_a.refresh_from_db()
    assert org_a.name == "ACME"


def test_an_org_admin_can_rename_their_org(api_alice, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.patch("/api/orgs/acme/", {"name": "Acme Corp"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["name"] == "Acme Corp"
    org_a.refresh_from_db()
    assert org_a.name == "Acme Corp"


def test_an_org_admin_cannot_change_tier_slug_or_active_flag(  # type: ignore[no-untyped-def]
    api_alice, org_a, premium_tier
) -> None:
    response = api_alice.patch(
        "/api/orgs/acme/",
        {"name": "Acme Corp", "tier": "premium", "slug": "acme-new", "is_active": False},
        format="json",
    )
    assert response.status_code == 200, response.content
    org_a.refresh_from_db()
    assert org_a.name == "Acme Corp"
    assert org_a.slug == "acme"
    assert org_a.tier.slug == "free"
    assert org_a.is_active is True


def test_global_staff_can_change_tier_and_deactivate_an_org(  # type: ignore[no-untyped-def]
    api_staff, org_a, premium_tier
) -> None:
    response = api_staff.patch(
        "/api/orgs/acme/", {"tier": "premium", "is_active": False}, format="json"
    )
    assert response.status_code == 200, response.content
    org_a.refresh_from_db()
    assert org_a.tier == premium_tier
    assert org_a.is_active is False


def test_an_org_member_gets_403_for_every_org_write(api_bob, org_a) -> None:  # type: ignore[no-untyped-def]
    assert api_bob.patch("/api/orgs/acme/", {"name": "Bob's"}, format="json").status_code == 403
    assert api_bob.put("/api/orgs/acme/", {"name": "Bob's"}, format="json").status_code == 403
    assert api_bob.delete("/api/orgs/acme/").status_code == 403
    assert (
        api_bob.post("/api/orgs/", {"name": "Bobco", "slug": "bobco"}, format="json").status_code
        == 403
    )
    org_a.refresh_from_db()
    assert org_a.name == "Acme"


def test_an_org_admin_cannot_create_an_org(api_alice, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.post("/api/orgs/", {"name": "Initech", "slug": "initech"}, format="json")
    assert response.status_code == 403
    assert not Organization.objects.filter(name="Initech").exists()


def test_an_org_admin_gets_403_for_creating_an_org_whatever_the_body(  # type: ignore[no-untyped-def]
    api_alice, org_a, org_b
) -> None:
    # Validation must not run first: it would reveal other orgs' names to an org admin.
    assert api_alice.post("/api/orgs/", {}, format="json").status_code == 403
    assert api_alice.post("/api/orgs/", {"name": "globex"}, format="json").status_code == 403


def test_an_org_admin_cannot_delete_their_org(api_alice, org_a) -> None:  # type: ignore[no-untyped-def]
    assert api_alice.delete("/api/orgs/acme/").status_code == 403
    assert Organization.objects.filter(pk=org_a.pk).exists()


def test_global_staff_can_delete_an_org_with_keys_providers_and_models(  # type: ignore[no-untyped-def]
    api_staff, org_a, org_a_key, shared_model
) -> None:
    provider = org_a.providers.create(name="own", kind="openai", base_url="http://127.0.0.1:9")
    LlmModel.objects.create(org=org_a, name="own-model", provider=provider, upstream_name="x")
    org_a_key.allowed_models.set([shared_model])
    response = api_staff.delete("/api/orgs/acme/")
    assert response.status_code == 204, response.content
    assert not Organization.objects.filter(slug="acme").exists()
    assert not ApiKey.objects.filter(pk=org_a_key.pk).exists()
    assert LlmModel.objects.filter(pk=shared_model.pk).exists()


def test_deleting_an_org_whose_provider_another_org_still_uses_is_a_409_not_a_500(  # type: ignore[no-untyped-def]
    api_staff, org_a, org_b
) -> None:
    # Only possible by writing the DB directly; the API itself refuses such a model.
    provider = org_a.providers.create(name="own", kind="openai", base_url="http://127.0.0.1:9")
    LlmModel.objects.create(org=org_b, name="globex-on-acme", provider=provider, upstream_name="x")
    response = api_staff.delete("/api/orgs/acme/")
    assert response.status_code == 409
    assert "globex-on-acme" in response.json()["detail"]
    assert Organization.objects.filter(slug="acme").exists()
    assert LlmModel.objects.filter(org=org_b).exists()


# --- features ------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["api_staff", "api_alice", "api_bob", "api_charlie"])
def test_the_global_feature_list_is_readable_by_every_admin_user(  # type: ignore[no-untyped-def]
    who, request, chat, summarize
) -> None:
    client = request.getfixturevalue(who)
    assert {row["name"] for row in results(client.get("/api/features/"))} == {"chat", "summarize"}
    assert client.get("/api/features/chat/").status_code == 200


def test_global_staff_create_rename_and_delete_features(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post(
        "/api/features/", {"name": "chat", "description": "Chat UI"}, format="json"
    )
    assert response.status_code == 201, response.content
    response = api_staff.patch("/api/features/chat/", {"description": "Chat"}, format="json")
    assert response.status_code == 200
    assert Feature.objects.get(name="chat").description == "Chat"
    assert api_staff.delete("/api/features/chat/").status_code == 204
    assert not Feature.objects.filter(name="chat").exists()


@pytest.mark.parametrize("who", ["api_alice", "api_bob", "api_charlie"])
def test_only_global_staff_can_change_features(who, request, chat) -> None:  # type: ignore[no-untyped-def]
    client = request.getfixturevalue(who)
    assert client.post("/api/features/", {"name": "new"}, format="json").status_code == 403
    assert (
        client.patch("/api/features/chat/", {"description": "x"}, format="json").status_code == 403
    )
    assert client.delete("/api/features/chat/").status_code == 403
    assert list(Feature.objects.values_list("name", "description")) == [("chat", "")]


def test_a_duplicate_feature_name_is_a_400(api_staff, chat) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/features/", {"name": "chat"}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()


def test_a_feature_name_must_be_a_slug(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/features/", {"name": "Not a slug"}, format="json")
    assert response.status_code == 400
    assert "name" in response.json()


# --- API keys: create, show once, revoke -----------------------------------------------


def test_creating_a_key_returns_the_full_key_exactly_once(api_alice, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.post("/api/keys/", {"org": "acme", "name": "ci"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    raw = body["key"]
    assert raw.startswith(f"tg_{body['prefix']}_")
    assert body["display"] == f"tg_{body['prefix']}_…"
    assert body["status"] == "active"
    assert body["org"] == "acme"
    assert apikey_for_secret(raw=raw).pk == body["id"]

    detail = api_alice.get(f"/api/keys/{body['id']}/")
    assert detail.status_code == 200
    assert "key" not in detail.json()
    assert raw not in detail.content.decode()
    listing = api_alice.get("/api/keys/")
    assert all("key" not in row for row in results(listing))
    assert raw not in listing.content.decode()
    secret = raw.split("_")[2]
    assert secret not in detail.content.decode() + listing.content.decode()


def test_a_created_key_is_stored_as_prefix_and_hash_only(api_alice, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.post("/api/keys/", {"name": "ci"}, format="json")
    assert response.status_code == 201, response.content
    raw = response.json()["key"]
    row = ApiKey.objects.filter(pk=response.json()["id"]).values().get()
    assert row["prefix"] == raw.split("_")[1]
    assert len(row["key_hash"]) == 64
    assert raw not in str(row)
    assert raw.split("_")[2] not in str(row)


def test_a_key_records_who_created_it(api_alice, alice, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.post("/api/keys/", {"name": "ci"}, format="json")
    assert ApiKey.objects.get(pk=response.json()["id"]).created_by == alice


def test_an_org_admin_creating_a_key_without_an_org_gets_their_own(api_alice, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.post("/api/keys/", {"name": "ci"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["org"] == "acme"


def test_global_staff_must_name_the_org_of_a_key(api_staff, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/keys/", {"name": "ci"}, format="json")
    assert response.status_code == 400
    assert "org" in response.json()
    response = api_staff.post("/api/keys/", {"name": "ci", "org": "acme"}, format="json")
    assert response.status_code == 201, response.content
    assert ApiKey.objects.get(pk=response.json()["id"]).org == org_a


def test_a_key_gets_features_and_models(
    api_alice, org_a, chat, summarize, shared_model, org_a_model
) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.post(
        "/api/keys/",
        {
            "name": "ci",
            "default_feature": "chat",
            "allowed_features": ["chat", "summarize"],
            "allowed_models": [shared_model.pk, org_a_model.pk],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["default_feature"] == "chat"
    assert sorted(body["allowed_features"]) == ["chat", "summarize"]
    assert sorted(body["allowed_models"]) == sorted([shared_model.pk, org_a_model.pk])
    key = ApiKey.objects.get(pk=body["id"])
    assert set(key.allowed_models.all()) == {shared_model, org_a_model}


def test_an_expiry_in_the_past_is_a_400(api_alice, org_a) -> None:  # type: ignore[no-untyped-def]
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    response = api_alice.post("/api/keys/", {"name": "ci", "expires_at": past}, format="json")
    assert response.status_code == 400
    assert "expires_at" in response.json()
    assert not ApiKey.objects.exists()


def test_an_expiry_in_the_future_is_kept(api_alice, org_a) -> None:  # type: ignore[no-untyped-def]
    future = timezone.now() + timedelta(days=30)
    response = api_alice.post(
        "/api/keys/", {"name": "ci", "expires_at": future.isoformat()}, format="json"
    )
    assert response.status_code == 201, response.content
    key = ApiKey.objects.get(pk=response.json()["id"])
    assert abs((key.expires_at - future).total_seconds()) < 1
    assert apikey_for_secret(raw=response.json()["key"]) == key


def test_moving_an_expiry_into_the_past_is_a_400(api_alice, org_a_key) -> None:  # type: ignore[no-untyped-def]
    past = (timezone.now() - timedelta(days=1)).isoformat()
    response = api_alice.patch(f"/api/keys/{org_a_key.pk}/", {"expires_at": past}, format="json")
    assert response.status_code == 400
    org_a_key.refresh_from_db()
    assert org_a_key.expires_at is None


def test_a_default_feature_outside_the_allowed_features_is_a_400(  # type: ignore[no-untyped-def]
    api_alice, org_a, chat, summarize
) -> None:
    response = api_alice.post(
        "/api/keys/",
        {"name": "ci", "default_feature": "summarize", "allowed_features": ["chat"]},
        format="json",
    )
    assert response.status_code == 400
    assert "default_feature" in response.json()
    assert not ApiKey.objects.exists()


def test_narrowing_allowed_features_below_the_default_is_a_400(  # type: ignore[no-untyped-def]
    api_alice, org_a, chat, summarize
) -> None:
    key, _raw = apikey_create(org=org_a, name="ci", default_feature=summarize)
    response = api_alice.patch(
        f"/api/keys/{key.pk}/", {"allowed_features": ["chat"]}, format="json"
    )
    assert response.status_code == 400
    assert "default_feature" in response.json()
    assert list(key.allowed_features.all()) == []


def test_a_new_default_feature_outside_the_existing_allowed_features_is_a_400(  # type: ignore[no-untyped-def]
    api_alice, org_a, chat, summarize
) -> None:
    key, _raw = apikey_create(org=org_a, name="ci", allowed_features=[chat])
    response = api_alice.patch(
        f"/api/keys/{key.pk}/", {"default_feature": "summarize"}, format="json"
    )
    assert response.status_code == 400
    assert "default_feature" in response.json()
    response = api_alice.patch(f"/api/keys/{key.pk}/", {"default_feature": "chat"}, format="json")
    assert response.status_code == 200, response.content


def test_an_unknown_feature_is_a_400(api_alice, org_a) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.post(
        "/api/keys/", {"name": "ci", "default_feature": "nope"}, format="json"
    )
    assert response.status_code == 400
    assert "default_feature" in response.json()


def test_revoking_a_key_stops_it_authenticating(api_alice, org_a) -> None:  # type: ignore[no-untyped-def]
    created = api_alice.post("/api/keys/", {"name": "ci"}, format="json").json()
    raw = created["key"]
    assert apikey_for_secret(raw=raw) is not None
    response = api_alice.post(f"/api/keys/{created['id']}/revoke/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "revoked"
    assert body["revoked_at"] is not None
    assert "key" not in body
    assert apikey_for_secret(raw=raw) is None
    assert api_alice.get(f"/api/keys/{created['id']}/").json()["status"] == "revoked"


def test_revoking_twice_keeps_the_first_revocation_time(api_alice, org_a_key) -> None:  # type: ignore[no-untyped-def]
    first = api_alice.post(f"/api/keys/{org_a_key.pk}/revoke/").json()["revoked_at"]
    second = api_alice.post(f"/api/keys/{org_a_key.pk}/revoke/")
    assert second.status_code == 200
    assert second.json()["revoked_at"] == first


def test_a_key_cannot_be_deleted(api_staff, api_alice, org_a_key) -> None:  # type: ignore[no-untyped-def]
    assert api_alice.delete(f"/api/keys/{org_a_key.pk}/").status_code == 405
    assert api_staff.delete(f"/api/keys/{org_a_key.pk}/").status_code == 405
    assert ApiKey.objects.filter(pk=org_a_key.pk).exists()


def test_an_org_admin_can_rename_a_key_but_not_move_it(api_alice, org_a_key, org_b) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.patch(
        f"/api/keys/{org_a_key.pk}/", {"name": "renamed", "org": "globex"}, format="json"
    )
    assert response.status_code == 200, response.content
    org_a_key.refresh_from_db()
    assert org_a_key.name == "renamed"
    assert org_a_key.org.slug == "acme"


def test_global_staff_cannot_move_a_key_to_another_org(api_staff, org_a_key, org_b) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.patch(f"/api/keys/{org_a_key.pk}/", {"org": "globex"}, format="json")
    assert response.status_code == 200, response.content
    org_a_key.refresh_from_db()
    assert org_a_key.org.slug == "acme"


def test_prefix_and_revocation_cannot_be_written(api_alice, org_a_key) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.patch(
        f"/api/keys/{org_a_key.pk}/",
        {"prefix": "AAAAAAAA", "revoked_at": timezone.now().isoformat(), "status": "revoked"},
        format="json",
    )
    assert response.status_code == 200, response.content
    stored = ApiKey.objects.get(pk=org_a_key.pk)
    assert stored.prefix == org_a_key.prefix
    assert stored.revoked_at is None


# --- API keys: tenancy ----------------------------------------------------------------


def test_each_org_admin_lists_only_their_orgs_keys(  # type: ignore[no-untyped-def]
    api_alice, api_charlie, api_staff, org_a_key, org_b_key
) -> None:
    assert {row["id"] for row in results(api_alice.get("/api/keys/"))} == {org_a_key.pk}
    assert {row["id"] for row in results(api_charlie.get("/api/keys/"))} == {org_b_key.pk}
    assert {row["id"] for row in results(api_staff.get("/api/keys/"))} == {
        org_a_key.pk,
        org_b_key.pk,
    }


def test_an_outsider_gets_404_for_another_orgs_key(api_charlie, org_a_key) -> None:  # type: ignore[no-untyped-def]
    assert api_charlie.get(f"/api/keys/{org_a_key.pk}/").status_code == 404


def test_an_outsider_gets_404_when_changing_another_orgs_key(api_charlie, org_a_key) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/keys/{org_a_key.pk}/"
    assert api_charlie.patch(url, {"name": "pwned"}, format="json").status_code == 404
    assert api_charlie.put(url, {"name": "pwned"}, format="json").status_code == 404
    org_a_key.refresh_from_db()
    assert org_a_key.name == "acme-ci"


def test_an_outsider_gets_404_when_revoking_another_orgs_key(api_charlie, org_a_key) -> None:  # type: ignore[no-untyped-def]
    assert api_charlie.post(f"/api/keys/{org_a_key.pk}/revoke/").status_code == 404
    org_a_key.refresh_from_db()
    assert org_a_key.revoked_at is None


def test_an_outsider_cannot_create_a_key_for_another_org(api_charlie, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    response = api_charlie.post("/api/keys/", {"org": "acme", "name": "sneaky"}, format="json")
    assert response.status_code == 400
    assert "does not exist" in str(response.json()["org"])
    assert not ApiKey.objects.filter(org=org_a).exists()


def test_an_outsider_cannot_attach_another_orgs_private_model(  # type: ignore[no-untyped-def]
    api_charlie, org_b, org_a_model
) -> None:
    response = api_charlie.post(
        "/api/keys/", {"name": "sneaky", "allowed_models": [org_a_model.pk]}, format="json"
    )
    assert response.status_code == 400
    assert "allowed_models" in response.json()
    assert not ApiKey.objects.exists()


def test_an_outsider_cannot_add_another_orgs_private_model_to_an_existing_key(  # type: ignore[no-untyped-def]
    api_charlie, org_b_key, org_a_model
) -> None:
    response = api_charlie.patch(
        f"/api/keys/{org_b_key.pk}/", {"allowed_models": [org_a_model.pk]}, format="json"
    )
    assert response.status_code == 400
    assert list(org_b_key.allowed_models.all()) == []


def test_another_orgs_private_model_and_a_missing_model_look_the_same(  # type: ignore[no-untyped-def]
    api_charlie, org_b, org_a_model
) -> None:
    foreign = api_charlie.post(
        "/api/keys/", {"name": "k", "allowed_models": [org_a_model.pk]}, format="json"
    ).json()["allowed_models"]
    missing = api_charlie.post(
        "/api/keys/", {"name": "k", "allowed_models": [org_a_model.pk + 1000]}, format="json"
    ).json()["allowed_models"]
    assert str(foreign).replace(str(org_a_model.pk), "N") == str(missing).replace(
        str(org_a_model.pk + 1000), "N"
    )


def test_global_staff_cannot_give_a_key_another_orgs_private_model(  # type: ignore[no-untyped-def]
    api_staff, org_b, org_a_model
) -> None:
    response = api_staff.post(
        "/api/keys/",
        {"org": "globex", "name": "k", "allowed_models": [org_a_model.pk]},
        format="json",
    )
    assert response.status_code == 400
    assert "allowed_models" in response.json()
    assert not ApiKey.objects.exists()


def test_an_org_member_can_read_keys_but_gets_403_on_every_write(  # type: ignore[no-untyped-def]
    api_bob, org_a_key
) -> None:
    assert {row["id"] for row in results(api_bob.get("/api/keys/"))} == {org_a_key.pk}
    assert api_bob.get(f"/api/keys/{org_a_key.pk}/").status_code == 200
    assert api_bob.post("/api/keys/", {"name": "bobs"}, format="json").status_code == 403
    url = f"/api/keys/{org_a_key.pk}/"
    assert api_bob.patch(url, {"name": "bobs"}, format="json").status_code == 403
    assert api_bob.put(url, {"name": "bobs"}, format="json").status_code == 403
    assert api_bob.post(f"{url}revoke/").status_code == 403
    org_a_key.refresh_from_db()
    assert org_a_key.name == "acme-ci"
    assert org_a_key.revoked_at is None
    assert ApiKey.objects.count() == 1


# --- OpenAPI schema ------------------------------------------------------------------


def test_the_openapi_schema_describes_the_management_api(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200, response.content
    text = response.content.decode()
    for path in (
        "/api/keys/",
        "/api/keys/{id}/revoke/",
        "/api/orgs/",
        "/api/features/",
        "/api/providers/",
        "/api/models/",
    ):
        assert path in text
