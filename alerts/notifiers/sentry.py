"""Sentry: each alert becomes a message event, with org, feature, rule and severity as tags.

The event goes through a dedicated ``sentry_sdk.Client`` and ``Scope`` made per delivery,
never through the process-wide SDK (``sentry_sdk.init`` in settings): the channel may point
at another project (``config["dsn"]``), and the gateway's own tags, breadcrumbs and
sampling must not mix with alerts.

The client's transport is ours (the SDK's documented extension point): the SDK's HTTP
transport sends from a background thread and only logs a failure, but a notifier must
know whether the event arrived, to retry or to mark the channel failing. This one posts
the envelope the SDK built, in the calling thread, with the timeouts and status handling
the other HTTP channels use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import sentry_sdk
from django.conf import settings
from sentry_sdk.client import SDK_INFO
from sentry_sdk.consts import VERSION, EndpointType
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport
from sentry_sdk.utils import BadDsn

from alerts.notifiers.base import DeliveryError, HttpNotifier, PermanentError, TransientError

if TYPE_CHECKING:
    from sentry_sdk._types import Event, LogLevelStr

    from alerts.models import Alert
    from alerts.notifiers.message import Message

# Sentry's levels; an alert that is critical is as bad as it gets.
LEVELS: dict[str, LogLevelStr] = {"critical": "fatal", "warning": "warning", "info": "info"}
# How long close() may wait for anything still queued in the client (ours sends inline).
FLUSH_TIMEOUT_SECONDS = 2.0


class _InlineTransport(Transport):
    """Posts each envelope at once and keeps the outcome for the notifier to check."""

    def __init__(self, notifier: SentryNotifier, dsn: str) -> None:
        super().__init__({"dsn": dsn})
        self.notifier = notifier
        self.response: httpx.Response | None = None
        self.error: DeliveryError | None = None

    def capture_envelope(self, envelope: Envelope) -> None:
        if self.parsed_dsn is None:
            return
        auth = self.parsed_dsn.to_auth(f"tollgate-alerts/sentry.python/{VERSION}")
        try:
            self.response = self.notifier.post(
                auth.get_api_url(EndpointType.ENVELOPE),
                content=envelope.serialize(),
                headers={
                    "Content-Type": "application/x-sentry-envelope",
                    "X-Sentry-Auth": auth.to_header(),
                    "User-Agent": f"tollgate-alerts/sentry.python/{VERSION}",
                },
            )
        except DeliveryError as exc:
            # Not raised into the SDK, which would log and swallow it.
            self.error = exc


def sentry_event(alert: Alert, message: Message) -> Event:
    return {
        "message": message.subject,
        "level": "info" if message.resolved else LEVELS.get(alert.severity, "warning"),
        "logger": "tollgate.alerts",
    }


def sentry_scope(alert: Alert, message: Message) -> sentry_sdk.Scope:
    scope = sentry_sdk.Scope()
    scope.set_tag("org", alert.org.slug if alert.org is not None else "")
    scope.set_tag("feature", alert.feature)
    scope.set_tag("rule", alert.rule.name if alert.rule is not None else "")
    scope.set_tag("severity", alert.severity)
    scope.set_tag("alert", alert.kind)
    for key, value in (alert.figures or {}).items():
        scope.set_extra(str(key), value)
    scope.set_extra("admin_url", message.admin_url)
    scope.set_extra("observed_at", message.observed_at)
    # One Sentry issue per rule and scope (and its resolved notices apart), however the
    # figures in the title change from one alert to the next.
    scope.fingerprint = ["tollgate-alert", str(alert.rule_id), alert.scope, alert.kind]
    return scope


class SentryNotifier(HttpNotifier):
    kind = "sentry"
    target = "Sentry DSN"

    def dsn(self) -> str:
        # The channel's own project (in its config, or as its encrypted secret), else the
        # gateway's SENTRY_DSN.
        dsn = str(
            self.channel.config.get("dsn")
            or self.secret()
            or getattr(settings, "SENTRY_DSN", "")
            or ""
        )
        if not dsn:
            raise PermanentError("no Sentry DSN: set one on the channel or SENTRY_DSN")
        return dsn

    def send(self, alert: Alert, message: Message) -> str:
        dsn = self.dsn()
        try:
            transport = _InlineTransport(self, dsn)
        except BadDsn:
            # The exception text would quote the DSN, whose key is a credential.
            raise PermanentError("the channel's Sentry DSN is not valid") from None
        # Creating a client names the SDK from its integrations in a module-level dict
        # the process-wide client also reports; put the name back afterwards.
        sdk_name = SDK_INFO["name"]
        try:
            client = sentry_sdk.Client(
                dsn=dsn,
                transport=transport,
                default_integrations=False,
                auto_enabling_integrations=False,
                integrations=[],
                send_client_reports=False,
                enable_backpressure_handling=False,
            )
        finally:
            SDK_INFO["name"] = sdk_name
        try:
            event_id = client.capture_event(
                sentry_event(alert, message), scope=sentry_scope(alert, message)
            )
        finally:
            client.close(timeout=FLUSH_TIMEOUT_SECONDS)
        if transport.error is not None:
            raise transport.error
        if event_id is None or transport.response is None:
            raise TransientError("sentry-sdk did not send the event (dropped before sending)")
        return f"event {event_id}: {self.receipt(transport.response)}"
