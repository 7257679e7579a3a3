"""Limits on the request path: the 429 contract, budgets, waits, exactness across
processes, failure modes with Redis really stopped, and admin changes reaching every
gateway process."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from decimal import Decimal

import httpx
import pytest

from gateway.models import UsageRecord
from policies import events
from policies.engine.peek import current_usage
from policies.engine.specs import spec_from_limit
from policies.models import Feature, Limit, Organization
from policies.services import apikey_create
from tests.gateway.clients import hammer
from tests.proxy_fixtures import GATEWAY_PREFIX, Setup, flush_usage, wait_until_served

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = [{"role": "user", "content": "one two three four five"}]


def limit(**fields) -> Limit:  # type: ignore[no-untyped-def]
    fields.setdefault("window", "minute")
    fields.setdefault("metric", "requests")
    return Limit.objects.create(**fields)


def fresh_key(setup: Setup, org: Organization, **kwargs) -> str:  # type: ignore[no-untyped-def]
    """A key created after the limits, so once the gateway serves it, it has the limits too."""
    _key, raw = apikey_create(org=org, name="fresh", **kwargs)
    wait_until_served(setup.url, raw)
    return raw


def chat(setup: Setup, key: str, feature: str = "chat", **body) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(
        f"{setup.v1}/chat/completions",
        headers={"Authorization": f"Bearer {key}", "X-Tollgate-Feature": feature},
        json={"model": "gpt-test", "messages": PROMPT, **body},
        timeout=30,
    )


def test_a_denied_request_gets_the_429_contract(proxy: Setup) -> None:
    chat_feature = Feature.objects.get(name="chat")
    limit(scope="org_feature", org=proxy.org_a, feature=chat_feature, amount=3)
    key = fresh_key(proxy, proxy.org_a)
    ok = [chat(proxy, key) for _ in range(3)]
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "3"
    assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["2", "1", "0"]
    assert ok[0].headers["x-ratelimit-reset-requests"].endswith("s")

    denied = chat(proxy, key)
    assert denied.status_code == 429
    error = denied.json()["error"]
    assert error["type"] == "rate_limit_exceeded"
    assert error["code"] == "feature_requests_per_minute"
    assert error["message"] == "Rate limit exceeded for feature chat: 3 requests per minute"
    assert error["scope"] == "org_feature"
    assert error["feature"] == "chat"
    assert error["limit"] == 3
    assert error["window_seconds"] == 60
    assert 1 <= error["reset_in_seconds"] <= 61
    headers = denied.headers
    assert int(headers["retry-after"]) == error["reset_in_seconds"]
    assert headers["x-ratelimit-limit"] == "3"
    assert headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(headers["x-ratelimit-reset"]) <= 61
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"

    # Another feature of the same org is not affected.
    assert chat(proxy, key, feature="summarize").status_code == 200
    usage = UsageRecord.objects.none()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        flush_usage()
        usage = UsageRecord.objects.filter(request_id=denied.headers["x-request-id"])
        if usage.exists():
            break
        time.sleep(0.05)
    record = usage.get()
    assert record.outcome == "rate_limited" and record.status_code == 429


def test_the_openai_sdk_sees_a_rate_limit_error(proxy: Setup) -> None:
    import openai

    limit(scope="org", org=proxy.org_a, amount=1)
    key = fresh_key(proxy, proxy.org_a)
    client = openai.OpenAI(base_url=proxy.v1, api_key=key, max_retries=0)
    client.chat.completions.create(model="gpt-test", messages=PROMPT)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="gpt-test", messages=PROMPT)
    assert limited.value.body["code"] == "org_requests_per_minute"  # type: ignore[index]


def test_a_budget_is_never_overspent_under_concurrency(proxy: Setup) -> None:
    # Each call reserves ~$0.001015 (max_tokens=100) and really costs $0.0000925.
    limit(scope="org", org=proxy.org_a, metric="cost", window="calendar_day", amount=10_000)
    key = fresh_key(proxy, proxy.org_a)
    proxy.fake.configure(latency_ms=200)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        f"{proxy.v1}/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json={"model": "gpt-test", "messages": PROMPT, "max_tokens": 100},
                    )
                    for _ in range(50)
                )
            )

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) + statuses.count(429) == 50
    assert 1 <= statuses.count(200) <= 9
    rejected = next(r for r in responses if r.status_code == 429).json()["error"]
    assert rejected["type"] == "budget_exceeded"
    assert rejected["code"] == "org_cost_per_day"
    assert rejected["message"].startswith("Budget exceeded for org acme: $0.01 per day")

    # Reservations were replaced by the real cost: later calls fit again.
    proxy.fake.configure(latency_ms=0)
    assert chat(proxy, key, max_tokens=100).status_code == 200
    ids = [r.headers["x-request-id"] for r in responses if r.status_code == 200]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        flush_usage()
        if UsageRecord.objects.filter(request_id__in=ids).count() == len(ids):
            break
        time.sleep(0.05)
    spent = sum((r.cost_usd for r in UsageRecord.objects.filter(org=proxy.org_a)), Decimal(0))
    assert Decimal(0) < spent <= Decimal("0.01")


def test_streamed_tokens_are_reserved_then_settled_to_the_real_count(proxy: Setup) -> None:
    tokens = limit(scope="org", org=proxy.org_a, metric="tokens", window="hour", amount=10_000)
    key = fresh_key(proxy, proxy.org_a)
    proxy.fake.configure(chunks=7)
    with httpx.stream(
        "POST",
        f"{proxy.v1}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "gpt-test", "messages": PROMPT, "stream": True, "max_tokens": 500},
    ) as response:
        assert response.headers["x-ratelimit-limit-tokens"] == "10000"
        assert response.headers["x-ratelimit-remaining-tokens"] == str(10_000 - 6 - 500)
        body = response.read()
    assert b"[DONE]" in body
    deadline = time.monotonic() + 3
    used = None
    while time.monotonic() < deadline:
        used = current_usage(spec_from_limit(tokens), org_id=proxy.org_a.pk)
        if used == 5 + 7:
            break
        time.sleep(0.05)
    assert used == 12  # 5 input + 7 output, as the provider reported


def test_a_wait_limit_holds_requests_until_capacity_returns(proxy: Setup) -> None:
    limit(
        scope="org", org=proxy.org_a, window="second", amount=2, action="wait", max_wait_seconds=5
    )
    key = fresh_key(proxy, proxy.org_a)

    async def burst() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(timeout=30) as http:

            async def one() -> tuple[int, float]:
                started = time.monotonic()
                r = await http.post(
                    f"{proxy.v1}/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": "gpt-test", "messages": PROMPT},
                )
                return r.status_code, time.monotonic() - started

            return await asyncio.gather(*(one() for _ in range(6)))

    results = asyncio.run(burst())
    assert [status for status, _ in results] == [200] * 6
    assert max(elapsed for _, elapsed in results) >= 0.9  # 6 at 2/s: the last waited ~2 s


def test_a_wait_limit_rejects_when_capacity_is_too_far_away(proxy: Setup) -> None:
    limit(scope="org", org=proxy.org_a, window="hour", amount=1, action="wait", max_wait_seconds=1)
    key = fresh_key(proxy, proxy.org_a)
    assert chat(proxy, key).status_code == 200
    started = time.monotonic()
    assert chat(proxy, key).status_code == 429
    assert time.monotonic() - started < 1.5


def test_a_monitor_limit_admits_and_reports_crossings_once(proxy: Setup) -> None:
    monitored = limit(
        scope="org", org=proxy.org_a, amount=2, action="monitor", thresholds=[50, 100]
    )
    key = fresh_key(proxy, proxy.org_a)
    assert [chat(proxy, key).status_code for _ in range(5)] == [200] * 5
    from gateway.redis import get_redis

    deadline = time.monotonic() + 3
    mine: list[dict] = []  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        mine = [
            e
            for e in events.read_all(get_redis())
            if e["kind"] == "limit.threshold_crossed" and e["limit_id"] == monitored.pk
        ]
        if len(mine) >= 2:
            break
        time.sleep(0.05)
    assert sorted(e["threshold"] for e in mine) == [50, 100]
    assert mine[0]["org"] == "acme"


def test_an_admin_change_reaches_a_second_gateway_process_within_a_second(
    proxy: Setup, start_gateway
) -> None:  # type: ignore[no-untyped-def]
    from tests.proxy_fixtures import _database_url

    second = start_gateway(DATABASE_URL=_database_url(), TOLLGATE_REDIS_PREFIX=GATEWAY_PREFIX)
    rule = limit(scope="org", org=proxy.org_a, window="hour", amount=1000)
    key = fresh_key(proxy, proxy.org_a)
    wait_until_served(second, key)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "gpt-test", "messages": PROMPT}
    assert (
        httpx.post(f"{second}/v1/chat/completions", headers=headers, json=body).status_code == 200
    )

    rule.amount = 1
    rule.save()
    changed = time.monotonic()
    while True:
        status = httpx.post(f"{second}/v1/chat/completions", headers=headers, json=body).status_code
        if status == 429:
            break
        assert time.monotonic() - changed < 1.0, "the change took more than a second"
        time.sleep(0.02)


def _run_clients(urls: list[str], key: str, feature: str = "chat") -> dict[int, int]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=hammer, args=(urls[i % len(urls)], key, feature, 250, 1000, out))
        for i in range(8)
    ]
    for proc in procs:
        proc.start()
    totals: dict[int, int] = {}
    for _ in procs:
        for status, count in out.get(timeout=180).items():
            totals[status] = totals.get(status, 0) + count
    for proc in procs:
        proc.join(30)
    return totals


@pytest.mark.parametrize("scope", ["org", "org_feature", "api_key"])
def test_eight_client_processes_through_two_gateways_get_exactly_the_limit(
    proxy: Setup, start_gateway, scope: str
) -> None:  # type: ignore[no-untyped-def]
    from policies.models import ApiKey
    from tests.proxy_fixtures import _database_url

    second = start_gateway(DATABASE_URL=_database_url(), TOLLGATE_REDIS_PREFIX=GATEWAY_PREFIX)
    chat_feature = Feature.objects.get(name="chat")
    _key, raw = apikey_create(org=proxy.org_a, name="hammer")
    fields = {"org": proxy.org_a, "amount": 1000}
    if scope == "org_feature":
        fields["feature"] = chat_feature
    if scope == "api_key":
        fields["api_key"] = ApiKey.objects.get(name="hammer")
    limit(scope=scope, **fields)
    key = fresh_key(proxy, proxy.org_a)
    if scope == "api_key":
        key = raw
    wait_until_served(proxy.url, key)
    wait_until_served(second, key)
    totals = _run_clients([proxy.url, second], key)
    assert totals == {200: 1000, 429: 1000}
    if scope == "org_feature":
        assert chat(proxy, key, feature="summarize").status_code == 200
    if scope == "api_key":
        other = fresh_key(proxy, proxy.org_a)
        assert chat(proxy, other).status_code == 200


def test_failure_modes_with_redis_really_stopped(
    transactional_db, free_tier, fake_upstream, start_gateway, throwaway_redis
) -> None:  # type: ignore[no-untyped-def]
    from gateway.models import LlmModel, Provider
    from tests.proxy_fixtures import _database_url

    Feature.objects.create(name="chat")
    provider = Provider.objects.create(
        name="up", kind="openai_compatible", base_url=f"{fake_upstream.url}/v1"
    )
    LlmModel.objects.create(name="gpt-test", provider=provider, upstream_name="m")
    open_org = Organization.objects.create(name="Open", slug="open", tier=free_tier)
    closed_org = Organization.objects.create(name="Closed", slug="closed", tier=free_tier)
    limit(scope="org", org=open_org, amount=100, failure_mode="fail_open")
    limit(scope="org", org=closed_org, amount=100, failure_mode="fail_closed")
    _k, open_key = apikey_create(org=open_org, name="o")
    _k, closed_key = apikey_create(org=closed_org, name="c")
    url = start_gateway(DATABASE_URL=_database_url(), REDIS_URL=throwaway_redis.url)
    body = {"model": "gpt-test", "messages": PROMPT}

    def call(key: str) -> httpx.Response:
        return httpx.post(
            f"{url}/v1/chat/completions",
            json=body,
            timeout=10,
            headers={"Authorization": f"Bearer {key}"},
        )

    assert call(open_key).status_code == 200
    assert call(closed_key).status_code == 200
    throwaway_redis.stop()
    for _ in range(5):  # before and after the circuit breaker opens
        assert call(open_key).status_code == 200
        closed = call(closed_key)
        assert closed.status_code == 503
        assert closed.json()["error"]["code"] == "limiter_unavailable"
    throwaway_redis.start(port=throwaway_redis.port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and call(closed_key).status_code != 200:
        time.sleep(0.2)
    assert call(closed_key).status_code == 200

    # The fail-open period was reported once (not once per request), after Redis came back.
    import redis as redis_lib

    client = redis_lib.Redis.from_url(throwaway_redis.url)
    deadline = time.monotonic() + 5
    reported: list[dict] = []  # type: ignore[type-arg]
    while time.monotonic() < deadline and not reported:
        call(open_key)
        reported = [json.loads(fields[b"d"]) for _id, fields in client.xrange("tg:events")]
        reported = [e for e in reported if e["kind"] == "limit.fail_open"]
        time.sleep(0.1)
    assert len(reported) == 1
    assert reported[0]["org"] == "open"

    # The outage is in the metrics: errors, seconds degraded, and decisions by failure mode.
    from tests.gateway.test_metrics import total

    text = httpx.get(f"{url}/metrics").text
    assert total(text, "tollgate_redis_errors_total", component="limiter") >= 1
    assert total(text, "tollgate_limiter_degraded_seconds_total") > 0
    assert total(text, "tollgate_limiter_degraded") == 0  # over now
    assert total(text, "tollgate_limit_hits_total", result="fail_closed") >= 5
    assert total(text, "tollgate_limiter_decisions_total", result="fail_open") >= 5


def test_a_tier_default_applies_unless_the_org_has_its_own(proxy: Setup) -> None:
    limit(scope="org", tier=proxy.org_a.tier, amount=2)
    limit(scope="org", org=proxy.org_b, amount=4)
    key_a = fresh_key(proxy, proxy.org_a)
    key_b = fresh_key(proxy, proxy.org_b)
    assert [chat(proxy, key_a).status_code for _ in range(3)] == [200, 200, 429]
    assert [chat(proxy, key_b).status_code for _ in range(5)] == [200] * 4 + [429]


def test_an_unpriced_model_is_charged_the_conservative_default(proxy: Setup) -> None:
    from gateway.models import LlmModel

    LlmModel.objects.create(name="mystery", provider=proxy.provider, upstream_name="m")
    key = fresh_key(proxy, proxy.org_a)
    response = httpx.post(
        f"{proxy.v1}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "mystery", "messages": PROMPT},
    )
    assert response.status_code == 200
    # 5 input and 8 output tokens at $15 / $75 per million (the defaults), never $0.
    expected = (5 * Decimal(15) + 8 * Decimal(75)) / Decimal(1_000_000)
    assert Decimal(response.headers["x-tollgate-cost-usd"]) == expected


def test_an_unpriced_model_is_rejected_when_the_policy_says_so(proxy: Setup, start_gateway) -> None:  # type: ignore[no-untyped-def]
    from gateway.models import LlmModel
    from tests.proxy_fixtures import _database_url

    LlmModel.objects.create(name="mystery", provider=proxy.provider, upstream_name="m")
    strict = start_gateway(
        DATABASE_URL=_database_url(),
        TOLLGATE_REDIS_PREFIX=GATEWAY_PREFIX,
        TOLLGATE_UNKNOWN_PRICE="reject",
    )
    wait_until_served(strict, proxy.key_a)
    response = httpx.post(
        f"{strict}/v1/chat/completions",
        headers={"Authorization": f"Bearer {proxy.key_a}"},
        json={"model": "mystery", "messages": PROMPT},
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_price_unknown"


def test_exactness_holds_on_a_three_master_redis_cluster(
    proxy: Setup, start_gateway, redis_cluster
) -> None:  # type: ignore[no-untyped-def]
    from django.conf import settings as live

    from tests.proxy_fixtures import _database_url

    chat_feature = Feature.objects.get(name="chat")
    # Limits in three hash slots: the org's, the feature's (every org) and the global one.
    limit(scope="org", org=proxy.org_a, amount=1000)
    limit(scope="feature", feature=chat_feature, amount=100_000)
    limit(scope="global", amount=100_000)
    _key, key = apikey_create(org=proxy.org_a, name="cluster")
    env = {
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_cluster.url,
        "REDIS_CLUSTER": "true",
        "CELERY_BROKER_URL": live.REDIS_URL,
        "TOLLGATE_REDIS_PREFIX": "test:cluster",
    }
    first, second = start_gateway(**env), start_gateway(**env)
    wait_until_served(first, key)
    wait_until_served(second, key)
    totals = _run_clients([first, second], key)
    assert totals == {200: 1000, 429: 1000}
