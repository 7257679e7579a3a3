"""Slack incoming webhooks: a plain-text fallback plus Block Kit blocks with the figures.

Slack answers 200 ``ok``; its errors are short tokens in the body (404 ``no_service``
for a removed webhook, 410 ``channel_is_archived``, 400 ``invalid_payload``), which the
default status handling already classifies and quotes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from alerts.notifiers.base import HttpNotifier

if TYPE_CHECKING:
    from alerts.models import Alert
    from alerts.notifiers.message import Message

# Block Kit limits: a header's text, a section's fields, one field's text.
HEADER_MAX_CHARS = 150
FIELDS_PER_SECTION = 10
FIELD_MAX_CHARS = 2000

SEVERITY_EMOJI = {
    "critical": ":red_circle:",
    "warning": ":large_orange_circle:",
    "info": ":large_blue_circle:",
}
RESOLVED_EMOJI = ":white_check_mark:"


def escape(text: str) -> str:
    """Slack's mrkdwn treats &, < and > as markup (links, mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_payload(alert: Alert, message: Message) -> dict[str, Any]:
    emoji = RESOLVED_EMOJI if message.resolved else SEVERITY_EMOJI.get(alert.severity, "")
    heading = f"Resolved: {message.title}" if message.resolved else message.title
    summary = [f"*Severity:* {escape(alert.severity)}"]
    if alert.rule is not None:
        summary.append(f"*Rule:* {escape(alert.rule.name)}")
    if message.window:
        summary.append(f"*Window:* {escape(message.window)}")
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _clip(f"{emoji} {heading}".strip(), HEADER_MAX_CHARS),
                "emoji": True,
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": "   ".join(summary)}},
    ]
    fields = [
        {"type": "mrkdwn", "text": _clip(f"*{escape(key)}*\n{escape(value)}", FIELD_MAX_CHARS)}
        for key, value in message.fields
    ]
    for start in range(0, len(fields), FIELDS_PER_SECTION):
        blocks.append({"type": "section", "fields": fields[start : start + FIELDS_PER_SECTION]})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"Observed {message.observed_at} · "
                    f"<{message.admin_url}|View in the Tollgate admin>",
                }
            ],
        }
    )
    # "text" is what notifications and clients without blocks show.
    return {"text": message.subject, "blocks": blocks}


class SlackNotifier(HttpNotifier):
    kind = "slack"
    target = "Slack webhook URL"

    def send(self, alert: Alert, message: Message) -> str:
        response = self.post_json(self.url(), slack_payload(alert, message))
        return self.receipt(response)
