"""The ``/v1`` endpoints: OpenAI-shaped chat, embeddings and models; Anthropic messages.

A raw ASGI app (no Django request cycle): authenticate from the in-process snapshot,
validate, relay to the provider through one pooled client, pass streams through event by
event, and hand one usage event per request to Redis after the response is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any

import aiohttp
from django.conf import settings

from gateway.metrics import IN_FLIGHT, observe_request
from gateway.proxy import upstream
from gateway.proxy.catalog import Catalog, CatalogCache, KeyInfo, ModelInfo
from gateway.proxy.http import (
    ClientGone,
    Headers,
    ProxyError,
    Receive,
    Scope,
    Send,
    header_map,
    read_body,
    send_response,
)
from gateway.proxy.jobs import JOB_ENDPOINTS, JobEndpoints, job_options, wants_async
from gateway.proxy.limits import LimitGate, Queued
from gateway.proxy.usage import Usage, UsageEvent, UsageRecorder
from gateway.redis import close_shared_async_client
from policies import keys
from policies.engine.specs import LimitSpec

log = logging.getLogger(__name__)

REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
ANTHROPIC_VERSION = b"2023-06-01"
# Rough size of a token, for estimating usage a provider never reported.
CHARS_PER_TOKEN = 4
OPENAI_KINDS = frozenset({"openai", "openai_compatible"})


@dataclass
class Prepared:
    """A validated model call, ready to be admitted and relayed (now, or later as a job)."""

    path: str  # the provider's path, e.g. "/chat/completions"
    payload: dict[str, Any]
    stream: bool
    estimate: Usage
    max_tokens: int | None
    strip_usage: bool = False


@dataclass
class Call:
    """State of one request, for the handler and its usage event."""

    scope: Scope
    receive: Receive
    send: Send
    headers: dict[bytes, bytes]
    request_id: str
    started: float
    anthropic: bool = False
    event: UsageEvent = field(init=False)
    model: ModelInfo | None = None
    upstream_seconds: float = 0.0
    response_started: bool = False
    key: KeyInfo | None = None
    # Holds and leases are keyed by this server-made id, never by the client's request id.
    lease_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Limits charged for this request (settled after it), and their headers.
    limits: tuple[LimitSpec, ...] = ()
    charges: list[int] = field(default_factory=list)
    rate_headers: Headers = field(default_factory=list)
    # A complete non-streamed answer waiting to be sent: status, body, cost.
    plain: tuple[int, bytes, Decimal] | None = None
    # The burst queue: is this a job's run; did the client ask for a job (Prefer:
    # respond-async); the Redis time of admission.
    job: bool = False
    respond_async: bool = False
    admitted_ms: int = 0

    def __post_init__(self) -> None:
        self.event = UsageEvent(
            request_id=self.request_id,
            created_at=time.time(),
            endpoint=self.scope["path"].removeprefix("/v1/")[:32],
            status_code=0,
            outcome="ok",
        )


class ProxyApp:
    def __init__(self) -> None:
        self.catalog = CatalogCache()
        self.recorder = UsageRecorder()
        self.gate = LimitGate()
        # Model calls (each may also run as a job): the endpoint's name and its validation.
        self.preparers = {
            "chat/completions": self.prepare_chat,
            "embeddings": self.prepare_embeddings,
            "messages": self.prepare_messages,
        }
        self.routes: dict[str, tuple[str, Any]] = {
            path: ("POST", partial(self._serve, endpoint=endpoint))
            for path, endpoint in JOB_ENDPOINTS.items()
        }
        self.routes["/v1/models"] = ("GET", self.list_models)
        self.jobs = JobEndpoints(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = header_map(scope)
        given = headers.get(b"x-request-id")
        request_id = given.decode() if given and REQUEST_ID.match(given) else uuid.uuid4().hex
        call = Call(scope, receive, send, headers, request_id, time.perf_counter())
        IN_FLIGHT.inc()
        path: str = scope["path"]
        call.anthropic = path == "/v1/messages"
        try:
            route = self.routes.get(path)
            if route is None and path.startswith("/v1/models/"):
                route = ("GET", self.retrieve_model)
            if route is None and path.startswith("/v1/jobs/"):
                route = self.jobs.route(scope["method"])
            if route is None:
                raise ProxyError(
                    404, f"Unknown endpoint: {scope['method']} {path}", code="unknown_url"
                )
            method, handler = route
            if scope["method"] != method:
                raise ProxyError(
                    405,
                    f"Method {scope['method']} is not allowed on {path}; use {method}.",
                    code="method_not_allowed",
                    headers=[(b"allow", method.encode())],
                )
            call.respond_async = wants_async(headers, path)
            await handler(call)
        except ProxyError as exc:
            await self._send_error(call, exc)
        except ClientGone:
            call.event.outcome = "client_disconnected"
            call.event.status_code = 499
        except Exception:
            log.exception("request %s failed", request_id)
            await self._send_error(
                call, ProxyError(500, "Internal gateway error.", outcome="upstream_error")
            )
        finally:
            total = time.perf_counter() - call.started
            call.event.overhead_ms = round((total - call.upstream_seconds) * 1000, 3)
            # After the response: reservations become what was really used, leases end.
            await self.gate.settle(
                call,
                tokens=call.event.input_tokens + call.event.output_tokens,
                cost_usd=Decimal(call.event.cost_usd),
            )
            IN_FLIGHT.dec()
            observe_request(call.event, org=call.key.org_slug if call.key else "")
            if call.event.outcome != "queued":  # a job's usage is recorded when it runs
                await self.recorder.record(call.event)

    async def _send_error(self, call: Call, exc: ProxyError) -> None:
        call.event.status_code = exc.status
        call.event.outcome = exc.outcome
        call.event.error = exc.message[:300]
        if call.response_started:
            return  # mid-stream: the stream just ends
        await send_response(
            call.send,
            exc.status,
            exc.render(call.anthropic),
            [(b"x-request-id", call.request_id.encode()), *exc.headers],
        )

    # --- shared steps -------------------------------------------------------------------

    async def authenticate(self, call: Call) -> tuple[Catalog, KeyInfo]:
        catalog = await self.catalog.get()
        raw: bytes | None = None
        auth = call.headers.get(b"authorization")
        if auth:
            scheme, _, value = auth.partition(b" ")
            if scheme.lower() == b"bearer":
                raw = value.strip()
        if raw is None:
            raw = call.headers.get(b"x-api-key")
        if not raw:
            raise ProxyError(
                401,
                "Missing API key: send 'Authorization: Bearer <key>'.",
                code="missing_api_key",
                outcome="auth_error",
            )
        text = raw.decode("latin-1")
        prefix = keys.parse_prefix(text)
        if prefix is None:
            raise ProxyError(
                401, "Malformed API key.", code="invalid_api_key", outcome="auth_error"
            )
        key = catalog.keys.get(prefix)
        if key is None or not keys.matches(text, key.key_hash):
            raise ProxyError(
                401, "Invalid or revoked API key.", code="invalid_api_key", outcome="auth_error"
            )
        if key.expires_at is not None and key.expires_at <= time.time():
            raise ProxyError(
                401, "This API key has expired.", code="expired_api_key", outcome="auth_error"
            )
        call.event.org_id = key.org_id
        call.event.api_key_id = key.id
        call.key = key
        return catalog, key

    def _feature(self, call: Call, catalog: Catalog, key: KeyInfo) -> str:
        given = call.headers.get(b"x-tollgate-feature")
        name = given.decode("latin-1").strip() if given else key.default_feature
        if not name:
            if key.allowed_features is not None:
                raise ProxyError(
                    403,
                    "This key must name its feature in X-Tollgate-Feature.",
                    code="feature_required",
                    outcome="auth_error",
                )
            return ""
        if name not in catalog.features:
            raise ProxyError(
                400,
                f"Unknown feature {name[:64]!r}.",
                param="X-Tollgate-Feature",
                code="unknown_feature",
            )
        if key.allowed_features is not None and name not in key.allowed_features:
            raise ProxyError(
                403,
                f"This key may not be used for feature {name!r}.",
                code="feature_not_allowed",
                outcome="auth_error",
            )
        call.event.feature = name
        return name

    def _model(
        self,
        call: Call,
        catalog: Catalog,
        key: KeyInfo,
        name: str,
        *,
        mode: str,
        kinds: frozenset[str],
    ) -> ModelInfo:
        model = catalog.model_for(key.org_id, name)
        if model is None:
            raise ProxyError(
                404,
                f"The model `{name[:200]}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        if key.allowed_models is not None and model.id not in key.allowed_models:
            raise ProxyError(
                403,
                f"This key may not use the model `{name}`.",
                code="model_not_allowed",
                param="model",
                outcome="auth_error",
            )
        if model.mode != mode:
            raise ProxyError(
                400,
                f"The model `{name}` is a {model.mode} model and cannot be used on this endpoint.",
                code="wrong_model_type",
                param="model",
            )
        if model.provider.kind not in kinds:
            endpoint = (
                "/v1/messages" if model.provider.kind == "anthropic" else "/v1/chat/completions"
            )
            raise ProxyError(
                400,
                f"The model `{name}` is served by a {model.provider.kind} "
                f"provider; call it on {endpoint}.",
                code="wrong_endpoint",
                param="model",
            )
        if model.price_unknown:
            raise ProxyError(
                403,
                f"The model `{name}` has no price configured, and this gateway does not serve "
                "unpriced models.",
                code="model_price_unknown",
                param="model",
            )
        call.model = model
        call.event.model = model.name
        call.event.provider = model.provider.name
        return model

    async def _json_body(self, call: Call) -> dict[str, Any]:
        body = await read_body(
            call.receive, settings.TOLLGATE_MAX_BODY_BYTES, call.headers.get(b"content-length")
        )
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ProxyError(
                400, "We could not parse the JSON body of your request.", code="invalid_json"
            ) from None
        if not isinstance(data, dict):
            raise ProxyError(400, "The request body must be a JSON object.", code="invalid_body")
        return data

    def _upstream_headers(self, call: Call, provider: Any) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "x-request-id": call.request_id,
            "user-agent": "tollgate/0.1",
        }
        if provider.kind == "anthropic":
            headers["anthropic-version"] = call.headers.get(
                b"anthropic-version", ANTHROPIC_VERSION
            ).decode("latin-1")
            beta = call.headers.get(b"anthropic-beta")
            if beta:
                headers["anthropic-beta"] = beta.decode("latin-1")
            if provider.api_key:
                headers["x-api-key"] = provider.api_key
        elif provider.api_key:
            headers["authorization"] = f"Bearer {provider.api_key}"
        return headers

    def _url(self, provider: Any, path: str) -> str:
        base = provider.base_url
        if provider.kind == "anthropic" and not base.endswith("/v1"):
            base += "/v1"
        return base + path

    # --- relaying -----------------------------------------------------------------------

    async def _relay(
        self,
        call: Call,
        url: str,
        payload: dict[str, Any],
        *,
        stream: bool,
        estimate: Usage,
        strip_usage: bool = False,
    ) -> None:
        model = call.model
        assert model is not None
        call.event.stream = stream
        headers = self._upstream_headers(call, model.provider)
        body = json.dumps(payload, separators=(",", ":")).encode()
        sent_at = time.perf_counter()
        try:
            response = await upstream.session().post(url, data=body, headers=headers)
        except TimeoutError:
            raise self._upstream_failure(
                call, sent_at, 504, "The provider did not answer in time."
            ) from None
        except aiohttp.ClientError as exc:
            raise self._upstream_failure(
                call, sent_at, 502, f"Could not reach the provider: {type(exc).__name__}."
            ) from None
        try:
            if response.status >= 400:
                data = await self._read(response, call, sent_at)
                raise self._provider_error(call, response, data)
            if stream and response.content_type == "text/event-stream":
                await self._stream(call, response, sent_at, estimate, strip_usage)
            else:
                data = await self._read(response, call, sent_at)
                self._finish_plain(call, response, data, estimate)
        finally:
            response.close()

    async def _read(self, response: aiohttp.ClientResponse, call: Call, sent_at: float) -> bytes:
        try:
            data = await response.read()
        except TimeoutError:
            raise self._upstream_failure(
                call, sent_at, 504, "The provider did not answer in time."
            ) from None
        except aiohttp.ClientError as exc:
            raise self._upstream_failure(
                call, sent_at, 502, f"The provider connection failed: {type(exc).__name__}."
            ) from None
        call.upstream_seconds = time.perf_counter() - sent_at
        call.event.upstream_latency_ms = round(call.upstream_seconds * 1000, 3)
        return data

    def _upstream_failure(
        self, call: Call, sent_at: float, status: int, message: str
    ) -> ProxyError:
        call.upstream_seconds = time.perf_counter() - sent_at
        call.event.upstream_latency_ms = round(call.upstream_seconds * 1000, 3)
        code = "upstream_timeout" if status == 504 else "upstream_unreachable"
        return ProxyError(status, message, code=code, outcome="upstream_error")

    def _provider_error(
        self, call: Call, response: aiohttp.ClientResponse, data: bytes
    ) -> ProxyError:
        extra: Headers = []
        retry_after = response.headers.get("retry-after")
        if retry_after:
            extra.append((b"retry-after", retry_after.encode("latin-1")))
        provider = call.model.provider.name if call.model else "provider"
        if response.status >= 500:
            return ProxyError(
                502,
                f"The provider {provider} failed with status {response.status}.",
                code="upstream_error",
                outcome="upstream_error",
                headers=extra,
            )
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        shaped = isinstance(parsed, dict) and (
            (call.anthropic and parsed.get("type") == "error")
            or (not call.anthropic and isinstance(parsed.get("error"), dict))
        )
        message = f"The provider {provider} rejected the request with status {response.status}."
        return ProxyError(
            response.status,
            message,
            code="upstream_rejected",
            outcome="upstream_error",
            headers=extra,
            body=data if shaped else None,
        )

    def _finish_plain(
        self, call: Call, response: aiohttp.ClientResponse, data: bytes, estimate: Usage
    ) -> None:
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        usage = None
        if isinstance(parsed, dict):
            usage = (
                upstream.anthropic_usage(parsed.get("usage"))
                if call.anthropic
                else upstream.openai_usage(parsed.get("usage"))
            )
        if usage is None:
            usage = estimate
        cost = call.event.apply(call.model, usage)
        call.event.status_code = response.status
        call.plain = (response.status, data, cost)

    async def _stream(
        self,
        call: Call,
        response: aiohttp.ClientResponse,
        sent_at: float,
        estimate: Usage,
        strip_usage: bool,
    ) -> None:
        parser: upstream.OpenAIStream | upstream.AnthropicStream = (
            upstream.AnthropicStream()
            if call.anthropic
            else upstream.OpenAIStream(strip_usage=strip_usage)
        )
        call.upstream_seconds = time.perf_counter() - sent_at
        await call.send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                    (b"x-request-id", call.request_id.encode()),
                    *call.rate_headers,
                ],
            }
        )
        call.response_started = True
        call.event.status_code = 200
        pump = asyncio.ensure_future(self._pump(call, response, parser, sent_at))
        watch = asyncio.ensure_future(_wait_for_disconnect(call.receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not pump.done():
                # The client left: stop reading; closing the response cancels the upstream call.
                pump.cancel()
                call.event.outcome = "client_disconnected"
                call.event.status_code = 499
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        call.event.upstream_latency_ms = round((time.perf_counter() - sent_at) * 1000, 3)
        usage = parser.usage
        if usage is None:
            usage = Usage(
                input_tokens=estimate.input_tokens,
                output_tokens=parser.content_events,
                estimated=True,
            )
        call.event.apply(call.model, usage)

    async def _pump(
        self,
        call: Call,
        response: aiohttp.ClientResponse,
        parser: upstream.OpenAIStream | upstream.AnthropicStream,
        sent_at: float,
    ) -> None:
        first = True
        try:
            async for data in response.content.iter_any():
                out = parser.feed(data)
                if out:
                    if first:
                        call.event.ttft_ms = round((time.perf_counter() - sent_at) * 1000, 3)
                        first = False
                    await call.send({"type": "http.response.body", "body": out, "more_body": True})
            rest = parser.flush()
        except (aiohttp.ClientError, TimeoutError) as exc:
            call.event.outcome = "upstream_error"
            call.event.error = f"stream interrupted: {type(exc).__name__}"
            rest = b""
        await call.send({"type": "http.response.body", "body": rest, "more_body": False})

    async def _answer_plain(self, call: Call) -> None:
        assert call.plain is not None
        status, data, cost = call.plain
        await send_response(
            call.send,
            status,
            data,
            [
                (b"x-request-id", call.request_id.encode()),
                (b"x-tollgate-cost-usd", _money(cost)),
                *call.rate_headers,
            ],
        )

    # --- endpoints ----------------------------------------------------------------------

    def prepare(
        self, endpoint: str, call: Call, catalog: Catalog, key: KeyInfo, data: dict[str, Any]
    ) -> Prepared:
        """Validate a model call's body against the catalog (also when a job runs)."""
        return self.preparers[endpoint](call, catalog, key, data)

    async def _serve(self, call: Call, endpoint: str) -> None:
        catalog, key = await self.authenticate(call)
        options = job_options(call.headers)
        data = await self._json_body(call)
        prepared = self.prepare(endpoint, call, catalog, key, data)
        if call.respond_async:
            await self.jobs.accept(call, key, endpoint, data, options, reason="requested")
            return
        try:
            await self.gate.admit(
                call,
                catalog,
                key,
                input_tokens=prepared.estimate.input_tokens,
                max_tokens=prepared.max_tokens,
            )
        except Queued:
            await self.jobs.accept(call, key, endpoint, data, options, reason="limit")
            return
        await self.relay(call, prepared)
        if not call.response_started:
            await self._answer_plain(call)

    async def relay(self, call: Call, prepared: Prepared) -> None:
        assert call.model is not None
        await self._relay(
            call,
            self._url(call.model.provider, prepared.path),
            prepared.payload,
            stream=prepared.stream,
            estimate=prepared.estimate,
            strip_usage=prepared.strip_usage,
        )

    def prepare_chat(
        self, call: Call, catalog: Catalog, key: KeyInfo, data: dict[str, Any]
    ) -> Prepared:
        name = _require_str(data, "model")
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ProxyError(
                400, "'messages' must be a non-empty array.", param="messages", code="invalid_type"
            )
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise ProxyError(
                    400,
                    f"'messages[{index}]' must be an object with a 'role'.",
                    param=f"messages[{index}]",
                    code="invalid_type",
                )
        stream = _optional_bool(data, "stream")
        max_tokens = _optional_positive_int(data, "max_completion_tokens")
        legacy_max = _optional_positive_int(data, "max_tokens")
        max_tokens = max_tokens if max_tokens is not None else legacy_max
        options = data.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise ProxyError(
                400,
                "'stream_options' must be an object.",
                param="stream_options",
                code="invalid_type",
            )
        self._feature(call, catalog, key)
        model = self._model(call, catalog, key, name, mode="chat", kinds=OPENAI_KINDS)
        payload = dict(data, model=model.upstream_name)
        wants_usage = bool(options and options.get("include_usage"))
        if stream:
            # Always ask for usage so streamed calls are counted exactly.
            payload["stream_options"] = {**(options or {}), "include_usage": True}
        return Prepared(
            "/chat/completions",
            payload,
            stream,
            Usage(input_tokens=_estimate_tokens(messages), estimated=True),
            max_tokens,
            strip_usage=not wants_usage,
        )

    def prepare_embeddings(
        self, call: Call, catalog: Catalog, key: KeyInfo, data: dict[str, Any]
    ) -> Prepared:
        name = _require_str(data, "model")
        given = data.get("input")
        valid = (isinstance(given, str) and given) or (
            isinstance(given, list)
            and given
            and all(
                isinstance(i, str)
                or (isinstance(i, int) and not isinstance(i, bool))
                or (isinstance(i, list) and all(isinstance(t, int) for t in i))
                for i in given
            )
        )
        if not valid:
            raise ProxyError(
                400,
                "'input' must be a non-empty string or array.",
                param="input",
                code="invalid_type",
            )
        self._feature(call, catalog, key)
        model = self._model(call, catalog, key, name, mode="embedding", kinds=OPENAI_KINDS)
        return Prepared(
            "/embeddings",
            dict(data, model=model.upstream_name),
            False,
            Usage(input_tokens=_estimate_tokens(given), estimated=True),
            0,
        )

    def prepare_messages(
        self, call: Call, catalog: Catalog, key: KeyInfo, data: dict[str, Any]
    ) -> Prepared:
        name = _require_str(data, "model")
        max_tokens = _optional_positive_int(data, "max_tokens")
        if max_tokens is None:
            raise ProxyError(
                400, "'max_tokens' is required.", param="max_tokens", code="missing_field"
            )
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ProxyError(
                400, "'messages' must be a non-empty array.", param="messages", code="invalid_type"
            )
        stream = _optional_bool(data, "stream")
        self._feature(call, catalog, key)
        model = self._model(call, catalog, key, name, mode="chat", kinds=frozenset({"anthropic"}))
        return Prepared(
            "/messages",
            dict(data, model=model.upstream_name),
            stream,
            Usage(input_tokens=_estimate_tokens([data.get("system"), messages]), estimated=True),
            max_tokens,
        )

    async def list_models(self, call: Call) -> None:
        catalog, key = await self.authenticate(call)
        body = {"object": "list", "data": [_model_json(m) for m in catalog.models_for(key)]}
        call.event.status_code = 200
        await send_response(
            call.send, 200, json.dumps(body).encode(), [(b"x-request-id", call.request_id.encode())]
        )

    async def retrieve_model(self, call: Call) -> None:
        catalog, key = await self.authenticate(call)
        name = call.scope["path"].removeprefix("/v1/models/")
        match = [m for m in catalog.models_for(key) if m.name == name]
        if not match:
            raise ProxyError(
                404,
                f"The model `{name[:200]}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        call.event.status_code = 200
        await send_response(
            call.send,
            200,
            json.dumps(_model_json(match[0])).encode(),
            [(b"x-request-id", call.request_id.encode())],
        )

    async def close(self) -> None:
        await self.catalog.close()
        await upstream.close_session()
        await close_shared_async_client()


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _model_json(model: ModelInfo) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": 0, "owned_by": model.provider.name}


def _require_str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        raise ProxyError(400, f"'{name}' is required.", param=name, code="missing_field")
    if not isinstance(value, str) or not value:
        raise ProxyError(
            400, f"'{name}' must be a non-empty string.", param=name, code="invalid_type"
        )
    return value


def _optional_bool(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ProxyError(400, f"'{name}' must be a boolean.", param=name, code="invalid_type")
    return value


def _optional_positive_int(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ProxyError(
            400, f"'{name}' must be a positive integer.", param=name, code="invalid_type"
        )
    return value


def _estimate_tokens(value: Any) -> int:
    """Tokens of whatever text a request carries, roughly: characters / 4."""
    return max(1, math.ceil(_text_length(value) / CHARS_PER_TOKEN))


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_length(item) for item in value)
    if isinstance(value, dict):
        return sum(_text_length(item) for k, item in value.items() if k in ("content", "text"))
    return 0


def _money(amount: Decimal) -> bytes:
    return format(amount.normalize(), "f").encode()
