from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.progress import Progress, add_progress_argument
from gateway.services import SEED_PRICES, PriceListError, prices_load


class Command(BaseCommand):
    help = "Load shared providers and model prices from a JSON price list (default: the seed list)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--file", type=Path, default=SEED_PRICES)
        parser.add_argument(
            "--update", action="store_true", help="also overwrite prices of existing models"
        )
        add_progress_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        progress = Progress(self, options, desc="loading prices", unit="models")
        try:
            result = prices_load(
                path=options["file"], update_existing=options["update"], progress=progress
            )
        except PriceListError as exc:
            raise CommandError(str(exc)) from None
        finally:
            progress.close()
        self.stdout.write(
            f"models: {result.created} created, {result.updated} updated, "
            f"{result.unchanged} unchanged"
        )
