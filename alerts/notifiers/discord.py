"""Discord webhooks: the subject as content and one embed with the figures as fields.

Discord answers 204 (no body) when it accepted the message. When rate limited it
answers 429 with a JSON body whose ``retry_after`` (seconds) says when to come back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from alerts.notifiers.base import HttpNotifier, TransientError, retry_after_seconds

if TYPE_CHECKING:
    from alerts.models import Alert
    from alerts.notifiers.message import Message

# Embed limits from Discord's documentation.
TITLE_MAX_CHARS = 256
DESCRIPTION_MAX_CHARS = 4096
MAX_FIELDS = 25
FIELD_NAME_MAX_CHARS = 256
FIELD_VALUE_MAX_CHARS = 1024
CONTENT_MAX_CHARS = 2000

SEVERITY_COLORS = {"critical": 0xD1242F, "warning": 0xD4A72C, "info": 0x0969DA}
RESOLVED_COLOR = 0x1A7F37


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def discord_payload(alert: Alert, message: Message) -> dict[str, Any]:
    lines = [f"**Severity:** {alert.severity}"]
    if alert.rule is not None:
        lines.append(f"**Rule:** {alert.rule.name}")
    if message.window:
        lines.append(f"**Window:** {message.window}")
    lines.append(f"**Observed:** {message.observed_at}")
    if message.resolved:
        lines.insert(0, "The condition has cleared.")
    embed: dict[str, Any] = {
        "title": _clip(message.title, TITLE_MAX_CHARS),
        "url": message.admin_url,
        "description": _clip("\n".join(lines), DESCRIPTION_MAX_CHARS),
        "color": RESOLVED_COLOR if message.resolved else SEVERITY_COLORS.get(alert.severity, 0),
        "fields": [
            {
                "name": _clip(key, FIELD_NAME_MAX_CHARS),
                "value": _clip(value or "—", FIELD_VALUE_MAX_CHARS),
                "inline": True,
            }
            for key, value in message.fields[:MAX_FIELDS]
        ],
    }
    if alert.observed_at:
        embed["timestamp"] = alert.observed_at.isoformat()
    return {
        "content": _clip(message.subject, CONTENT_MAX_CHARS),
        "embeds": [embed],
        # Org and feature names come from the admin; never let them ping @everyone.
        "allowed_mentions": {"parse": []},
    }


class DiscordNotifier(HttpNotifier):
    kind = "discord"
    target = "Discord webhook URL"

    def send(self, alert: Alert, message: Message) -> str:
        response = self.post_json(self.url(), discord_payload(alert, message))
        return self.receipt(response)

    def raise_for_response(self, response: httpx.Response) -> None:
        if response.status_code == 429:
            # Discord puts the wait in the body (seconds, may be fractional), and not
            # always in Retry-After.
            wait = retry_after_seconds(response)
            try:
                body = response.json()
                wait = float(body.get("retry_after", wait))
            except (ValueError, TypeError, AttributeError):
                pass
            after = f", retry after {wait:g} s" if wait is not None else ""
            raise TransientError(f"rate limited by Discord (429{after})", retry_after=wait)
        super().raise_for_response(response)
