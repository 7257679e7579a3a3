"""Tenancy: tiers, organizations, features, members and API keys."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$",
    "Use 1-64 lowercase letters, digits and hyphens, not starting or ending with a hyphen.",
)


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


def default_tier_id() -> int | None:
    tier = Tier.objects.filter(slug="free").only("id").first()
    return tier.pk if tier else None


class Organization(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True, validators=[slug_validator])
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="organizations")
    is_active = models.BooleanField(default=True)
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
