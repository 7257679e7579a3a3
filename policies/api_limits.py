"""REST management API for limits, and the limit tenancy rules the admin shares.

An org user sees their org's limits (including API-key limits of their keys), the tier
defaults of their org's tier and the global and feature-scope limits; they change only
org, org+feature and API-key limits of their own org. Global, feature-scope and tier
default limits are changed by global staff only.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet
from rest_framework import serializers, viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from audit.mixins import AuditedViewSetMixin
from policies.engine.peek import current_usage
from policies.engine.specs import spec_from_limit
from policies.limit_rules import limit_errors
from policies.models import ApiKey, Feature, Limit, Organization, Tier
from policies.permissions import IsTollgateAdmin, TenantViewSetMixin, scope_of
from policies.selectors import AdminScope

MICROS_PER_USD = 1_000_000
# Scopes an org admin may create and change (always for their own org, never as tier default).
ORG_SCOPES = (Limit.Scope.ORG, Limit.Scope.ORG_FEATURE, Limit.Scope.API_KEY)
SHARED_SCOPES = (Limit.Scope.GLOBAL, Limit.Scope.FEATURE)
GLOBAL_ONLY_MESSAGE = "Only global staff can create or change global, feature and tier limits."


# --- shared with the admin ----------------------------------------------------------------


def visible_limits_filter(scope: AdminScope) -> Q:
    """Limits this scope may read."""
    if scope.is_global:
        return Q()
    org = scope.org
    if org is None:
        return Q(pk__in=[])
    return (
        Q(org=org)
        | Q(api_key__org=org)
        | Q(org__isnull=True, tier_id=org.tier_id)
        | Q(org__isnull=True, tier__isnull=True, scope__in=SHARED_SCOPES)
    )


def owns_limit(scope: AdminScope, limit: Limit) -> bool:
    """Whether this scope may change (or delete) the limit."""
    if scope.is_global:
        return True
    if not scope.can_write or scope.org is None:
        return False
    return (
        limit.tier_id is None
        and limit.scope in ORG_SCOPES
        and limit.org_id is not None
        and limit.org_id == scope.org.pk
    )


def usage_org_id(limit: Limit) -> int | None:
    """The org whose counter holds the limit's usage; None if there is no single one."""
    if limit.scope in SHARED_SCOPES:
        return 0  # global and feature counters ignore the org
    if limit.tier_id is not None or limit.org_id is None:
        return None  # a tier default counts per org of the tier
    return limit.org_id


def live_usage(limit: Limit, *, org_id: int | None = None) -> int | None:
    """Current usage from Redis; None without a single counter or when Redis is down."""
    if limit.pk is None:
        return None
    if org_id is None:
        org_id = usage_org_id(limit)
        if org_id is None:
            return None
    return current_usage(spec_from_limit(limit), org_id=org_id)


def format_amount(limit: Limit, value: int) -> str:
    if limit.metric == Limit.Metric.COST:
        return f"${value / MICROS_PER_USD:,.2f}"
    return f"{value:,}"


def format_usage(limit: Limit, used: int | None) -> str:
    """``used / amount (pct)``, e.g. ``3 / 10 (30%)`` or ``$0.25 / $1.00 (25%)``."""
    if used is None:
        return "unavailable (Redis unreachable)"
    pct = used * 100 / limit.amount if limit.amount else 0
    return f"{format_amount(limit, used)} / {format_amount(limit, limit.amount)} ({pct:.0f}%)"


# --- API ------------------------------------------------------------------------------------


class LimitSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    tier = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=Tier.objects.all(),
        required=False,
        allow_null=True,
        help_text="Set (with scope org or org_feature and no org) for a tier default.",
    )
    org = serializers.SlugRelatedField(
        slug_field="slug", queryset=Organization.objects.none(), required=False, allow_null=True
    )
    feature = serializers.SlugRelatedField(
        slug_field="name", queryset=Feature.objects.all(), required=False, allow_null=True
    )
    api_key = serializers.PrimaryKeyRelatedField(
        queryset=ApiKey.objects.none(), required=False, allow_null=True
    )
    amount_usd = serializers.DecimalField(
        max_digits=18,
        decimal_places=6,
        write_only=True,
        required=False,
        help_text="For cost limits: the amount in USD instead of micro-USD in amount.",
    )
    amount_display = serializers.CharField(source="describe", read_only=True)
    current_usage = serializers.SerializerMethodField()

    class Meta:
        model = Limit
        fields = [
            "id",
            "name",
            "scope",
            "tier",
            "org",
            "feature",
            "api_key",
            "metric",
            "window",
            "amount",
            "amount_usd",
            "amount_display",
            "action",
            "max_wait_seconds",
            "failure_mode",
            "thresholds",
            "default_output_tokens",
            "is_active",
            "current_usage",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]
        extra_kwargs = {
            "amount": {
                "required": False,
                "help_text": "Requests, tokens, concurrent requests or micro-USD "
                "(1000000 = $1.00) for cost limits.",
            }
        }

    @property
    def scope(self) -> AdminScope:
        return scope_of(self.context["request"])

    def get_fields(self) -> dict[str, serializers.Field]:  # type: ignore[type-arg]
        fields = super().get_fields()
        if "request" not in self.context:
            return fields
        scope = self.scope
        fields["org"].queryset = scope.orgs()  # type: ignore[attr-defined]
        # Another org's key is "does not exist", like a missing one.
        fields["api_key"].queryset = ApiKey.objects.filter(  # type: ignore[attr-defined]
            scope.owned_filter()
        ).select_related("org")
        return fields

    def get_current_usage(self, obj: Limit) -> int | None:
        return live_usage(obj)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        instance: Limit | None = self.instance
        scope = self.scope
        initial = self.initial_data if isinstance(self.initial_data, dict) else {}

        def current(field: str) -> Any:
            if field in attrs:
                return attrs[field]
            return getattr(instance, field) if instance is not None else None

        usd: Decimal | None = attrs.pop("amount_usd", None)
        if usd is not None:
            if "amount" in attrs:
                raise serializers.ValidationError(
                    {"amount_usd": ["Give amount or amount_usd, not both."]}
                )
            if current("metric") != Limit.Metric.COST:
                raise serializers.ValidationError(
                    {"amount_usd": ["Only cost limits take an amount in USD."]}
                )
            # Exact: at most 6 decimal places, so this is a whole number of micro-USD.
            attrs["amount"] = int(usd * MICROS_PER_USD)
        elif instance is None and attrs.get("amount") is None:
            raise serializers.ValidationError({"amount": ["This field is required."]})

        limit_scope = current("scope")
        if not scope.is_global and (limit_scope in SHARED_SCOPES or current("tier") is not None):
            raise PermissionDenied(GLOBAL_ONLY_MESSAGE)

        # An API-key limit carries its key's org (for tenancy), unless one is given.
        key = current("api_key")
        if limit_scope == Limit.Scope.API_KEY and key is not None and not initial.get("org"):
            attrs["org"] = key.org
        # An org user's limits are always their org's.
        if not scope.is_global and (instance is None or "org" in attrs) and not attrs.get("org"):
            attrs["org"] = scope.org

        # limit_errors on an unsaved copy with the changes applied.
        candidate = Limit()
        if instance is not None:
            for f in Limit._meta.concrete_fields:
                setattr(candidate, f.attname, getattr(instance, f.attname))
        for field, value in attrs.items():
            setattr(candidate, field, value)
        errors = limit_errors(candidate)
        if errors:
            if usd is not None and "amount" in errors:
                errors["amount_usd"] = errors.pop("amount")
            raise serializers.ValidationError({k: [v] for k, v in errors.items()})
        return attrs


class LimitViewSet(AuditedViewSetMixin, TenantViewSetMixin, viewsets.ModelViewSet):  # type: ignore[type-arg]
    """Limits: requests, tokens, cost (micro-USD) and concurrent requests per window."""

    base_queryset = Limit.objects.select_related("tier", "org", "feature", "api_key")
    serializer_class = LimitSerializer
    permission_classes = [IsTollgateAdmin]

    def get_queryset(self) -> QuerySet[Limit]:
        return self.base_queryset.filter(visible_limits_filter(scope_of(self.request)))

    def check_object_permissions(self, request: Request, obj: Limit) -> None:  # type: ignore[override]
        super().check_object_permissions(request, obj)
        if request.method not in ("GET", "HEAD", "OPTIONS") and not owns_limit(
            scope_of(request), obj
        ):
            raise PermissionDenied(GLOBAL_ONLY_MESSAGE)

    def _require_global_for(self, request: Request) -> None:
        """Before validation, so an org user learns nothing from the answer."""
        if scope_of(request).is_global:
            return
        data = request.data if hasattr(request.data, "get") else {}
        if data.get("scope") in SHARED_SCOPES or data.get("tier") not in (None, ""):
            raise PermissionDenied(GLOBAL_ONLY_MESSAGE)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        self._require_global_for(request)
        return super().create(request, *args, **kwargs)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        self.get_object()  # another org's limit is a 404 first
        self._require_global_for(request)
        return super().update(request, *args, **kwargs)
