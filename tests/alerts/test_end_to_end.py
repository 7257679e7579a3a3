"""A limit crossed through the proxy becomes an email at a real SMTP server, sent by a real
Celery worker (with beat) reading the engine's events."""

from __future__ import annotations

import email
import email.header
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from alerts.models import AlertChannel, AlertRule, SmtpSettings
from gateway.devstack.servers import free_port
from policies.models import Feature, Limit
from tests.gateway.test_proxy_limits import chat, fresh_key
from tests.proxy_fixtures import GATEWAY_PREFIX, Setup, _database_url

pytestmark = pytest.mark.django_db(transaction=True)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


def test_a_limit_crossed_through_the_proxy_arrives_as_email(
    proxy: Setup, smtp_server, start_worker, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    inbox, port = smtp_server
    smtp = SmtpSettings.load()
    smtp.host, smtp.port, smtp.tls_mode = "127.0.0.1", port, "none"
    smtp.from_address = "tollgate@example.test"
    smtp.save()
    proxy.org_a.alert_email_to = "finance@example.test"
    proxy.org_a.save()
    channel = AlertChannel.objects.create(
        name="ops mail", kind="email", config={"to": ["ops@example.test"]}
    )
    rule = AlertRule.objects.create(name="limits", kind="limit_threshold", severity="warning")
    rule.channels.add(channel)
    Limit.objects.create(
        scope="org_feature",
        org=proxy.org_a,
        feature=Feature.objects.get(name="chat"),
        metric="requests",
        window="minute",
        amount=3,
        thresholds=[100],
    )
    key = fresh_key(proxy, proxy.org_a)
    # The session's gateway has served other tests: alert on what happens from now on.
    from alerts.rules import GROUP
    from gateway.redis import get_redis
    from gateway.streams import ensure_group

    client = get_redis()
    stream = f"{GATEWAY_PREFIX}:events"
    ensure_group(client, stream, GROUP)
    client.xgroup_setid(stream, GROUP, "$")
    start_worker(
        "--beat",
        "--schedule",
        str(tmp_path / "beat-schedule"),
        DATABASE_URL=_database_url(),
        TOLLGATE_REDIS_PREFIX=GATEWAY_PREFIX,
    )
    statuses = [chat(proxy, key).status_code for _ in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]
    deadline = time.monotonic() + 30
    while not inbox.messages and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(inbox.messages) == 1
    message = inbox.messages[0]
    subject = str(email.header.make_header(email.header.decode_header(message["Subject"])))
    assert subject == ("[Tollgate Alert] Rate limit 100% — org: acme, feature: chat")
    recipients = {a.strip() for a in message["To"].split(",")}
    assert recipients == {"ops@example.test", "finance@example.test"}
    time.sleep(2)
    assert len(inbox.messages) == 1  # the three denials after it did not send more
