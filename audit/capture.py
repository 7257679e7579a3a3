"""Every create, update and delete of the audited models becomes one audit row, written in
the same transaction as the change.

Inside ``collecting()`` (wrapped around each admin and API request) the changes of one
operation are gathered and written once at its end, so a key saved and then given its
allow-lists is one ``apikey.created`` row; outside it (commands, shells) each change is
written at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from django.db import models, transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save

from audit.services import audit_record, diff, org_of, snapshot

# Model label -> the name its actions use ("apikey.created").
AUDITED: dict[str, str] = {
    "policies.organization": "org",
    "policies.feature": "feature",
    "policies.apikey": "apikey",
    "policies.limit": "limit",
    "policies.tier": "tier",
    "policies.membership": "membership",
    "gateway.provider": "provider",
    "gateway.llmmodel": "model",
    "auth.user": "user",
    "alerts.alertchannel": "alert_channel",
    "alerts.alertrule": "alert_rule",
    "alerts.smtpsettings": "smtp",
}


@dataclass
class Pending:
    instance: models.Model
    action: str  # created, updated, deleted
    before: dict[str, Any] | None
    org: tuple[int | None, str] = (None, "")
    extra: dict[str, Any] = field(default_factory=dict)


_pending: ContextVar[dict[tuple[str, Any], Pending] | None] = ContextVar(
    "audit_pending", default=None
)


def full_snapshot(instance: models.Model) -> dict[str, Any]:
    values = snapshot(instance)
    if instance.pk is not None:
        for m2m in instance._meta.many_to_many:
            values[m2m.name] = sorted(getattr(instance, m2m.name).values_list("pk", flat=True))
    return values


def _name(instance: models.Model) -> str | None:
    if type(instance).__module__ == "__fake__":
        return None  # a migration's historical model: data migrations are not user actions
    return AUDITED.get(instance._meta.label_lower)


def _key(instance: models.Model) -> tuple[str, Any]:
    return (instance._meta.label_lower, instance.pk)


@contextlib.contextmanager
def collecting() -> Iterator[None]:
    """Gather this block's changes and write them as one row per object at its end."""
    if _pending.get() is not None:
        yield
        return
    token = _pending.set({})
    try:
        with transaction.atomic():
            yield
            _flush()
    finally:
        _pending.reset(token)


def _flush() -> None:
    pending = _pending.get() or {}
    for entry in list(pending.values()):
        _write(entry)
    pending.clear()


def _write(entry: Pending) -> None:
    name = _name(entry.instance)
    if name is None:
        return
    if entry.action == "deleted":
        audit_record(
            action=f"{name}.deleted",
            target=entry.instance,
            org=entry.org,
            changes=diff(entry.before, None),
        )
        return
    fresh = type(entry.instance)._default_manager.filter(pk=entry.instance.pk).first()
    if fresh is None:
        return
    after = full_snapshot(fresh)
    changes = diff(entry.before, after)
    if entry.action == "updated" and not changes["after"]:
        return  # nothing the trail shows changed (e.g. only last_login)
    audit_record(action=f"{name}.{entry.action}", target=fresh, changes=changes)


def _note(instance: models.Model, action: str, before: dict[str, Any] | None) -> None:
    pending = _pending.get()
    entry = Pending(instance, action, before)
    if action == "deleted":
        entry.org = org_of(instance)
    if pending is None:
        _write(entry)
        return
    known = pending.get(_key(instance))
    if known is None:
        pending[_key(instance)] = entry
    elif action == "deleted":
        known.action, known.org = "deleted", entry.org
        known.instance = instance
    # created then updated stays "created"; the first "before" is the one kept.


def _pre_save(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    if _name(instance) is None or instance.pk is None or kwargs.get("raw"):
        return
    pending = _pending.get()
    if pending is not None and _key(instance) in pending:
        return
    old = sender._default_manager.filter(pk=instance.pk).first()
    instance._audit_before = full_snapshot(old) if old is not None else None  # type: ignore[attr-defined]


def _post_save(
    sender: type[models.Model], instance: models.Model, created: bool, **kwargs: Any
) -> None:
    if _name(instance) is None or kwargs.get("raw"):
        return
    before = None if created else getattr(instance, "_audit_before", None)
    _note(instance, "created" if created else "updated", before)


def _post_delete(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    if _name(instance) is None:
        return
    _note(instance, "deleted", snapshot(instance))


def _m2m_changed(sender: Any, instance: models.Model, action: str, **kwargs: Any) -> None:
    if _name(instance) is None or instance.pk is None:
        return
    pending = _pending.get()
    if action.startswith("pre_"):
        if pending is not None and _key(instance) not in pending:
            pending[_key(instance)] = Pending(instance, "updated", full_snapshot(instance))
        elif pending is None:
            instance._audit_m2m_before = full_snapshot(instance)  # type: ignore[attr-defined]
        return
    if pending is None:
        _write(Pending(instance, "updated", getattr(instance, "_audit_m2m_before", None)))


def connect() -> None:
    pre_save.connect(_pre_save, dispatch_uid="audit-pre-save")
    post_save.connect(_post_save, dispatch_uid="audit-post-save")
    post_delete.connect(_post_delete, dispatch_uid="audit-post-delete")
    m2m_changed.connect(_m2m_changed, dispatch_uid="audit-m2m")
