"""Checking the whole chain: each row's hash recomputed, each link to the row before."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connection, transaction

from audit.chain import COLUMNS, GENESIS, HASHED_FIELDS, row_hash

BATCH = 5000


@dataclass
class VerifyResult:
    checked: int
    ok: bool
    first_bad_id: int | None = None
    problem: str = ""


def audit_verify(*, progress: Callable[[int, int], None] | None = None) -> VerifyResult:
    """Walk the trail in id order (a server-side cursor: constant memory)."""
    with connection.cursor() as counter:
        counter.execute("SELECT count(*) FROM audit_auditevent")
        total = counter.fetchone()[0]
    prev = GENESIS
    checked = 0
    previous_id = 0
    names = ", ".join(("id", *COLUMNS))
    connection.ensure_connection()
    # A named (server-side) cursor keeps memory flat; it needs a transaction.
    with transaction.atomic(), connection.connection.cursor(name="audit_verify") as cursor:  # type: ignore[union-attr]
        cursor.itersize = BATCH
        cursor.execute(f"SELECT {names} FROM audit_auditevent ORDER BY id")  # noqa: S608
        for record in cursor:
            row = dict(zip(("id", *COLUMNS), record, strict=True))
            row["ip"] = str(row["ip"]) if row["ip"] is not None else None
            if isinstance(row["changes"], str):  # Django's connection hands jsonb over as text
                row["changes"] = json.loads(row["changes"])
            if row["prev_hash"] != prev:
                return VerifyResult(
                    checked,
                    False,
                    row["id"],
                    f"row {row['id']} does not follow row {previous_id}: a row "
                    "between them is missing or the earlier row was altered",
                )
            if row_hash(prev, {k: row[k] for k in HASHED_FIELDS}) != row["hash"]:
                return VerifyResult(
                    checked,
                    False,
                    row["id"],
                    f"row {row['id']} was altered: its content no longer matches its hash",
                )
            prev = row["hash"]
            previous_id = row["id"]
            checked += 1
            if progress is not None and checked % BATCH == 0:
                progress(checked, total)
    if progress is not None:
        progress(checked, total)
    return VerifyResult(checked, True)
