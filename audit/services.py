"""Writing audit events. Every write goes through ``audit_record`` or ``audit_append``."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from django.db import models
from django.utils import timezone

from audit.chain import append
from audit.context import Actor, current_actor

REDACTED = "[redacted]"
# Fields whose values never appear in the trail (only that they changed).
SECRET_FIELDS = frozenset(
    {
        "api_key_ciphertext",
        "key_hash",
        "password",
        "password_ciphertext",
        "secret_ciphertext",
        "url_ciphertext",
        "routing_key_ciphertext",
    }
)
SKIPPED_FIELDS = frozenset({"created_at", "updated_at", "last_login", "last_used_at"})


def snapshot(instance: models.Model) -> dict[str, Any]:
    """A model's field values as the trail shows them, secrets redacted."""
    values: dict[str, Any] = {}
    for field in instance._meta.concrete_fields:
        if field.name in SKIPPED_FIELDS:
            continue
        value = getattr(instance, field.attname)
        if field.name in SECRET_FIELDS or field.name.endswith("_ciphertext"):
            # Never the secret; a fingerprint of its stored form shows that it changed.
            value = (
                f"{REDACTED} {hashlib.sha256(str(value).encode()).hexdigest()[:8]}" if value else ""
            )
        elif isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat()
        elif value is not None and not isinstance(value, (str, int, float, bool, list, dict)):
            value = str(value)
        values[field.name] = value
    return values


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    if before is None:
        return {"after": after or {}}
    if after is None:
        return {"before": before}
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    return {
        "before": {k: before.get(k) for k in sorted(changed)},
        "after": {k: after.get(k) for k in sorted(changed)},
    }


def org_of(instance: Any) -> tuple[int | None, str]:
    from policies.models import Organization

    if isinstance(instance, Organization):
        return instance.pk, instance.slug
    org_id = getattr(instance, "org_id", None)
    if org_id is None:
        membership = (
            getattr(instance, "membership", None) if hasattr(instance, "is_staff") else None
        )
        org_id = getattr(membership, "org_id", None)
    if org_id is None:
        return None, ""
    org = Organization.objects.filter(pk=org_id).only("slug").first()
    return org_id, org.slug if org else ""


def audit_record(
    *,
    action: str,
    target: Any = None,
    target_type: str = "",
    target_id: str = "",
    target_repr: str = "",
    changes: dict[str, Any] | None = None,
    org: tuple[int | None, str] | None = None,
    actor: Actor | None = None,
    at: datetime | None = None,
    source_key: str | None = None,
) -> None:
    """Append one event in the caller's transaction (so no change exists without its row)."""
    actor = actor or current_actor()
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or str(target.pk)
        target_repr = target_repr or str(target)[:300]
        org = org or org_of(target)
    org_id, org_slug = org or (None, "")
    append(
        [
            {
                "at": (at or timezone.now()).astimezone(UTC),
                "actor_type": actor.type,
                "actor_id": actor.id,
                "actor": actor.name[:200],
                "ip": actor.ip,
                "request_id": actor.request_id,
                "action": action,
                "org_id": org_id,
                "org_slug": org_slug or "",
                "target_type": target_type,
                "target_id": target_id,
                "target": target_repr,
                "changes": changes or {},
                "source_key": source_key,
            }
        ]
    )
