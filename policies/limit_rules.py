"""Validation of a limit's fields, shared by the model (admin forms) and the REST API."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from policies.models import Limit

WINDOW_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
CALENDAR_WINDOWS = {"calendar_day", "calendar_month"}
# The largest amount of any limit (for cost: $10,000,000 in micro-USD); the limiter's
# arithmetic stays exact below it.
MAX_AMOUNT = 10**13
# The longest a request may wait for capacity.
MAX_WAIT_CEILING_SECONDS = 300


def limit_errors(limit: Limit) -> dict[str, str]:
    errors: dict[str, str] = {}
    if limit.amount is None or limit.amount <= 0:
        errors["amount"] = "The amount must be a positive number."
    elif limit.amount > MAX_AMOUNT:
        errors["amount"] = f"The amount must be at most {MAX_AMOUNT:,}."
    if limit.metric == "concurrent":
        if limit.window not in ("none", "", None):
            errors["window"] = "A concurrent-requests limit has no window; use 'none'."
    elif limit.window in ("none", "", None):
        errors["window"] = "Requests, tokens and cost limits need a window."
    if limit.action == "wait":
        if not limit.max_wait_seconds or limit.max_wait_seconds <= 0:
            errors["max_wait_seconds"] = "A 'wait' limit needs a positive maximum wait."
        elif limit.max_wait_seconds > MAX_WAIT_CEILING_SECONDS:
            errors["max_wait_seconds"] = f"At most {MAX_WAIT_CEILING_SECONDS} seconds."
    thresholds = limit.thresholds
    if not isinstance(thresholds, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 < t <= 1000 for t in thresholds
    ):
        errors["thresholds"] = "Give a list of whole percentages between 1 and 1000."
    scope = limit.scope
    needs = {
        "global": (),
        "org": ("org",),
        "org_feature": ("org", "feature"),
        "feature": ("feature",),
        "api_key": ("api_key",),
    }.get(scope)
    if needs is None:
        errors["scope"] = "Unknown scope."
        return errors
    tier_default = limit.tier_id is not None
    if tier_default:
        if scope not in ("org", "org_feature"):
            errors["tier"] = "Only org and org+feature limits can be tier defaults."
        if limit.org_id is not None:
            errors["org"] = "A tier default applies to every org of the tier; leave org empty."
    for field in ("org", "feature", "api_key"):
        given = getattr(limit, f"{field}_id") is not None
        wanted = field in needs and not (field == "org" and tier_default)
        if wanted and not given:
            errors.setdefault(field, f"A {scope} limit needs {field.replace('_', ' ')}.")
        # An API-key limit carries its key's org too, for tenancy.
        optional = scope == "api_key" and field == "org"
        if given and field not in needs and not optional:
            errors.setdefault(field, f"A {scope} limit does not take {field.replace('_', ' ')}.")
    key = limit.api_key if limit.api_key_id is not None else None
    if key is not None and limit.org_id is not None and key.org_id != limit.org_id:
        errors["api_key"] = "This key belongs to another organization."
    return errors
