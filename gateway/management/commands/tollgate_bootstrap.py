from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from gateway.models import LlmModel, Provider
from gateway.services import prices_load
from policies.models import Feature, Organization, Tier
from policies.services import apikey_create

DEMO_FEATURES = ("chat", "summarize", "support-bot")


class Command(BaseCommand):
    help = (
        "First-run set-up for a local install: an admin user, a demo org, features, the seed "
        "price list and a demo API key. Does nothing once an admin exists."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--info-file",
            type=Path,
            required=True,
            help="where to write the created credentials (local installs only)",
        )
        parser.add_argument(
            "--fake-upstream",
            help="URL of a local fake provider; demo models demo-chat, demo-embedding and "
            "demo-claude are pointed at it",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        info_file: Path = options["info_file"]
        if not LlmModel.objects.exists():
            prices_load()
        if options["fake_upstream"]:
            demo_models_point_at(options["fake_upstream"].rstrip("/"))
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write("bootstrap: already set up")
            return
        with transaction.atomic():
            password = secrets.token_urlsafe(12)
            admin = User.objects.create_superuser("admin", "admin@localhost", password)
            features = [Feature.objects.get_or_create(name=name)[0] for name in DEMO_FEATURES]
            org, _ = Organization.objects.get_or_create(
                slug="demo", defaults={"name": "Demo Org", "tier": Tier.objects.get(slug="free")}
            )
            _key, raw = apikey_create(
                org=org, name="demo key", actor=admin, default_feature=features[0]
            )
        info_file.parent.mkdir(parents=True, exist_ok=True)
        info_file.write_text(
            json.dumps({"username": "admin", "password": password, "api_key": raw}, indent=2)
        )
        info_file.chmod(0o600)
        self.stdout.write(f"bootstrap: created admin user, demo org and key ({info_file})")


# Demo models served by the local fake provider, priced like their namesakes.
DEMO_MODELS = [
    ("demo-chat", "local-fake-openai", "chat", "0.15", "0.60", "0.075"),
    ("demo-embedding", "local-fake-openai", "embedding", "0.02", "0", "0"),
    ("demo-claude", "local-fake-anthropic", "chat", "1.00", "5.00", "0.10"),
]


@transaction.atomic
def demo_models_point_at(url: str) -> None:
    """The fake provider listens on a new port each run; keep the demo rows pointing at it."""
    providers = {
        "local-fake-openai": ("openai_compatible", f"{url}/v1"),
        "local-fake-anthropic": ("anthropic", url),
    }
    rows = {}
    for name, (kind, base_url) in providers.items():
        provider, _ = Provider.objects.get_or_create(
            org=None, name=name, defaults={"kind": kind, "base_url": base_url}
        )
        if provider.base_url != base_url:
            provider.base_url = base_url
            provider.save(update_fields=["base_url", "updated_at"])
        rows[name] = provider
    for name, provider_name, mode, inp, out, cached in DEMO_MODELS:
        LlmModel.objects.get_or_create(
            org=None,
            name=name,
            defaults={
                "provider": rows[provider_name],
                "upstream_name": name,
                "mode": mode,
                "input_price_per_million": inp,
                "output_price_per_million": out,
                "cached_input_price_per_million": cached,
            },
        )
