"""Progress bars (tqdm, on stderr) for long management commands: price loading, audit
export and verification. Shown when stderr is a terminal, or always with ``--progress``;
never with ``--verbosity 0``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser
from tqdm import tqdm


def add_progress_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--progress",
        action="store_true",
        help="show a progress bar on stderr even when it is not a terminal",
    )


class Progress:
    """Call with (done, total) as work advances; the bar closes when done reaches total."""

    def __init__(self, command: Any, options: dict[str, Any], *, desc: str, unit: str) -> None:
        # The command's stderr wrapper adds a newline to every write; tqdm needs the stream.
        self.stream = getattr(command.stderr, "_out", command.stderr)
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.enabled = options.get("verbosity", 1) > 0 and (options.get("progress") or isatty)
        self.desc = desc
        self.unit = unit
        self.bar: tqdm[Any] | None = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        if self.bar is None:
            self.bar = tqdm(
                total=total,
                desc=self.desc,
                unit=self.unit,
                unit_scale=True,
                file=self.stream,
                dynamic_ncols=True,
                mininterval=0.2,
            )
        self.bar.total = total
        self.bar.update(min(done, total) - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
