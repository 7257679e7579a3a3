"""Engine decisions reach the trail without the request path waiting on Postgres.

Rejections, waits, budget denials and fail-open/closed decisions ride on each request's
usage event (already on a Redis stream) and become audit rows in the same transaction as
the usage rows; threshold crossings come from the engine's event stream. Both are
acknowledged only after the commit and deduplicated by ``source_key``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from audit.chain import append
from gateway.redis import key
from gateway.streams import consume
from policies import events

log = logging.getLogger(__name__)

ACTIONS = {
    "rejected": "request.rejected",
    "budget_exceeded": "budget.exceeded",
    "waited": "request.waited",
    "queued": "request.queued",
    "fail_open": "limit.fail_open",
    "fail_closed": "limit.fail_closed",
}
GROUP = "audit-writers"
# Unacknowledged entries of a consumer that died are taken over after this long.
CLAIM_IDLE_MS = 60_000


def rows_from_usage(rows: list[dict[str, Any]], org_slugs: dict[int, str]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        action = ACTIONS.get(row.get("decision") or "")
        if action is None:
            continue
        key_id = row.get("api_key_id")
        org_id = row.get("org_id")
        out.append(
            {
                "at": row["created_at"],
                "actor_type": "api_key" if key_id else "system",
                "actor_id": str(key_id or ""),
                "actor": f"API key {key_id}" if key_id else "gateway",
                "ip": None,
                "request_id": row["request_id"],
                "action": action,
                "org_id": org_id,
                "org_slug": org_slugs.get(org_id, "") if org_id else "",
                "target_type": "policies.limit",
                "target_id": str(row.get("limit_id") or ""),
                "target": row.get("limit", ""),
                "changes": {
                    "feature": row.get("feature", ""),
                    "model": row.get("model", ""),
                    "status_code": row.get("status_code"),
                    "waited_ms": row.get("waited_ms"),
                },
                "source_key": f"usage:{row['request_id']}",
            }
        )
    return out


def _event_row(entry_id: bytes, data: dict[str, Any]) -> dict[str, Any] | None:
    kind = data.get("kind")
    if kind != "limit.threshold_crossed":
        return None  # fail-open/closed periods are recorded per request from usage events
    return {
        "at": datetime.fromtimestamp(float(data.get("at", 0)), tz=UTC),
        "actor_type": "system",
        "actor_id": "",
        "actor": "limiter",
        "ip": None,
        "request_id": "",
        "action": kind,
        "org_id": data.get("org_id"),
        "org_slug": data.get("org") or "",
        "target_type": "policies.limit",
        "target_id": str(data.get("limit_id", "")),
        "target": str(data.get("limit", ""))[:300],
        "changes": {k: data.get(k) for k in ("threshold", "used", "amount", "feature", "code")},
        "source_key": f"event:{entry_id.decode()}",
    }


def audit_flush_events(*, consumer: str, batch_size: int = 500, max_batches: int = 20) -> int:
    """Move threshold crossings from the engine's event stream into the trail."""
    from django.db import transaction

    def handle(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        rows = []
        for entry_id, fields in entries:
            try:
                row = _event_row(entry_id, json.loads(fields[b"d"]))
            except (KeyError, ValueError, TypeError):
                log.error("discarding malformed engine event %s", entry_id)
                continue
            if row is not None:
                rows.append(row)
        with transaction.atomic():
            return append(rows)

    return consume(
        stream=key(*events.STREAM),
        group=GROUP,
        consumer=consumer,
        handle=handle,
        batch_size=batch_size,
        max_batches=max_batches,
        claim_idle_ms=CLAIM_IDLE_MS,
    )
