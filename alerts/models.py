"""Alert configuration (SMTP settings, channels, rules) and history (alerts, deliveries)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from gateway import crypto


class Severity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


def all_severities() -> list[str]:
    return [s.value for s in Severity]


class SmtpSettings(models.Model):
    """The one SMTP server alert email goes through (row id 1), edited in the admin/API."""

    class TlsMode(models.TextChoices):
        NONE = "none", "None"
        STARTTLS = "starttls", "STARTTLS"
        TLS = "tls", "Implicit TLS"

    host = models.CharField(max_length=255, blank=True)
    port = models.PositiveIntegerField(
        default=587, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    username = models.CharField(max_length=255, blank=True)
    password_ciphertext = models.TextField(blank=True, editable=False)
    from_address = models.EmailField(blank=True)
    tls_mode = models.CharField(max_length=16, choices=TlsMode.choices, default=TlsMode.STARTTLS)
    timeout_seconds = models.PositiveIntegerField(
        default=10, validators=[MinValueValidator(1), MaxValueValidator(120)]
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "SMTP settings"
        verbose_name_plural = "SMTP settings"

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" if self.host else "SMTP (not configured)"

    @classmethod
    def load(cls) -> SmtpSettings:
        settings, _ = cls.objects.get_or_create(pk=1)
        return settings

    @property
    def password(self) -> str:
        return crypto.decrypt(self.password_ciphertext)

    @password.setter
    def password(self, value: str) -> None:
        self.password_ciphertext = crypto.encrypt(value)

    @property
    def configured(self) -> bool:
        return bool(self.host and self.from_address)


class AlertChannel(models.Model):
    """Where alerts go. The secret (webhook URL, routing key, HMAC key) is encrypted."""

    class Kind(models.TextChoices):
        EMAIL = "email", "Email"
        SLACK = "slack", "Slack webhook"
        DISCORD = "discord", "Discord webhook"
        WEBHOOK = "webhook", "Webhook (JSON, HMAC-signed)"
        SENTRY = "sentry", "Sentry"
        PAGERDUTY = "pagerduty", "PagerDuty Events API v2"

    class Status(models.TextChoices):
        OK = "ok", "OK"
        FAILING = "failing", "Failing (permanent error)"

    org = models.ForeignKey(
        "policies.Organization",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="alert_channels",
    )
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # Email: {"to": [...]}; webhook: {"url_is_secret": true}; others: nothing needed.
    config = models.JSONField(default=dict, blank=True)
    # Webhook/Slack/Discord URL, PagerDuty routing key; for webhooks also the HMAC key.
    secret_ciphertext = models.TextField(blank=True, editable=False)
    signing_key_ciphertext = models.TextField(blank=True, editable=False)
    # Routing by severity: the severities this channel receives.
    severities = models.JSONField(default=all_severities, blank=True)
    is_active = models.BooleanField(default=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OK)
    last_error = models.TextField(blank=True)
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "alert channel"

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    @property
    def secret(self) -> str:
        return crypto.decrypt(self.secret_ciphertext)

    @secret.setter
    def secret(self, value: str) -> None:
        self.secret_ciphertext = crypto.encrypt(value)

    @property
    def signing_key(self) -> str:
        return crypto.decrypt(self.signing_key_ciphertext)

    @signing_key.setter
    def signing_key(self, value: str) -> None:
        self.signing_key_ciphertext = crypto.encrypt(value)


class AlertRule(models.Model):
    class Kind(models.TextChoices):
        LIMIT_THRESHOLD = "limit_threshold", "Limit threshold crossed"
        BUDGET_THRESHOLD = "budget_threshold", "Budget threshold (percent spent)"
        COST_SPIKE = "cost_spike", "Cost spike"
        DAILY_SPEND = "daily_spend", "Daily spend above an amount"
        ERROR_RATE = "error_rate", "Error rate"
        LATENCY_P95 = "latency_p95", "p95 upstream latency"
        REDIS_DEGRADED = "redis_degraded", "Redis degraded / fail-open active"
        DEPENDENCY_DOWN = "dependency_down", "A dependency down in /health"

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    org = models.ForeignKey(
        "policies.Organization",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="alert_rules",
        help_text="Empty: every organization.",
    )
    feature = models.ForeignKey(
        "policies.Feature",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="alert_rules",
        help_text="Empty: every feature.",
    )
    # Per kind: thresholds [80, 100]; factor k / amount_usd; amount_usd; percent,
    # window_minutes, min_requests; p95_ms, window_minutes.
    params = models.JSONField(default=dict, blank=True)
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.WARNING)
    # One alert per (rule, scope) per cooldown, however often the condition fires.
    cooldown_seconds = models.PositiveIntegerField(default=900, validators=[MinValueValidator(1)])
    channels = models.ManyToManyField(AlertChannel, related_name="rules")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "alert rule"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.cooldown_seconds is not None and self.cooldown_seconds < 1:
            raise ValidationError({"cooldown_seconds": "The cooldown must be at least 1 second."})


class AlertState(models.Model):
    """Whether a rule is firing for one scope (org, feature, limit...)."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="states")
    scope = models.CharField(max_length=200)
    firing = models.BooleanField(default=False)
    since = models.DateTimeField(null=True, blank=True)
    last_value = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["rule", "scope"], name="alert_state_rule_scope")
        ]

    def __str__(self) -> str:
        return f"{self.rule} [{self.scope}] {'firing' if self.firing else 'ok'}"


class Alert(models.Model):
    class Kind(models.TextChoices):
        FIRING = "firing", "Firing"
        RESOLVED = "resolved", "Resolved"

    rule = models.ForeignKey(AlertRule, null=True, on_delete=models.SET_NULL, related_name="alerts")
    scope = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.FIRING)
    severity = models.CharField(max_length=16, choices=Severity.choices)
    title = models.CharField(max_length=300)
    figures = models.JSONField(default=dict, blank=True)
    org = models.ForeignKey(
        "policies.Organization", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    feature = models.CharField(max_length=64, blank=True)
    # When the condition was observed (an engine event's time, or an evaluation's).
    observed_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["created_at"], name="alert_created")]

    def __str__(self) -> str:
        return self.title


class Delivery(models.Model):
    """One alert to one channel. Created before sending; every attempt updates it."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        RETRYING = "retrying", "Waiting to retry"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped (channel inactive)"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.ForeignKey(AlertChannel, on_delete=models.CASCADE, related_name="deliveries")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["alert", "channel"], name="delivery_alert_channel")
        ]
        indexes = [
            models.Index(
                fields=["state", "next_attempt_at"],
                name="delivery_due",
                condition=Q(state__in=["pending", "retrying", "sending"]),
            )
        ]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.alert} → {self.channel} ({self.state})"
