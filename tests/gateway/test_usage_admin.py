"""The admin's "Usage and cost" page: charts fed with the caller's own org's figures, and
chart code served by the project itself."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client

from gateway.models import UsageRollup

pytestmark = pytest.mark.django_db

URL = "/admin/gateway/usagereport/"


def page_data(client: Client, **params: str) -> dict:  # type: ignore[type-arg]
    response = client.get(URL, params)
    assert response.status_code == 200
    html = response.content.decode()
    start = html.index('<script id="usage-data" type="application/json">') + 48
    return json.loads(html[start : html.index("</script>", start)])


def test_an_org_admin_sees_charts_of_their_org_only(alice, charlie, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    UsageRollup.objects.create(org=org_a, minute=hour, feature="chat", model="m", requests=7)
    UsageRollup.objects.create(
        org=org_b, minute=hour, feature="chat", model="m", requests=99, cost_usd=Decimal(1)
    )
    client = Client()
    client.force_login(alice)
    data = page_data(client, interval="hour")
    assert data["group"] == "feature"
    assert data["series"]["groups"]["chat"]["requests"] == [7.0]
    other = Client()
    other.force_login(charlie)
    assert other.get(URL, {"org": "acme"}).status_code == 200  # the filter is ignored
    assert page_data(other)["series"]["groups"]["chat"]["requests"] == [99.0]


def test_the_page_loads_chart_code_from_its_own_static_files(staff) -> None:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(staff)
    html = client.get(URL).content.decode()
    assert '/static/gateway/vendor/chart-4.6.1.umd.min.js"' in html
    assert "cdn" not in html.lower()
    assert "Download CSV" in html and "/api/usage/?" in html


def test_a_bad_range_is_shown_not_a_500(staff) -> None:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(staff)
    response = client.get(URL, {"from": "2026-11-20", "to": "2026-11-01"})
    assert response.status_code == 200
    assert "to: must be after from" in response.content.decode()
