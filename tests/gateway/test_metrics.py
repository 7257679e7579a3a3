"""/metrics: bounded labels, and correct sums across several gateway processes."""

from __future__ import annotations

import re
import sys

import httpx
import pytest

from gateway.devstack.servers import free_port
from tests.conftest import ServiceProcess, service_env, wait_for_http
from tests.proxy_fixtures import GATEWAY_PREFIX, Setup, _database_url, wait_until_served

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = [{"role": "user", "content": "one two three four five"}]


def total(text: str, name: str, **labels: str) -> float:
    found = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            found += float(line.rsplit(" ", 1)[1])
    return found


def test_requests_tokens_and_cost_are_counted_with_admin_names_only(proxy: Setup) -> None:
    headers = {"Authorization": f"Bearer {proxy.key_a}", "X-Tollgate-Feature": "chat"}
    for _ in range(3):
        assert (
            httpx.post(
                f"{proxy.v1}/chat/completions",
                headers=headers,
                json={"model": "gpt-test", "messages": PROMPT},
            ).status_code
            == 200
        )
    httpx.post(
        f"{proxy.v1}/chat/completions",
        headers=headers,
        json={"model": "no-such-model-" + "x" * 40, "messages": PROMPT},
    )
    text = httpx.get(f"{proxy.url}/metrics").text
    assert (
        total(text, "tollgate_requests_total", feature="chat", model="gpt-test", status="200") >= 3
    )
    assert total(text, "tollgate_tokens_total", model="gpt-test", direction="output") >= 24
    assert total(text, "tollgate_cost_usd_total", model="gpt-test") > 0
    assert "tollgate_gateway_overhead_seconds_bucket" in text
    # A client's made-up model name never becomes a label.
    assert "no-such-model" not in text
    assert re.search(r'tollgate_requests_total\{[^}]*model="none"[^}]*status="404"', text)


def test_two_gateway_processes_report_one_sum(proxy: Setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    port = free_port()
    gateway = ServiceProcess(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "gateway.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            "--no-access-log",
        ],
        service_env(
            DATABASE_URL=_database_url(),
            TOLLGATE_REDIS_PREFIX=GATEWAY_PREFIX,
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        ),
        tmp_path / "gateway.log",
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/health/live", gateway)
        wait_until_served(base, proxy.key_a)
        headers = {"Authorization": f"Bearer {proxy.key_a}"}
        for _ in range(20):  # a new connection each time: both workers serve some
            httpx.post(
                f"{base}/v1/chat/completions",
                headers=headers,
                json={"model": "gpt-test", "messages": PROMPT},
            )
        text = httpx.get(f"{base}/metrics").text
        assert total(text, "tollgate_requests_total", model="gpt-test", status="200") == 20
    finally:
        gateway.stop()
