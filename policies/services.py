"""Writes for tenancy objects. Views, admin and commands all call these."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from gateway.models import LlmModel
from gateway.proxy.catalog import config_changed
from policies import keys
from policies.models import ApiKey, Feature, Organization

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User


class KeyScopeError(ValueError):
    """A key was given a feature or model its org may not use."""


@transaction.atomic
def apikey_create(
    *,
    org: Organization,
    name: str,
    actor: User | AnonymousUser | None = None,
    default_feature: Feature | None = None,
    allowed_features: Iterable[Feature] = (),
    allowed_models: Iterable[LlmModel] = (),
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns it with the raw key, which is never available again."""
    models = list(allowed_models)
    foreign = [m.name for m in models if m.org_id is not None and m.org_id != org.pk]
    if foreign:
        raise KeyScopeError(f"models not available to {org.slug}: {', '.join(foreign)}")
    features = list(allowed_features)
    material = keys.generate()
    key = ApiKey.objects.create(
        org=org,
        name=name,
        prefix=material.prefix,
        key_hash=material.hash,
        default_feature=default_feature,
        expires_at=expires_at,
        restrict_features=bool(features),
        restrict_models=bool(models),
        created_by=actor if actor is not None and actor.is_authenticated else None,
    )
    key.allowed_features.set(features)
    key.allowed_models.set(models)
    return key, material.raw


def apikey_set_allowed(
    *,
    key: ApiKey,
    features: Iterable[Feature] | None = None,
    models: Iterable[LlmModel] | None = None,
) -> None:
    """Replace a key's allow-lists (None leaves one as is; empty allows everything)."""
    if features is not None:
        features = list(features)
        key.allowed_features.set(features)
        key.restrict_features = bool(features)
    if models is not None:
        models = list(models)
        key.allowed_models.set(models)
        key.restrict_models = bool(models)
    ApiKey.objects.filter(pk=key.pk).update(
        restrict_features=key.restrict_features, restrict_models=key.restrict_models
    )


@transaction.atomic
def apikey_revoke(*, key: ApiKey, actor: User | AnonymousUser | None = None) -> ApiKey:
    """Revoke a key (idempotent: a revoked key keeps its first revocation time)."""
    changed = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    key.refresh_from_db(fields=["revoked_at"])
    if changed:
        audit_record(
            action="apikey.revoked",
            target=key,
            changes={
                "before": {"revoked_at": None},
                "after": {"revoked_at": key.revoked_at.isoformat() if key.revoked_at else None},
            },
        )
    config_changed()  # a queryset update sends no post_save
    return key
