"""Tenancy: tiers, organizations, features, members and API keys."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$",
    "Use 1-64 lowercase letters, digits and hyphens, not starting or ending with a hyphen.",
)


def validate_email_list(value: str) -> None:
    from django.core.validators import validate_email

    for address in (a.strip() for a in value.replace(";", ",").split(",")):
        if address:
            try:
                validate_email(address)
            except ValidationError:
                raise ValidationError(f"{address!r} is not a valid email address.") from None


class Tier(models.Model):
    """A service tier (free, premium, ...); later issues hang default limits and priority on it."""

    slug = models.SlugField(max_length=64, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=100)
    # Higher is served first when requests are queued.
    priority = models.PositiveSmallIntegerField(default=0)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["-priority", "slug"]

    def __str__(self) -> str:
        return self.name


class Organization(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True, validators=[slug_validator])
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="organizations")
    is_active = models.BooleanField(default=True)
    alert_email_to = models.TextField(
        blank=True,
        validators=[validate_email_list],
        help_text="Comma-separated addresses that get this org's alert email.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.UniqueConstraint(
                Lower("name"),
                name="organization_name_unique_ci",
                violation_error_message="An organization with this name already exists.",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Feature(models.Model):
    """One global list of feature names that limits, alerts and metrics refer to."""

    name = models.SlugField(max_length=64, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True)
    alert_email_to = models.TextField(
        blank=True,
        validators=[validate_email_list],
        help_text="Comma-separated addresses that get this feature's alert email.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """Ties a user to one organization. Users without one are global staff (if staff)."""

    class Role(models.TextChoices):
        ADMIN = "admin", "Org admin"
        MEMBER = "member", "Member (read-only)"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership"
    )
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    def __str__(self) -> str:
        return f"{self.user} @ {self.org} ({self.role})"


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def usable(self) -> ApiKeyQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True, org__is_active=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiKey(models.Model):
    """A client key ``tg_<prefix>_<secret>``; only the prefix and a SHA-256 hash are stored."""

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    default_feature = models.ForeignKey(
        Feature, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    allowed_features = models.ManyToManyField(
        Feature, blank=True, related_name="+", help_text="Empty means every feature."
    )
    allowed_models = models.ManyToManyField(
        "gateway.LlmModel", blank=True, related_name="+", help_text="Empty means every model."
    )
    # Set whenever an allow-list is given. A restricted key whose listed models or features
    # were all deleted allows nothing, instead of silently allowing everything.
    restrict_features = models.BooleanField(default=False, editable=False)
    restrict_models = models.BooleanField(default=False, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} (tg_{self.prefix}_…)"

    @property
    def display(self) -> str:
        return f"tg_{self.prefix}_…"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def status(self) -> str:
        if self.is_revoked:
            return "revoked"
        if self.is_expired:
            return "expired"
        return "active"


def default_thresholds() -> list[int]:
    return [80, 100]


class Limit(models.Model):
    """A limit: (scope, metric, window, amount, action), enforced by ``policies.engine``.

    A limit with a tier and scope ``org`` or ``org_feature`` is a tier default: it applies to
    every org of the tier that has no limit of its own for the same scope, feature, metric
    and window.
    """

    class Scope(models.TextChoices):
        GLOBAL = "global", "Global (all traffic)"
        ORG = "org", "Organization"
        ORG_FEATURE = "org_feature", "Organization + feature"
        FEATURE = "feature", "Feature (every organization)"
        API_KEY = "api_key", "API key"

    class Metric(models.TextChoices):
        REQUESTS = "requests", "Requests"
        TOKENS = "tokens", "Tokens (input + output)"
        COST = "cost", "Cost (micro-USD)"
        CONCURRENT = "concurrent", "Concurrent requests"

    class Window(models.TextChoices):
        SECOND = "second", "Rolling second"
        MINUTE = "minute", "Rolling minute"
        HOUR = "hour", "Rolling hour"
        DAY = "day", "Rolling 24 hours"
        CALENDAR_DAY = "calendar_day", "Calendar day (UTC)"
        CALENDAR_MONTH = "calendar_month", "Calendar month (UTC)"
        NONE = "none", "None (concurrent requests)"

    class Action(models.TextChoices):
        REJECT = "reject", "Reject with 429"
        WAIT = "wait", "Wait for capacity (bounded)"
        QUEUE = "queue", "Queue for a worker"
        MONITOR = "monitor", "Monitor only (admit and report)"

    class FailureMode(models.TextChoices):
        FAIL_OPEN = "fail_open", "Fail open (admit when Redis is down)"
        FAIL_CLOSED = "fail_closed", "Fail closed (503 when Redis is down)"

    name = models.CharField(max_length=200, blank=True)
    scope = models.CharField(max_length=16, choices=Scope.choices)
    tier = models.ForeignKey(
        Tier,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="limits",
        help_text="Set for a tier default (scope org or org+feature) instead of an org.",
    )
    org = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="limits"
    )
    feature = models.ForeignKey(
        Feature, null=True, blank=True, on_delete=models.CASCADE, related_name="limits"
    )
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="limits"
    )
    metric = models.CharField(max_length=16, choices=Metric.choices)
    window = models.CharField(max_length=16, choices=Window.choices)
    # Requests, tokens, micro-USD (1,000,000 = $1.00) or concurrent requests.
    amount = models.BigIntegerField()
    action = models.CharField(max_length=16, choices=Action.choices, default=Action.REJECT)
    max_wait_seconds = models.FloatField(null=True, blank=True)
    failure_mode = models.CharField(
        max_length=16, choices=FailureMode.choices, default=FailureMode.FAIL_OPEN
    )
    thresholds = models.JSONField(
        default=default_thresholds, blank=True, help_text="Alert at these percentages."
    )
    default_output_tokens = models.PositiveIntegerField(
        default=1024,
        help_text="Output tokens reserved when a request does not give max_tokens.",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scope", "metric", "window"]
        indexes = [models.Index(fields=["org", "is_active"], name="limit_org_active")]

    def __str__(self) -> str:
        return self.name or self.describe()

    def describe(self) -> str:
        amount = (
            f"${self.amount / 1_000_000:,.2f}"
            if self.metric == self.Metric.COST
            else f"{self.amount:,}"
        )
        unit = {
            self.Metric.REQUESTS: "requests",
            self.Metric.TOKENS: "tokens",
            self.Metric.COST: "",
            self.Metric.CONCURRENT: "concurrent requests",
        }[self.Metric(self.metric)]
        per = {
            self.Window.SECOND: "per second",
            self.Window.MINUTE: "per minute",
            self.Window.HOUR: "per hour",
            self.Window.DAY: "per 24 hours",
            self.Window.CALENDAR_DAY: "per day",
            self.Window.CALENDAR_MONTH: "per month",
            self.Window.NONE: "",
        }[self.Window(self.window)]
        return " ".join(part for part in (amount, unit, per) if part)

    def clean(self) -> None:
        from policies.limit_rules import limit_errors

        errors = limit_errors(self)
        if errors:
            raise ValidationError(errors)
