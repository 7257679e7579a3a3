"""Small ASGI helpers and the error shapes clients' SDKs parse."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"

# OpenAI error "type" for each status we answer ourselves.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}
# Anthropic's documented error types.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
}


class ClientGone(Exception):
    """The client disconnected before we answered."""


class ProxyError(Exception):
    """An answer in the error shape of the endpoint's API."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
        headers: Headers | None = None,
        outcome: str = "client_error",
        body: bytes | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type
        self.headers = headers or []
        self.outcome = outcome
        self.body = body  # a ready body (e.g. the provider's own error), sent as is
        self.extra = extra or {}  # more fields of the error object (the 429 contract)

    def render(self, anthropic: bool) -> bytes:
        if self.body is not None:
            return self.body
        if anthropic:
            # Anthropic's SDK reads the status; its error types are fixed per status.
            kind = _ANTHROPIC_TYPES.get(self.status, "api_error")
            error = {"type": kind, "message": self.message, **self.extra}
            return json.dumps({"type": "error", "error": error}).encode()
        kind = self.error_type or _OPENAI_TYPES.get(self.status, "invalid_request_error")
        error = {
            "message": self.message,
            "type": kind,
            "param": self.param,
            "code": self.code,
            **self.extra,
        }
        return json.dumps({"error": error}).encode()


def header_map(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])


async def read_body(receive: Receive, limit: int, content_length: bytes | None) -> bytes:
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ProxyError(400, "Invalid Content-Length header.") from None
        if declared > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise _too_large(limit)
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> ProxyError:
    return ProxyError(
        413, f"Request body is larger than the limit of {limit} bytes.", code="request_too_large"
    )


async def send_response(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", JSON),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
