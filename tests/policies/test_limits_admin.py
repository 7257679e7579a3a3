"""Limits in the Django admin: the Limit pages, the inlines on the org and feature pages,
live usage from a real Redis, and org scoping with an outsider."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.forms import modelform_factory
from django.test import Client
from django.urls import reverse

from policies.admin_limits import LimitForm
from policies.engine import sync
from policies.engine.specs import spec_from_limit
from policies.models import ApiKey, Feature, Limit, Organization, Tier
from policies.services import apikey_create

pytestmark = pytest.mark.django_db

ADD_URL = "admin:policies_limit_add"
CHANGELIST_URL = "admin:policies_limit_changelist"


def logged_in(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


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


def limit_form(**overrides: Any) -> dict[str, Any]:
    """A complete add form of the Limit admin (as global staff see it)."""
    return {
        "name": "",
        "scope": "org",
        "tier": "",
        "org": "",
        "feature": "",
        "api_key": "",
        "metric": "requests",
        "window": "minute",
        "amount": "60",
        "action": "reject",
        "max_wait_seconds": "",
        "failure_mode": "fail_open",
        "thresholds": "[80, 100]",
        "default_output_tokens": "1024",
        "is_active": "on",
        **overrides,
    }


def form_errors(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.status_code
    return response.context["adminform"].form.errors  # type: ignore[no-any-return]


def inline_rows(prefix: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {
        f"{prefix}-TOTAL_FORMS": str(len(rows)),
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }
    for i, row in enumerate(rows):
        for field, value in row.items():
            data[f"{prefix}-{i}-{field}"] = value
    return data


def change_page_post(client: Client, url: str, fields: dict[str, Any], rows: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    """POST a change page with new limit rows; every other inline is posted empty."""
    page = client.get(url)
    assert page.status_code == 200
    data = dict(fields)
    for inline in page.context["inline_admin_formsets"]:
        prefix = inline.formset.prefix
        data.update(inline_rows(prefix, rows if inline.formset.model is Limit else []))
    return client.post(url, data)


def inline_errors(response: Any) -> list[Any]:
    assert response.status_code == 200, response.status_code
    for inline in response.context["inline_admin_formsets"]:
        if inline.formset.model is Limit:
            return [form.errors for form in inline.formset.forms]
    raise AssertionError("no limit inline on the page")


def org_fields(org: Organization) -> dict[str, Any]:
    return {"name": org.name, "slug": org.slug, "tier": org.tier_id, "is_active": "on"}


ROW = {
    "name": "",
    "scope": "org",
    "feature": "",
    "api_key": "",
    "metric": "requests",
    "window": "minute",
    "amount": "60",
    "action": "reject",
    "max_wait_seconds": "",
    "failure_mode": "fail_open",
    "is_active": "on",
}

BAD_INPUT = [
    ({"amount": "0"}, "amount"),
    ({"amount": "-3"}, "amount"),
    ({"amount": ""}, "amount"),
    ({"window": "none"}, "window"),
    ({"metric": "concurrent", "window": "minute"}, "window"),
    ({"action": "wait"}, "max_wait_seconds"),
    ({"action": "wait", "max_wait_seconds": "0"}, "max_wait_seconds"),
    ({"scope": "org_feature"}, "feature"),
    ({"scope": "api_key"}, "api_key"),
]


@pytest.fixture
def org_a_key(org_a: Organization) -> ApiKey:
    return apikey_create(org=org_a, name="acme-ci")[0]


@pytest.fixture
def org_b_key(org_b: Organization) -> ApiKey:
    return apikey_create(org=org_b, name="globex-ci")[0]


# --- the Limit admin ------------------------------------------------------------------------


def test_staff_add_a_limit_that_reaches_the_db(staff, org_a, chat) -> None:  # type: ignore[no-untyped-def]
    response = logged_in(staff).post(
        reverse(ADD_URL),
        limit_form(
            name="acme chat tokens",
            scope="org_feature",
            org=org_a.pk,
            feature=chat.pk,
            metric="tokens",
            window="hour",
            amount="100000",
            action="wait",
            max_wait_seconds="5",
            failure_mode="fail_closed",
            thresholds="[50]",
            default_output_tokens="256",
        ),
    )
    assert response.status_code == 302, form_errors(response)
    limit = Limit.objects.get()
    assert (limit.name, limit.scope, limit.org, limit.feature, limit.tier) == (
        "acme chat tokens",
        "org_feature",
        org_a,
        chat,
        None,
    )
    assert (limit.metric, limit.window, limit.amount) == ("tokens", "hour", 100_000)
    assert (limit.action, limit.max_wait_seconds, limit.failure_mode) == (
        "wait",
        5.0,
        "fail_closed",
    )
    assert (limit.thresholds, limit.default_output_tokens) == ([50], 256)


def test_staff_add_a_tier_default_and_a_global_limit(staff, free_tier) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(staff)
    response = client.post(reverse(ADD_URL), limit_form(tier=free_tier.pk, name="free"))
    assert response.status_code == 302, form_errors(response)
    response = client.post(reverse(ADD_URL), limit_form(scope="global", name="all"))
    assert response.status_code == 302, form_errors(response)
    assert Limit.objects.get(name="free").tier == free_tier
    assert Limit.objects.get(name="all").org is None


def test_an_api_key_limit_added_by_staff_gets_its_keys_org(staff, org_a_key) -> None:  # type: ignore[no-untyped-def]
    response = logged_in(staff).post(
        reverse(ADD_URL), limit_form(scope="api_key", api_key=org_a_key.pk)
    )
    assert response.status_code == 302, form_errors(response)
    assert Limit.objects.get().org_id == org_a_key.org_id


@pytest.mark.parametrize(("data", "field"), BAD_INPUT)
def test_bad_input_in_the_limit_admin_is_a_form_error(staff, org_a, data, field) -> None:  # type: ignore[no-untyped-def]
    response = logged_in(staff).post(reverse(ADD_URL), limit_form(org=org_a.pk, **data))
    assert field in form_errors(response)
    assert not Limit.objects.exists()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"scope": "org"}, "org"),
        ({"scope": "global", "org": "ORG"}, "org"),
        ({"scope": "feature", "feature": "CHAT", "org": "ORG"}, "org"),
        ({"scope": "org", "org": "ORG", "feature": "CHAT"}, "feature"),
        ({"scope": "feature", "feature": "CHAT", "tier": "TIER"}, "tier"),
        ({"scope": "org", "org": "ORG", "tier": "TIER"}, "org"),
        ({"thresholds": "[0]", "org": "ORG"}, "thresholds"),
    ],
)
def test_a_scope_missing_or_with_extra_fields_is_a_form_error(  # type: ignore[no-untyped-def]
    staff, org_a, chat, free_tier, data, field
) -> None:
    ids = {"ORG": org_a.pk, "CHAT": chat.pk, "TIER": free_tier.pk}
    data = {k: ids.get(v, v) for k, v in data.items()}
    response = logged_in(staff).post(reverse(ADD_URL), limit_form(**data))
    assert field in form_errors(response)
    assert not Limit.objects.exists()


def test_errors_on_fields_a_form_does_not_show_are_form_errors_not_500s(org_a) -> None:  # type: ignore[no-untyped-def]
    form_class = modelform_factory(
        Limit, form=LimitForm, fields=["scope", "metric", "window", "amount", "action"]
    )
    form = form_class(
        {
            "scope": "org",
            "metric": "requests",
            "window": "minute",
            "amount": "5",
            "action": "reject",
        }
    )
    assert not form.is_valid()
    assert any("Org" in error for error in form.non_field_errors())


def test_the_changelist_shows_live_usage(staff, org_a, chat, free_tier) -> None:  # type: ignore[no-untyped-def]
    org_limit = make_limit(scope="org", org=org_a, amount=10)
    cost = make_limit(
        scope="org", org=org_a, metric="cost", window="calendar_day", amount=2_000_000
    )
    feature = make_limit(scope="feature", feature=chat, amount=40)
    make_limit(scope="org", tier=free_tier, amount=7)
    for _ in range(3):
        charge(org_limit, 1, org_id=org_a.pk)
    charge(cost, 500_000, org_id=org_a.pk)
    charge(feature, 4, org_id=org_a.pk)
    response = logged_in(staff).get(reverse(CHANGELIST_URL))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Usage (used / amount)" in page
    assert "3 / 10 (30%)" in page
    assert "$0.50 / $2.00 (25%)" in page
    assert "4 / 40 (10%)" in page
    assert "per org (see each org&#x27;s page)" in page
    assert "10 requests per minute" in page
    assert "Free (tier default)" in page


def test_the_change_page_shows_live_usage(staff, org_a) -> None:  # type: ignore[no-untyped-def]
    limit = make_limit(scope="org", org=org_a, amount=8)
    charge(limit, 2, org_id=org_a.pk)
    page = logged_in(staff).get(reverse("admin:policies_limit_change", args=[limit.pk]))
    assert "2 / 8 (25%)" in page.content.decode()


# --- org scoping -----------------------------------------------------------------------------


def test_an_org_admins_new_limit_always_belongs_to_their_org(alice, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    response = logged_in(alice).post(reverse(ADD_URL), limit_form(org=org_b.pk, name="mine"))
    assert response.status_code == 302, form_errors(response)
    limit = Limit.objects.get(name="mine")
    assert limit.org == org_a and limit.tier is None


def test_an_org_admin_adds_org_feature_and_key_limits_of_their_org(  # type: ignore[no-untyped-def]
    alice, org_a, chat, org_a_key
) -> None:
    client = logged_in(alice)
    response = client.post(
        reverse(ADD_URL), limit_form(scope="org_feature", feature=chat.pk, name="chat")
    )
    assert response.status_code == 302, form_errors(response)
    response = client.post(
        reverse(ADD_URL), limit_form(scope="api_key", api_key=org_a_key.pk, name="key")
    )
    assert response.status_code == 302, form_errors(response)
    assert Limit.objects.get(name="chat").org == org_a
    assert (Limit.objects.get(name="key").org, Limit.objects.get(name="key").api_key) == (
        org_a,
        org_a_key,
    )


@pytest.mark.parametrize("scope", ["global", "feature"])
def test_an_org_admin_cannot_add_shared_limits(alice, chat, scope) -> None:  # type: ignore[no-untyped-def]
    response = logged_in(alice).post(reverse(ADD_URL), limit_form(scope=scope, feature=chat.pk))
    assert "scope" in form_errors(response)
    assert not Limit.objects.exists()


def test_an_org_admin_cannot_add_a_tier_default(alice, org_a, free_tier) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(alice)
    form = client.get(reverse(ADD_URL)).context["adminform"].form
    assert "tier" not in form.fields and "org" not in form.fields
    client.post(reverse(ADD_URL), limit_form(tier=free_tier.pk, name="sneaky"))
    assert not Limit.objects.filter(tier__isnull=False).exists()


def test_an_org_admin_cannot_use_another_orgs_key(alice, org_b_key) -> None:  # type: ignore[no-untyped-def]
    response = logged_in(alice).post(
        reverse(ADD_URL), limit_form(scope="api_key", api_key=org_b_key.pk)
    )
    assert "api_key" in form_errors(response)
    assert not Limit.objects.exists()


def test_an_org_admin_lists_their_limits_and_shared_ones_only(  # type: ignore[no-untyped-def]
    alice, org_a, org_b, chat, free_tier
) -> None:
    premium = Tier.objects.get_or_create(slug="premium", defaults={"name": "Premium"})[0]
    make_limit(scope="org", org=org_a, name="acme-limit")
    make_limit(scope="org", org=org_b, name="globex-limit")
    make_limit(scope="global", name="global-limit")
    make_limit(scope="org", tier=free_tier, name="free-default")
    make_limit(scope="org", tier=premium, name="premium-default")
    page = logged_in(alice).get(reverse(CHANGELIST_URL)).content.decode()
    for name in ("acme-limit", "global-limit", "free-default"):
        assert name in page
    for name in ("globex-limit", "premium-default", "Globex"):
        assert name not in page


def test_an_outsider_cannot_open_or_change_another_orgs_limit(charlie, org_a) -> None:  # type: ignore[no-untyped-def]
    limit = make_limit(scope="org", org=org_a)
    client = logged_in(charlie)
    url = reverse("admin:policies_limit_change", args=[limit.pk])
    assert client.get(url).status_code == 302  # "doesn't exist"
    client.post(url, limit_form(amount="1"))
    client.post(reverse("admin:policies_limit_delete", args=[limit.pk]), {"post": "yes"})
    limit.refresh_from_db()
    assert limit.amount == 60


def test_an_org_admin_reads_but_cannot_change_shared_limits(alice, chat) -> None:  # type: ignore[no-untyped-def]
    limit = make_limit(scope="feature", feature=chat)
    client = logged_in(alice)
    url = reverse("admin:policies_limit_change", args=[limit.pk])
    assert client.get(url).status_code == 200
    assert client.post(url, limit_form(scope="feature", amount="1")).status_code == 403
    delete = reverse("admin:policies_limit_delete", args=[limit.pk])
    assert client.post(delete, {"post": "yes"}).status_code == 403
    client.post(
        reverse(CHANGELIST_URL),
        {"action": "delete_selected", "_selected_action": [limit.pk], "post": "yes"},
    )
    limit.refresh_from_db()
    assert limit.amount == 60


def test_an_org_admin_changes_their_own_limit(alice, org_a) -> None:  # type: ignore[no-untyped-def]
    limit = make_limit(scope="org", org=org_a)
    url = reverse("admin:policies_limit_change", args=[limit.pk])
    response = logged_in(alice).post(url, limit_form(amount="90"))
    assert response.status_code == 302, form_errors(response)
    limit.refresh_from_db()
    assert (limit.amount, limit.org) == (90, org_a)


def test_an_org_member_can_read_but_not_add_or_change(bob, org_a) -> None:  # type: ignore[no-untyped-def]
    limit = make_limit(scope="org", org=org_a)
    client = logged_in(bob)
    assert client.get(reverse(CHANGELIST_URL)).status_code == 200
    assert client.get(reverse(ADD_URL)).status_code == 403
    url = reverse("admin:policies_limit_change", args=[limit.pk])
    assert client.post(url, limit_form(amount="1")).status_code == 403
    limit.refresh_from_db()
    assert limit.amount == 60


# --- the inline on the organization page ---------------------------------------------------


def test_staff_add_a_limit_on_the_org_page_with_the_org_set(staff, org_a, chat) -> None:  # type: ignore[no-untyped-def]
    url = reverse("admin:policies_organization_change", args=[org_a.pk])
    response = change_page_post(
        logged_in(staff),
        url,
        org_fields(org_a),
        [
            {**ROW, "name": "rpm"},
            {**ROW, "name": "chat", "scope": "org_feature", "feature": chat.pk, "amount": "9"},
        ],
    )
    assert response.status_code == 302, inline_errors(response)
    assert Limit.objects.get(name="rpm").org == org_a
    chat_limit = Limit.objects.get(name="chat")
    assert (chat_limit.org, chat_limit.feature, chat_limit.amount) == (org_a, chat, 9)


def test_staff_add_a_key_limit_on_the_org_page(staff, org_a, org_a_key, org_b_key) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(staff)
    url = reverse("admin:policies_organization_change", args=[org_a.pk])
    row = {**ROW, "scope": "api_key"}
    # Only the org's own keys are offered there.
    response = change_page_post(client, url, org_fields(org_a), [{**row, "api_key": org_b_key.pk}])
    assert "api_key" in inline_errors(response)[0]
    response = change_page_post(client, url, org_fields(org_a), [{**row, "api_key": org_a_key.pk}])
    assert response.status_code == 302, inline_errors(response)
    assert Limit.objects.get().org == org_a


@pytest.mark.parametrize(("data", "field"), [*BAD_INPUT, ({"feature": "CHAT"}, "feature")])
def test_bad_input_in_the_org_page_inline_is_a_form_error(staff, org_a, chat, data, field) -> None:  # type: ignore[no-untyped-def]
    data = {k: (chat.pk if v == "CHAT" else v) for k, v in data.items()}
    url = reverse("admin:policies_organization_change", args=[org_a.pk])
    response = change_page_post(logged_in(staff), url, org_fields(org_a), [{**ROW, **data}])
    assert field in inline_errors(response)[0]
    assert not Limit.objects.exists()


def test_the_org_page_offers_only_org_scopes(staff, org_a) -> None:  # type: ignore[no-untyped-def]
    url = reverse("admin:policies_organization_change", args=[org_a.pk])
    response = change_page_post(
        logged_in(staff), url, org_fields(org_a), [{**ROW, "scope": "global"}]
    )
    assert "scope" in inline_errors(response)[0]
    assert not Limit.objects.exists()


def test_the_org_page_shows_limits_and_tier_default_usage(staff, org_a, org_b, free_tier) -> None:  # type: ignore[no-untyped-def]
    own = make_limit(scope="org", org=org_a, amount=20, name="acme-own")
    make_limit(scope="org", org=org_b, name="globex-own")
    default = make_limit(scope="org", tier=free_tier, amount=10, window="hour")
    charge(own, 5, org_id=org_a.pk)
    charge(default, 2, org_id=org_a.pk)
    charge(default, 7, org_id=org_b.pk)
    page = (
        logged_in(staff)
        .get(reverse("admin:policies_organization_change", args=[org_a.pk]))
        .content.decode()
    )
    assert "acme-own" in page and "globex-own" not in page
    assert "5 / 20 (25%)" in page
    assert "Tier default limits" in page
    assert "2 / 10 (20%)" in page  # this org's usage of the tier default, not globex's


def test_a_tier_default_overridden_by_the_org_says_so(staff, org_a, free_tier) -> None:  # type: ignore[no-untyped-def]
    make_limit(scope="org", tier=free_tier, amount=10)
    make_limit(scope="org", org=org_a, amount=50)
    page = (
        logged_in(staff)
        .get(reverse("admin:policies_organization_change", args=[org_a.pk]))
        .content.decode()
    )
    assert "overridden by this org&#x27;s own limit" in page


def test_an_org_admin_reads_their_org_pages_limits_without_editing(alice, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    make_limit(scope="org", org=org_a, name="acme-own")
    client = logged_in(alice)
    url = reverse("admin:policies_organization_change", args=[org_a.pk])
    response = client.get(url)
    assert response.status_code == 200
    assert "acme-own" in response.content.decode()
    assert (
        client.post(url, {**org_fields(org_a), **inline_rows("limits", [ROW])}).status_code == 403
    )
    assert Limit.objects.count() == 1
    assert (
        client.get(reverse("admin:policies_organization_change", args=[org_b.pk])).status_code
        == 302
    )


# --- the inline on the feature page ----------------------------------------------------------


def test_staff_add_limits_on_the_feature_page(staff, org_a, chat, free_tier) -> None:  # type: ignore[no-untyped-def]
    url = reverse("admin:policies_feature_change", args=[chat.pk])
    row = {**ROW, "org": "", "tier": ""}
    response = change_page_post(
        logged_in(staff),
        url,
        {"name": "chat", "description": ""},
        [
            {**row, "name": "acme-chat", "scope": "org_feature", "org": org_a.pk},
            {**row, "name": "free-chat", "scope": "org_feature", "tier": free_tier.pk},
            {**row, "name": "all-chat", "scope": "feature"},
        ],
    )
    assert response.status_code == 302, inline_errors(response)
    assert Limit.objects.filter(feature=chat).count() == 3
    assert Limit.objects.get(name="acme-chat").org == org_a
    assert Limit.objects.get(name="free-chat").tier == free_tier
    assert Limit.objects.get(name="all-chat").org is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"scope": "org_feature"}, "org"),
        ({"scope": "feature", "org": "ORG"}, "org"),
        ({"scope": "org_feature", "org": "ORG", "amount": "0"}, "amount"),
        ({"scope": "feature", "tier": "TIER"}, "tier"),
        ({"scope": "org"}, "scope"),
    ],
)
def test_bad_input_in_the_feature_page_inline_is_a_form_error(  # type: ignore[no-untyped-def]
    staff, org_a, chat, free_tier, data, field
) -> None:
    ids = {"ORG": org_a.pk, "TIER": free_tier.pk}
    data = {k: ids.get(v, v) for k, v in data.items()}
    url = reverse("admin:policies_feature_change", args=[chat.pk])
    row = {**ROW, "org": "", "tier": "", **data}
    response = change_page_post(logged_in(staff), url, {"name": "chat", "description": ""}, [row])
    assert field in inline_errors(response)[0]
    assert not Limit.objects.exists()


def test_an_org_admin_sees_only_their_orgs_limits_on_the_feature_page(  # type: ignore[no-untyped-def]
    alice, org_a, org_b, chat
) -> None:
    make_limit(scope="org_feature", org=org_a, feature=chat, name="acme-chat")
    make_limit(scope="org_feature", org=org_b, feature=chat, name="globex-chat")
    page = logged_in(alice).get(reverse("admin:policies_feature_change", args=[chat.pk]))
    assert page.status_code == 200
    content = page.content.decode()
    assert "acme-chat" in content
    assert "globex-chat" not in content and "Globex" not in content


def test_features_and_orgs_without_limits_still_save(staff, org_a, summarize: Feature) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(staff)
    url = reverse("admin:policies_feature_change", args=[summarize.pk])
    response = change_page_post(client, url, {"name": "summarize", "description": "short"}, [])
    assert response.status_code == 302
    url = reverse("admin:policies_organization_change", args=[org_a.pk])
    response = change_page_post(client, url, {**org_fields(org_a), "name": "Acme Inc"}, [])
    assert response.status_code == 302
    org_a.refresh_from_db()
    assert org_a.name == "Acme Inc"
    assert client.get(reverse("admin:policies_organization_add")).status_code == 200
