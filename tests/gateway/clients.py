"""Client processes for exactness tests (no Django here: spawned processes import this)."""

from __future__ import annotations

from typing import Any

import httpx

PROMPT = [{"role": "user", "content": "one two three four five"}]


def hammer(url: str, key: str, feature: str, count: int, limit: int, out: Any) -> None:
    statuses: dict[int, int] = {}
    with httpx.Client(timeout=30) as http:
        for _ in range(count):
            r = http.post(
                f"{url}/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}", "X-Tollgate-Feature": feature},
                json={"model": "gpt-test", "messages": PROMPT},
            )
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 429:
                # Every denial carries the contract's headers and names the limit.
                assert r.headers["retry-after"] and r.headers["x-ratelimit-limit"] == str(limit)
                assert r.json()["error"]["limit"] == limit
    out.put(statuses)
