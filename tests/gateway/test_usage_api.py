"""GET /api/usage/: figures per period and group, tenancy, CSV, top keys, budget burn-down,
and a 400 naming the parameter for bad input."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from gateway.models import UsageRecord, UsageRollup
from policies.models import Feature, Limit, Organization
from policies.services import apikey_create

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 11, 20, tzinfo=UTC)


def rollup(org: Organization, minute: datetime, **figures) -> UsageRollup:  # type: ignore[no-untyped-def]
    figures.setdefault("feature", "chat")
    figures.setdefault("model", "gpt-test")
    figures.setdefault("requests", 1)
    return UsageRollup.objects.create(org=org, minute=minute, **figures)


@pytest.fixture
def usage(org_a: Organization, org_b: Organization) -> None:
    rollup(org_a, DAY + timedelta(hours=1), requests=3, input_tokens=30, cost_usd=Decimal("0.3"))
    rollup(org_a, DAY + timedelta(hours=1, minutes=5), requests=2, output_tokens=10)
    rollup(org_a, DAY + timedelta(hours=2), feature="summarize", requests=4, cost_usd=Decimal("1"))
    rollup(org_a, DAY + timedelta(days=1), model="claude-test", requests=5, errors=1)
    rollup(org_b, DAY + timedelta(hours=1), requests=100, cost_usd=Decimal("9"))


def get(client, **params):  # type: ignore[no-untyped-def]
    return client.get("/api/usage/", params)


def test_it_sums_per_day_and_group(api_staff, usage) -> None:  # type: ignore[no-untyped-def]
    response = get(api_staff, **{"from": "2026-11-20", "to": "2026-11-21", "group_by": "org"})
    assert response.status_code == 200
    body = response.json()
    assert body["interval"] == "day"
    rows = {(r["period"], r["org"]): r for r in body["results"]}
    acme = rows[("2026-11-20T00:00:00.000000Z", "acme")]
    assert acme["requests"] == 9
    assert acme["input_tokens"] == 30 and acme["output_tokens"] == 10
    assert Decimal(acme["cost_usd"]) == Decimal("1.3")
    assert rows[("2026-11-21T00:00:00.000000Z", "acme")]["errors"] == 1
    assert rows[("2026-11-20T00:00:00.000000Z", "globex")]["requests"] == 100
    assert body["totals"]["requests"] == 114


def test_it_groups_per_hour_by_feature_and_model(api_staff, usage) -> None:  # type: ignore[no-untyped-def]
    response = get(
        api_staff,
        **{"from": "2026-11-20", "to": "2026-11-20", "interval": "hour"},
        group_by="feature,model",
        org="acme",
    )
    rows = response.json()["results"]
    assert [(r["period"][11:13], r["feature"], r["model"], r["requests"]) for r in rows] == [
        ("01", "chat", "gpt-test", 5),
        ("02", "summarize", "gpt-test", 4),
    ]


def test_an_org_admin_sees_only_their_org(api_alice, api_charlie, usage) -> None:  # type: ignore[no-untyped-def]
    params = {"from": "2026-11-20", "to": "2026-11-22", "group_by": "org"}
    assert {r["org"] for r in get(api_alice, **params).json()["results"]} == {"acme"}
    assert {r["org"] for r in get(api_charlie, **params).json()["results"]} == {"globex"}
    assert get(api_charlie, **params).json()["totals"]["requests"] == 100
    # Naming the other org is a 404, as for any of its objects.
    assert get(api_charlie, org="acme").status_code == 404


def test_a_member_can_read_usage(api_bob, usage) -> None:  # type: ignore[no-untyped-def]
    response = get(api_bob, **{"from": "2026-11-20", "to": "2026-11-22"})
    assert response.status_code == 200
    assert response.json()["totals"]["requests"] == 14


def test_anonymous_callers_are_refused(client, usage) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/api/usage/").status_code in (401, 403)


def test_csv_has_the_same_rows_with_formulas_defused(api_staff, org_a) -> None:  # type: ignore[no-untyped-def]
    rollup(org_a, DAY, feature="=cmd()", requests=2, cost_usd=Decimal("0.5"))
    response = get(
        api_staff, **{"from": "2026-11-20", "to": "2026-11-20"}, group_by="feature", format="csv"
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows == [
        {
            "period": "2026-11-20T00:00:00.000000Z",
            "feature": "'=cmd()",
            "requests": "2",
            "errors": "0",
            "input_tokens": "0",
            "output_tokens": "0",
            "cost_usd": "0.5",
        }
    ]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"group_by": "org,colour"}, "group_by"),
        ({"from": "2026-11-20", "to": "2026-11-10"}, "to"),
        ({"from": "2026-11-20T05:00:00Z", "to": "2026-11-20T05:00:00Z"}, "to"),
        ({"from": "2025-01-01", "to": "2026-11-01", "interval": "hour"}, "interval"),
        ({"interval": "minute"}, "interval"),
        ({"from": "yesterday"}, "from"),
    ],
)
def test_bad_parameters_get_a_400_naming_them(api_staff, params, named) -> None:  # type: ignore[no-untyped-def]
    response = get(api_staff, **params)
    assert response.status_code == 400
    assert list(response.json()) == [named]
    # Also when CSV was asked for: the error is JSON.
    response = get(api_staff, **params, format="csv")
    assert response.status_code == 400 and list(response.json()) == [named]


def test_top_keys_are_ranked_by_spend(api_alice, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    big, _ = apikey_create(org=org_a, name="batch")
    small, _ = apikey_create(org=org_a, name="web")
    other, _ = apikey_create(org=org_b, name="theirs")
    for n, (key, cost) in enumerate([(big, "2"), (big, "3"), (small, "1"), (other, "50")]):
        UsageRecord.objects.create(
            request_id=f"r{n}",
            created_at=DAY,
            org=key.org,
            api_key=key,
            feature="chat",
            model="gpt-test",
            endpoint="chat/completions",
            status_code=200,
            outcome="ok",
            input_tokens=10,
            output_tokens=5,
            cost_usd=Decimal(cost),
        )
    top = get(api_alice, **{"from": "2026-11-20", "to": "2026-11-20"}).json()["top_keys"]
    assert [(k["key"].split()[0], k["requests"], k["tokens"], k["cost_usd"]) for k in top] == [
        ("batch", 2, 30, "5"),
        ("web", 1, 15, "1"),
    ]


def test_a_budget_burns_down_against_its_limit(api_alice, api_charlie, org_a) -> None:  # type: ignore[no-untyped-def]
    chat_feature = Feature.objects.create(name="chat")
    Limit.objects.create(
        scope="org_feature",
        org=org_a,
        feature=chat_feature,
        metric="cost",
        window="calendar_month",
        amount=10_000_000,  # $10
    )
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    rollup(org_a, start + timedelta(minutes=1), cost_usd=Decimal("1"))
    rollup(org_a, now - timedelta(minutes=1), cost_usd=Decimal("2"))
    rollup(org_a, now - timedelta(minutes=1), feature="other", cost_usd=Decimal("7"))
    budgets = get(api_alice).json()["budgets"]
    assert len(budgets) == 1
    budget = budgets[0]
    assert budget["org"] == "acme"
    assert budget["limit_usd"] == "10" and budget["spent_usd"] == "3"
    assert budget["used_ratio"] == pytest.approx(0.3)
    points = budget["points"]
    assert points[0]["spent_usd"] == "1" and points[-1]["spent_usd"] == "3"
    assert Decimal(budget["projected_usd"]) >= Decimal("3")
    assert get(api_charlie).json()["budgets"] == []
