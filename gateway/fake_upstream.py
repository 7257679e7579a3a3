"""A fake LLM provider (OpenAI and Anthropic API shapes) on a real 127.0.0.1 HTTP server.

Used by tests, benchmarks and local demo runs. Deliberately free of Django so it starts fast::

    python -m gateway.fake_upstream --port 8099 [--host 127.0.0.1] [--latency-ms 0]
        [--chunks 8] [--chunk-delay-ms 0] [--cached-tokens 0] [--error 429] [--error-times 0]

prints ``fake upstream listening on http://127.0.0.1:8099`` once it accepts connections.
In tests use ``with FakeUpstream() as fake: ...`` (server in a background thread).

Endpoints (each also without the ``/v1`` prefix): ``POST /v1/chat/completions``,
``POST /v1/embeddings``, ``GET /v1/models``, ``POST /v1/messages`` (Anthropic);
control: ``GET|POST /_control``, ``POST /_control/reset``, ``GET /_control/requests``.

Deterministic usage, so that tests elsewhere can compute exact costs:

* ``words`` = whitespace-separated words across all message contents (string contents, or
  the ``text`` of text parts in list contents) plus the Anthropic ``system``; for embeddings
  the words of the input(s). At least 1.
* completion/output tokens = number of content chunks = ``min(chunks, max_tokens)``
  (``max_completion_tokens`` wins over ``max_tokens`` for OpenAI); chunk ``i`` is ``"tok{i} "``.
* cached = ``min(cached_tokens, words)``.
* OpenAI: ``prompt_tokens = words`` (cached tokens are included, as OpenAI does) and
  ``prompt_tokens_details.cached_tokens = cached``.
* Anthropic: ``input_tokens = words - cached`` and ``cache_read_input_tokens = cached``
  (cache reads are NOT part of ``input_tokens``, as the real API does),
  ``cache_creation_input_tokens = 0``.

Injected faults (``FakeConfig.error``, or per request by a model name containing ``-error429``,
``-error500``, ``-error400``, ``-hang`` or ``-drop``; ``-slow`` adds 200 ms latency):
``"429"`` (with ``Retry-After``), ``"500"``, ``"400"``, ``"hang"`` (never answers until the
client disconnects), ``"drop"`` (closes the connection without a response; streams are cut
after 2 content chunks, without the terminating event). ``error_times > 0`` limits the
configured error to that many requests, after which it clears. ``GET /v1/models`` is never
faulted, so it can serve as a readiness probe.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from aiohttp import web

ERRORS = (None, "429", "500", "400", "hang", "drop")
MODEL_OVERRIDES = {
    "-error429": "429",
    "-error500": "500",
    "-error400": "400",
    "-hang": "hang",
    "-drop": "drop",
}
SLOW_SUFFIX_MS = 200.0
MAX_RECORDED = 1000
MODEL_NAMES = (
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "claude-3-5-haiku-latest",
    "claude-sonnet-4-5",
)
DROP_AFTER_CHUNKS = 2
EMBEDDING_DIMENSIONS = 8


@dataclass(frozen=True)
class FakeConfig:
    latency_ms: float = 0.0
    chunks: int = 8
    chunk_delay_ms: float = 0.0
    cached_tokens: int = 0
    error: str | None = None
    error_times: int = 0
    retry_after: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.error, int) and not isinstance(self.error, bool):
            object.__setattr__(self, "error", str(self.error))  # accept {"error": 429}
        if self.error not in ERRORS:
            raise ValueError(f"error must be one of {ERRORS}, not {self.error!r}")
        for name in ("latency_ms", "chunk_delay_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0")
        for name in ("chunks", "cached_tokens", "error_times", "retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0")

    def with_overrides(self, **overrides: Any) -> FakeConfig:
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return replace(self, **overrides)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case keys
    json: Any  # the parsed body, or None when it was absent or not JSON

    def __getitem__(self, key: str) -> Any:  # also allow request["headers"]
        return getattr(self, key)


class _State:
    """Config and recorded requests; shared with the test thread, hence the lock."""

    def __init__(self, config: FakeConfig) -> None:
        self.initial = config
        self.config = config
        self.requests: deque[RecordedRequest] = deque(maxlen=MAX_RECORDED)
        self.count = 0
        self.lock = threading.Lock()

    def record(self, request: web.Request, body: Any) -> int:
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self.lock:
            self.count += 1
            self.requests.append(RecordedRequest(request.method, request.path, headers, body))
            return self.count

    def configure(self, **overrides: Any) -> FakeConfig:
        with self.lock:
            self.config = self.config.with_overrides(**overrides)
            return self.config

    def reset(self) -> None:
        with self.lock:
            self.config = self.initial
            self.requests.clear()
            self.count = 0

    def take_error(self) -> str | None:
        with self.lock:
            cfg = self.config
            if cfg.error is not None and cfg.error_times > 0:
                left = cfg.error_times - 1
                self.config = replace(cfg, error_times=left, error=cfg.error if left else None)
            return cfg.error

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"config": asdict(self.config), "requests": self.count}


STATE = web.AppKey("fake_upstream_state", _State)

# --- helpers -----------------------------------------------------------------------------


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=_dumps(obj), status=status, headers=headers, content_type="application/json"
    )


def _openai_error(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error = {"message": message, "type": type_, "param": param, "code": code}
    return _json({"error": error}, status, headers)


def _anthropic_error(
    status: int, type_: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return _json({"type": "error", "error": {"type": type_, "message": message}}, status, headers)


# status, OpenAI type and code, Anthropic type, message
_FAULTS: dict[str, tuple[int, str, str | None, str, str]] = {
    "429": (
        429,
        "rate_limit_exceeded",
        "rate_limit_exceeded",
        "rate_limit_error",
        "Rate limit reached (fake upstream).",
    ),
    "500": (500, "server_error", None, "api_error", "Internal server error (fake upstream)."),
    "400": (
        400,
        "invalid_request_error",
        None,
        "invalid_request_error",
        "Invalid request (fake upstream).",
    ),
}


def _fault_response(fault: str, anthropic: bool, cfg: FakeConfig) -> web.Response:
    status, oa_type, oa_code, an_type, message = _FAULTS[fault]
    headers = {"Retry-After": str(cfg.retry_after)} if fault == "429" else None
    if anthropic:
        return _anthropic_error(status, an_type, message, headers)
    return _openai_error(status, message, oa_type, None, oa_code, headers)


def _words(text: Any) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def _content_words(content: Any) -> int:
    if isinstance(content, list):
        return sum(
            _words(part.get("text"))
            for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text"
        )
    return _words(content)


def _prompt_words(messages: list[Any], system: Any = None) -> int:
    total = _content_words(system)
    for message in messages:
        if isinstance(message, dict):
            total += _content_words(message.get("content"))
    return max(1, total)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def _read_body(request: web.Request) -> tuple[int, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    return request.app[STATE].record(request, body), body


async def _wait_for_disconnect(request: web.Request) -> web.Response:
    # Polling keeps "hang" correct even under runners without handler cancellation.
    while (transport := request.transport) is not None and not transport.is_closing():
        await asyncio.sleep(0.1)
    return web.Response(status=499)


def _drop(request: web.Request) -> web.Response:
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=499)  # never sent: the transport is closed


async def _plan(
    request: web.Request, model: str, anthropic: bool, stream: bool = False
) -> tuple[FakeConfig, str | None, web.Response | None]:
    """Apply latency and injected faults: (config, fault, response to return instead)."""
    state = request.app[STATE]
    fault = next((f for tag, f in MODEL_OVERRIDES.items() if tag in model), None)
    if fault is None:
        fault = state.take_error()
    cfg = state.config
    latency = cfg.latency_ms + (SLOW_SUFFIX_MS if "-slow" in model else 0.0)
    if latency:
        await asyncio.sleep(latency / 1000)
    if fault == "hang":
        return cfg, fault, await _wait_for_disconnect(request)
    if fault in _FAULTS:
        return cfg, fault, _fault_response(fault, anthropic, cfg)
    if fault == "drop" and not stream:  # streams are dropped mid-way by _stream
        return cfg, fault, _drop(request)
    return cfg, fault, None


async def _stream(
    request: web.Request,
    cfg: FakeConfig,
    fault: str | None,
    before: list[bytes],
    chunks: list[bytes],
    after: list[bytes],
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    for event in before:
        await resp.write(event)
    delay = cfg.chunk_delay_ms / 1000
    for i, chunk in enumerate(chunks):
        if i and delay:
            await asyncio.sleep(delay)
        if fault == "drop" and i == DROP_AFTER_CHUNKS:
            _drop(request)
            return resp
        await resp.write(chunk)  # one write per event, flushed as it goes
    if fault == "drop":
        _drop(request)
        return resp
    for event in after:
        await resp.write(event)
    await resp.write_eof()
    return resp


# --- OpenAI ------------------------------------------------------------------------------


_DONE = b"data: [DONE]\n\n"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    n, body = await _read_body(request)
    if not isinstance(body, dict):
        return _openai_error(
            400, "The request body must be a JSON object.", "invalid_request_error"
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _openai_error(
            400, "you must provide a model parameter", "invalid_request_error", "model"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _openai_error(
            400, "'messages' must be a non-empty array", "invalid_request_error", "messages"
        )
    cfg, fault, early = await _plan(request, model, False, bool(body.get("stream")))
    if early is not None:
        return early
    limit = _int_or_none(body.get("max_completion_tokens"))
    if limit is None:
        limit = _int_or_none(body.get("max_tokens"))
    count = cfg.chunks if limit is None else max(0, min(cfg.chunks, limit))
    prompt = _prompt_words(messages)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": count,
        "total_tokens": prompt + count,
        "prompt_tokens_details": {"cached_tokens": min(cfg.cached_tokens, prompt)},
    }
    created = int(time.time())
    if not body.get("stream"):
        message = {
            "role": "assistant",
            "content": "".join(f"tok{i} " for i in range(count)),
            "refusal": None,
        }
        return _json(
            {
                "id": f"chatcmpl-fake-{n}",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
                ],
                "usage": usage,
            }
        )
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    # Pre-encoded envelope; the per-chunk part is a small string format.
    head = (
        f'data: {{"id":"chatcmpl-fake-{n}","object":"chat.completion.chunk",'
        f'"created":{created},"model":{json.dumps(model)},'
        f'"system_fingerprint":"fp_fake","choices":['
    )
    # OpenAI sends "usage": null on every chunk when include_usage is on.
    tail = '],"usage":null}\n\n' if include_usage else "]}\n\n"
    chunks = [
        (
            head
            + '{"index":0,"delta":{'
            + ('"role":"assistant",' if i == 0 else "")
            + f'"content":"tok{i} "}},"logprobs":null,"finish_reason":null}}'
            + tail
        ).encode()
        for i in range(count)
    ]
    after = [
        (head + '{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}' + tail).encode()
    ]
    if include_usage:  # the usage chunk has empty choices, exactly as OpenAI sends it
        after.append(
            (head + '],"usage":' + json.dumps(usage, separators=(",", ":")) + "}\n\n").encode()
        )
    after.append(_DONE)
    return await _stream(request, cfg, fault, [], chunks, after)


def _embedding(text: str, as_base64: bool) -> list[float] | str:
    digest = hashlib.sha256(text.encode()).digest()[:EMBEDDING_DIMENSIONS]
    values = [round((b - 127.5) / 127.5, 6) for b in digest]
    if as_base64:  # the openai SDK asks for base64 (float32 little-endian) by default
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


async def embeddings(request: web.Request) -> web.StreamResponse:
    _n, body = await _read_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _openai_error(
            400, "you must provide a model parameter", "invalid_request_error", "model"
        )
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        return _openai_error(
            400,
            "'input' must be a string or a non-empty array of strings",
            "invalid_request_error",
            "input",
        )
    model = body["model"]
    _cfg, _fault, early = await _plan(request, model, anthropic=False)
    if early is not None:
        return early
    as_base64 = body.get("encoding_format") == "base64"
    tokens = max(1, sum(_words(text) for text in inputs))
    return _json(
        {
            "object": "list",
            "model": model,
            "data": [
                {"object": "embedding", "index": i, "embedding": _embedding(text, as_base64)}
                for i, text in enumerate(inputs)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


_MODELS_BODY = _dumps(
    {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "fake"}
            for name in MODEL_NAMES
        ],
    }
)


async def list_models(request: web.Request) -> web.StreamResponse:
    request.app[STATE].record(request, None)
    return web.Response(body=_MODELS_BODY, content_type="application/json")


# --- Anthropic ---------------------------------------------------------------------------


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: ".encode() + _dumps(data) + b"\n\n"


_CONTENT_BLOCK_START = _sse(
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)
_PING = _sse("ping", {"type": "ping"})
_CONTENT_BLOCK_STOP = _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
_MESSAGE_STOP = _sse("message_stop", {"type": "message_stop"})
_TEXT_DELTA = (
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    '"delta":{"type":"text_delta","text":"tok%d "}}\n\n'
)


async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    n, body = await _read_body(request)
    if not isinstance(body, dict):
        return _anthropic_error(
            400, "invalid_request_error", "The request body must be a JSON object."
        )
    for field, kind in (("model", str), ("max_tokens", int), ("messages", list)):
        if not isinstance(body.get(field), kind) or isinstance(body.get(field), bool):
            return _anthropic_error(400, "invalid_request_error", f"{field}: Field required")
    model: str = body["model"]
    cfg, fault, early = await _plan(request, model, True, bool(body.get("stream")))
    if early is not None:
        return early
    count = max(0, min(cfg.chunks, body["max_tokens"]))
    words = _prompt_words(body["messages"], body.get("system"))
    cached = min(cfg.cached_tokens, words)
    usage = {
        "input_tokens": words - cached,
        "output_tokens": count,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }
    message: dict[str, Any] = {
        "id": f"msg_fake_{n}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if not body.get("stream"):
        text = "".join(f"tok{i} " for i in range(count))
        return _json(
            message
            | {
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "usage": usage,
            }
        )
    # Anthropic reports output_tokens 1 in message_start and the real count in message_delta.
    start = message | {"usage": usage | {"output_tokens": 1}}
    before = [
        _sse("message_start", {"type": "message_start", "message": start}),
        _CONTENT_BLOCK_START,
        _PING,
    ]
    chunks = [(_TEXT_DELTA % i).encode() for i in range(count)]
    after = [
        _CONTENT_BLOCK_STOP,
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": count},
            },
        ),
        _MESSAGE_STOP,
    ]
    return await _stream(request, cfg, fault, before, chunks, after)


# --- control -----------------------------------------------------------------------------


async def control_get(request: web.Request) -> web.StreamResponse:
    return _json(request.app[STATE].snapshot())


async def control_post(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        overrides = json.loads(await request.read() or b"{}")
        if not isinstance(overrides, dict):
            raise ValueError("the body must be a JSON object of config fields")
        state.configure(**overrides)
    except (ValueError, TypeError) as exc:
        return _json({"error": str(exc)}, 400)
    return _json(state.snapshot())


async def control_reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE].reset()
    return _json(request.app[STATE].snapshot())


async def control_requests(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    with state.lock:
        recorded = [asdict(r) for r in state.requests]
    return _json({"requests": recorded})


def build_app(config: FakeConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = _State(config or FakeConfig())
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/embeddings", embeddings)
        app.router.add_get(f"{prefix}/models", list_models)
        app.router.add_post(f"{prefix}/messages", anthropic_messages)
    app.router.add_get("/_control", control_get)
    app.router.add_post("/_control", control_post)
    app.router.add_post("/_control/reset", control_reset)
    app.router.add_get("/_control/requests", control_requests)
    return app


# --- running -----------------------------------------------------------------------------


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


async def _serve(
    app: web.Application, sock: socket.socket, ready: Callable[[], None], stop: asyncio.Event
) -> None:
    # No access log (per-request logging costs throughput); handlers are cancelled when
    # their client goes away, so 1,000s of abandoned streams do not linger.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, backlog=4096).start()
        ready()
        await stop.wait()
    finally:
        await runner.cleanup()


class FakeUpstream:
    """The fake server in a background thread on a free port: ``with FakeUpstream() as f:``."""

    def __init__(
        self, config: FakeConfig | None = None, host: str = "127.0.0.1", **overrides: Any
    ) -> None:
        self.app = build_app((config or FakeConfig()).with_overrides(**overrides))
        self.host = host
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def state(self) -> _State:
        return self.app[STATE]

    @property
    def config(self) -> FakeConfig:
        return self.state.config

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    def configure(self, **overrides: Any) -> FakeConfig:
        return self.state.configure(**overrides)

    def reset(self) -> None:
        self.state.reset()

    def start(self) -> FakeUpstream:
        sock = _listen(self.host, 0)
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, args=(sock,), daemon=True, name=f"fake-upstream-{self.port}"
        )
        self._thread.start()
        if not self._ready.wait(15) or self._failure is not None:
            raise RuntimeError(f"fake upstream did not start: {self._failure!r}")
        return self

    def _run(self, sock: socket.socket) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await _serve(self.app, sock, self._ready.set, self._stop)

        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(main())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.fake_upstream", description="Fake OpenAI/Anthropic upstream."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--cached-tokens", type=int, default=0)
    parser.add_argument("--error", choices=[e for e in ERRORS if e], default=None)
    parser.add_argument("--error-times", type=int, default=0)
    parser.add_argument("--retry-after", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        config = FakeConfig(
            args.latency_ms,
            args.chunks,
            args.chunk_delay_ms,
            args.cached_tokens,
            args.error,
            args.error_times,
            args.retry_after,
        )
    except ValueError as exc:
        parser.error(str(exc))
    sock = _listen(args.host, args.port)
    url = f"http://{args.host}:{sock.getsockname()[1]}"

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await _serve(
            build_app(config),
            sock,
            lambda: print(f"fake upstream listening on {url}", flush=True),
            stop,
        )

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run())


if __name__ == "__main__":
    main()
