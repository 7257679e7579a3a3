"""The audit trail: append-only (a PostgreSQL trigger refuses UPDATE, DELETE, TRUNCATE) and
tamper-evident (each row's SHA-256 covers its content and the previous row's hash)."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone


class AppendOnlyError(Exception):
    """Audit rows cannot be changed or deleted."""


class AuditEvent(models.Model):
    class ActorType(models.TextChoices):
        USER = "user", "User"
        API_KEY = "api_key", "API key"
        SYSTEM = "system", "System"

    at = models.DateTimeField(default=timezone.now)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    actor = models.CharField(max_length=200, blank=True, help_text="Who, as shown to people.")
    ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    action = models.CharField(max_length=64)
    # Plain columns, not foreign keys: history outlives the rows it speaks of, and a
    # foreign key's ON DELETE would have to update audit rows.
    org_id = models.BigIntegerField(null=True, blank=True)
    org_slug = models.CharField(max_length=64, blank=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target = models.CharField(max_length=300, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    # Events from the durable buffer carry where they came from, so a redelivered batch is
    # written once.
    source_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["at"], name="audit_at"),
            models.Index(fields=["org_id", "at"], name="audit_org_at"),
            models.Index(fields=["action", "at"], name="audit_action_at"),
            models.Index(fields=["target_type", "target_id"], name="audit_target"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.action} {self.target}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise AppendOnlyError("audit events cannot be changed")
        raise AppendOnlyError("write audit events with audit.services.audit_record()")

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit events cannot be deleted")
