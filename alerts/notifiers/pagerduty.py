"""PagerDuty Events API v2: trigger on firing, resolve on resolved, one incident per scope.

The dedup key ``tollgate-<rule id>-<scope>`` ties a "resolved" to the incident its
"firing" opened, and makes a repeated trigger (a retry, the next cooldown) update that
incident instead of opening another. PagerDuty answers 202 with a JSON status; a 400
means the event (or the routing key) is invalid, which no retry will fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from alerts.notifiers.base import HttpNotifier, PermanentError, excerpt

if TYPE_CHECKING:
    from alerts.models import Alert
    from alerts.notifiers.message import Message

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
# PagerDuty's limits on a dedup key and a summary.
DEDUP_KEY_MAX_CHARS = 255
SUMMARY_MAX_CHARS = 1024
SEVERITIES = {"critical": "critical", "warning": "warning", "info": "info"}


def dedup_key(alert: Alert) -> str:
    return f"tollgate-{alert.rule_id}-{alert.scope}"[:DEDUP_KEY_MAX_CHARS]


def pagerduty_payload(alert: Alert, message: Message, routing_key: str) -> dict[str, Any]:
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "resolve" if message.resolved else "trigger",
        "dedup_key": dedup_key(alert),
    }
    if message.resolved:
        return event  # a resolve needs nothing else
    payload: dict[str, Any] = {
        "summary": message.title[:SUMMARY_MAX_CHARS],
        "severity": SEVERITIES.get(alert.severity, "warning"),
        "source": "tollgate",
        "custom_details": alert.figures,
    }
    if alert.observed_at:
        payload["timestamp"] = alert.observed_at.isoformat()
    if alert.rule is not None:
        payload["class"] = alert.rule.kind
    if alert.org is not None:
        payload["group"] = alert.org.slug
    if alert.feature:
        payload["component"] = alert.feature
    event["payload"] = payload
    event["client"] = "Tollgate"
    event["client_url"] = message.admin_url
    event["links"] = [{"href": message.admin_url, "text": "Alert in the Tollgate admin"}]
    return event


class PagerDutyNotifier(HttpNotifier):
    kind = "pagerduty"
    target = "PagerDuty Events API"

    def send(self, alert: Alert, message: Message) -> str:
        routing_key = self.secret()
        if not routing_key:
            raise PermanentError("the PagerDuty channel has no routing key")
        # Overridable so a test (or a proxy) can stand in for PagerDuty.
        url = str(self.channel.config.get("url") or EVENTS_URL)
        response = self.post_json(url, pagerduty_payload(alert, message, routing_key))
        try:
            answer = response.json()
            return (
                f"{response.status_code} {answer.get('message', '')} {answer.get('dedup_key', '')}"
            )
        except (ValueError, AttributeError):
            return self.receipt(response)

    def raise_for_response(self, response: httpx.Response) -> None:
        if response.status_code == 400:
            # {"status": "invalid event", "message": "Event object is invalid", "errors": [...]}
            try:
                body = response.json()
                detail = "; ".join(str(e) for e in body.get("errors") or []) or body.get(
                    "message", ""
                )
            except (ValueError, AttributeError):
                detail = response.text
            raise PermanentError(
                f"PagerDuty rejected the event (400): {excerpt(str(detail))}. Check the "
                "routing key (an Events API v2 integration key)"
            )
        super().raise_for_response(response)
