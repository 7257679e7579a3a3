"""An admin in a real browser: change a limit and see the proxy enforce it, read the usage
charts, export the audit trail as CSV."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import httpx
import pytest
from django.contrib.auth import get_user_model

from policies.models import Feature, Limit
from tests.proxy_fixtures import Setup, flush_usage, wait_until_served

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "browser-pw-1234"
PROMPT = [{"role": "user", "content": "one two three four five"}]


def log_in(page, base: str) -> None:  # type: ignore[no-untyped-def]
    get_user_model().objects.create_superuser("root", "root@example.test", PASSWORD)
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "root")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    assert "/admin/login" not in page.url


def chat(base: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}", "X-Tollgate-Feature": "chat"},
        json={"model": "gpt-test", "messages": PROMPT},
        timeout=30,
    )


def test_a_limit_changed_in_the_admin_is_enforced_by_the_proxy(
    proxy: Setup,
    admin_gateway: str,
    page,  # type: ignore[no-untyped-def]
) -> None:
    limit = Limit.objects.create(
        scope="org_feature",
        org=proxy.org_a,
        feature=Feature.objects.get(name="chat"),
        metric="requests",
        window="minute",
        amount=100,
    )
    wait_until_served(admin_gateway, proxy.key_a)
    log_in(page, admin_gateway)
    page.goto(f"{admin_gateway}/admin/policies/limit/{limit.pk}/change/")
    page.fill("#id_amount", "2")
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist .success")
    limit.refresh_from_db()
    assert limit.amount == 2
    time.sleep(1.2)  # a change reaches every gateway process within a second

    statuses = [chat(admin_gateway, proxy.key_a) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    error = statuses[2].json()["error"]
    assert error["limit"] == 2 and error["code"] == "feature_requests_per_minute"


def test_the_usage_page_renders_charts_with_data(proxy: Setup, admin_gateway: str, page) -> None:  # type: ignore[no-untyped-def]
    for _ in range(3):
        assert chat(admin_gateway, proxy.key_a).status_code == 200
    time.sleep(0.2)
    flush_usage()
    log_in(page, admin_gateway)
    page.goto(f"{admin_gateway}/admin/")
    page.click("text=Usage and cost")
    page.wait_for_selector("#usage-totals")
    page.select_option("#f-interval", "hour")
    page.click("#usage-filters input[type=submit]")
    page.wait_for_selector("#chart-requests[data-rendered=true]")
    assert int(page.get_attribute("#chart-requests", "data-points") or 0) >= 1
    assert int(page.get_attribute("#chart-cost", "data-points") or 0) >= 1
    datasets = page.evaluate(
        "Chart.getChart(document.getElementById('chart-requests')).data.datasets"
        ".map(d => [d.label, d.data.reduce((a, b) => a + b, 0)])"
    )
    assert dict(datasets)["acme"] >= 3
    # The chart code came from the gateway itself.
    scripts = page.evaluate("[...document.scripts].map(s => s.src).filter(Boolean)")
    assert all(src.startswith(admin_gateway) for src in scripts), scripts
    # The CSV link downloads the same figures.
    with page.expect_download() as download:
        page.click("#usage-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert sum(int(r["requests"]) for r in rows if r["org"] == "acme") >= 3


def test_the_audit_trail_exports_as_csv_from_the_admin(
    proxy: Setup,
    admin_gateway: str,
    page,  # type: ignore[no-untyped-def]
) -> None:
    log_in(page, admin_gateway)
    page.goto(f"{admin_gateway}/admin/audit/auditevent/")
    with page.expect_download() as download:
        page.click("text=Export CSV (current filters)")
    text = Path(download.value.path()).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows, text[:500]
    actions = {row["action"] for row in rows}
    assert "apikey.created" in actions, sorted(actions)
