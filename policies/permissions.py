"""Management API permissions and the tenancy rules every viewset shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.db.models import Model, QuerySet
from django.db.models.deletion import ProtectedError, RestrictedError
from rest_framework import serializers
from rest_framework.exceptions import APIException, PermissionDenied
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from policies.selectors import AdminScope, admin_scope_for

if TYPE_CHECKING:
    from rest_framework.generics import GenericAPIView

    # The mixin is only ever combined with a generic viewset: typing it as one gives it
    # ``request`` and the APIView methods it calls through super().
    _ViewSetBase = GenericAPIView[Any]
else:
    _ViewSetBase = object


def scope_of(request: Request) -> AdminScope:
    scope = getattr(request, "_tollgate_scope", None)
    if scope is None:
        scope = admin_scope_for(user=request.user)
        request._tollgate_scope = scope  # type: ignore[attr-defined]
    return scope


class IsTollgateAdmin(BasePermission):
    """Global staff, org admins (write their org) and org members (read their org)."""

    message = "This account has no access to the Tollgate management API."

    def has_permission(self, request: Request, view: Any) -> bool:
        scope = scope_of(request)
        if scope.is_nobody:
            return False
        if request.method in SAFE_METHODS:
            return True
        if not scope.can_write:
            self.message = "Org members have read-only access."
            return False
        return True


class GlobalWriteOnly(BasePermission):
    """Only global staff may change these objects (the shared feature list, orgs)."""

    message = "Only global staff can change this."

    def has_permission(self, request: Request, view: Any) -> bool:
        return request.method in SAFE_METHODS or scope_of(request).is_global


class TenantViewSetMixin(_ViewSetBase):
    """Visible rows come from ``visible_queryset``; unsafe methods need ownership.

    Another org's rows are never found (404); shared rows an org user can read but not
    change answer 403.
    """

    org_field = "org"
    shared_rows = False
    base_queryset: QuerySet[Any]

    def get_queryset(self) -> QuerySet[Any]:
        scope = scope_of(self.request)
        return self.base_queryset.filter(
            scope.visible_filter(self.org_field, shared=self.shared_rows)
        )

    def check_object_permissions(self, request: Request, obj: Model) -> None:
        super().check_object_permissions(request, obj)
        if request.method in SAFE_METHODS:
            return
        scope = scope_of(request)
        if not scope.is_global and getattr(obj, f"{self.org_field}_id") != scope.org.pk:  # type: ignore[union-attr]
            raise PermissionDenied("Shared objects can only be changed by global staff.")

    def perform_create(self, serializer: serializers.BaseSerializer[Any]) -> None:
        _save_or_400(serializer)

    def perform_update(self, serializer: serializers.BaseSerializer[Any]) -> None:
        _save_or_400(serializer)

    def perform_destroy(self, instance: Model) -> None:
        try:
            instance.delete()
        except (ProtectedError, RestrictedError) as exc:
            blocking = (
                exc.protected_objects if isinstance(exc, ProtectedError) else exc.restricted_objects
            )
            names = sorted({str(obj) for obj in blocking})[:10]
            raise InUse(f"Still in use by: {', '.join(names)}.") from None


class InUse(APIException):
    status_code = 409
    default_detail = "This object is still in use."
    default_code = "in_use"


def _save_or_400(serializer: serializers.BaseSerializer[Any], **kwargs: Any) -> None:
    """Save; a uniqueness race that slipped past validation is a 400, not a 500."""
    try:
        with transaction.atomic():
            serializer.save(**kwargs)
    except IntegrityError:
        raise serializers.ValidationError(
            {"non_field_errors": ["An object with these unique values already exists."]}
        ) from None
