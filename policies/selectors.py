"""Reads: who may see what, and key lookup."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db.models import Q, QuerySet

from policies import keys
from policies.models import ApiKey, Membership, Organization


@dataclass(frozen=True)
class AdminScope:
    """What a management user may see and change.

    Global staff (staff users without a membership, and superusers) see every org.
    An org admin sees and changes only their org; an org member only reads it.
    """

    is_global: bool
    org: Organization | None
    can_write: bool

    @property
    def is_nobody(self) -> bool:
        return not self.is_global and self.org is None

    def orgs(self) -> QuerySet[Organization]:
        if self.is_global:
            return Organization.objects.all()
        if self.org is None:
            return Organization.objects.none()
        return Organization.objects.filter(pk=self.org.pk)

    def owned_filter(self, field: str = "org") -> Q:
        """Rows this scope may change: its org's rows (global staff: all rows)."""
        if self.is_global:
            return Q()
        if self.org is None:
            return Q(pk__in=[])
        return Q(**{field: self.org})

    def visible_filter(self, field: str = "org", *, shared: bool = False) -> Q:
        """Rows this scope may read; ``shared`` adds rows with no org (shared catalog)."""
        owned = self.owned_filter(field)
        if shared and not self.is_global:
            return owned | Q(**{f"{field}__isnull": True})
        return owned


NOBODY = AdminScope(is_global=False, org=None, can_write=False)


def admin_scope_for(*, user: AbstractBaseUser | AnonymousUser) -> AdminScope:
    if not user.is_authenticated or not getattr(user, "is_active", False):
        return NOBODY
    if getattr(user, "is_superuser", False):
        return AdminScope(is_global=True, org=None, can_write=True)
    membership = Membership.objects.select_related("org").filter(user_id=user.pk).first()
    if membership is not None:
        if not membership.org.is_active:
            return NOBODY  # a deactivated org's people are locked out with it
        return AdminScope(
            is_global=False,
            org=membership.org,
            can_write=membership.role == Membership.Role.ADMIN,
        )
    if getattr(user, "is_staff", False):
        return AdminScope(is_global=True, org=None, can_write=True)
    return NOBODY


def apikey_for_secret(*, raw: str) -> ApiKey | None:
    """The usable key matching ``raw`` (not revoked, not expired, org active), else None."""
    prefix = keys.parse_prefix(raw)
    if prefix is None:
        return None
    key = (
        ApiKey.objects.usable()
        .select_related("org", "default_feature")
        .filter(prefix=prefix)
        .first()
    )
    if key is None or not keys.matches(raw, key.key_hash):
        return None
    return key
