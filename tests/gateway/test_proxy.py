"""The /v1 proxy, driven by the official SDKs against a real gateway process and a fake
upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from gateway.models import UsageRecord, UsageRollup
from policies.models import ApiKey
from tests.proxy_fixtures import UPSTREAM_KEY, Setup, flush_usage

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = [{"role": "user", "content": "one two three four five"}]  # 5 words = 5 tokens upstream


def client(setup: Setup, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=setup.v1, api_key=key or setup.key_a, max_retries=0)


def record(request_id: str, timeout: float = 5.0) -> UsageRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flush_usage()
        found = UsageRecord.objects.filter(request_id=request_id).first()
        if found is not None:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no usage record for {request_id}")


def cost(
    input_tokens: int,
    output_tokens: int,
    cached: int = 0,
    *,
    inp: str = "2.50",
    out: str = "10.00",
    cache: str = "1.25",
) -> Decimal:
    return (
        (input_tokens - cached) * Decimal(inp)
        + cached * Decimal(cache)
        + output_tokens * Decimal(out)
    ) / Decimal(1_000_000)


def test_a_chat_completion_goes_through_with_the_providers_key(proxy: Setup) -> None:
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="gpt-test", messages=PROMPT, extra_headers={"X-Request-ID": "req-chat-1"}
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage.prompt_tokens == 5
    assert raw.headers["x-request-id"] == "req-chat-1"
    assert Decimal(raw.headers["x-tollgate-cost-usd"]) == cost(5, 8)
    assert UPSTREAM_KEY not in raw.http_response.text

    sent = proxy.fake.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.json["model"] == "upstream-gpt"

    usage = record("req-chat-1")
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens) == (5, 8, 0)
    assert usage.cost_usd == cost(5, 8)
    assert usage.org_id == proxy.org_a.pk
    assert usage.feature == "chat"
    assert usage.model == "gpt-test" and usage.provider == "fake-openai"
    assert usage.status_code == 200 and usage.outcome == "ok"
    assert usage.usage_estimated is False
    assert usage.upstream_latency_ms is not None and usage.overhead_ms is not None


def test_cached_input_is_priced_at_the_cached_rate(proxy: Setup) -> None:
    proxy.fake.configure(cached_tokens=3)
    raw = client(proxy).chat.completions.with_raw_response.create(model="gpt-test", messages=PROMPT)
    usage = record(raw.headers["x-request-id"])
    assert usage.cached_input_tokens == 3
    assert usage.cost_usd == cost(5, 8, cached=3)


def test_a_streamed_chat_is_passed_through_and_counted_exactly(proxy: Setup) -> None:
    proxy.fake.configure(chunks=6)
    stream = client(proxy).chat.completions.with_raw_response.create(
        model="gpt-test", messages=PROMPT, stream=True
    )
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == [f"tok{i}" for i in range(6)]
    # The client did not ask for usage: the chunk we requested on its behalf is stripped.
    assert all(c.usage is None for c in chunks)
    assert proxy.fake.requests[-1].json["stream_options"] == {"include_usage": True}

    usage = record(request_id)
    assert (usage.input_tokens, usage.output_tokens) == (5, 6)
    assert usage.cost_usd == cost(5, 6)
    assert usage.stream is True and usage.usage_estimated is False
    assert usage.ttft_ms is not None


def test_a_client_that_asks_for_stream_usage_gets_it(proxy: Setup) -> None:
    chunks = list(
        client(proxy).chat.completions.create(
            model="gpt-test", messages=PROMPT, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


def test_the_async_sdk_works_streamed_and_not(proxy: Setup) -> None:
    async def run() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=proxy.v1, api_key=proxy.key_a, max_retries=0) as c:
            plain = await c.chat.completions.create(model="gpt-test", messages=PROMPT)
            parts = []
            async for chunk in await c.chat.completions.create(
                model="gpt-test", messages=PROMPT, stream=True
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
            return plain.choices[0].message.content or "", "".join(parts)

    plain, streamed = asyncio.run(run())
    assert plain.split() == streamed.split()


def test_embeddings_go_through_and_are_priced(proxy: Setup) -> None:
    raw = client(proxy).embeddings.with_raw_response.create(
        model="embed-test", input=["alpha beta", "gamma"]
    )
    result = raw.parse()
    assert len(result.data) == 2
    usage = record(raw.headers["x-request-id"])
    assert usage.input_tokens == 3
    assert usage.cost_usd == Decimal(3) * Decimal("0.02") / Decimal(1_000_000)


def test_models_lists_only_what_the_key_may_use(proxy: Setup) -> None:
    names_a = {m.id for m in client(proxy).models.list()}
    names_b = {m.id for m in client(proxy, proxy.key_b).models.list()}
    assert {"gpt-test", "embed-test", "claude-test", "acme-private"} <= names_a
    assert "acme-private" not in names_b
    assert client(proxy).models.retrieve("acme-private").id == "acme-private"
    with pytest.raises(openai.NotFoundError):
        client(proxy, proxy.key_b).models.retrieve("acme-private")


def test_a_key_restricted_to_models_and_features_gets_403_elsewhere(proxy: Setup) -> None:
    from policies.models import Feature
    from policies.services import apikey_create
    from tests.proxy_fixtures import wait_until_served

    _key, raw = apikey_create(
        org=proxy.org_a,
        name="narrow",
        allowed_models=[proxy.chat],
        allowed_features=[Feature.objects.get(name="summarize")],
    )
    wait_until_served(proxy.url, raw)
    narrow = client(proxy, raw)
    assert [m.id for m in narrow.models.list()] == ["gpt-test"]
    ok = narrow.chat.completions.create(
        model="gpt-test", messages=PROMPT, extra_headers={"X-Tollgate-Feature": "summarize"}
    )
    assert ok.choices
    with pytest.raises(openai.PermissionDeniedError):
        narrow.chat.completions.create(
            model="acme-private", messages=PROMPT, extra_headers={"X-Tollgate-Feature": "summarize"}
        )
    with pytest.raises(openai.PermissionDeniedError) as denied:
        narrow.chat.completions.create(
            model="gpt-test", messages=PROMPT, extra_headers={"X-Tollgate-Feature": "chat"}
        )
    assert denied.value.body["code"] == "feature_not_allowed"  # type: ignore[index]


def test_another_orgs_private_model_does_not_exist_for_an_outsider(proxy: Setup) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client(proxy, proxy.key_b).chat.completions.create(model="acme-private", messages=PROMPT)
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_the_anthropic_sdk_works_streamed_and_not(proxy: Setup) -> None:
    proxy.fake.configure(cached_tokens=2)
    claude = anthropic.Anthropic(base_url=proxy.url, api_key=proxy.key_a, max_retries=0)
    raw = claude.messages.with_raw_response.create(
        model="claude-test", max_tokens=5, messages=PROMPT
    )
    message = raw.parse()
    assert message.content[0].text.split() == [f"tok{i}" for i in range(5)]
    sent = proxy.fake.requests[-1]
    assert sent.headers["x-api-key"] == UPSTREAM_KEY
    assert sent.json["model"] == "upstream-claude"
    usage = record(raw.headers["x-request-id"])
    # Anthropic reports cache reads beside input_tokens (3 + 2); the gateway counts all input.
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (5, 2, 5)
    assert usage.cost_usd == cost(5, 5, cached=2, inp="3", out="15", cache="0.30")

    with claude.messages.stream(model="claude-test", max_tokens=4, messages=PROMPT) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.split() == [f"tok{i}" for i in range(4)]
    assert final.usage.output_tokens == 4


def test_a_client_disconnecting_mid_stream_cancels_upstream_and_is_recorded(proxy: Setup) -> None:
    proxy.fake.configure(chunks=50, chunk_delay_ms=100)
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST",
            f"{proxy.v1}/chat/completions",
            headers={"Authorization": f"Bearer {proxy.key_a}", "X-Request-ID": "req-gone"},
            json={"model": "gpt-test", "messages": PROMPT, "stream": True},
        ) as response,
    ):
        lines = response.iter_lines()
        received = [next(lines) for _ in range(3)]
    assert any(line.startswith("data:") for line in received)
    usage = record("req-gone", timeout=10)
    assert usage.outcome == "client_disconnected"
    assert usage.usage_estimated is True
    assert 1 <= usage.output_tokens < 50
    assert usage.input_tokens >= 1
    assert usage.cost_usd > 0
    assert usage.upstream_latency_ms is not None and usage.upstream_latency_ms < 4000


def test_a_provider_429_is_passed_back_with_its_retry_after(proxy: Setup) -> None:
    proxy.fake.configure(error="429", retry_after=7)
    with pytest.raises(openai.RateLimitError) as limited:
        client(proxy).chat.completions.create(model="gpt-test", messages=PROMPT)
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.status_code == 429


def test_a_provider_400_is_passed_back_with_its_status(proxy: Setup) -> None:
    proxy.fake.configure(error="400")
    with pytest.raises(openai.BadRequestError) as rejected:
        client(proxy).chat.completions.create(model="gpt-test", messages=PROMPT)
    assert rejected.value.status_code == 400


def test_a_provider_500_becomes_502(proxy: Setup) -> None:
    proxy.fake.configure(error="500")
    raw = httpx.post(
        f"{proxy.v1}/chat/completions",
        headers={"Authorization": f"Bearer {proxy.key_a}"},
        json={"model": "gpt-test", "messages": PROMPT},
    )
    assert raw.status_code == 502
    assert raw.json()["error"]["code"] == "upstream_error"
    usage = record(raw.headers["x-request-id"])
    assert usage.outcome == "upstream_error" and usage.status_code == 502


def test_a_hanging_provider_becomes_504(proxy: Setup) -> None:
    proxy.fake.configure(error="hang")
    started = time.monotonic()
    raw = httpx.post(
        f"{proxy.v1}/chat/completions",
        headers={"Authorization": f"Bearer {proxy.key_a}"},
        json={"model": "gpt-test", "messages": PROMPT},
        timeout=30,
    )
    assert raw.status_code == 504
    assert raw.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 15


def test_a_dropped_connection_becomes_502(proxy: Setup) -> None:
    proxy.fake.configure(error="drop")
    raw = httpx.post(
        f"{proxy.v1}/chat/completions",
        headers={"Authorization": f"Bearer {proxy.key_a}"},
        json={"model": "gpt-test", "messages": PROMPT},
    )
    assert raw.status_code == 502
    assert "Traceback" not in raw.text


def test_an_unreachable_provider_becomes_502(proxy: Setup) -> None:
    from gateway.devstack.servers import free_port
    from tests.proxy_fixtures import wait_until_served

    proxy.provider.base_url = f"http://127.0.0.1:{free_port()}/v1"
    proxy.provider.save()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        raw = httpx.post(
            f"{proxy.v1}/chat/completions",
            headers={"Authorization": f"Bearer {proxy.key_a}"},
            json={"model": "gpt-test", "messages": PROMPT},
        )
        if raw.status_code == 502:
            break
        time.sleep(0.1)
    assert raw.status_code == 502
    assert raw.json()["error"]["code"] == "upstream_unreachable"
    wait_until_served(proxy.url, proxy.key_a)


def test_a_revoked_key_is_refused_within_a_second(proxy: Setup) -> None:
    from policies.services import apikey_revoke

    key = ApiKey.objects.get(org=proxy.org_a)
    apikey_revoke(key=key)
    revoked_at = time.monotonic()
    while True:
        status = httpx.get(
            f"{proxy.v1}/models", headers={"Authorization": f"Bearer {proxy.key_a}"}
        ).status_code
        if status == 401:
            break
        assert time.monotonic() - revoked_at < 1.5, "revocation did not apply within a second"
        time.sleep(0.02)


def test_usage_is_rolled_up_per_minute_by_org_feature_and_model(proxy: Setup) -> None:
    ids = []
    for _ in range(3):
        raw = client(proxy).chat.completions.with_raw_response.create(
            model="gpt-test", messages=PROMPT
        )
        ids.append(raw.headers["x-request-id"])
    for request_id in ids:
        record(request_id)
    rollup = UsageRollup.objects.filter(org=proxy.org_a, feature="chat", model="gpt-test")
    assert sum(r.requests for r in rollup) == 3
    assert sum(r.output_tokens for r in rollup) == 24
    assert sum((r.cost_usd for r in rollup), Decimal(0)) == 3 * cost(5, 8)
