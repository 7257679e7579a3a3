"""Changes to anything the proxy snapshots are published to every gateway process."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import m2m_changed, post_delete, post_save

from gateway.models import LlmModel, Provider
from gateway.proxy.catalog import config_changed
from policies.models import ApiKey, Feature, Limit, Organization, Tier


def _changed(sender: Any, **kwargs: Any) -> None:
    config_changed()


for model in (ApiKey, Feature, Organization, Provider, LlmModel, Limit, Tier):
    post_save.connect(_changed, sender=model, dispatch_uid=f"catalog-save-{model.__name__}")
    post_delete.connect(_changed, sender=model, dispatch_uid=f"catalog-delete-{model.__name__}")
for through in (ApiKey.allowed_features.through, ApiKey.allowed_models.through):
    m2m_changed.connect(_changed, sender=through, dispatch_uid=f"catalog-m2m-{through.__name__}")
