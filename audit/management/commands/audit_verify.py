from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.verify import audit_verify
from gateway.progress import Progress, add_progress_argument


class Command(BaseCommand):
    help = "Check the audit trail's hash chain; name the first altered or missing row."

    def add_arguments(self, parser: CommandParser) -> None:
        add_progress_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        progress = Progress(self, options, desc="verifying", unit="rows")
        try:
            result = audit_verify(progress=progress)
        finally:
            progress.close()
        if not result.ok:
            raise CommandError(
                f"audit trail broken after {result.checked} good rows: {result.problem}"
            )
        self.stdout.write(f"audit trail intact: {result.checked} rows checked")
