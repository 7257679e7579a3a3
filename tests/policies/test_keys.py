from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from policies import keys
from policies.models import ApiKey, Organization
from policies.selectors import apikey_for_secret
from policies.services import KeyScopeError, apikey_create, apikey_revoke

pytestmark = pytest.mark.django_db


def test_a_generated_key_has_the_documented_shape() -> None:
    material = keys.generate()
    assert material.raw.startswith(f"tg_{material.prefix}_")
    assert keys.parse_prefix(material.raw) == material.prefix
    assert len(material.hash) == 64


def test_it_stores_only_the_prefix_and_a_hash(org_a: Organization) -> None:
    key, raw = apikey_create(org=org_a, name="ci")
    stored = ApiKey.objects.get(pk=key.pk)
    secret = raw.split("_")[2]
    assert stored.prefix == raw.split("_")[1]
    assert secret not in stored.key_hash
    assert raw not in str(ApiKey.objects.filter(pk=key.pk).values().get())


def test_it_authenticates_the_right_key_and_nothing_else(org_a: Organization) -> None:
    key, raw = apikey_create(org=org_a, name="ci")
    assert apikey_for_secret(raw=raw) == key
    tampered = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    assert apikey_for_secret(raw=tampered) is None
    assert apikey_for_secret(raw="tg_short_x") is None
    assert apikey_for_secret(raw="") is None


def test_a_revoked_key_no_longer_authenticates(org_a: Organization) -> None:
    key, raw = apikey_create(org=org_a, name="ci")
    apikey_revoke(key=key)
    first_revocation = key.revoked_at
    apikey_revoke(key=key)
    assert key.revoked_at == first_revocation
    assert key.status == "revoked"
    assert apikey_for_secret(raw=raw) is None


def test_an_expired_key_no_longer_authenticates(org_a: Organization) -> None:
    key, raw = apikey_create(org=org_a, name="ci", expires_at=timezone.now() + timedelta(hours=1))
    assert apikey_for_secret(raw=raw) == key
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert apikey_for_secret(raw=raw) is None


def test_a_key_of_an_inactive_org_no_longer_authenticates(org_a: Organization) -> None:
    _key, raw = apikey_create(org=org_a, name="ci")
    Organization.objects.filter(pk=org_a.pk).update(is_active=False)
    assert apikey_for_secret(raw=raw) is None


def test_a_key_cannot_be_given_another_orgs_model(org_b, org_a_model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeyScopeError):
        apikey_create(org=org_b, name="sneaky", allowed_models=[org_a_model])
