"""Moves usage events from the Redis stream into Postgres, with per-minute rollups.

At-least-once from Redis (a consumer group; entries are acknowledged after the commit and
reclaimed from consumers that died) and exactly-once into Postgres (``request_id`` is
unique, and only newly inserted rows are added to the rollups).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction

from gateway.proxy.usage import STREAM
from gateway.redis import key
from gateway.streams import consume
from policies.models import ApiKey, Organization

log = logging.getLogger(__name__)

GROUP = "usage-writers"
# A consumer's unacknowledged entries are taken over after this long (it probably died).
CLAIM_IDLE_MS = 60_000

COLUMNS = (
    "request_id",
    "created_at",
    "org_id",
    "api_key_id",
    "feature",
    "model",
    "provider",
    "endpoint",
    "stream",
    "status_code",
    "outcome",
    "error",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "usage_estimated",
    "cost_usd",
    "upstream_latency_ms",
    "ttft_ms",
    "overhead_ms",
)


def _decode(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[dict[str, Any]]:
    rows = []
    for entry_id, fields in entries:
        try:
            row = json.loads(fields[b"d"])
            row["created_at"] = datetime.fromtimestamp(float(row["created_at"]), tz=UTC)
            row["error"] = str(row.get("error", ""))[:300]
            row["request_id"] = str(row["request_id"])[:128]
            rows.append(row)
        except (KeyError, ValueError, TypeError):
            log.error("discarding malformed usage entry %s", entry_id)
    return rows


def _insert(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert rows not seen before; returns the ones actually inserted."""
    org_ids = {r["org_id"] for r in rows if r.get("org_id")}
    key_ids = {r["api_key_id"] for r in rows if r.get("api_key_id")}
    live_orgs = set(Organization.objects.filter(pk__in=org_ids).values_list("pk", flat=True))
    live_keys = set(ApiKey.objects.filter(pk__in=key_ids).values_list("pk", flat=True))
    params: list[Any] = []
    for row in rows:
        # A record outlives a deleted org or key; it just loses the link.
        if row.get("org_id") not in live_orgs:
            row["org_id"] = None
        if row.get("api_key_id") not in live_keys:
            row["api_key_id"] = None
        params.extend(row.get(column) for column in COLUMNS)
    placeholders = ", ".join(["(" + ", ".join(["%s"] * len(COLUMNS)) + ")"] * len(rows))
    sql = (
        # Only placeholders and fixed column names are formatted in; values are parameters.
        f"INSERT INTO gateway_usagerecord ({', '.join(COLUMNS)}) VALUES {placeholders} "  # noqa: S608
        "ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        inserted = {r[0] for r in cursor.fetchall()}
    return [row for row in rows if row["request_id"] in inserted]


def _rollup(rows: list[dict[str, Any]]) -> None:
    buckets: dict[tuple[Any, ...], list[Any]] = defaultdict(
        lambda: [0, 0, 0, 0, 0, Decimal(0), 0.0]
    )
    for row in rows:
        minute = row["created_at"].replace(second=0, microsecond=0)
        bucket = buckets[(minute, row.get("org_id"), row.get("feature", ""), row.get("model", ""))]
        bucket[0] += 1
        bucket[1] += 1 if row["outcome"] != "ok" else 0
        bucket[2] += int(row.get("input_tokens") or 0)
        bucket[3] += int(row.get("cached_input_tokens") or 0)
        bucket[4] += int(row.get("output_tokens") or 0)
        bucket[5] += Decimal(str(row.get("cost_usd") or "0"))
        bucket[6] += float(row.get("upstream_latency_ms") or 0.0)
    if not buckets:
        return
    params: list[Any] = []
    for (minute, org_id, feature, model), sums in buckets.items():
        params.extend([minute, org_id, feature, model, *sums])
    placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(buckets))
    sql = (
        "INSERT INTO gateway_usagerollup (minute, org_id, feature, model, requests, errors, "  # noqa: S608
        "input_tokens, cached_input_tokens, output_tokens, cost_usd, upstream_latency_ms_sum) "
        f"VALUES {placeholders} ON CONFLICT ON CONSTRAINT usage_rollup_bucket DO UPDATE SET "
        "requests = gateway_usagerollup.requests + EXCLUDED.requests, "
        "errors = gateway_usagerollup.errors + EXCLUDED.errors, "
        "input_tokens = gateway_usagerollup.input_tokens + EXCLUDED.input_tokens, "
        "cached_input_tokens = gateway_usagerollup.cached_input_tokens "
        "+ EXCLUDED.cached_input_tokens, "
        "output_tokens = gateway_usagerollup.output_tokens + EXCLUDED.output_tokens, "
        "cost_usd = gateway_usagerollup.cost_usd + EXCLUDED.cost_usd, "
        "upstream_latency_ms_sum = gateway_usagerollup.upstream_latency_ms_sum "
        "+ EXCLUDED.upstream_latency_ms_sum"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _touch_keys(rows: list[dict[str, Any]]) -> None:
    last_used: dict[int, datetime] = {}
    for row in rows:
        key_id = row.get("api_key_id")
        if key_id and (key_id not in last_used or row["created_at"] > last_used[key_id]):
            last_used[key_id] = row["created_at"]
    for key_id, when in last_used.items():
        # .update(): bookkeeping, not a configuration change worth reloading snapshots for.
        ApiKey.objects.filter(pk=key_id).exclude(last_used_at__gte=when).update(last_used_at=when)


def usage_ingest(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
    rows = _decode(entries)
    if not rows:
        return 0
    with transaction.atomic():
        inserted = _insert(rows)
        _rollup(inserted)
        _touch_keys(inserted)
        _audit(inserted)
    return len(inserted)


def _audit(rows: list[dict[str, Any]]) -> None:
    """Non-plain limit decisions of these requests join the audit trail, in this same
    transaction: written exactly when their usage rows are."""
    from audit.buffer import rows_from_usage
    from audit.chain import append

    decided = [r for r in rows if r.get("decision")]
    if not decided:
        return
    org_ids = {r["org_id"] for r in decided if r.get("org_id")}
    slugs = dict(Organization.objects.filter(pk__in=org_ids).values_list("pk", "slug"))
    append(rows_from_usage(decided, slugs))


def usage_flush(*, consumer: str, batch_size: int = 1000, max_batches: int = 20) -> int:
    """Move up to ``batch_size * max_batches`` entries to Postgres; returns rows inserted."""
    return consume(
        stream=key(*STREAM),
        group=GROUP,
        consumer=consumer,
        handle=usage_ingest,
        batch_size=batch_size,
        max_batches=max_batches,
        claim_idle_ms=CLAIM_IDLE_MS,
        delete=True,  # the usage stream has this one reader group
    )
