from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.context import system_actor
from audit.export import FilterError, audit_export_rows, parse_filters, record_export
from audit.models import AuditEvent
from gateway.progress import Progress, add_progress_argument

PROGRESS_EVERY = 5000


class Command(BaseCommand):
    help = (
        "Export the audit trail as CSV (columns and filters: see audit/export.py). "
        "The export is itself audited (audit.exported, actor system)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_progress_argument(parser)
        parser.add_argument("--since", help="ISO 8601 date or date-time, inclusive (UTC).")
        parser.add_argument("--until", help="ISO 8601 date or date-time, exclusive (UTC).")
        parser.add_argument("--org", help="Organization slug or id.")
        parser.add_argument("--actor", help="Exact actor name or actor id.")
        parser.add_argument("--action", help="Exact action, or a prefix ending in * (limit.*).")
        parser.add_argument("--target-type", help="Exact target type (policies.limit).")
        parser.add_argument("--target-id", help="Exact target id.")
        parser.add_argument(
            "--out", required=True, help="The CSV file to write ('-' for standard output)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        params = {
            name: options[name]
            for name in ("since", "until", "org", "actor", "action", "target_type", "target_id")
            if options.get(name)
        }
        try:
            filters = parse_filters(params)
        except FilterError as exc:
            raise CommandError(f"--{exc.param.replace('_', '-')}: {exc.message}") from None

        out = options["out"]
        to_stdout = out == "-"
        progress = Progress(self, options, desc="exporting", unit="rows")
        partial: Path | None = None
        file: TextIO | None = None
        if not to_stdout:
            path = Path(out)
            if not path.parent.is_dir():
                raise CommandError(f"--out: no such directory: {path.parent}")
            partial = path.with_name(f".{path.name}.partial")
            try:
                file = partial.open("w", newline="", encoding="utf-8")
            except OSError as exc:
                raise CommandError(f"--out: cannot write {path}: {exc.strerror}") from None

        filters = record_export(
            filters,
            surface="command",
            actor=system_actor(),
            extra={"out": "stdout" if to_stdout else str(Path(out).resolve())},
        )
        total = AuditEvent.objects.filter(filters.q()).count() if progress.enabled else 0

        rows = -1  # the header is not a row
        try:
            for line in audit_export_rows(filters=filters):
                if file is not None:
                    file.write(line)
                else:
                    self.stdout.write(line, ending="")
                rows += 1
                if rows and rows % PROGRESS_EVERY == 0:
                    progress(rows, total)
            if file is not None:
                file.close()
        except BaseException:
            progress.close()
            if file is not None and partial is not None:
                file.close()
                partial.unlink(missing_ok=True)
            raise
        progress(total, total)
        if partial is not None:
            os.replace(partial, out)  # a complete file or none at all
            self.stdout.write(f"exported {rows} audit rows to {out}")
