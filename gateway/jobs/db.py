"""Postgres work of the proxy's job endpoints, on a few threads of their own so that one
slow query does not hold up the others (the pump has its own, see ``store``).

Each thread keeps its connection; one that failed (Postgres restarted) is closed so the
next call on that thread connects again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from django.db import DatabaseError, connection

T = TypeVar("T")
# Threads (and so Postgres connections) per process for job reads and writes.
DB_THREADS = 4

_executor = ThreadPoolExecutor(max_workers=DB_THREADS, thread_name_prefix="jobs-db")


def _run(fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
    try:
        return fn(**kwargs)
    except DatabaseError:
        if connection.connection is not None and not connection.is_usable():
            connection.close()
        raise


async def db_call(fn: Callable[..., T], /, **kwargs: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_executor, partial(_run, fn, kwargs))
