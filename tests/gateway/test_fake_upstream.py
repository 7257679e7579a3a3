"""The fake LLM upstream: real HTTP on 127.0.0.1, exact shapes, usage numbers and faults."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import selectors
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from gateway.devstack.servers import free_port
from gateway.fake_upstream import FakeConfig, FakeUpstream

BASE_DIR = Path(__file__).resolve().parent.parent.parent
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeUpstream) -> Iterator[FakeUpstream]:
    server.reset()
    yield server
    server.reset()


def chat_body(content: Any = "hello there world", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


def anthropic_body(content: Any = "hello there world", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-x",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def post(fake: FakeUpstream, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(fake.url + path, json=body, timeout=10, **kwargs)


def sse_data(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# --- OpenAI chat ---------------------------------------------------------------------------


def test_chat_non_stream_shape_and_usage(fake: FakeUpstream) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "one two  three"},
                {"type": "image_url", "image_url": {"url": "x y z"}},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    response = post(fake, CHAT, {"model": "gpt-4o-mini", "messages": messages})
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-fake-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-4o-mini"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "".join(f"tok{i} " for i in range(8))
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 8,
        "total_tokens": 13,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_chat_max_tokens_limits_chunks_and_cached_tokens_are_capped(fake: FakeUpstream) -> None:
    fake.configure(cached_tokens=2)
    usage = post(fake, CHAT, chat_body(max_tokens=3)).json()["usage"]
    assert usage == {
        "prompt_tokens": 3,
        "completion_tokens": 3,
        "total_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    # max_completion_tokens wins over max_tokens; cached tokens never exceed the prompt.
    fake.configure(cached_tokens=100)
    body = post(fake, CHAT, chat_body(max_tokens=3, max_completion_tokens=5)).json()
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4 "
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 3
    # An empty prompt still counts as one token.
    assert post(fake, CHAT, chat_body("")).json()["usage"]["prompt_tokens"] == 1


def test_chat_stream_without_include_usage(fake: FakeUpstream) -> None:
    fake.configure(chunks=4)
    response = post(fake, CHAT, chat_body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len(chunks) == 5  # 4 content chunks and the finish chunk
    assert all(
        c["object"] == "chat.completion.chunk" and c["model"] == "gpt-4o-mini" for c in chunks
    )
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "tok0 "}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == [
        "tok1 ",
        "tok2 ",
        "tok3 ",
    ]
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all("usage" not in c for c in chunks)


def test_chat_stream_usage_chunk_only_when_asked(fake: FakeUpstream) -> None:
    fake.configure(chunks=3, cached_tokens=1)
    body = chat_body(stream=True, stream_options={"include_usage": True})
    data = sse_data(post(fake, CHAT, body).text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 3,
        "total_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 1},
    }
    assert all(c["usage"] is None for c in chunks[:-1])  # as OpenAI sends it
    no_usage = chat_body(stream=True, stream_options={"include_usage": False})
    assert all("usage" not in json.loads(d) for d in sse_data(post(fake, CHAT, no_usage).text)[:-1])


def test_chat_stream_chunks_arrive_separately_with_delay(fake: FakeUpstream) -> None:
    fake.configure(chunks=3, chunk_delay_ms=150)
    arrivals: list[float] = []
    start = time.monotonic()
    with httpx.stream("POST", fake.url + CHAT, json=chat_body(stream=True), timeout=10) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 5
    assert arrivals[0] < 0.15  # the first chunk was flushed before the delays
    assert arrivals[2] - arrivals[0] >= 0.28


def test_paths_without_v1_prefix(fake: FakeUpstream) -> None:
    assert post(fake, "/chat/completions", chat_body()).status_code == 200
    assert post(fake, "/messages", anthropic_body()).status_code == 200
    assert post(fake, "/embeddings", {"model": "e", "input": "x"}).status_code == 200
    assert httpx.get(fake.url + "/models").status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "gpt-4o-mini"}, "messages"),
        ({"model": "gpt-4o-mini", "messages": []}, "messages"),
        ([1, 2], None),
    ],
)
def test_chat_invalid_body_is_openai_400(fake: FakeUpstream, body: Any, param: str | None) -> None:
    response = post(fake, CHAT, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    not_json = httpx.post(fake.url + CHAT, content=b"{nope", timeout=10)
    assert not_json.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"


# --- Anthropic -----------------------------------------------------------------------------


def test_anthropic_message_shape_and_usage(fake: FakeUpstream) -> None:
    fake.configure(cached_tokens=2)
    body = anthropic_body(
        [{"type": "text", "text": "a b c"}, {"type": "image"}], system="you are terse", max_tokens=5
    )
    response = post(fake, MESSAGES, body, headers={"x-api-key": "sk-ant-1"})
    assert response.status_code == 200
    message = response.json()
    assert message["id"].startswith("msg_fake_")
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["model"] == "claude-x"
    assert message["content"] == [{"type": "text", "text": "tok0 tok1 tok2 tok3 tok4 "}]
    assert message["stop_reason"] == "end_turn"
    assert message["stop_sequence"] is None
    # 6 prompt words, 2 of them read from the cache: cache reads are not input_tokens.
    assert message["usage"] == {
        "input_tokens": 4,
        "output_tokens": 5,
        "cache_read_input_tokens": 2,
        "cache_creation_input_tokens": 0,
    }


def test_anthropic_stream_event_sequence(fake: FakeUpstream) -> None:
    fake.configure(chunks=3, cached_tokens=1)
    response = post(fake, MESSAGES, anthropic_body(stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(name == data["type"] for name, data in events)
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_fake_") and start["model"] == "claude-x"
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"] == {
        "input_tokens": 2,
        "output_tokens": 1,
        "cache_read_input_tokens": 1,
        "cache_creation_input_tokens": 0,
    }
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert [data["delta"] for _, data in events[3:6]] == [
        {"type": "text_delta", "text": f"tok{i} "} for i in range(3)
    ]
    assert events[7][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[7][1]["usage"] == {"output_tokens": 3}


def test_anthropic_invalid_body_is_anthropic_400(fake: FakeUpstream) -> None:
    body = anthropic_body()
    del body["max_tokens"]
    response = post(fake, MESSAGES, body)
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in response.json()["error"]["message"]


# --- embeddings and models -----------------------------------------------------------------


def test_embeddings(fake: FakeUpstream) -> None:
    response = post(
        fake, "/v1/embeddings", {"model": "text-embedding-3-small", "input": ["one two", "three"]}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert body["model"] == "text-embedding-3-small"
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in body["data"])
    assert body["data"][0]["embedding"] != body["data"][1]["embedding"]
    single = post(fake, "/v1/embeddings", {"model": "m", "input": "one two"}).json()
    assert single["data"][0]["embedding"] == body["data"][0]["embedding"]  # deterministic
    # The openai SDK asks for base64 float32 by default.
    b64 = post(
        fake, "/v1/embeddings", {"model": "m", "input": "one two", "encoding_format": "base64"}
    ).json()
    decoded = struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"]))
    assert decoded == pytest.approx(body["data"][0]["embedding"], abs=1e-6)
    bad = post(fake, "/v1/embeddings", {"model": "m", "input": [1, 2]})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "input"


def test_models_list(fake: FakeUpstream) -> None:
    body = httpx.get(fake.url + "/v1/models").json()
    assert body["object"] == "list"
    assert len(body["data"]) >= 3
    assert all(
        m["object"] == "model" and m["created"] == 0 and m["owned_by"] == "fake"
        for m in body["data"]
    )
    assert "gpt-4o-mini" in {m["id"] for m in body["data"]}


# --- injected faults -----------------------------------------------------------------------


def test_error_429_with_retry_after(fake: FakeUpstream) -> None:
    fake.configure(error="429")
    response = post(fake, CHAT, chat_body())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert response.json()["error"]["type"] == "rate_limit_exceeded"
    fake.configure(retry_after=7)
    response = post(fake, MESSAGES, anthropic_body())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json() == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": response.json()["error"]["message"]},
    }


def test_error_500_and_400(fake: FakeUpstream) -> None:
    fake.configure(error="500")
    response = post(fake, CHAT, chat_body(stream=True))
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert post(fake, MESSAGES, anthropic_body()).json()["error"]["type"] == "api_error"
    fake.configure(error="400")
    response = post(fake, "/v1/embeddings", {"model": "m", "input": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_hang_until_client_gives_up(fake: FakeUpstream) -> None:
    fake.configure(error="hang")
    start = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(fake.url + CHAT, json=chat_body(), timeout=httpx.Timeout(5, read=0.5))
    assert time.monotonic() - start < 3
    fake.configure(error=None)
    assert post(fake, CHAT, chat_body()).status_code == 200  # the server is still healthy


def test_drop_non_stream_closes_without_response(fake: FakeUpstream) -> None:
    fake.configure(error="drop")
    with pytest.raises(httpx.RemoteProtocolError):
        post(fake, CHAT, chat_body())
    with pytest.raises(httpx.RemoteProtocolError):
        post(fake, MESSAGES, anthropic_body())


def test_drop_stream_after_two_chunks(fake: FakeUpstream) -> None:
    fake.configure(error="drop")
    lines: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", fake.url + CHAT, json=chat_body(stream=True), timeout=10) as r,
    ):
        assert r.status_code == 200
        lines.extend(line for line in r.iter_lines() if line)
    assert len(lines) == 2
    assert "[DONE]" not in "".join(lines)


def test_error_times_then_clears(fake: FakeUpstream) -> None:
    fake.configure(error="429", error_times=2)
    assert [post(fake, CHAT, chat_body()).status_code for _ in range(3)] == [429, 429, 200]
    assert fake.config.error is None
    assert fake.config.error_times == 0


@pytest.mark.parametrize(
    ("suffix", "status"),
    [
        ("-error429", 429),
        ("-error500", 500),
        ("-error400", 400),
    ],
)
def test_model_name_overrides(fake: FakeUpstream, suffix: str, status: int) -> None:
    response = post(fake, CHAT, {**chat_body(), "model": f"gpt{suffix}"})
    assert response.status_code == status
    assert post(fake, CHAT, chat_body()).status_code == 200  # only that model misbehaves


def test_model_name_hang_drop_and_slow(fake: FakeUpstream) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            fake.url + CHAT,
            json={**chat_body(), "model": "x-hang"},
            timeout=httpx.Timeout(5, read=0.3),
        )
    with pytest.raises(httpx.RemoteProtocolError):
        post(fake, MESSAGES, {**anthropic_body(), "model": "claude-drop"})
    start = time.monotonic()
    assert post(fake, CHAT, {**chat_body(), "model": "gpt-slow"}).status_code == 200
    assert time.monotonic() - start >= 0.2


def test_latency(fake: FakeUpstream) -> None:
    fake.configure(latency_ms=250)
    start = time.monotonic()
    assert post(fake, CHAT, chat_body()).status_code == 200
    assert time.monotonic() - start >= 0.25


# --- control and recorded requests ---------------------------------------------------------


def test_control_endpoints(fake: FakeUpstream) -> None:
    post(fake, CHAT, chat_body())
    state = httpx.get(fake.url + "/_control").json()
    assert state["requests"] == 1
    assert state["config"] == {
        "latency_ms": 0.0,
        "chunks": 8,
        "chunk_delay_ms": 0.0,
        "cached_tokens": 0,
        "error": None,
        "error_times": 0,
        "retry_after": 2,
    }
    changed = post(fake, "/_control", {"error": 429, "error_times": 1, "chunks": 2}).json()
    assert changed["config"]["error"] == "429" and changed["config"]["chunks"] == 2
    assert post(fake, CHAT, chat_body()).status_code == 429
    assert post(fake, CHAT, chat_body()).json()["usage"]["completion_tokens"] == 2
    assert post(fake, "/_control", {"error": "boom"}).status_code == 400
    assert post(fake, "/_control", {"nope": 1}).status_code == 400
    assert post(fake, "/_control", {"chunks": -1}).status_code == 400
    recorded = httpx.get(fake.url + "/_control/requests").json()["requests"]
    assert [r["path"] for r in recorded] == [CHAT] * 3
    reset = httpx.post(fake.url + "/_control/reset").json()
    assert reset == {"config": state["config"], "requests": 0}
    assert fake.requests == []


def test_recorded_requests_include_headers_and_body(fake: FakeUpstream) -> None:
    post(
        fake,
        CHAT,
        chat_body(),
        headers={"Authorization": "Bearer sk-provider-key", "X-Custom": "1"},
    )
    post(
        fake,
        MESSAGES,
        anthropic_body(),
        headers={"x-api-key": "sk-ant", "anthropic-version": "2023-06-01"},
    )
    first, second = fake.requests
    assert first.method == "POST" and first.path == CHAT
    assert first.headers["authorization"] == "Bearer sk-provider-key"
    assert first.headers["x-custom"] == "1"
    assert first.json["model"] == "gpt-4o-mini"
    assert first["json"] == first.json  # dict-style access works too
    assert second.headers["x-api-key"] == "sk-ant"
    assert second.headers["anthropic-version"] == "2023-06-01"


def test_recorded_requests_are_bounded(fake: FakeUpstream) -> None:
    with httpx.Client(base_url=fake.url) as client:
        for _ in range(1005):
            client.get("/v1/models")
    assert len(fake.requests) == 1000
    assert httpx.get(fake.url + "/_control").json()["requests"] == 1005


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="error"):
        FakeConfig(error="teapot")
    with pytest.raises(ValueError, match="unknown"):
        FakeConfig().with_overrides(colour="red")
    assert FakeConfig(error=500).error == "500"  # type: ignore[arg-type]


# --- real clients, concurrency and the CLI -------------------------------------------------


def test_official_sdks_parse_the_responses(fake: FakeUpstream) -> None:
    import anthropic
    import openai

    fake.configure(chunks=3)
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-test", max_retries=0)
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}]
    )
    assert completion.usage is not None and completion.usage.total_tokens == 5
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "tok0 tok1 tok2 "
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    embedding = client.embeddings.create(model="text-embedding-3-small", input="a b")
    assert len(embedding.data[0].embedding) == 8
    assert fake.requests[0].headers["authorization"] == "Bearer sk-test"

    claude = anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-test", max_retries=0)
    with claude.messages.stream(
        model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as events:
        message = events.get_final_message()
    assert message.content[0].text == "tok0 tok1 tok2 "  # type: ignore[union-attr]
    assert message.usage.output_tokens == 3
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(
            model="claude-error429", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )


def test_many_concurrent_streams(fake: FakeUpstream) -> None:
    fake.configure(chunks=4, chunk_delay_ms=50)

    async def one(session: aiohttp.ClientSession) -> int:
        async with session.post(fake.url + CHAT, json=chat_body(stream=True)) as response:
            return (await response.read()).count(b"data: ")

    async def many() -> list[int]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            return await asyncio.gather(*(one(session) for _ in range(500)))

    start = time.monotonic()
    assert asyncio.run(many()) == [6] * 500
    assert time.monotonic() - start < 10  # concurrent, not 500 * 150 ms


def test_module_does_not_import_django() -> None:
    code = (
        "import importlib.util, sys\n"
        "path = 'gateway/fake_upstream.py'\n"
        "spec = importlib.util.spec_from_file_location('fake_upstream', path)\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['fake_upstream'] = module\n"
        "spec.loader.exec_module(module)\n"
        "module.build_app(module.FakeConfig())\n"
        "assert 'django' not in sys.modules, 'django was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, check=True, timeout=60)


def test_cli_subprocess() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.fake_upstream", "--port", str(port), "--chunks", "2"],
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=30), "no ready line within 30 s"
        line = proc.stdout.readline().decode().strip()
        assert line == f"fake upstream listening on http://127.0.0.1:{port}"
        response = httpx.post(f"http://127.0.0.1:{port}{CHAT}", json=chat_body(), timeout=10)
        assert response.json()["usage"]["completion_tokens"] == 2
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
