"""From a channel's kind to the notifier class that sends to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from alerts.notifiers.base import Notifier, PermanentError
from alerts.notifiers.discord import DiscordNotifier
from alerts.notifiers.email import EmailNotifier
from alerts.notifiers.pagerduty import PagerDutyNotifier
from alerts.notifiers.sentry import SentryNotifier
from alerts.notifiers.slack import SlackNotifier
from alerts.notifiers.webhook import WebhookNotifier

if TYPE_CHECKING:
    from alerts.models import AlertChannel

NOTIFIERS: dict[str, type[Notifier]] = {
    cls.kind: cls
    for cls in (
        EmailNotifier,
        SlackNotifier,
        DiscordNotifier,
        WebhookNotifier,
        SentryNotifier,
        PagerDutyNotifier,
    )
}


def notifier_for(channel: AlertChannel) -> Notifier:
    try:
        cls = NOTIFIERS[channel.kind]
    except KeyError:
        raise PermanentError(f"no notifier for channel kind {channel.kind!r}") from None
    return cls(channel)
