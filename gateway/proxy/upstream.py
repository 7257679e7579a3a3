"""The shared upstream HTTP client and the parsing of providers' usage, streamed or not."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from django.conf import settings

from gateway.proxy.usage import Usage

_session: aiohttp.ClientSession | None = None


def session() -> aiohttp.ClientSession:
    """One pooled client per process (created in the running event loop)."""
    global _session
    if _session is None or _session.closed:
        connector = aiohttp.TCPConnector(
            limit=settings.TOLLGATE_UPSTREAM_MAX_CONNECTIONS,
            ttl_dns_cache=300,
            keepalive_timeout=30,
        )
        _session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=settings.TOLLGATE_UPSTREAM_CONNECT_TIMEOUT,
                sock_read=settings.TOLLGATE_UPSTREAM_READ_TIMEOUT,
            ),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
    return _session


async def close_session() -> None:
    global _session
    if _session is not None:
        await _session.close()
        _session = None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def openai_usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(
        input_tokens=_int(usage.get("prompt_tokens")),
        cached_input_tokens=cached,
        output_tokens=_int(usage.get("completion_tokens")),
    )


def anthropic_usage(usage: Any, into: Usage | None = None) -> Usage | None:
    """Anthropic counts cache reads and writes outside ``input_tokens``; we count all input."""
    if not isinstance(usage, dict):
        return into
    result = into or Usage()
    if "input_tokens" in usage:
        cache_read = _int(usage.get("cache_read_input_tokens"))
        result.cached_input_tokens = cache_read
        result.input_tokens = (
            _int(usage.get("input_tokens"))
            + cache_read
            + _int(usage.get("cache_creation_input_tokens"))
        )
    if "output_tokens" in usage:
        result.output_tokens = _int(usage.get("output_tokens"))
    return result


class OpenAIStream:
    """Passes SSE events through whole, reads the usage chunk, and strips it if unwanted.

    Only events that carry a usage object are parsed; every other event is forwarded
    as bytes, untouched.
    """

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.buffer = b""
        self.usage: Usage | None = None
        self.content_events = 0

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        if b"\n\n" not in self.buffer:
            return b""
        head, _, self.buffer = self.buffer.rpartition(b"\n\n")
        out = []
        for event in head.split(b"\n\n"):
            if self._keep(event):
                out.append(event)
        return b"\n\n".join(out) + b"\n\n" if out else b""

    def flush(self) -> bytes:
        rest, self.buffer = self.buffer, b""
        return rest

    def _keep(self, event: bytes) -> bool:
        if b'"usage"' not in event or b'"usage":null' in event or b'"usage": null' in event:
            if b'"choices":[{' in event or b'"choices": [{' in event:
                self.content_events += 1
            return True
        payload = event.partition(b"data:")[2].strip()
        try:
            chunk = json.loads(payload)
        except ValueError:
            return True
        usage = openai_usage(chunk.get("usage")) if isinstance(chunk, dict) else None
        if usage is None:
            return True
        self.usage = usage
        if chunk.get("choices"):
            self.content_events += 1
            return True
        # The usage-only chunk we asked for on the client's behalf.
        return not self.strip_usage


class AnthropicStream:
    """Reads usage from ``message_start`` and ``message_delta``; forwards every byte."""

    def __init__(self) -> None:
        self.buffer = b""
        self.usage: Usage | None = None
        self.content_events = 0

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        while b"\n\n" in self.buffer:
            event, _, self.buffer = self.buffer.partition(b"\n\n")
            self._inspect(event)
        return data

    def flush(self) -> bytes:
        return b""

    def _inspect(self, event: bytes) -> None:
        if b"content_block_delta" in event:
            self.content_events += 1
            return
        if b"message_start" not in event and b"message_delta" not in event:
            return
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    message = json.loads(line[5:])
                except ValueError:
                    return
                if message.get("type") == "message_start":
                    self.usage = anthropic_usage(
                        message.get("message", {}).get("usage"), self.usage
                    )
                elif message.get("type") == "message_delta":
                    self.usage = anthropic_usage(message.get("usage"), self.usage)
