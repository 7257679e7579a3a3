"""Upstream providers and the models clients may call, with their prices."""

from __future__ import annotations

from decimal import Decimal
from typing import TypedDict

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from gateway import crypto


class _PriceFieldOptions(TypedDict):
    max_digits: int
    decimal_places: int
    null: bool
    blank: bool
    default: None
    validators: list[MinValueValidator]
    help_text: str


# Prices are USD per million tokens with 6 decimals: one millionth of a dollar per
# million tokens is the smallest step, so per-token costs are whole pico-dollars and
# sums stay exact. Empty means unknown, never $0: TOLLGATE_UNKNOWN_PRICE decides.
PRICE_FIELD: _PriceFieldOptions = {
    "max_digits": 12,
    "decimal_places": 6,
    "null": True,
    "blank": True,
    "default": None,
    "validators": [MinValueValidator(Decimal("0"))],
    "help_text": "USD per million tokens. Empty: unknown (see TOLLGATE_UNKNOWN_PRICE).",
}


class Provider(models.Model):
    class Kind(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible"

    # Null org: shared by every organization (managed by global staff).
    org = models.ForeignKey(
        "policies.Organization",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="providers",
    )
    name = models.SlugField(max_length=64)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    base_url = models.URLField(max_length=500)
    api_key_ciphertext = models.TextField(blank=True, editable=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["name"], condition=Q(org__isnull=True), name="provider_name_unique_shared"
            ),
            models.UniqueConstraint(fields=["org", "name"], name="provider_name_unique_per_org"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def api_key(self) -> str:
        return crypto.decrypt(self.api_key_ciphertext)

    @api_key.setter
    def api_key(self, value: str) -> None:
        self.api_key_ciphertext = crypto.encrypt(value)

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_ciphertext)


class LlmModel(models.Model):
    """A public model name clients use, mapped to a provider's upstream model."""

    class Mode(models.TextChoices):
        CHAT = "chat", "Chat / messages"
        EMBEDDING = "embedding", "Embeddings"

    org = models.ForeignKey(
        "policies.Organization",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="models",
    )
    name = models.CharField(max_length=200, help_text="The model name clients send.")
    # RESTRICT: a provider in use cannot be deleted, unless its org (and so the models that
    # use it) is being deleted in the same operation.
    provider = models.ForeignKey(Provider, on_delete=models.RESTRICT, related_name="models")
    upstream_name = models.CharField(max_length=200)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.CHAT)
    input_price_per_million = models.DecimalField(**PRICE_FIELD)
    output_price_per_million = models.DecimalField(**PRICE_FIELD)
    cached_input_price_per_million = models.DecimalField(**PRICE_FIELD)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"
        constraints = [
            models.UniqueConstraint(
                fields=["name"], condition=Q(org__isnull=True), name="model_name_unique_shared"
            ),
            models.UniqueConstraint(fields=["org", "name"], name="model_name_unique_per_org"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        provider_org = getattr(self.provider, "org_id", None) if self.provider_id else None
        if provider_org is not None and provider_org != self.org_id:
            raise ValidationError(
                {"provider": "A model can only use a shared provider or one of its own org."}
            )


class UsageRecord(models.Model):
    """One row per client request through ``/v1`` (allowed, rejected or failed).

    Written in batches from a Redis stream by a Celery task, never on the request path.
    """

    class Outcome(models.TextChoices):
        OK = "ok", "OK"
        CLIENT_ERROR = "client_error", "Rejected: bad request"
        AUTH_ERROR = "auth_error", "Rejected: authentication or permission"
        RATE_LIMITED = "rate_limited", "Rejected: limit"
        UPSTREAM_ERROR = "upstream_error", "Upstream error"
        CLIENT_DISCONNECTED = "client_disconnected", "Client disconnected"

    request_id = models.CharField(max_length=128, unique=True)
    created_at = models.DateTimeField(db_index=True)
    org = models.ForeignKey(
        "policies.Organization", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key = models.ForeignKey(
        "policies.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Names, not foreign keys: a record keeps what was used even if the row is renamed later.
    feature = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=64, blank=True)
    endpoint = models.CharField(max_length=32)
    stream = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField()
    outcome = models.CharField(max_length=24, choices=Outcome.choices)
    error = models.CharField(max_length=300, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    # True when the provider never reported usage (e.g. the client left mid-stream) and the
    # tokens were counted by the gateway instead.
    usage_estimated = models.BooleanField(default=False)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=12, default=Decimal("0"))
    upstream_latency_ms = models.FloatField(null=True)
    ttft_ms = models.FloatField(null=True)
    overhead_ms = models.FloatField(null=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["org", "created_at"], name="usage_org_time")]

    def __str__(self) -> str:
        return f"{self.request_id} {self.outcome}"


class UsageRollup(models.Model):
    """Usage summed per minute by org, feature and model (for the usage API and dashboards)."""

    minute = models.DateTimeField()
    org = models.ForeignKey(
        "policies.Organization", null=True, on_delete=models.CASCADE, related_name="+"
    )
    feature = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=200, blank=True)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=12, default=Decimal("0"))
    upstream_latency_ms_sum = models.FloatField(default=0)

    class Meta:
        ordering = ["-minute"]
        constraints = [
            models.UniqueConstraint(
                fields=["minute", "org", "feature", "model"],
                name="usage_rollup_bucket",
                nulls_distinct=False,
            )
        ]
        indexes = [models.Index(fields=["org", "minute"], name="usage_rollup_org_minute")]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} {self.org_id} {self.feature} {self.model}"


class UsageReport(UsageRollup):
    """The admin's "Usage and cost" page (charts over the rollups); no rows of its own."""

    class Meta:
        proxy = True
        verbose_name = "usage and cost"
        verbose_name_plural = "usage and cost"


# Queued LLM calls live in their own module; registered with this app.
from gateway.jobs.models import Job  # noqa: E402

__all__ = ["Job", "LlmModel", "Provider", "UsageRecord", "UsageReport", "UsageRollup"]
