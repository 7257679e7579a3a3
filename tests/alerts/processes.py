"""Code run in spawned processes (imports Django only after setting it up)."""

from __future__ import annotations

import os
import time
from typing import Any


def crossing(org_id: int, org_slug: str, threshold: int = 100, limit_id: int = 7) -> dict[str, Any]:
    return {
        "kind": "limit.threshold_crossed",
        "at": time.time(),
        "limit_id": limit_id,
        "limit": "60 requests per minute",
        "code": "org_requests_per_minute",
        "scope": "org",
        "metric": "requests",
        "threshold": threshold,
        "used": 60,
        "amount": 60,
        "org_id": org_id,
        "org": org_slug,
        "feature": "chat",
    }


def fire_many(database_url: str, prefix: str, org_id: int, count: int, out: Any) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "gateway.settings"
    os.environ["DATABASE_URL"] = database_url
    import django

    django.setup()
    from django.conf import settings

    settings.TOLLGATE_REDIS_PREFIX = prefix
    from alerts import rules

    out.put(sum(rules.handle_event(crossing(org_id, "acme")) for _ in range(count)))
