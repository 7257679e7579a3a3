from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from gateway.models import LlmModel
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

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        info_file: Path = options["info_file"]
        if not LlmModel.objects.exists():
            prices_load()
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
