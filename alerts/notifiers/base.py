"""The notifier interface, its errors, and the HTTP code the webhook-style channels share.

A notifier sends one alert to one channel. ``send()`` returns a short receipt (the
server's answer) or raises a ``DeliveryError`` that says whether trying again can help:
a transient error (a 503, a timeout) is retried with backoff, a permanent one (a webhook
URL that is gone, a refused SMTP login) stops the retries and marks the channel failing.

Error messages end up in the admin (``Delivery.last_error``), so they never contain a
channel's secret: webhook URLs and routing keys are credentials.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from gateway.crypto import SecretDecryptionError

if TYPE_CHECKING:
    from alerts.models import Alert, AlertChannel
    from alerts.notifiers.message import Message

# A provider that takes longer than this to accept a connection is treated as down...
CONNECT_TIMEOUT_SECONDS = 5.0
# ...and one that takes longer than this to answer as overloaded; both are retried.
READ_TIMEOUT_SECONDS = 10.0
# How much of a provider's answer goes into a receipt or an error message.
BODY_EXCERPT_CHARS = 200


class DeliveryError(Exception):
    """Sending failed. ``permanent``: retrying will not help until someone fixes the channel."""

    permanent: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        # Seconds the provider asked us to wait (a 429's Retry-After), when it said.
        self.retry_after = retry_after


class TransientError(DeliveryError):
    permanent = False


class PermanentError(DeliveryError):
    permanent = True


class Notifier:
    """Sends alerts to one channel. Subclasses set ``kind`` and implement ``send``."""

    kind: str = ""

    def __init__(self, channel: AlertChannel) -> None:
        self.channel = channel

    def send(self, alert: Alert, message: Message) -> str:
        """Deliver ``message`` about ``alert``; return a short receipt or raise DeliveryError."""
        raise NotImplementedError

    def secret(self) -> str:
        """The channel's decrypted secret (webhook URL, routing key), or "" if none is set."""
        try:
            return self.channel.secret
        except SecretDecryptionError as exc:
            # Retrying cannot help: the key it was encrypted with is gone.
            raise PermanentError(f"the channel's secret cannot be read: {exc}") from None

    def signing_key(self) -> str:
        try:
            return self.channel.signing_key
        except SecretDecryptionError as exc:
            raise PermanentError(f"the channel's signing key cannot be read: {exc}") from None


def excerpt(text: str, limit: int = BODY_EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # absent, or an HTTP date: the task's own backoff applies


class HttpNotifier(Notifier):
    """A notifier that POSTs to an HTTP endpoint (Slack, Discord, webhooks, PagerDuty)."""

    # What the endpoint is called in error messages.
    target = "webhook URL"

    def url(self) -> str:
        """The endpoint: the channel's encrypted secret (its webhook URL) by default."""
        url = self.secret() or str(self.channel.config.get("url") or "")
        if not url:
            raise PermanentError(f"the channel has no {self.target}")
        if urlsplit(url).scheme not in ("http", "https"):
            raise PermanentError(f"the channel's {self.target} is not an http(s) URL")
        return url

    def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST ``content``; return the response if ``raise_for_response`` accepts it."""
        timeout = httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
        try:
            # One client per call: a worker sends rarely, and nothing stays open between
            # deliveries. Redirects are not followed: a moved webhook is a config change.
            with httpx.Client(timeout=timeout, follow_redirects=False) as client:
                response = client.post(url, content=content, headers=headers)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            # The exception text would quote the URL, which is a secret.
            raise PermanentError(f"the channel's {self.target} is not a valid URL") from None
        except httpx.TimeoutException as exc:
            raise TransientError(
                f"the {self.target} did not answer in time ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise TransientError(f"could not reach the {self.target}: {exc}") from None
        self.raise_for_response(response)
        return response

    def post_json(
        self, url: str, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return self.post(
            url, content=body, headers={"Content-Type": "application/json", **(headers or {})}
        )

    def raise_for_response(self, response: httpx.Response) -> None:
        """Accept a 2xx; raise a transient or permanent error for anything else.

        Providers override this for their quirks (Discord's 429 body, PagerDuty's 400s).
        """
        status = response.status_code
        if 200 <= status < 300:
            return
        body = excerpt(response.text)
        target = self.target
        if status in (404, 410):
            raise PermanentError(
                f"{target} not found ({status}): the channel needs a new URL. {body}".rstrip()
            )
        if status in (401, 403):
            raise PermanentError(
                f"the {target} refused our credentials ({status}): check the channel's "
                f"URL or key. {body}".rstrip()
            )
        if status == 400:
            raise PermanentError(f"the {target} rejected the payload (400): {body}")
        if status == 429:
            wait = retry_after_seconds(response)
            after = f", retry after {wait:g} s" if wait is not None else ""
            raise TransientError(f"rate limited by the {target} (429{after})", retry_after=wait)
        if status in (408, 425) or status >= 500:
            raise TransientError(f"the {target} failed ({status}): {body}")
        if 300 <= status < 400:
            raise PermanentError(
                f"the {target} redirects ({status}): the channel needs the new URL"
            )
        # Any other 4xx: the request is wrong and sending it again will not fix it.
        raise PermanentError(f"the {target} rejected the request ({status}): {body}")

    @staticmethod
    def receipt(response: httpx.Response) -> str:
        body = excerpt(response.text)
        return f"{response.status_code} {body}".rstrip()
