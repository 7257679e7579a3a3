"""Parameters and output shared by the management API, the admin and commands: ISO moments,
errors that name the parameter (answered 400, or 404 for another org's objects), and CSV
cells made safe for spreadsheets."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

# A CSV cell starting with one of these runs as a formula in a spreadsheet.
FORMULA_STARTS = "=+-@\t\r"


class FilterError(ValueError):
    """A bad filter parameter: answered 400 naming ``param``."""

    status = 400

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


class FilterNotFound(FilterError):
    """An org user naming another organization: answered 404 (its existence not told)."""

    status = 404


def iso_utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_moment(param: str, raw: str) -> datetime:
    value: datetime | None = None
    candidates = [raw]
    if " " in raw:
        # "+01:00" arrives as " 01:00" when the query string did not encode the "+".
        head, _, tail = raw.rpartition(" ")
        candidates.append(f"{head}+{tail}")
    for candidate in candidates:
        try:
            value = parse_datetime(candidate)
        except ValueError:
            value = None
        if value is not None:
            break
        try:
            day = parse_date(candidate)
        except ValueError:
            day = None
        if day is not None:
            value = datetime.combine(day, time.min)
            break
    if value is None:
        raise FilterError(
            param, f"not a date or date-time: {raw[:40]!r} (use ISO 8601, e.g. 2026-01-31)"
        )
    if timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise FilterError(param, f"out of range: {raw[:40]!r}") from None


def defuse_formula(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula, prefixed with a quote."""
    if isinstance(value, str) and value and value[0] in FORMULA_STARTS:
        return "'" + value
    return value
