"""Limits in the Django admin: the Limit changelist/form and inlines for org and feature pages.

Scoped like the REST API (``policies.api_limits``): org users see their org's limits, their
tier's defaults and the global and feature limits, and change only their own org's org,
org+feature and API-key limits. Validation is ``Limit.clean()`` (``limit_errors``); its
messages become form errors, also for fields the form does not show.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.options import BaseModelAdmin
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db.models import Model, QuerySet
from django.forms.models import InlineForeignKeyField
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from policies.admin_scope import OrgScopedAdmin, request_scope
from policies.api_limits import (
    ORG_SCOPES,
    format_usage,
    live_usage,
    owns_limit,
    usage_org_id,
    visible_limits_filter,
)
from policies.models import ApiKey, Limit, Organization

AMOUNT_HELP = (
    "Requests, tokens or concurrent requests; for cost limits micro-USD (1000000 = $1.00)."
)


def _scope_choices(allowed: tuple[str, ...]) -> list[tuple[str, str]]:
    return [("", "---------"), *((v, label) for v, label in Limit.Scope.choices if v in allowed)]


class LimitForm(forms.ModelForm):  # type: ignore[type-arg]
    # The org of an org user (set per request): their new limits are always their org's.
    scope_org: Organization | None = None

    class Meta:
        model = Limit
        fields = [
            "name",
            "scope",
            "tier",
            "org",
            "feature",
            "api_key",
            "metric",
            "window",
            "amount",
            "action",
            "max_wait_seconds",
            "failure_mode",
            "thresholds",
            "default_output_tokens",
            "is_active",
        ]
        help_texts = {"amount": AMOUNT_HELP}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        limit_scope = data.get("scope", self.instance.scope)
        key = data.get("api_key") if "api_key" in self.fields else self.instance.api_key
        org_field = self.fields.get("org")
        if org_field is None:
            # The form has no org field: an org user's limit belongs to their org.
            if self.instance.pk is None and self.scope_org is not None:
                self.instance.org = self.scope_org
        elif (
            not isinstance(org_field, InlineForeignKeyField)
            and limit_scope == Limit.Scope.API_KEY
            and key is not None
            and not data.get("org")
        ):
            # An API-key limit carries its key's org, for tenancy.
            data["org"] = key.org
        return data

    def _update_errors(self, errors: ValidationError) -> None:
        """Errors on fields this form does not show become form-wide errors, not a 500."""
        if hasattr(errors, "error_dict"):
            remapped: dict[str, list[ValidationError]] = {}
            for field, errs in errors.error_dict.items():
                shown = field in self.fields and not self.fields[field].widget.is_hidden
                if field != NON_FIELD_ERRORS and not shown:
                    label = field.replace("_", " ").capitalize()
                    errs = [ValidationError(f"{label}: {m}") for e in errs for m in e.messages]
                    field = NON_FIELD_ERRORS
                remapped.setdefault(field, []).extend(errs)
            errors = ValidationError(remapped)  # type: ignore[arg-type]
        super()._update_errors(errors)  # type: ignore[misc]


def _usage_cell(limit: Limit) -> str:
    if limit.pk is None:
        return "—"
    if usage_org_id(limit) is None:
        return "per org (see each org's page)"
    return format_usage(limit, live_usage(limit))


class LimitAdmin(OrgScopedAdmin):
    form = LimitForm
    list_display = [
        "__str__",
        "scope",
        "owner",
        "feature",
        "metric",
        "window",
        "amount_display",
        "action",
        "usage",
        "is_active",
    ]
    list_filter = [
        "scope",
        "metric",
        "action",
        # Only the orgs and tiers of visible limits: an org user never sees other orgs.
        ("org", admin.RelatedOnlyFieldListFilter),
        ("tier", admin.RelatedOnlyFieldListFilter),
        "is_active",
    ]
    list_select_related = ["tier", "org", "feature", "api_key"]
    search_fields = ["name", "org__slug", "org__name", "feature__name", "api_key__name"]
    readonly_fields = ["usage", "created_at", "updated_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Limit]:
        qs = admin.ModelAdmin.get_queryset(self, request)
        return qs.filter(visible_limits_filter(request_scope(request))).select_related(
            "tier", "org", "feature", "api_key"
        )

    def _owns(self, request: HttpRequest, obj: Model | None) -> bool:
        if obj is None:
            return super()._owns(request, obj)
        return owns_limit(request_scope(request), obj)  # type: ignore[arg-type]

    def get_exclude(self, request: HttpRequest, obj: Model | None = None) -> Any:
        exclude = list(super().get_exclude(request, obj) or [])
        if not request_scope(request).is_global:
            exclude.append("tier")  # tier defaults are global staff's
        return exclude

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        scope = request_scope(request)
        form.scope_org = None if scope.is_global else scope.org  # type: ignore[attr-defined]
        return form

    def formfield_for_choice_field(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "scope" and not request_scope(request).is_global:
            kwargs["choices"] = _scope_choices(ORG_SCOPES)
        return super().formfield_for_choice_field(db_field, request, **kwargs)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.related_model is ApiKey:
            kwargs["queryset"] = ApiKey.objects.filter(
                request_scope(request).owned_filter()
            ).select_related("org")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="Org / tier")
    def owner(self, obj: Limit) -> str:
        org = obj.org.slug if obj.org is not None else "?"
        if obj.api_key is not None:
            return f"{org} / key {obj.api_key.name}"
        if obj.org is not None:
            return org
        if obj.tier_id is not None:
            return f"{obj.tier} (tier default)"
        return "—"

    @admin.display(description="Amount", ordering="amount")
    def amount_display(self, obj: Limit) -> str:
        return obj.describe()

    @admin.display(description="Usage (used / amount)")
    def usage(self, obj: Limit) -> str:
        return _usage_cell(obj)


class _LimitInline(admin.TabularInline):  # type: ignore[type-arg]
    """Limits on a parent's change page. Org users read them here and edit on the Limits page."""

    model = Limit
    form = LimitForm
    extra = 0
    show_change_link = True
    readonly_fields = ["usage"]
    offered_scopes: tuple[str, ...] = ()

    def get_queryset(self, request: HttpRequest) -> QuerySet[Limit]:
        # Not InlineModelAdmin.get_queryset: it asks for view permission without the parent,
        # which these inlines refuse (they show only on an existing parent).
        qs = BaseModelAdmin.get_queryset(self, request)
        return qs.filter(visible_limits_filter(request_scope(request))).select_related(
            "tier", "org", "feature", "api_key"
        )

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        self._parent = obj  # inline instances are made per request
        return super().get_formset(request, obj, **kwargs)

    # Only on an existing parent: a new org or feature has no limits yet.
    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is not None and not request_scope(request).is_nobody

    def _can_edit(self, request: HttpRequest, obj: Any) -> bool:
        return obj is not None and request_scope(request).is_global

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._can_edit(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._can_edit(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._can_edit(request, obj)

    def formfield_for_choice_field(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "scope":
            kwargs["choices"] = _scope_choices(self.offered_scopes)
        return super().formfield_for_choice_field(db_field, request, **kwargs)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        scope = request_scope(request)
        if db_field.related_model is Organization:
            kwargs["queryset"] = scope.orgs()
        elif db_field.related_model is ApiKey:
            keys = ApiKey.objects.filter(scope.owned_filter())
            parent = getattr(self, "_parent", None)
            if isinstance(parent, Organization):
                keys = keys.filter(org=parent)
            kwargs["queryset"] = keys.select_related("org")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="Usage (used / amount)")
    def usage(self, obj: Limit) -> str:
        return _usage_cell(obj)


class OrgLimitInline(_LimitInline):
    """The org's own limits (the org is set from the page)."""

    fk_name = "org"
    offered_scopes = tuple(ORG_SCOPES)
    fields = [
        "name",
        "scope",
        "feature",
        "api_key",
        "metric",
        "window",
        "amount",
        "action",
        "max_wait_seconds",
        "failure_mode",
        "is_active",
        "usage",
    ]


class FeatureLimitInline(_LimitInline):
    """Limits of the feature: per org (or tier default) and for every org."""

    fk_name = "feature"
    offered_scopes = (Limit.Scope.ORG_FEATURE, Limit.Scope.FEATURE)
    fields = [
        "name",
        "scope",
        "org",
        "tier",
        "metric",
        "window",
        "amount",
        "action",
        "max_wait_seconds",
        "failure_mode",
        "is_active",
        "usage",
    ]


@admin.display(description="Tier default limits (usage of this org)")
def tier_default_limits(org: Organization | None) -> str:
    """The org's tier defaults with this org's usage; for the Organization page."""
    if org is None or org.pk is None:
        return "—"
    defaults = Limit.objects.filter(
        tier_id=org.tier_id, org__isnull=True, is_active=True
    ).select_related("tier", "feature")
    own = {
        (limit.scope, limit.feature_id, limit.metric, limit.window)
        for limit in Limit.objects.filter(org=org, tier__isnull=True, is_active=True)
    }
    rows = []
    for limit in defaults:
        label = f"{limit} [{limit.feature}]" if limit.feature_id else str(limit)
        if (limit.scope, limit.feature_id, limit.metric, limit.window) in own:
            state = "overridden by this org's own limit"
        else:
            state = format_usage(limit, live_usage(limit, org_id=org.pk))
        rows.append((label, state))
    if not rows:
        return "None"
    return format_html("<ul>{}</ul>", format_html_join("", "<li>{}: {}</li>", rows))
