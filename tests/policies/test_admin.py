"""The Django admin: keys shown once, write-only secrets, org scoping with an outsider."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from gateway.models import Provider
from policies.models import ApiKey, Organization
from policies.selectors import apikey_for_secret
from policies.services import apikey_create

pytestmark = pytest.mark.django_db

RAW_KEY = re.compile(r"tg_[A-Za-z0-9]{8}_[A-Za-z0-9]{40}")


def logged_in(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


def test_staff_creates_a_key_and_sees_it_exactly_once(staff, org_a, chat) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(staff)
    response = client.post(
        reverse("admin:policies_apikey_add"),
        {"org": org_a.pk, "name": "ci", "default_feature": chat.pk},
    )
    assert response.status_code == 200
    raw = RAW_KEY.search(response.content.decode())
    assert raw, response.content.decode()[:2000]
    key = apikey_for_secret(raw=raw.group(0))
    assert key is not None and key.org == org_a and key.default_feature == chat

    for url in (
        reverse("admin:policies_apikey_changelist"),
        reverse("admin:policies_apikey_change", args=[key.pk]),
    ):
        page = client.get(url).content.decode()
        assert raw.group(0) not in page
        assert key.prefix in page


def test_an_org_admins_new_key_always_belongs_to_their_org(alice, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(alice)
    response = client.post(reverse("admin:policies_apikey_add"), {"org": org_b.pk, "name": "mine"})
    assert response.status_code == 200
    assert ApiKey.objects.get(name="mine").org == org_a


def test_an_org_admin_lists_only_their_orgs_keys(alice, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    apikey_create(org=org_a, name="acme-key")
    apikey_create(org=org_b, name="globex-key")
    page = logged_in(alice).get(reverse("admin:policies_apikey_changelist")).content.decode()
    assert "acme-key" in page
    assert "globex-key" not in page


def test_an_outsider_cannot_open_or_revoke_another_orgs_key(charlie, org_a) -> None:  # type: ignore[no-untyped-def]
    key, raw = apikey_create(org=org_a, name="acme-key")
    client = logged_in(charlie)
    response = client.get(reverse("admin:policies_apikey_change", args=[key.pk]))
    # The admin treats rows outside the queryset as missing: redirect with "doesn't exist".
    assert response.status_code == 302
    client.post(
        reverse("admin:policies_apikey_changelist"),
        {"action": "revoke_selected", "_selected_action": [key.pk]},
    )
    assert apikey_for_secret(raw=raw) is not None


def test_an_org_member_can_read_but_not_add_or_revoke(bob, org_a) -> None:  # type: ignore[no-untyped-def]
    key, raw = apikey_create(org=org_a, name="acme-key")
    client = logged_in(bob)
    assert client.get(reverse("admin:policies_apikey_changelist")).status_code == 200
    assert client.get(reverse("admin:policies_apikey_add")).status_code == 403
    client.post(
        reverse("admin:policies_apikey_changelist"),
        {"action": "revoke_selected", "_selected_action": [key.pk]},
    )
    assert apikey_for_secret(raw=raw) is not None


def test_the_revoke_action_revokes_keys(alice, org_a) -> None:  # type: ignore[no-untyped-def]
    key, raw = apikey_create(org=org_a, name="acme-key")
    response = logged_in(alice).post(
        reverse("admin:policies_apikey_changelist"),
        {"action": "revoke_selected", "_selected_action": [key.pk]},
    )
    assert response.status_code == 302
    assert apikey_for_secret(raw=raw) is None


def test_a_provider_key_is_write_only_in_the_admin(staff, shared_provider: Provider) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(staff)
    url = reverse("admin:gateway_provider_change", args=[shared_provider.pk])
    page = client.get(url).content.decode()
    assert "sk-shared-secret" not in page
    assert shared_provider.api_key_ciphertext not in page

    form = {
        "name": shared_provider.name,
        "kind": shared_provider.kind,
        "base_url": shared_provider.base_url,
        "is_active": "on",
        "api_key": "",
    }
    assert client.post(url, form).status_code == 302
    assert Provider.objects.get(pk=shared_provider.pk).api_key == "sk-shared-secret"

    assert client.post(url, {**form, "api_key": "sk-rotated"}).status_code == 302
    assert Provider.objects.get(pk=shared_provider.pk).api_key == "sk-rotated"

    assert client.post(url, {**form, "clear_api_key": "on"}).status_code == 302
    assert Provider.objects.get(pk=shared_provider.pk).has_api_key is False


def test_an_org_admin_can_view_but_not_change_a_shared_provider(alice, shared_provider) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(alice)
    url = reverse("admin:gateway_provider_change", args=[shared_provider.pk])
    response = client.get(url)
    assert response.status_code == 200
    assert 'name="_save"' not in response.content.decode()
    response = client.post(
        url, {"name": "renamed", "kind": "openai", "base_url": "http://127.0.0.1:9", "api_key": "x"}
    )
    assert response.status_code == 403
    assert Provider.objects.get(pk=shared_provider.pk).name == shared_provider.name


def test_only_global_staff_manage_organizations(staff, alice, org_a, free_tier) -> None:  # type: ignore[no-untyped-def]
    add = reverse("admin:policies_organization_add")
    assert logged_in(alice).get(add).status_code == 403
    response = logged_in(staff).post(
        add, {"name": "Initech", "slug": "initech", "tier": free_tier.pk, "is_active": "on"}
    )
    assert response.status_code == 302
    assert Organization.objects.filter(slug="initech").exists()


def test_a_duplicate_org_name_is_a_form_error(staff, org_a, free_tier) -> None:  # type: ignore[no-untyped-def]
    response = logged_in(staff).post(
        reverse("admin:policies_organization_add"),
        {"name": "ACME", "slug": "acme-2", "tier": free_tier.pk},
    )
    assert response.status_code == 200
    assert "already exists" in response.content.decode()


def test_a_model_cannot_use_another_orgs_provider(staff, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    provider = Provider.objects.create(
        org=org_b, name="globex-llm", kind="openai_compatible", base_url="http://127.0.0.1:9/v1"
    )
    response = logged_in(staff).post(
        reverse("admin:gateway_llmmodel_add"),
        {
            "org": org_a.pk,
            "name": "x",
            "provider": provider.pk,
            "upstream_name": "x",
            "mode": "chat",
            "input_price_per_million": "1",
            "output_price_per_million": "1",
            "cached_input_price_per_million": "0",
            "is_active": "on",
        },
    )
    assert response.status_code == 200
    assert "shared provider or one of its own org" in response.content.decode()


def test_list_filters_never_name_another_org(alice, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    from gateway.models import LlmModel

    apikey_create(org=org_a, name="acme-key")
    apikey_create(org=org_b, name="globex-key")
    provider = Provider.objects.create(
        org=org_b, name="globex-secret-llm", kind="openai", base_url="http://127.0.0.1:9/v1"
    )
    LlmModel.objects.create(org=org_b, name="globex-model", provider=provider, upstream_name="x")
    client = logged_in(alice)
    keys_page = client.get(reverse("admin:policies_apikey_changelist")).content.decode()
    models_page = client.get(reverse("admin:gateway_llmmodel_changelist")).content.decode()
    assert "Globex" not in keys_page
    assert "globex-secret-llm" not in models_page
