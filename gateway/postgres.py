"""Connection parameters of Django's database for code that talks to PostgreSQL with
psycopg directly (the health check, the job pump's asyncio connections)."""

from __future__ import annotations

from typing import Any

from django.conf import settings


def conninfo(**overrides: Any) -> dict[str, Any]:
    """``psycopg.connect`` keyword arguments for the default database (autocommit)."""
    db = settings.DATABASES["default"]
    return {
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "dbname": db.get("NAME"),
        "autocommit": True,
        **db.get("OPTIONS", {}),
        **overrides,
    }
