"""The provisioned Grafana dashboard asks only for metrics the application exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.proxy_fixtures import Setup

pytestmark = pytest.mark.django_db(transaction=True)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/tollgate.json"
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    found += [v["query"]["query"] for v in dashboard["templating"]["list"]]
    return found


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"label_values\(([a-z_:]+),\s*\w+\)", r"\1", expr)
    names = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr)
    return {n for n in names if n not in KEYWORDS and not n.startswith("__")}


def exported(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            base = family.removesuffix("_total") if kind == "counter" else family
            names |= {base + suffix for suffix in SUFFIXES.get(kind, [""])}
    return names


def test_every_dashboard_query_uses_only_exported_metrics(proxy: Setup) -> None:
    available = exported(httpx.get(f"{proxy.url}/metrics", timeout=30).text)
    used: set[str] = set()
    for expr in queries():
        names = metric_names(expr)
        assert names, expr
        used |= names
    assert not used - available, sorted(used - available)
    # The dashboard covers what on-call needs from each part.
    for name in (
        "tollgate_requests_total",
        "tollgate_upstream_latency_seconds_bucket",
        "tollgate_time_to_first_token_seconds_bucket",
        "tollgate_gateway_overhead_seconds_bucket",
        "tollgate_cost_usd_total",
        "tollgate_budget_used_ratio",
        "tollgate_limit_hits_total",
        "tollgate_limiter_degraded",
        "tollgate_alert_deliveries_total",
        "tollgate_queue_depth",
        "tollgate_job_wait_seconds_bucket",
        "tollgate_dependency_up",
    ):
        assert name in used, name


def test_the_dashboard_has_a_row_for_each_concern() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Traffic", "Latency", "Cost", "Limits", "Alerts", "Queue", "Health"]


def test_the_name_reader_finds_metrics_and_skips_functions_and_labels() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{x="b"}[5m]))) / c_total'
    assert metric_names(expr) == {"a_bucket", "c_total"}
