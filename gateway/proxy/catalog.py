"""An in-process snapshot of keys, models and providers for the request path.

The request path never queries Postgres: it reads this snapshot. Every change to the
rows behind it bumps a version counter in Redis (``config_changed``); each process checks
that counter every ``REFRESH_SECONDS`` and reloads, so admin changes reach every gateway
process within a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

import redis
from django.conf import settings
from django.db import close_old_connections, transaction

from gateway.metrics import REDIS_ERRORS
from gateway.redis import get_redis, key, shared_async_client
from policies.engine.specs import LimitIndex, load_limit_index

log = logging.getLogger(__name__)

# How often each process checks the config version (admin changes apply within this).
REFRESH_SECONDS = 0.5
# Reload anyway this often, in case a version bump was lost (Redis down at change time).
FORCED_RELOAD_SECONDS = 30.0
VERSION_KEY = ("config", "version")


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    id: int
    name: str
    kind: str
    base_url: str
    api_key: str


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: int
    name: str
    org_id: int | None
    mode: str
    upstream_name: str
    provider: ProviderInfo
    input_price: Decimal
    output_price: Decimal
    cached_input_price: Decimal
    # True when a price was unknown and the configured default was put in its place.
    price_assumed: bool = False
    # True when a price is unknown and unpriced models are rejected.
    price_unknown: bool = False


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    prefix: str
    key_hash: str
    org_id: int
    org_slug: str
    tier_id: int
    name: str
    default_feature: str | None
    allowed_features: frozenset[str] | None  # None: every feature
    allowed_models: frozenset[int] | None  # None: every model of the org
    expires_at: float | None  # unix time
    tier_priority: int = 0  # queued jobs of higher tiers are served first


@dataclass
class Catalog:
    keys: dict[str, KeyInfo] = field(default_factory=dict)
    # (org id or None for shared, public name) -> model
    models: dict[tuple[int | None, str], ModelInfo] = field(default_factory=dict)
    features: frozenset[str] = frozenset()
    limits: LimitIndex = field(default_factory=LimitIndex)
    loaded_at: float = 0.0
    keys_by_id: dict[int, KeyInfo] = field(default_factory=dict)

    def model_for(self, org_id: int, name: str) -> ModelInfo | None:
        """An org's own model wins over a shared one of the same name."""
        return self.models.get((org_id, name)) or self.models.get((None, name))

    def models_for(self, key: KeyInfo) -> list[ModelInfo]:
        visible: dict[str, ModelInfo] = {}
        for (org_id, name), model in self.models.items():
            if (org_id is None and name not in visible) or org_id == key.org_id:
                visible[name] = model
        allowed = key.allowed_models
        return sorted(
            (m for m in visible.values() if allowed is None or m.id in allowed),
            key=lambda m: m.name,
        )


def load_catalog() -> Catalog:
    """Read the snapshot from Postgres (sync; the proxy runs it in a thread)."""
    from gateway.models import LlmModel, Provider
    from policies.models import ApiKey, Feature

    close_old_connections()
    try:
        providers = {
            p.pk: ProviderInfo(p.pk, p.name, p.kind, p.base_url.rstrip("/"), p.api_key)
            for p in Provider.objects.filter(is_active=True)
        }
        models: dict[tuple[int | None, str], ModelInfo] = {}
        for m in LlmModel.objects.filter(is_active=True):
            provider = providers.get(m.provider_id)
            if provider is None:
                continue
            models[(m.org_id, m.name)] = _model_info(m, provider)
        keys: dict[str, KeyInfo] = {}
        usable = ApiKey.objects.usable().select_related("org__tier", "default_feature")
        for k in usable.prefetch_related("allowed_features", "allowed_models"):
            allowed_features = frozenset(f.name for f in k.allowed_features.all())
            allowed_models = frozenset(m.pk for m in k.allowed_models.all())
            keys[k.prefix] = KeyInfo(
                id=k.pk,
                prefix=k.prefix,
                key_hash=k.key_hash,
                org_id=k.org_id,
                org_slug=k.org.slug,
                tier_id=k.org.tier_id,
                name=k.name,
                default_feature=k.default_feature.name if k.default_feature else None,
                allowed_features=allowed_features if k.restrict_features else None,
                allowed_models=allowed_models if k.restrict_models else None,
                expires_at=k.expires_at.timestamp() if k.expires_at else None,
                tier_priority=k.org.tier.priority,
            )
        features = frozenset(Feature.objects.values_list("name", flat=True))
        limits = load_limit_index()
    finally:
        close_old_connections()
    return Catalog(
        keys=keys,
        models=models,
        features=features,
        limits=limits,
        loaded_at=time.time(),
        keys_by_id={k.id: k for k in keys.values()},
    )


def _model_info(m: Any, provider: ProviderInfo) -> ModelInfo:
    """Prices of a model; an unknown one is the configured default or marks it unusable."""
    input_price = m.input_price_per_million
    output_price = m.output_price_per_million
    if m.mode == "embedding" and output_price is None:
        output_price = Decimal(0)  # embeddings have no output tokens
    unknown = input_price is None or output_price is None
    assumed = unknown and settings.TOLLGATE_UNKNOWN_PRICE == "charge_default"
    if input_price is None:
        input_price = settings.TOLLGATE_DEFAULT_INPUT_PRICE
    if output_price is None:
        output_price = settings.TOLLGATE_DEFAULT_OUTPUT_PRICE
    cached = m.cached_input_price_per_million
    return ModelInfo(
        m.pk,
        m.name,
        m.org_id,
        m.mode,
        m.upstream_name,
        provider,
        input_price,
        output_price,
        # No cached price: cached input costs as much as any input (never less than known).
        cached if cached is not None else input_price,
        price_assumed=assumed,
        price_unknown=unknown and not assumed,
    )


def config_changed() -> None:
    """Tell every gateway process to reload its snapshot once this transaction commits."""

    def bump() -> None:
        try:
            get_redis().incr(key(*VERSION_KEY))
        except redis.RedisError:
            # Processes still reload within FORCED_RELOAD_SECONDS.
            log.warning(
                "could not publish a config change; it applies within %ss", FORCED_RELOAD_SECONDS
            )

    transaction.on_commit(bump)


class CatalogCache:
    """The current snapshot of one process, refreshed in the background."""

    def __init__(self) -> None:
        self.catalog: Catalog | None = None
        self.version: bytes | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def get(self) -> Catalog:
        if self.catalog is None:
            async with self._lock:
                if self.catalog is None:
                    self.version = await self._read_version()
                    self.catalog = await asyncio.to_thread(load_catalog)
                    self._task = asyncio.get_running_loop().create_task(self._refresh_loop())
        return self.catalog

    async def _read_version(self) -> bytes | None:
        try:
            # The client does not decode responses, so GET gives bytes (or None).
            return cast("bytes | None", await shared_async_client().get(key(*VERSION_KEY)))
        except (redis.RedisError, OSError):
            REDIS_ERRORS.labels("catalog").inc()
            return self.version

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                version = await self._read_version()
                stale = (
                    self.catalog is None
                    or time.time() - self.catalog.loaded_at > FORCED_RELOAD_SECONDS
                )
                if version != self.version or stale:
                    self.catalog = await asyncio.to_thread(load_catalog)
                    self.version = version
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("catalog refresh failed; keeping the previous snapshot")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
