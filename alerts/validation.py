"""Field validation for alert configuration, shared by the REST serializers and the admin
forms so both give the same field errors.

Every function takes a raw value and returns it cleaned (normalized, defaults filled in) or
raises ``django.core.exceptions.ValidationError`` with a message for that one field; the
caller attaches it to its field. DRF turns Django's ValidationError into a 400 field error.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

SEVERITIES = ("info", "warning", "critical")

# Channel kinds whose secret is an http(s) URL, and the ones that need some secret.
URL_SECRET_KINDS = frozenset({"slack", "discord", "webhook"})
SECRET_REQUIRED_KINDS = URL_SECRET_KINDS | {"pagerduty"}

DEFAULT_THRESHOLDS = [80, 100]
DEFAULT_SPIKE_FACTOR = 3
DEFAULT_WINDOW_MINUTES = 15
DEFAULT_ERROR_PERCENT = 20
DEFAULT_MIN_REQUESTS = 20
DEFAULT_P95_MS = 10_000
MAX_WINDOW_MINUTES = 7 * 24 * 60

_SPLIT = re.compile(r"[,;\s]+")


# --- email addresses ----------------------------------------------------------------------


def clean_email_list(value: Any) -> list[str]:
    """A list of valid addresses from a list or a comma-separated string (may be empty)."""
    if value is None:
        return []
    if isinstance(value, str):
        items = [part for part in _SPLIT.split(value) if part]
    elif isinstance(value, list | tuple):
        if not all(isinstance(item, str) for item in value):
            raise ValidationError("Give email addresses as a list of strings.")
        items = [part for item in value for part in _SPLIT.split(item) if part]
    else:
        raise ValidationError("Give email addresses as a list or a comma-separated string.")
    cleaned: list[str] = []
    bad: list[str] = []
    for item in items:
        try:
            validate_email(item)
        except ValidationError:
            bad.append(item)
            continue
        if item.lower() not in (known.lower() for known in cleaned):
            cleaned.append(item)
    if bad:
        listed = ", ".join(repr(item) for item in bad[:5])
        raise ValidationError(f"Not a valid email address: {listed}.")
    return cleaned


def clean_email_list_text(value: str) -> str:
    """An org's or feature's ``alert_email_to``: normalized to "a@x.test, b@y.test"."""
    return ", ".join(clean_email_list(value or ""))


def clean_email(value: str) -> str:
    value = (value or "").strip()
    try:
        validate_email(value)
    except ValidationError:
        raise ValidationError(f"Not a valid email address: {value!r}.") from None
    return value


# --- URLs, secrets, ports, cooldowns, severities ---------------------------------------------


def clean_http_url(value: str) -> str:
    value = (value or "").strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValidationError("Not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Use an http:// or https:// URL.")
    if any(ch.isspace() for ch in value):
        raise ValidationError("A URL cannot contain spaces.")
    return value


def clean_channel_secret(kind: str, secret: str | None, *, stored: bool) -> str | None:
    """The channel's secret for ``kind``. ``None``: not given (keep the stored one).

    ``stored``: a secret usable for this kind is already stored (same kind, not cleared).
    """
    if secret is not None:
        secret = secret.strip()
    if not secret:
        if kind in SECRET_REQUIRED_KINDS and not (secret is None and stored):
            if kind == "pagerduty":
                raise ValidationError("A PagerDuty channel needs its integration routing key.")
            raise ValidationError("This channel needs its webhook URL (http:// or https://).")
        return secret
    if kind in URL_SECRET_KINDS:
        return clean_http_url(secret)
    if kind == "pagerduty" and any(ch.isspace() for ch in secret):
        raise ValidationError("A PagerDuty routing key cannot contain spaces.")
    return secret


def clean_channel_config(kind: str, config: Any) -> dict[str, Any]:
    if config in (None, ""):
        config = {}
    if not isinstance(config, dict):
        raise ValidationError('The configuration must be a JSON object, e.g. {"to": [...]}.')
    config = dict(config)
    if "to" in config:
        try:
            config["to"] = clean_email_list(config["to"])
        except ValidationError as exc:
            raise ValidationError(f'"to": {exc.messages[0]}') from None
    return config


def clean_port(value: Any) -> int:
    number = _integer(value, "The port")
    if not 1 <= number <= 65535:
        raise ValidationError("The port must be between 1 and 65535.")
    return number


def clean_cooldown(value: Any) -> int:
    number = _integer(value, "The cooldown")
    if number < 1:
        raise ValidationError("The cooldown must be at least 1 second.")
    return number


def clean_severities(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [part for part in _SPLIT.split(value) if part]
    if not isinstance(value, list | tuple | set):
        raise ValidationError('Give severities as a list, e.g. ["warning", "critical"].')
    unknown = sorted({str(item) for item in value} - set(SEVERITIES))
    if unknown:
        raise ValidationError(
            f"Unknown severity {', '.join(map(repr, unknown))}; use info, warning or critical."
        )
    cleaned = [severity for severity in SEVERITIES if severity in value]
    if not cleaned:
        raise ValidationError("Choose at least one severity.")
    return cleaned


def check_rule_channels(channels: Any, org_id: int | None) -> None:
    """A rule needs a channel; each must be shared or belong to the rule's own org."""
    channels = list(channels or [])
    if not channels:
        raise ValidationError("A rule needs at least one channel.")
    foreign = [c for c in channels if c.org_id is not None and c.org_id != org_id]
    if foreign:
        names = ", ".join(sorted(str(c.name) for c in foreign))
        where = "shared channels" if org_id is None else "shared channels or its own org's"
        raise ValidationError(f"A rule can only use {where}; not: {names}.")


# --- rule parameters per kind --------------------------------------------------------------


def clean_rule_params(kind: str, params: Any) -> dict[str, Any]:
    """The rule's parameters checked for its kind, with the defaults filled in."""
    if params in (None, ""):
        params = {}
    if not isinstance(params, dict):
        raise ValidationError("The parameters must be a JSON object.")
    allowed = _PARAMS.get(kind)
    if allowed is None:
        raise ValidationError(f"Unknown rule kind {kind!r}.")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise ValidationError(
            f"Unknown parameter {', '.join(map(repr, unknown))} for {kind} (allowed: {known})."
        )
    cleaner = _CLEANERS.get(kind)
    return cleaner(params) if cleaner else {}


def _thresholds(params: dict[str, Any]) -> dict[str, Any]:
    value = params.get("thresholds", DEFAULT_THRESHOLDS)
    message = "thresholds: give a non-empty list of whole percentages from 1 to 1000."
    if not isinstance(value, list) or not value:
        raise ValidationError(message)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1000 for v in value):
        raise ValidationError(message)
    return {"thresholds": sorted(set(value))}


def _cost_spike(params: dict[str, Any]) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    if params.get("factor") is not None:
        factor = _decimal(params["factor"], "factor")
        if factor <= 1:
            raise ValidationError("factor: must be greater than 1 (k times the hourly mean).")
        cleaned["factor"] = _plain(factor)
    if params.get("amount_usd") is not None:
        cleaned["amount_usd"] = _amount(params["amount_usd"])
    if not cleaned:
        cleaned["factor"] = DEFAULT_SPIKE_FACTOR
    return cleaned


def _daily_spend(params: dict[str, Any]) -> dict[str, Any]:
    if params.get("amount_usd") is None:
        raise ValidationError("amount_usd: required (the daily spend in USD that alerts).")
    return {"amount_usd": _amount(params["amount_usd"])}


def _error_rate(params: dict[str, Any]) -> dict[str, Any]:
    percent = _decimal(params.get("percent", DEFAULT_ERROR_PERCENT), "percent")
    if not 0 <= percent <= 100:
        raise ValidationError("percent: must be between 0 and 100.")
    min_requests = _integer(params.get("min_requests", DEFAULT_MIN_REQUESTS), "min_requests")
    if min_requests < 1:
        raise ValidationError("min_requests: must be at least 1.")
    return {
        "percent": _plain(percent),
        "window_minutes": _window(params),
        "min_requests": min_requests,
    }


def _latency_p95(params: dict[str, Any]) -> dict[str, Any]:
    p95 = _decimal(params.get("p95_ms", DEFAULT_P95_MS), "p95_ms")
    if p95 <= 0:
        raise ValidationError("p95_ms: must be greater than 0.")
    return {"p95_ms": _plain(p95), "window_minutes": _window(params)}


_PARAMS: dict[str, tuple[str, ...]] = {
    "limit_threshold": ("thresholds",),
    "budget_threshold": ("thresholds",),
    "cost_spike": ("factor", "amount_usd"),
    "daily_spend": ("amount_usd",),
    "error_rate": ("percent", "window_minutes", "min_requests"),
    "latency_p95": ("p95_ms", "window_minutes"),
    "redis_degraded": (),
    "dependency_down": (),
}
_CLEANERS = {
    "limit_threshold": _thresholds,
    "budget_threshold": _thresholds,
    "cost_spike": _cost_spike,
    "daily_spend": _daily_spend,
    "error_rate": _error_rate,
    "latency_p95": _latency_p95,
}


def _window(params: dict[str, Any]) -> int:
    minutes = _integer(params.get("window_minutes", DEFAULT_WINDOW_MINUTES), "window_minutes")
    if not 1 <= minutes <= MAX_WINDOW_MINUTES:
        raise ValidationError(f"window_minutes: must be between 1 and {MAX_WINDOW_MINUTES}.")
    return minutes


def _amount(value: Any) -> int | float:
    amount = _decimal(value, "amount_usd")
    if amount <= 0:
        raise ValidationError("amount_usd: must be greater than 0.")
    return _plain(amount)


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValidationError(f"{name}: must be a whole number.")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise ValidationError(f"{name}: must be a whole number.")


def _decimal(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValidationError(f"{name}: must be a number.")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValidationError(f"{name}: must be a number.") from None
    if not number.is_finite():
        raise ValidationError(f"{name}: must be a number.")
    return number


def _plain(number: Decimal) -> int | float:
    """A JSON-friendly number: an int when whole, else a float."""
    return int(number) if number == number.to_integral_value() else float(number)
