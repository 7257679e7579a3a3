"""Usage of one request: tokens, exact cost, timings; handed to Redis for durable batching.

The proxy appends one entry per request to a Redis stream after the response is sent;
a Celery task (``gateway.tasks.usage_flush``) moves entries to Postgres in batches and
acknowledges them only after the commit, so a crashed worker loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass, field, fields
from decimal import Decimal

import redis
import redis.asyncio as aioredis

from gateway.metrics import REDIS_ERRORS
from gateway.proxy.catalog import ModelInfo
from gateway.redis import key, shared_async_client

log = logging.getLogger(__name__)

STREAM = ("usage", "stream")
# Entries kept in memory while Redis is unreachable, retried in the background.
RETRY_BUFFER_LIMIT = 100_000
MILLION = Decimal(1_000_000)


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False


def cost_of(model: ModelInfo, usage: Usage) -> Decimal:
    """Exact cost in USD: uncached input, cached input and output at the model's prices."""
    uncached = max(usage.input_tokens - usage.cached_input_tokens, 0)
    return (
        uncached * model.input_price
        + usage.cached_input_tokens * model.cached_input_price
        + usage.output_tokens * model.output_price
    ) / MILLION


@dataclass(slots=True)
class UsageEvent:
    request_id: str
    created_at: float
    endpoint: str
    status_code: int
    outcome: str
    org_id: int | None = None
    api_key_id: int | None = None
    feature: str = ""
    model: str = ""
    provider: str = ""
    stream: bool = False
    error: str = ""
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    usage_estimated: bool = False
    cost_usd: str = "0"
    upstream_latency_ms: float | None = None
    ttft_ms: float | None = None
    overhead_ms: float | None = None
    # A non-plain limit decision, for the audit trail: rejected, budget_exceeded, waited,
    # fail_open or fail_closed, with the limit that made it.
    decision: str = ""
    limit_id: int | None = None
    limit: str = ""
    waited_ms: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def apply(self, model: ModelInfo | None, usage: Usage) -> Decimal:
        self.input_tokens = usage.input_tokens
        self.cached_input_tokens = usage.cached_input_tokens
        self.output_tokens = usage.output_tokens
        self.usage_estimated = usage.estimated
        cost = cost_of(model, usage) if model is not None else Decimal(0)
        self.cost_usd = str(cost)
        return cost

    def encode(self) -> bytes:
        # Field by field: dataclasses.asdict deep-copies, which costs more than the JSON.
        data = {name: getattr(self, name) for name in _ENCODED_FIELDS}
        return json.dumps(data, separators=(",", ":")).encode()


_ENCODED_FIELDS = tuple(f.name for f in fields(UsageEvent) if f.name != "extra")


class UsageRecorder:
    """Appends usage events to the Redis stream; keeps them in memory while Redis is down."""

    def __init__(self) -> None:
        self._pending: deque[bytes] = deque(maxlen=RETRY_BUFFER_LIMIT)
        self._retry_task: asyncio.Task[None] | None = None

    def _client(self) -> aioredis.Redis:
        return shared_async_client()

    async def record(self, event: UsageEvent) -> None:
        payload = event.encode()
        try:
            await self._client().xadd(key(*STREAM), {"d": payload})
        except (redis.RedisError, OSError) as exc:
            REDIS_ERRORS.labels("usage").inc()
            if len(self._pending) == self._pending.maxlen:
                log.error("usage retry buffer full; dropping the oldest record")
            self._pending.append(payload)
            log.warning("usage record buffered in memory (%s); retrying", exc)
            if self._retry_task is None or self._retry_task.done():
                self._retry_task = asyncio.get_running_loop().create_task(self._retry())

    async def _retry(self) -> None:
        delay = 0.5
        while self._pending:
            await asyncio.sleep(delay)
            try:
                pipe = self._client().pipeline(transaction=False)
                batch = [self._pending[i] for i in range(min(len(self._pending), 500))]
                for payload in batch:
                    pipe.xadd(key(*STREAM), {"d": payload})
                await pipe.execute()
                for _ in batch:
                    self._pending.popleft()
                delay = 0.5
            except (redis.RedisError, OSError):
                REDIS_ERRORS.labels("usage").inc()
                delay = min(delay * 2, 10.0)
