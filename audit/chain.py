"""The hash chain: what a row's hash covers, and how rows are appended under one lock."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import connection, transaction

GENESIS = "0" * 64
# pg_advisory_xact_lock key: appends are serialized so the chain has one order (id order).
CHAIN_LOCK = 0x746F6C6C67617465  # "tollgate"

HASHED_FIELDS = (
    "at",
    "actor_type",
    "actor_id",
    "actor",
    "ip",
    "request_id",
    "action",
    "org_id",
    "org_slug",
    "target_type",
    "target_id",
    "target",
    "changes",
    "source_key",
)
COLUMNS = (*HASHED_FIELDS, "prev_hash", "hash")


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds")
    return value


def row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    content = {name: _canonical(row.get(name)) for name in HASHED_FIELDS}
    payload = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + payload).encode()).hexdigest()


def append(rows: Sequence[dict[str, Any]]) -> int:
    """Append rows to the chain in the current transaction; returns how many were new.

    Rows whose ``source_key`` is already present are skipped (redelivered buffer entries).
    """
    if not rows:
        return 0
    # atomic(): the lock must be held until the rows commit, also for a caller in autocommit.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK])
        keys = [r["source_key"] for r in rows if r.get("source_key")]
        seen: set[str] = set()
        if keys:
            cursor.execute(
                "SELECT source_key FROM audit_auditevent WHERE source_key = ANY(%s)", [keys]
            )
            seen = {k for (k,) in cursor.fetchall()}
        cursor.execute("SELECT hash FROM audit_auditevent ORDER BY id DESC LIMIT 1")
        last = cursor.fetchone()
        prev = last[0] if last else GENESIS
        params: list[Any] = []
        count = 0
        for row in rows:
            key = row.get("source_key")
            if key and (key in seen):
                continue
            if key:
                seen.add(key)
            # Hashed exactly as it will read back from jsonb.
            changes = json.loads(json.dumps(row.get("changes") or {}, default=str))
            row = {**row, "changes": changes}
            digest = row_hash(prev, row)
            values = [row.get(name) for name in HASHED_FIELDS]
            values[HASHED_FIELDS.index("changes")] = json.dumps(changes)
            params.extend([*values, prev, digest])
            prev = digest
            count += 1
        if count:
            one = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
            cursor.execute(
                f"INSERT INTO audit_auditevent ({', '.join(COLUMNS)}) "  # noqa: S608 - fixed names
                f"VALUES {', '.join([one] * count)}",
                params,
            )
    return count
