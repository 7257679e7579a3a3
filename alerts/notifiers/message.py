"""What every channel says about an alert: its title, subject, figures and bodies.

``alert_title`` builds the title the rule engine stores on the alert; ``message_for``
renders the subject and the text and HTML bodies (``templates/alerts/email.*``) that
email sends and the other channels borrow from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.template.loader import render_to_string

if TYPE_CHECKING:
    from alerts.models import Alert

FIRING_PREFIX = "[Tollgate Alert]"
RESOLVED_PREFIX = "[Tollgate Resolved]"

# The part of a title that names the rule, per rule kind (AlertRule.Kind values).
_KIND_LABELS = {
    "budget_threshold": "Budget",
    "cost_spike": "Cost spike",
    "daily_spend": "Daily spend",
    "error_rate": "Error rate",
    "latency_p95": "p95 latency",
    "redis_degraded": "Redis degraded",
    "dependency_down": "Dependency down",
}


def _percent(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return f" {number:g}%"


def alert_title(kind: str, figures: dict[str, Any], org_slug: str, feature: str) -> str:
    """``Rate limit 100% — org: acme, feature: chat``, ``Cost spike — feature: chat``.

    ``kind`` is the rule's kind; for limit and budget thresholds ``figures`` carries the
    ``threshold`` (percent) and the limit's ``metric`` (``cost`` makes it a budget).
    """
    if kind in ("limit_threshold", "budget_threshold"):
        name = (
            "Budget"
            if kind == "budget_threshold" or figures.get("metric") == "cost"
            else ("Rate limit")
        )
        head = name + _percent(figures.get("threshold"))
    elif kind == "redis_degraded" and figures.get("mode") == "fail_closed":
        head = "Redis down (failing closed)"
    elif kind == "redis_degraded" and figures.get("mode") == "fail_open":
        head = "Redis down (failing open)"
    elif kind == "dependency_down" and figures.get("dependency"):
        head = f"Dependency down: {figures['dependency']}"
    else:
        head = _KIND_LABELS.get(kind) or kind.replace("_", " ").capitalize()
    where = [
        f"{label}: {value}" for label, value in (("org", org_slug), ("feature", feature)) if value
    ]
    return f"{head} — {', '.join(where)}" if where else head


@dataclass(frozen=True)
class Message:
    """One alert, rendered once and shared by every channel it goes to."""

    subject: str  # "[Tollgate Alert] Rate limit 100% — org: acme, feature: chat"
    title: str  # the alert's title, without the prefix
    text: str
    html: str
    admin_url: str
    observed_at: str  # "2025-06-01 12:00:00 UTC"
    window: str  # "15 minutes", "60 requests per minute" or ""
    resolved: bool = False
    # The figures as (key, formatted value), in the order the rule recorded them.
    fields: list[tuple[str, str]] = field(default_factory=list)


def format_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".")
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list | tuple) and all(isinstance(v, str | int) for v in value):
        return ", ".join(str(v) for v in value)
    return json.dumps(value, sort_keys=True, default=str)


def _window(figures: dict[str, Any]) -> str:
    if figures.get("window"):
        return str(figures["window"])
    minutes = figures.get("window_minutes")
    if isinstance(minutes, int | float) and minutes > 0:
        return f"{minutes:g} minute{'s' if minutes != 1 else ''}"
    return ""


def admin_url(alert: Alert) -> str:
    return f"{settings.TOLLGATE_PUBLIC_URL}/admin/alerts/alert/{alert.pk}/change/"


def message_for(alert: Alert) -> Message:
    resolved = alert.kind == "resolved"
    # One line: a header with a newline in it is refused (and would be an injection).
    title = " ".join(alert.title.split())
    subject = f"{RESOLVED_PREFIX if resolved else FIRING_PREFIX} {title}"
    figures = alert.figures if isinstance(alert.figures, dict) else {}
    fields = [(str(key), format_value(value)) for key, value in figures.items()]
    observed = alert.observed_at.astimezone(UTC) if alert.observed_at else datetime.now(UTC)
    observed_at = observed.strftime("%Y-%m-%d %H:%M:%S UTC")
    window, link = _window(figures), admin_url(alert)
    context = {
        "alert": alert,
        "subject": subject,
        "title": title,
        "resolved": resolved,
        "severity": alert.severity,
        "rule": alert.rule.name if alert.rule else "",
        "org": alert.org.slug if alert.org else "",
        "feature": alert.feature,
        "fields": fields,
        "window": window,
        "observed_at": observed_at,
        "admin_url": link,
    }
    return Message(
        subject=subject,
        title=title,
        text=render_to_string("alerts/email.txt", context),
        html=render_to_string("alerts/email.html", context),
        admin_url=link,
        observed_at=observed_at,
        window=window,
        resolved=resolved,
        fields=fields,
    )
