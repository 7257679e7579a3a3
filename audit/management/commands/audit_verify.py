from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.verify import audit_verify


class Command(BaseCommand):
    help = "Check the audit trail's hash chain; name the first altered or missing row."

    def handle(self, *args: Any, **options: Any) -> None:
        show = sys.stderr.isatty() and options["verbosity"] > 0

        def progress(done: int, total: int) -> None:
            if show and total:
                width = 30
                filled = width * done // total
                sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
                if done >= total:
                    sys.stderr.write("\n")

        result = audit_verify(progress=progress)
        if not result.ok:
            raise CommandError(
                f"audit trail broken after {result.checked} good rows: {result.problem}"
            )
        self.stdout.write(f"audit trail intact: {result.checked} rows checked")
