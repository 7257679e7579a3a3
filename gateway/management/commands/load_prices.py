from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.services import SEED_PRICES, PriceListError, prices_load


class Command(BaseCommand):
    help = "Load shared providers and model prices from a JSON price list (default: the seed list)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--file", type=Path, default=SEED_PRICES)
        parser.add_argument(
            "--update", action="store_true", help="also overwrite prices of existing models"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        show_progress = sys.stderr.isatty() and options["verbosity"] > 0

        def progress(done: int, total: int) -> None:
            if show_progress:
                width = 30
                filled = width * done // total
                sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
                if done == total:
                    sys.stderr.write("\n")

        try:
            result = prices_load(
                path=options["file"], update_existing=options["update"], progress=progress
            )
        except PriceListError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"models: {result.created} created, {result.updated} updated, "
            f"{result.unchanged} unchanged"
        )
