"""Writes for providers and models."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.db import transaction

from gateway.models import LlmModel, Provider

SEED_PRICES = Path(__file__).parent / "data" / "prices.json"


class PriceListError(ValueError):
    pass


@dataclass
class PriceLoadResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0


def _price(entry: dict[str, Any], field: str) -> Decimal:
    raw = entry.get(field, "0")
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise PriceListError(
            f"model {entry.get('name')!r}: {field}={raw!r} is not a number"
        ) from None
    if value < 0 or value.as_tuple().exponent < -6:  # type: ignore[operator]
        raise PriceListError(
            f"model {entry.get('name')!r}: {field}={raw!r} must be >= 0 with at most 6 decimals"
        )
    return value


@transaction.atomic
def prices_load(
    *,
    path: Path = SEED_PRICES,
    update_existing: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PriceLoadResult:
    """Create the shared providers and models of a price list; optionally update prices."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PriceListError(f"cannot read {path}: {exc}") from None
    providers: dict[str, Provider] = {}
    for entry in data.get("providers", []):
        shared_provider, _ = Provider.objects.get_or_create(
            org=None,
            name=entry["name"],
            defaults={"kind": entry["kind"], "base_url": entry["base_url"]},
        )
        providers[shared_provider.name] = shared_provider
    result = PriceLoadResult()
    models = data.get("models", [])
    for index, entry in enumerate(models, start=1):
        provider_name = entry.get("provider")
        provider = (
            providers.get(provider_name)
            or Provider.objects.filter(org=None, name=provider_name).first()
        )
        if provider is None:
            raise PriceListError(f"model {entry.get('name')!r}: unknown provider {provider_name!r}")
        prices = {
            "input_price_per_million": _price(entry, "input"),
            "output_price_per_million": _price(entry, "output"),
            "cached_input_price_per_million": _price(entry, "cached_input"),
        }
        model = LlmModel.objects.filter(org=None, name=entry["name"]).first()
        if model is None:
            LlmModel.objects.create(
                org=None,
                name=entry["name"],
                provider=provider,
                upstream_name=entry.get("upstream_name", entry["name"]),
                mode=entry.get("mode", LlmModel.Mode.CHAT),
                **prices,
            )
            result.created += 1
        elif update_existing and any(getattr(model, f) != v for f, v in prices.items()):
            for field, value in prices.items():
                setattr(model, field, value)
            model.save(update_fields=[*prices, "updated_at"])
            result.updated += 1
        else:
            result.unchanged += 1
        if progress is not None:
            progress(index, len(models))
    return result
