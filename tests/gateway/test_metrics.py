"""/metrics: bounded labels, and correct sums across several gateway processes."""

from __future__ import annotations

import re
import sys
import time

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
        if not line.startswith((name + "{", name + " ")):
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


def scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics").text


def test_limit_decisions_reservations_and_budgets_are_counted(proxy: Setup) -> None:
    from policies.engine.peek import current_usage
    from policies.engine.specs import spec_from_limit
    from policies.models import Feature, Limit
    from tests.gateway.test_proxy_limits import chat, fresh_key

    requests = Limit.objects.create(
        scope="org_feature",
        org=proxy.org_a,
        feature=Feature.objects.get(name="chat"),
        metric="requests",
        window="minute",
        amount=2,
    )
    Limit.objects.create(
        scope="org", org=proxy.org_a, metric="tokens", window="minute", amount=100_000
    )
    budget = Limit.objects.create(
        scope="org", org=proxy.org_a, metric="cost", window="calendar_day", amount=1_000_000
    )
    key = fresh_key(proxy, proxy.org_a)
    before = scrape(proxy.url)
    statuses = [chat(proxy, key, max_tokens=100).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]

    def delta(name: str, **labels: str) -> float:
        return total(scrape(proxy.url), name, **labels) - total(before, name, **labels)

    assert delta("tollgate_limiter_decisions_total", kind="requests", result="admitted") == 2
    assert delta("tollgate_limiter_decisions_total", kind="requests", result="rejected") == 1
    hit = f"#{requests.pk} feature_requests_per_minute"
    assert delta("tollgate_limit_hits_total", limit=hit, result="rejected") == 1
    assert delta("tollgate_limiter_reservations_total", kind="tokens") == 2
    assert delta("tollgate_limiter_reservations_total", kind="cost") == 2

    # Settlement runs after the response: reserved - refunded + overrun = tokens really used.
    used = delta("tollgate_tokens_total", org=proxy.org_a.slug, feature="chat")
    assert used > 0
    settled = 0.0
    for _ in range(50):
        settled = (
            delta("tollgate_limiter_reserved_total", kind="tokens")
            - delta("tollgate_limiter_refunded_total", kind="tokens")
            + delta("tollgate_limiter_overrun_total", kind="tokens")
        )
        if settled == used:
            break
        time.sleep(0.05)
    assert settled == used
    assert delta("tollgate_limiter_refunded_total", kind="tokens") > 0  # max_tokens not all used

    # The budget's share used, read from the limiter's counter when Prometheus scrapes.
    spent = current_usage(spec_from_limit(budget), org_id=proxy.org_a.pk)
    assert spent
    labels = {"org": proxy.org_a.slug, "limit": f"#{budget.pk} org_cost_per_day"}
    text = scrape(proxy.url)
    assert total(text, "tollgate_budget_used_ratio", **labels) == pytest.approx(spent / 1_000_000)
    assert total(text, "tollgate_budget_limit_usd", **labels) == pytest.approx(1.0)


def test_queue_depth_is_read_from_the_broker(proxy: Setup) -> None:
    from gateway.celery import app

    app.send_task("gateway.tasks.usage_flush")  # declares the queue
    first = total(scrape(proxy.url), "tollgate_queue_depth", queue="celery")
    for _ in range(3):
        app.send_task("gateway.tasks.usage_flush")
    try:
        assert total(scrape(proxy.url), "tollgate_queue_depth", queue="celery") == first + 3
    finally:
        app.control.purge()


def test_a_worker_serves_its_job_wait_metrics(proxy: Setup, start_worker) -> None:  # type: ignore[no-untyped-def]
    from gateway.celery import app

    port = free_port()
    app.control.purge()
    app.send_task("gateway.tasks.usage_flush")
    worker = start_worker(TOLLGATE_WORKER_METRICS_PORT=str(port), DATABASE_URL=_database_url())
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for_http(url, worker)
    found = 0.0
    for _ in range(100):
        found = total(
            httpx.get(url).text, "tollgate_job_wait_seconds_count", task="gateway.tasks.usage_flush"
        )
        if found:
            break
        time.sleep(0.1)
    assert found >= 1
