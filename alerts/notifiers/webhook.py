"""Generic webhooks: a JSON POST signed with HMAC-SHA256.

The body::

    {"event": "alert.firing" | "alert.resolved",
     "timestamp": 1767225600,
     "alert": {"id": 42, "title": "Rate limit 100% — org: acme, feature: chat",
               "subject": "[Tollgate Alert] Rate limit 100% — org: acme, feature: chat",
               "severity": "warning", "rule": "Limits", "rule_id": 3, "scope": "...",
               "org": "acme", "feature": "chat", "figures": {...},
               "observed_at": "2026-01-01T00:00:00+00:00", "url": "https://.../change/"}}

The headers::

    X-Tollgate-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the channel's
                          signing key>
    X-Tollgate-Timestamp: <the body's "timestamp": Unix seconds when it was sent>

To verify a delivery, compute the HMAC over the raw bytes of the body exactly as received
(before any JSON parsing), compare in constant time, then reject stale deliveries. The
timestamp is inside the signed body, so it cannot be changed without breaking the
signature; the header is a copy for receivers that check age before parsing::

    import hashlib, hmac, json, time

    def verify(body: bytes, headers, key: str, max_age: int = 300) -> dict:
        expected = "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers["X-Tollgate-Signature"]):
            raise ValueError("bad signature")
        payload = json.loads(body)
        if abs(time.time() - payload["timestamp"]) > max_age:
            raise ValueError("stale delivery")
        return payload

A delivery may be retried after a timeout, so the same alert can arrive twice: use
``alert.id`` with ``event`` to ignore repeats.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import TYPE_CHECKING, Any

from alerts.notifiers.base import HttpNotifier, PermanentError

if TYPE_CHECKING:
    from alerts.models import Alert
    from alerts.notifiers.message import Message

SIGNATURE_HEADER = "X-Tollgate-Signature"
TIMESTAMP_HEADER = "X-Tollgate-Timestamp"


def sign(body: bytes, key: str) -> str:
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def webhook_payload(alert: Alert, message: Message, *, timestamp: int) -> dict[str, Any]:
    return {
        "event": f"alert.{alert.kind}",
        "timestamp": timestamp,
        "alert": {
            "id": alert.pk,
            "title": alert.title,
            "subject": message.subject,
            "severity": alert.severity,
            "rule": alert.rule.name if alert.rule is not None else None,
            "rule_id": alert.rule_id,
            "scope": alert.scope,
            "org": alert.org.slug if alert.org is not None else None,
            "feature": alert.feature or None,
            "figures": alert.figures,
            "window": message.window or None,
            "observed_at": alert.observed_at.isoformat() if alert.observed_at else None,
            "url": message.admin_url,
        },
    }


class WebhookNotifier(HttpNotifier):
    kind = "webhook"
    target = "webhook URL"

    def send(self, alert: Alert, message: Message) -> str:
        url = self.url()
        key = self.signing_key()
        if not key:
            raise PermanentError("the webhook channel has no signing key")
        timestamp = int(time.time())
        body = json.dumps(
            webhook_payload(alert, message, timestamp=timestamp),
            separators=(",", ":"),
            ensure_ascii=False,
            default=str,
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Tollgate-Webhook/1",
            SIGNATURE_HEADER: sign(body, key),
            TIMESTAMP_HEADER: str(timestamp),
        }
        return self.receipt(self.post(url, content=body, headers=headers))
