from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from audit.mixins import AuditedAdminMixin
from gateway.models import LlmModel
from policies import services
from policies.admin_limits import (
    FeatureLimitInline,
    LimitAdmin,
    OrgLimitInline,
    tier_default_limits,
)
from policies.admin_scope import OrgScopedAdmin, request_scope
from policies.models import ApiKey, Feature, Limit, Membership, Organization, Tier

admin.site.register(Limit, LimitAdmin)


@admin.register(Tier)
class TierAdmin(OrgScopedAdmin):
    org_field = None
    global_only = True
    list_display = ["name", "slug", "priority"]


@admin.register(Organization)
class OrganizationAdmin(OrgScopedAdmin):
    org_field = "pk"
    global_only = True
    list_display = ["name", "slug", "tier", "is_active", "created_at"]
    list_filter = ["tier", "is_active"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = [tier_default_limits, "job_callback_secret"]  # type: ignore[list-item]
    inlines = [OrgLimitInline]

    @admin.display(description="job callback signing secret")
    def job_callback_secret(self, obj: Organization) -> str:
        if obj.pk is None:
            return "-"
        from gateway.jobs.callbacks import callback_secret

        return callback_secret(obj.pk)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organization]:
        return request_scope(request).orgs().select_related("tier")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if not request_scope(request).can_write:
            fields.remove("job_callback_secret")  # a member never sees the signing secret
        return fields


@admin.register(Feature)
class FeatureAdmin(OrgScopedAdmin):
    org_field = None
    global_only = True
    list_display = ["name", "description", "created_at"]
    search_fields = ["name"]
    inlines = [FeatureLimitInline]


class ApiKeyForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = ApiKey
        fields = [
            "org",
            "name",
            "default_feature",
            "allowed_features",
            "allowed_models",
            "expires_at",
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        org = (
            data.get("org")
            or getattr(self.instance, "org", None)
            or getattr(self, "scope_org", None)
        )
        models = data.get("allowed_models") or []
        if org is not None and any(m.org_id not in (None, org.pk) for m in models):
            self.add_error("allowed_models", "A key can only use shared models or its org's own.")
        default = data.get("default_feature")
        allowed = data.get("allowed_features")
        if default is not None and allowed and default not in allowed:
            self.add_error("default_feature", "The default feature must be an allowed feature.")
        return data


@admin.register(ApiKey)
class ApiKeyAdmin(OrgScopedAdmin):
    form = ApiKeyForm
    list_display = [
        "name",
        "display",
        "org",
        "status",
        "default_feature",
        "expires_at",
        "created_at",
    ]
    # RelatedOnly: the filter lists only orgs in the (scoped) list, never other orgs' names.
    list_filter = [
        ("org", admin.RelatedOnlyFieldListFilter),
        ("revoked_at", admin.EmptyFieldListFilter),
    ]
    search_fields = ["name", "prefix", "org__slug"]
    readonly_fields = [
        "display",
        "status",
        "revoked_at",
        "created_by",
        "created_at",
        "last_used_at",
    ]
    filter_horizontal = ["allowed_features", "allowed_models"]
    actions = ["revoke_selected"]

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        form.scope_org = request_scope(request).org  # type: ignore[attr-defined]
        if obj is not None and "org" in form.base_fields:
            form.base_fields["org"].disabled = True  # a key never moves between orgs
        return form

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "allowed_models":
            kwargs["queryset"] = LlmModel.objects.filter(
                request_scope(request).visible_filter(shared=True)
            )
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Model, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        obj = cast(ApiKey, obj)  # this admin is registered for ApiKey only
        scope = request_scope(request)
        org = obj.org if scope.is_global else scope.org
        key, raw = services.apikey_create(
            org=org,  # type: ignore[arg-type]
            name=obj.name,
            actor=request.user,
            default_feature=obj.default_feature,
            expires_at=obj.expires_at,
        )
        # The form's many-to-many fields are saved onto this instance by save_related().
        obj.pk = key.pk
        obj.org = key.org
        obj.prefix = key.prefix
        obj._state.adding = False
        obj._raw_key = raw  # type: ignore[attr-defined]

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        services.apikey_set_allowed(
            key=form.instance,
            features=form.cleaned_data.get("allowed_features", []),
            models=form.cleaned_data.get("allowed_models", []),
        )

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        raw = getattr(obj, "_raw_key", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        # Rendered directly, never stored in a message or session: the key is shown once.
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "key": obj,
            "raw_key": raw,
            "title": "API key created",
        }
        return TemplateResponse(request, "admin/policies/apikey/created.html", context)

    @admin.action(description="Revoke selected keys")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        if not request_scope(request).can_write:
            self.message_user(request, "Org members cannot revoke keys.", messages.ERROR)
            return
        count = 0
        for key in queryset.filter(request_scope(request).owned_filter()):
            services.apikey_revoke(key=key, actor=request.user)
            count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


class MembershipInline(admin.StackedInline):  # type: ignore[type-arg]
    model = Membership
    can_delete = True
    extra = 0
    max_num = 1
    verbose_name_plural = "Organization (leave empty for global staff)"


User = get_user_model()
if admin.site.is_registered(User):
    admin.site.unregister(User)


@admin.register(User)
class TollgateUserAdmin(AuditedAdminMixin, UserAdmin):  # type: ignore[type-arg]
    """Only global staff manage users; org admins manage their org's data, not accounts."""

    inlines = [MembershipInline]

    def _global(self, request: HttpRequest) -> bool:
        return request_scope(request).is_global

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._global(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._global(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._global(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._global(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._global(request)
