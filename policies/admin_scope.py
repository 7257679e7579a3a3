"""Org scoping for the Django admin: org admins see and change only their org's rows."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from audit.mixins import AuditedAdminMixin
from policies.models import Organization
from policies.selectors import AdminScope, admin_scope_for


def request_scope(request: HttpRequest) -> AdminScope:
    scope = getattr(request, "_tollgate_scope", None)
    if scope is None:
        scope = admin_scope_for(user=request.user)
        request._tollgate_scope = scope  # type: ignore[attr-defined]
    return scope


class OrgScopedAdmin(AuditedAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    """Permissions come from the user's scope (global staff, org admin, org member).

    ``org_field`` names the row's organization; ``shared_rows`` lets org users read rows
    with no org (the shared provider and model catalog) without changing them.
    """

    org_field: str | None = "org"
    shared_rows = False
    global_only = False  # only global staff may change these rows

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        qs = super().get_queryset(request)
        scope = request_scope(request)
        if self.org_field is None:
            return qs if not scope.is_nobody else qs.none()
        return qs.filter(scope.visible_filter(self.org_field, shared=self.shared_rows))

    def _owns(self, request: HttpRequest, obj: Model | None) -> bool:
        scope = request_scope(request)
        if scope.is_global:
            return True
        if self.global_only or obj is None or self.org_field is None:
            return obj is None and not self.global_only
        return getattr(obj, f"{self.org_field}_id", None) == scope.org.pk  # type: ignore[union-attr]

    def has_module_permission(self, request: HttpRequest) -> bool:
        return not request_scope(request).is_nobody

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return not request_scope(request).is_nobody

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        scope = request_scope(request)
        return scope.can_write and (scope.is_global or not self.global_only)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return request_scope(request).can_write and self._owns(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self.has_change_permission(request, obj)

    def get_exclude(self, request: HttpRequest, obj: Model | None = None) -> Any:
        exclude = list(super().get_exclude(request, obj) or [])
        if self.org_field == "org" and not request_scope(request).is_global:
            exclude.append("org")  # forced to the user's org in save_model
        return exclude

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.related_model is Organization:
            kwargs["queryset"] = request_scope(request).orgs()
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Model, form: ModelForm, change: bool) -> None:  # type: ignore[type-arg]
        scope = request_scope(request)
        if not change and self.org_field == "org" and not scope.is_global:
            obj.org = scope.org  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)


class ReadOnlyScopedAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Pages every management user may read (within their scope) and nobody changes: the
    audit trail, usage and cost."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return not request_scope(request).is_nobody

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return not request_scope(request).is_nobody

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False
