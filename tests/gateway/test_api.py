"""The REST management API for providers and models, against a real DB.

The cast (tests/conftest.py): ``staff`` is global staff, ``alice`` administers org A
(acme), ``bob`` is a read-only member of org A, ``charlie`` administers org B (globex).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import connection

from gateway.models import LlmModel, Provider
from policies.models import Organization

pytestmark = pytest.mark.django_db

SECRET = "sk-live-very-secret-123"


def results(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content
    body = response.json()
    return body["results"] if isinstance(body, dict) and "results" in body else body


def names(response: Any) -> set[str]:
    return {row["name"] for row in results(response)}


def stored_ciphertext(provider_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT api_key_ciphertext FROM gateway_provider WHERE id = %s", [provider_id]
        )
        (stored,) = cursor.fetchone()
    return stored


def provider_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "name": "own-openai",
        "kind": "openai",
        "base_url": "https://api.example.test/v1",
        "api_key": SECRET,
    }
    body.update(overrides)
    return body


@pytest.fixture
def org_a_provider(org_a: Organization) -> Provider:
    provider = Provider(
        org=org_a,
        name="acme-openai",
        kind=Provider.Kind.OPENAI_COMPATIBLE,
        base_url="http://127.0.0.1:9/v1",
    )
    provider.api_key = "sk-acme-secret"
    provider.save()
    return provider


@pytest.fixture
def org_a_own_model(org_a: Organization, org_a_provider: Provider) -> LlmModel:
    return LlmModel.objects.create(
        org=org_a, name="acme-llama", provider=org_a_provider, upstream_name="llama-3"
    )


def model_body(provider: Provider, **overrides: Any) -> dict[str, Any]:
    body = {
        "name": "new-model",
        "provider": provider.pk,
        "upstream_name": "up-1",
        "input_price_per_million": "1.25",
        "output_price_per_million": "5.00",
    }
    body.update(overrides)
    return body


# --- providers: secrets -------------------------------------------------------------


def test_a_providers_api_key_is_write_only_and_stored_encrypted(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/providers/", provider_body(), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert "api_key" not in body
    assert body["has_api_key"] is True
    assert SECRET not in response.content.decode()

    stored = stored_ciphertext(body["id"])
    assert stored
    assert SECRET not in stored
    assert Provider.objects.get(pk=body["id"]).api_key == SECRET

    for url in ("/api/providers/", f"/api/providers/{body['id']}/"):
        read = api_staff.get(url)
        assert read.status_code == 200
        assert SECRET not in read.content.decode()
        assert stored not in read.content.decode()
        assert "api_key" not in str(read.json()).replace("has_api_key", "")


def test_no_provider_response_carries_a_secret(  # type: ignore[no-untyped-def]
    api_staff, api_alice, shared_provider, org_a_provider
) -> None:
    for client in (api_staff, api_alice):
        for url in (
            "/api/providers/",
            f"/api/providers/{shared_provider.pk}/",
            f"/api/providers/{org_a_provider.pk}/",
        ):
            text = client.get(url).content.decode()
            assert "sk-shared-secret" not in text
            assert "sk-acme-secret" not in text
            assert shared_provider.api_key_ciphertext not in text
    patched = api_alice.patch(
        f"/api/providers/{org_a_provider.pk}/", {"is_active": False}, format="json"
    )
    assert "sk-acme-secret" not in patched.content.decode()
    assert "api_key" not in patched.json()
    assert patched.json()["has_api_key"] is True


def test_patching_a_provider_without_api_key_keeps_it(api_alice, org_a_provider) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.patch(
        f"/api/providers/{org_a_provider.pk}/",
        {"base_url": "https://other.example.test/"},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["has_api_key"] is True
    assert response.json()["base_url"] == "https://other.example.test"
    assert Provider.objects.get(pk=org_a_provider.pk).api_key == "sk-acme-secret"


def test_patching_a_provider_with_a_new_api_key_replaces_it(api_alice, org_a_provider) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.patch(
        f"/api/providers/{org_a_provider.pk}/", {"api_key": SECRET}, format="json"
    )
    assert response.status_code == 200, response.content
    assert "api_key" not in response.json()
    assert SECRET not in stored_ciphertext(org_a_provider.pk)
    assert Provider.objects.get(pk=org_a_provider.pk).api_key == SECRET


def test_patching_a_provider_with_an_empty_api_key_clears_it(api_alice, org_a_provider) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.patch(
        f"/api/providers/{org_a_provider.pk}/", {"api_key": ""}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["has_api_key"] is False
    assert stored_ciphertext(org_a_provider.pk) == ""
    assert Provider.objects.get(pk=org_a_provider.pk).api_key == ""


def test_a_provider_may_be_created_without_an_api_key(api_alice, org_a) -> None:  # type: ignore[no-untyped-def]
    body = provider_body()
    del body["api_key"]
    response = api_alice.post("/api/providers/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["has_api_key"] is False


# --- providers: tenancy -------------------------------------------------------------


def test_global_staff_create_a_shared_provider_by_default(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/providers/", provider_body(), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["org"] is None
    assert Provider.objects.get(pk=response.json()["id"]).org is None


def test_global_staff_may_name_the_shared_catalog_explicitly(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/providers/", provider_body(org=None), format="json")
    assert response.status_code == 201, response.content
    assert Provider.objects.get(pk=response.json()["id"]).org is None


def test_global_staff_change_a_provider_without_naming_its_org(  # type: ignore[no-untyped-def]
    api_staff, org_a_provider, shared_provider
) -> None:
    for provider in (org_a_provider, shared_provider):
        response = api_staff.patch(
            f"/api/providers/{provider.pk}/", {"kind": "openai"}, format="json"
        )
        assert response.status_code == 200, response.content
        assert Provider.objects.get(pk=provider.pk).org == provider.org


def test_a_duplicate_provider_name_in_an_org_is_a_400_for_global_staff_too(  # type: ignore[no-untyped-def]
    api_staff, org_a_provider
) -> None:
    response = api_staff.post(
        "/api/providers/", provider_body(name="acme-openai", org="acme"), format="json"
    )
    assert response.status_code == 400
    assert "name" in response.json()
    response = api_staff.post("/api/providers/", provider_body(name="acme-openai"), format="json")
    assert response.status_code == 201, "a shared provider may share an org provider's name"


def test_global_staff_create_a_provider_for_an_org(api_staff, org_b) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/providers/", provider_body(org="globex"), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["org"] == "globex"
    assert Provider.objects.get(pk=response.json()["id"]).org == org_b


def test_an_org_admins_provider_is_forced_into_their_org(api_alice, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.post("/api/providers/", provider_body(org="globex"), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["org"] == "acme"
    assert Provider.objects.get(pk=response.json()["id"]).org == org_a

    response = api_alice.post("/api/providers/", provider_body(name="p2", org=None), format="json")
    assert response.status_code == 201, response.content
    assert Provider.objects.get(pk=response.json()["id"]).org == org_a


def test_an_org_admin_sees_shared_and_own_providers_only(  # type: ignore[no-untyped-def]
    api_alice, api_charlie, api_staff, shared_provider, org_a_provider
) -> None:
    assert names(api_alice.get("/api/providers/")) == {"openai-shared", "acme-openai"}
    assert names(api_charlie.get("/api/providers/")) == {"openai-shared"}
    assert names(api_staff.get("/api/providers/")) == {"openai-shared", "acme-openai"}


def test_an_outsider_gets_404_for_another_orgs_provider(api_charlie, org_a_provider) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/providers/{org_a_provider.pk}/"
    assert api_charlie.get(url).status_code == 404
    assert api_charlie.patch(url, {"is_active": False}, format="json").status_code == 404
    assert api_charlie.put(url, provider_body(), format="json").status_code == 404
    assert api_charlie.delete(url).status_code == 404
    stored = Provider.objects.get(pk=org_a_provider.pk)
    assert stored.is_active is True
    assert stored.api_key == "sk-acme-secret"


def test_an_org_admin_gets_403_not_404_for_changing_a_shared_provider(  # type: ignore[no-untyped-def]
    api_alice, shared_provider
) -> None:
    url = f"/api/providers/{shared_provider.pk}/"
    assert api_alice.get(url).status_code == 200
    assert api_alice.patch(url, {"api_key": ""}, format="json").status_code == 403
    assert api_alice.put(url, provider_body(), format="json").status_code == 403
    assert api_alice.delete(url).status_code == 403
    assert Provider.objects.get(pk=shared_provider.pk).api_key == "sk-shared-secret"


def test_an_org_member_can_read_providers_but_gets_403_on_every_write(  # type: ignore[no-untyped-def]
    api_bob, org_a_provider
) -> None:
    url = f"/api/providers/{org_a_provider.pk}/"
    assert api_bob.get(url).status_code == 200
    assert names(api_bob.get("/api/providers/")) == {"acme-openai"}
    assert api_bob.post("/api/providers/", provider_body(), format="json").status_code == 403
    assert api_bob.patch(url, {"is_active": False}, format="json").status_code == 403
    assert api_bob.put(url, provider_body(), format="json").status_code == 403
    assert api_bob.delete(url).status_code == 403
    assert Provider.objects.get(pk=org_a_provider.pk).is_active is True
    assert Provider.objects.count() == 1


def test_an_org_admin_cannot_move_their_provider_to_another_org(  # type: ignore[no-untyped-def]
    api_alice, org_a_provider, org_b
) -> None:
    response = api_alice.patch(
        f"/api/providers/{org_a_provider.pk}/", {"org": "globex"}, format="json"
    )
    assert response.status_code == 200
    assert Provider.objects.get(pk=org_a_provider.pk).org.slug == "acme"


# --- providers: validation and deletion --------------------------------------------


def test_deleting_a_provider_still_used_by_a_model_is_a_409(  # type: ignore[no-untyped-def]
    api_alice, org_a_own_model, org_a_provider
) -> None:
    response = api_alice.delete(f"/api/providers/{org_a_provider.pk}/")
    assert response.status_code == 409
    assert "acme-llama" in response.json()["detail"]
    assert Provider.objects.filter(pk=org_a_provider.pk).exists()


def test_deleting_a_shared_provider_used_by_models_is_a_409(  # type: ignore[no-untyped-def]
    api_staff, shared_model, org_a_model, shared_provider
) -> None:
    response = api_staff.delete(f"/api/providers/{shared_provider.pk}/")
    assert response.status_code == 409
    assert Provider.objects.filter(pk=shared_provider.pk).exists()


def test_an_unused_provider_can_be_deleted(api_alice, org_a_provider) -> None:  # type: ignore[no-untyped-def]
    assert api_alice.delete(f"/api/providers/{org_a_provider.pk}/").status_code == 204
    assert not Provider.objects.filter(pk=org_a_provider.pk).exists()


@pytest.mark.parametrize(
    "url",
    ["ftp://files.example.test/", "file:///etc/passwd", "api.example.test", "javascript:alert(1)"],
)
def test_a_non_http_base_url_is_a_400(api_staff, url: str) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/providers/", provider_body(base_url=url), format="json")
    assert response.status_code == 400
    assert "base_url" in response.json()
    assert not Provider.objects.exists()


def test_an_unknown_provider_kind_is_a_400(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/providers/", provider_body(kind="bard"), format="json")
    assert response.status_code == 400
    assert "kind" in response.json()


def test_a_duplicate_provider_name_in_the_same_org_is_a_400(api_alice, org_a_provider) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.post("/api/providers/", provider_body(name="acme-openai"), format="json")
    assert response.status_code == 400
    assert "name" in response.json()


def test_a_duplicate_shared_provider_name_is_a_400(api_staff, shared_provider) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/providers/", provider_body(name="openai-shared"), format="json")
    assert response.status_code == 400
    assert "name" in response.json()
    assert Provider.objects.filter(name="openai-shared").count() == 1


def test_the_same_provider_name_in_different_orgs_is_fine(  # type: ignore[no-untyped-def]
    api_alice, api_charlie, org_a, org_b
) -> None:
    assert api_alice.post("/api/providers/", provider_body(), format="json").status_code == 201
    assert api_charlie.post("/api/providers/", provider_body(), format="json").status_code == 201
    assert Provider.objects.filter(name="own-openai").count() == 2


def test_an_org_provider_may_share_a_name_with_a_shared_provider(  # type: ignore[no-untyped-def]
    api_alice, shared_provider
) -> None:
    response = api_alice.post("/api/providers/", provider_body(name="openai-shared"), format="json")
    assert response.status_code == 201, response.content


# --- models ------------------------------------------------------------------------


def test_model_prices_round_trip_exactly_as_decimal_strings(api_staff, shared_provider) -> None:  # type: ignore[no-untyped-def]
    body = model_body(
        shared_provider,
        input_price_per_million="0.000001",
        output_price_per_million="123456.789012",
        cached_input_price_per_million="0.075",
    )
    response = api_staff.post("/api/models/", body, format="json")
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["input_price_per_million"] == "0.000001"
    assert created["output_price_per_million"] == "123456.789012"
    assert created["cached_input_price_per_million"] == "0.075000"
    model = LlmModel.objects.get(pk=created["id"])
    assert model.input_price_per_million == Decimal("0.000001")
    assert model.output_price_per_million == Decimal("123456.789012")
    read = api_staff.get(f"/api/models/{created['id']}/").json()
    assert read["output_price_per_million"] == "123456.789012"
    assert Decimal(read["cached_input_price_per_million"]) == Decimal("0.075")


def test_fixture_prices_read_back_as_decimal_strings(api_staff, shared_model) -> None:  # type: ignore[no-untyped-def]
    body = api_staff.get(f"/api/models/{shared_model.pk}/").json()
    assert body["input_price_per_million"] == "0.150000"
    assert body["output_price_per_million"] == "0.600000"
    assert body["cached_input_price_per_million"] == "0.075000"


@pytest.mark.parametrize("price", ["-1", "0.0000001", "1234567.000000", "abc"])
def test_a_bad_price_is_a_400(api_staff, shared_provider, price: str) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post(
        "/api/models/", model_body(shared_provider, input_price_per_million=price), format="json"
    )
    assert response.status_code == 400
    assert "input_price_per_million" in response.json()


def test_a_duplicate_model_name_in_the_same_org_is_a_400_not_a_500(  # type: ignore[no-untyped-def]
    api_alice, org_a_model, shared_provider
) -> None:
    response = api_alice.post(
        "/api/models/", model_body(shared_provider, name="acme-private"), format="json"
    )
    assert response.status_code == 400
    assert "name" in response.json()


def test_a_duplicate_shared_model_name_is_a_400_not_a_500(
    api_staff, shared_model, shared_provider
) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post(
        "/api/models/", model_body(shared_provider, name="gpt-4o-mini"), format="json"
    )
    assert response.status_code == 400
    assert "name" in response.json()
    assert LlmModel.objects.filter(name="gpt-4o-mini").count() == 1


def test_renaming_a_model_onto_another_in_its_org_is_a_400(  # type: ignore[no-untyped-def]
    api_alice, org_a_model, org_a_own_model
) -> None:
    response = api_alice.patch(
        f"/api/models/{org_a_own_model.pk}/", {"name": "acme-private"}, format="json"
    )
    assert response.status_code == 400
    assert "name" in response.json()


def test_the_same_model_name_in_different_orgs_is_fine(  # type: ignore[no-untyped-def]
    api_alice, api_charlie, org_a_model, shared_provider
) -> None:
    response = api_charlie.post(
        "/api/models/", model_body(shared_provider, name="acme-private"), format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["org"] == "globex"
    assert LlmModel.objects.filter(name="acme-private").count() == 2


def test_global_staff_create_a_shared_model_by_default(api_staff, shared_provider) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post("/api/models/", model_body(shared_provider), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["org"] is None


def test_an_org_admins_model_is_forced_into_their_org(api_alice, org_b, shared_provider) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.post(
        "/api/models/", model_body(shared_provider, org="globex"), format="json"
    )
    assert response.status_code == 201, response.content
    assert LlmModel.objects.get(pk=response.json()["id"]).org.slug == "acme"


def test_a_model_on_another_orgs_provider_is_a_400(api_charlie, org_b, org_a_provider) -> None:  # type: ignore[no-untyped-def]
    response = api_charlie.post("/api/models/", model_body(org_a_provider), format="json")
    assert response.status_code == 400
    assert "provider" in response.json()
    assert not LlmModel.objects.exists()


def test_global_staff_cannot_put_a_model_on_another_orgs_provider(  # type: ignore[no-untyped-def]
    api_staff, org_b, org_a_provider
) -> None:
    response = api_staff.post(
        "/api/models/", model_body(org_a_provider, org="globex"), format="json"
    )
    assert response.status_code == 400
    assert "provider" in response.json()
    response = api_staff.post("/api/models/", model_body(org_a_provider), format="json")
    assert response.status_code == 400, "a shared model cannot use an org's provider"
    assert not LlmModel.objects.exists()


def test_switching_a_model_to_another_orgs_provider_is_a_400(  # type: ignore[no-untyped-def]
    api_staff, org_b, org_a_provider, shared_provider
) -> None:
    model = LlmModel.objects.create(
        org=org_b, name="gx", provider=shared_provider, upstream_name="x"
    )
    response = api_staff.patch(
        f"/api/models/{model.pk}/", {"provider": org_a_provider.pk}, format="json"
    )
    assert response.status_code == 400
    assert LlmModel.objects.get(pk=model.pk).provider == shared_provider


def test_an_org_admin_can_use_their_own_provider(api_alice, org_a_provider) -> None:  # type: ignore[no-untyped-def]
    response = api_alice.post("/api/models/", model_body(org_a_provider), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["provider"] == org_a_provider.pk


def test_another_org_cannot_see_an_orgs_private_model(  # type: ignore[no-untyped-def]
    api_alice, api_charlie, api_bob, shared_model, org_a_model
) -> None:
    assert names(api_charlie.get("/api/models/")) == {"gpt-4o-mini"}
    assert names(api_alice.get("/api/models/")) == {"gpt-4o-mini", "acme-private"}
    assert names(api_bob.get("/api/models/")) == {"gpt-4o-mini", "acme-private"}
    assert api_charlie.get(f"/api/models/{org_a_model.pk}/").status_code == 404


def test_an_outsider_gets_404_when_changing_another_orgs_model(api_charlie, org_a_model) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/models/{org_a_model.pk}/"
    assert (
        api_charlie.patch(url, {"input_price_per_million": "0"}, format="json").status_code == 404
    )
    assert api_charlie.delete(url).status_code == 404
    stored = LlmModel.objects.get(pk=org_a_model.pk)
    assert stored.input_price_per_million == Decimal("2.5")


def test_an_org_admin_gets_403_for_changing_a_shared_model(api_alice, shared_model) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/models/{shared_model.pk}/"
    assert api_alice.get(url).status_code == 200
    assert api_alice.patch(url, {"input_price_per_million": "0"}, format="json").status_code == 403
    assert api_alice.delete(url).status_code == 403
    assert LlmModel.objects.get(pk=shared_model.pk).input_price_per_million == Decimal("0.15")


def test_an_org_admin_can_change_and_delete_their_model(api_alice, org_a_model) -> None:  # type: ignore[no-untyped-def]
    url = f"/api/models/{org_a_model.pk}/"
    response = api_alice.patch(url, {"output_price_per_million": "12.5"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["output_price_per_million"] == "12.500000"
    assert api_alice.delete(url).status_code == 204
    assert not LlmModel.objects.filter(pk=org_a_model.pk).exists()


def test_an_org_member_can_read_models_but_gets_403_on_every_write(  # type: ignore[no-untyped-def]
    api_bob, org_a_model, shared_provider
) -> None:
    url = f"/api/models/{org_a_model.pk}/"
    assert api_bob.get(url).status_code == 200
    assert (
        api_bob.post("/api/models/", model_body(shared_provider), format="json").status_code == 403
    )
    assert api_bob.patch(url, {"is_active": False}, format="json").status_code == 403
    assert api_bob.delete(url).status_code == 403
    assert LlmModel.objects.get(pk=org_a_model.pk).is_active is True
