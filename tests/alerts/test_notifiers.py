"""Notifiers against real local servers: aiosmtpd with AUTH and STARTTLS, HTTP receivers
standing in for Slack, Discord, webhooks and PagerDuty, and a Sentry ingest endpoint."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sentry_sdk.client import SDK_INFO

from alerts.models import Alert, AlertChannel, AlertRule, SmtpSettings
from alerts.notifiers import base
from alerts.notifiers.base import PermanentError, TransientError
from alerts.notifiers.email import send_test_email
from alerts.notifiers.message import alert_title, message_for
from alerts.notifiers.pagerduty import dedup_key
from alerts.notifiers.registry import NOTIFIERS, notifier_for
from gateway.devstack.servers import free_port

pytestmark = pytest.mark.django_db

SMTP_USER = "tollgate"
SMTP_PASSWORD = "correct horse battery staple"
OBSERVED = dt.datetime(2026, 1, 5, 12, 30, 0, tzinfo=dt.UTC)


# --- a CA and a server certificate for 127.0.0.1 -----------------------------------------


@dataclass(frozen=True)
class Tls:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Tollgate test CA"))
        .issuer_name(_name("Tollgate test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    files = Tls(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@pytest.fixture(autouse=True)
def trust_the_test_ca(settings: Any, tls: Tls) -> None:
    settings.TOLLGATE_SMTP_CA_FILE = str(tls.ca_file)


# --- an SMTP server with AUTH and STARTTLS -----------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class Inbox:
    """The aiosmtpd handler: keeps every message; refuses recipients at nobody@."""

    messages: list[Received] = field(default_factory=list)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), parsed))  # type: ignore[arg-type]
        return "250 2.0.0 Message accepted for delivery"


def _authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login.decode() == SMTP_USER and auth_data.password.decode() == SMTP_PASSWORD
    )
    # handled=False: aiosmtpd then answers a failure with 535 itself.
    return AuthResult(success=ok, handled=False)


@dataclass
class SmtpServer:
    port: int
    inbox: Inbox


def _smtp_server(tls: Tls, *, implicit_tls: bool) -> Iterator[SmtpServer]:
    inbox = Inbox()
    port = free_port()
    if implicit_tls:
        # Already encrypted from the first byte: AUTH needs no STARTTLS first.
        controller = Controller(
            inbox,
            hostname="127.0.0.1",
            port=port,
            ssl_context=tls.server_context(),
            authenticator=_authenticator,
            auth_required=True,
            auth_require_tls=False,
        )
    else:
        controller = Controller(
            inbox,
            hostname="127.0.0.1",
            port=port,
            tls_context=tls.server_context(),
            require_starttls=True,
            authenticator=_authenticator,
            auth_required=True,
        )
    controller.start()
    try:
        yield SmtpServer(port, inbox)
    finally:
        controller.stop()


@pytest.fixture
def smtp_server(tls: Tls) -> Iterator[SmtpServer]:
    yield from _smtp_server(tls, implicit_tls=False)


@pytest.fixture
def smtps_server(tls: Tls) -> Iterator[SmtpServer]:
    yield from _smtp_server(tls, implicit_tls=True)


def configure_smtp(
    port: int, *, password: str = SMTP_PASSWORD, tls_mode: str = "starttls", save: bool = True
) -> SmtpSettings:
    smtp = SmtpSettings.load() if save else SmtpSettings()
    smtp.host = "127.0.0.1"
    smtp.port = port
    smtp.username = SMTP_USER
    smtp.password = password
    smtp.from_address = "alerts@tollgate.test"
    smtp.tls_mode = tls_mode
    smtp.timeout_seconds = 5
    if save:
        smtp.save()
    return smtp


# --- HTTP receivers ----------------------------------------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        # (status, headers, body) answers, one per request; then the default.
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self.default: tuple[int, dict[str, str], bytes] = (200, {}, b"ok")
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                receiver.requests.append(Request(self.path, dict(self.headers.items()), body))
                status, headers, answer = (
                    receiver.answers.pop(0) if receiver.answers else receiver.default
                )
                time.sleep(receiver.delay)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(
        self, status: int, body: bytes | dict[str, Any] = b"", headers: dict[str, str] | None = None
    ) -> None:
        headers = dict(headers or {})
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        self.answers.append((status, headers, body))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


# --- alerts and channels -----------------------------------------------------------------


@pytest.fixture
def rule(db: None) -> AlertRule:
    return AlertRule.objects.create(
        name="Limits near the edge", kind="limit_threshold", severity="critical"
    )


FIGURES = {
    "threshold": 100,
    "used": 60,
    "amount": 60,
    "limit": "60 requests per minute",
    "limit_id": 7,
    "scope": "org_feature",
    "metric": "requests",
    "window": "1 minute",
}


@pytest.fixture
def alert(org_a, chat, rule) -> Alert:  # type: ignore[no-untyped-def]
    return Alert.objects.create(
        rule=rule,
        scope="limit:7:org:1:t100",
        kind="firing",
        severity="critical",
        title=alert_title("limit_threshold", FIGURES, org_a.slug, chat.name),
        figures=FIGURES,
        org=org_a,
        feature=chat.name,
        observed_at=OBSERVED,
    )


def resolved(alert: Alert) -> Alert:
    return Alert.objects.create(
        rule=alert.rule,
        scope=alert.scope,
        kind="resolved",
        severity=alert.severity,
        title=alert.title,
        figures=alert.figures,
        org=alert.org,
        feature=alert.feature,
        observed_at=OBSERVED + dt.timedelta(minutes=3),
    )


def channel(
    kind: str, *, secret: str = "", signing_key: str = "", config: dict[str, Any] | None = None
) -> AlertChannel:
    made = AlertChannel(name=f"{kind} channel", kind=kind, config=config or {})
    made.secret = secret
    made.signing_key = signing_key
    made.save()
    return made


def send(made: AlertChannel, alert: Alert) -> str:
    return notifier_for(made).send(alert, message_for(alert))


# --- titles and messages -----------------------------------------------------------------


def test_titles_name_the_limit_or_budget_and_where_it_was_crossed() -> None:
    assert alert_title("limit_threshold", FIGURES, "acme", "chat") == (
        "Rate limit 100% — org: acme, feature: chat"
    )
    budget = {**FIGURES, "threshold": 80, "metric": "cost"}
    assert alert_title("limit_threshold", budget, "acme", "") == "Budget 80% — org: acme"
    assert alert_title("budget_threshold", {"threshold": 80}, "acme", "") == (
        "Budget 80% — org: acme"
    )
    assert alert_title("cost_spike", {"factor": 3}, "", "chat") == "Cost spike — feature: chat"
    assert alert_title("redis_degraded", {"mode": "fail_open"}, "", "") == (
        "Redis down (failing open)"
    )


def test_the_message_has_the_subject_figures_window_time_and_admin_link(alert, settings) -> None:  # type: ignore[no-untyped-def]
    settings.TOLLGATE_PUBLIC_URL = "https://tollgate.example.test"
    message = message_for(alert)
    assert message.subject == "[Tollgate Alert] Rate limit 100% — org: acme, feature: chat"
    link = f"https://tollgate.example.test/admin/alerts/alert/{alert.pk}/change/"
    for body in (message.text, message.html):
        assert "60 requests per minute" in body
        assert "org_feature" in body
        assert "1 minute" in body
        assert "2026-01-05 12:30:00 UTC" in body
        assert link in body
        assert "Limits near the edge" in body
    assert "<th" in message.html and "<table" in message.html
    assert "&lt;" not in message.text  # the text body is not HTML-escaped


def test_a_resolved_alert_has_a_resolved_subject(alert) -> None:  # type: ignore[no-untyped-def]
    message = message_for(resolved(alert))
    assert message.subject == "[Tollgate Resolved] Rate limit 100% — org: acme, feature: chat"
    assert "cleared" in message.text


def test_every_channel_kind_has_a_notifier() -> None:
    assert set(NOTIFIERS) == set(AlertChannel.Kind.values)
    unknown = AlertChannel(name="x", kind="carrier-pigeon")
    with pytest.raises(PermanentError):
        notifier_for(unknown)


# --- email -------------------------------------------------------------------------------


def test_an_alert_email_arrives_over_starttls_with_text_html_and_every_recipient_once(  # type: ignore[no-untyped-def]
    smtp_server, alert, org_a, chat
) -> None:
    configure_smtp(smtp_server.port)
    org_a.alert_email_to = "finance@example.test, dev@example.test"
    org_a.save()
    chat.alert_email_to = "DEV@example.test,ml@example.test"
    chat.save()
    made = channel("email", config={"to": ["ops@example.test", "finance@example.test"]})

    receipt = send(made, alert)

    assert receipt == "250 2.0.0 Message accepted for delivery"
    [received] = smtp_server.inbox.messages
    assert received.mail_from == "alerts@tollgate.test"
    assert received.rcpt_tos == [
        "ops@example.test",
        "finance@example.test",
        "dev@example.test",
        "ml@example.test",
    ]
    # Django folds a non-ASCII subject onto the next line; the parser keeps the fold's space.
    assert received.message["Subject"].strip() == (
        "[Tollgate Alert] Rate limit 100% — org: acme, feature: chat"
    )
    text = received.message.get_body(("plain",))
    html = received.message.get_body(("html",))
    assert text is not None and html is not None
    assert "60 requests per minute" in text.get_content()
    assert "<table" in html.get_content()
    assert f"/admin/alerts/alert/{alert.pk}/change/" in html.get_content()


# aiosmtpd cannot tell that an implicit-TLS connection is encrypted, and warns.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_email_goes_over_implicit_tls_too(smtps_server, alert) -> None:  # type: ignore[no-untyped-def]
    configure_smtp(smtps_server.port, tls_mode="tls")
    send(channel("email", config={"to": ["ops@example.test"]}), alert)
    [received] = smtps_server.inbox.messages
    assert received.rcpt_tos == ["ops@example.test"]


def test_a_wrong_smtp_password_is_a_permanent_error(smtp_server, alert) -> None:  # type: ignore[no-untyped-def]
    configure_smtp(smtp_server.port, password="wrong")
    with pytest.raises(PermanentError, match="535"):
        send(channel("email", config={"to": ["ops@example.test"]}), alert)
    assert smtp_server.inbox.messages == []


def test_an_smtp_server_that_is_down_is_a_transient_error(alert) -> None:  # type: ignore[no-untyped-def]
    configure_smtp(free_port())
    with pytest.raises(TransientError, match="could not talk to the SMTP server"):
        send(channel("email", config={"to": ["ops@example.test"]}), alert)


def test_an_untrusted_server_certificate_is_a_permanent_error(smtp_server, alert, settings) -> None:  # type: ignore[no-untyped-def]
    settings.TOLLGATE_SMTP_CA_FILE = None
    configure_smtp(smtp_server.port)
    with pytest.raises(PermanentError, match="certificate is not trusted"):
        send(channel("email", config={"to": ["ops@example.test"]}), alert)


def test_refused_recipients_are_a_permanent_error(smtp_server, alert) -> None:  # type: ignore[no-untyped-def]
    configure_smtp(smtp_server.port)
    with pytest.raises(PermanentError, match="No such user"):
        send(channel("email", config={"to": ["nobody@example.test"]}), alert)


def test_an_email_channel_with_no_recipients_anywhere_is_a_permanent_error(
    smtp_server, alert
) -> None:  # type: ignore[no-untyped-def]
    configure_smtp(smtp_server.port)
    with pytest.raises(PermanentError, match="no recipients"):
        send(channel("email"), alert)


def test_unconfigured_smtp_is_a_permanent_error(alert) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermanentError, match="not configured"):
        send(channel("email", config={"to": ["ops@example.test"]}), alert)


def test_send_test_email_returns_the_servers_answer_without_saving(smtp_server) -> None:  # type: ignore[no-untyped-def]
    unsaved = configure_smtp(smtp_server.port, save=False)
    answer = send_test_email(settings=unsaved, to="admin@example.test")
    assert answer == "250 2.0.0 Message accepted for delivery"
    [received] = smtp_server.inbox.messages
    assert received.rcpt_tos == ["admin@example.test"]
    assert received.message["Subject"] == "[Tollgate] Test email"
    assert not SmtpSettings.objects.filter(host="127.0.0.1").exists()


def test_send_test_email_raises_the_servers_error(smtp_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermanentError, match="535"):
        send_test_email(
            settings=configure_smtp(smtp_server.port, password="nope", save=False),
            to="admin@example.test",
        )
    with pytest.raises(TransientError, match="could not talk"):
        send_test_email(settings=configure_smtp(free_port(), save=False), to="a@example.test")


# --- Slack, Discord, webhooks, PagerDuty -------------------------------------------------


def test_slack_gets_text_and_blocks_with_the_figures(receiver, alert) -> None:  # type: ignore[no-untyped-def]
    receipt = send(channel("slack", secret=receiver.url("/services/T0/B0/x")), alert)
    assert receipt == "200 ok"
    [request] = receiver.requests
    assert request.path == "/services/T0/B0/x"
    payload = request.json()
    assert payload["text"] == "[Tollgate Alert] Rate limit 100% — org: acme, feature: chat"
    header, summary, *sections, context = payload["blocks"]
    assert header["type"] == "header"
    assert "Rate limit 100%" in header["text"]["text"]
    assert "*Severity:* critical" in summary["text"]["text"]
    fields = [f["text"] for section in sections for f in section["fields"]]
    assert "*limit*\n60 requests per minute" in fields
    assert all(len(section["fields"]) <= 10 for section in sections)
    assert f"/admin/alerts/alert/{alert.pk}/change/" in context["elements"][0]["text"]


def test_discord_gets_an_embed_colored_by_severity_and_answers_204(receiver, alert) -> None:  # type: ignore[no-untyped-def]
    receiver.answer(204)
    receipt = send(channel("discord", secret=receiver.url("/api/webhooks/1/abc")), alert)
    assert receipt == "204"
    payload = receiver.requests[0].json()
    assert payload["content"].startswith("[Tollgate Alert] Rate limit 100%")
    [embed] = payload["embeds"]
    assert embed["title"] == "Rate limit 100% — org: acme, feature: chat"
    assert embed["color"] == 0xD1242F
    assert {"name": "limit", "value": "60 requests per minute", "inline": True} in embed["fields"]
    assert payload["allowed_mentions"] == {"parse": []}


def test_a_discord_429_is_transient_and_keeps_retry_after(receiver, alert) -> None:  # type: ignore[no-untyped-def]
    receiver.answer(
        429, {"message": "You are being rate limited.", "retry_after": 1.5, "global": False}
    )
    with pytest.raises(TransientError) as caught:
        send(channel("discord", secret=receiver.url()), alert)
    assert caught.value.retry_after == 1.5


def test_a_webhook_is_signed_and_the_signature_verifies(receiver, alert) -> None:  # type: ignore[no-untyped-def]
    key = "whsec-test-key"
    send(channel("webhook", secret=receiver.url(), signing_key=key), alert)
    [request] = receiver.requests
    expected = "sha256=" + hmac.new(key.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Tollgate-Signature"], expected)
    payload = request.json()
    assert request.headers["X-Tollgate-Timestamp"] == str(payload["timestamp"])
    assert abs(time.time() - payload["timestamp"]) < 60
    assert payload["event"] == "alert.firing"
    assert payload["alert"] == {
        "id": alert.pk,
        "title": alert.title,
        "subject": message_for(alert).subject,
        "severity": "critical",
        "rule": "Limits near the edge",
        "rule_id": alert.rule_id,
        "scope": alert.scope,
        "org": "acme",
        "feature": "chat",
        "figures": FIGURES,
        "window": "1 minute",
        "observed_at": "2026-01-05T12:30:00+00:00",
        "url": message_for(alert).admin_url,
    }
    # Any change to the body breaks the signature.
    tampered = request.body.replace(b'"critical"', b'"info"')
    forged = "sha256=" + hmac.new(key.encode(), tampered, hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(forged, request.headers["X-Tollgate-Signature"])


def test_a_resolved_alert_is_a_resolved_webhook_event(receiver, alert) -> None:  # type: ignore[no-untyped-def]
    send(channel("webhook", secret=receiver.url(), signing_key="k"), resolved(alert))
    assert receiver.requests[0].json()["event"] == "alert.resolved"


def test_a_webhook_channel_without_a_signing_key_is_a_permanent_error(receiver, alert) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermanentError, match="signing key"):
        send(channel("webhook", secret=receiver.url()), alert)
    assert receiver.requests == []


def test_pagerduty_triggers_and_resolves_the_same_incident(receiver, alert) -> None:  # type: ignore[no-untyped-def]
    made = channel("pagerduty", secret="R0UTINGKEY", config={"url": receiver.url("/v2/enqueue")})
    receiver.answer(
        202, {"status": "success", "message": "Event processed", "dedup_key": dedup_key(alert)}
    )
    receipt = send(made, alert)
    assert receipt == f"202 Event processed tollgate-{alert.rule_id}-{alert.scope}"
    send(made, resolved(alert))
    trigger, resolve = (r.json() for r in receiver.requests)
    assert receiver.requests[0].path == "/v2/enqueue"
    assert trigger["routing_key"] == "R0UTINGKEY"
    assert trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == f"tollgate-{alert.rule_id}-limit:7:org:1:t100"
    assert trigger["payload"] == {
        "summary": "Rate limit 100% — org: acme, feature: chat",
        "severity": "critical",
        "source": "tollgate",
        "custom_details": FIGURES,
        "timestamp": "2026-01-05T12:30:00+00:00",
        "class": "limit_threshold",
        "group": "acme",
        "component": "chat",
    }
    assert resolve == {
        "routing_key": "R0UTINGKEY",
        "event_action": "resolve",
        "dedup_key": trigger["dedup_key"],
    }


def test_a_pagerduty_400_is_a_permanent_error_with_its_reason(receiver, alert) -> None:  # type: ignore[no-untyped-def]
    receiver.answer(
        400,
        {
            "status": "invalid event",
            "message": "Event object is invalid",
            "errors": ["Length of 'routing_key' is incorrect (should be 32)"],
        },
    )
    made = channel("pagerduty", secret="short", config={"url": receiver.url()})
    with pytest.raises(PermanentError, match="routing_key"):
        send(made, alert)


def _http_channel(kind: str, receiver: Receiver) -> AlertChannel:
    if kind == "pagerduty":
        return channel(kind, secret="R0UTINGKEY", config={"url": receiver.url()})
    return channel(kind, secret=receiver.url("/secret-token-in-url"), signing_key="k")


@pytest.mark.parametrize("kind", ["slack", "discord", "webhook", "pagerduty"])
@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, TransientError),
        (503, TransientError),
        (429, TransientError),
        (404, PermanentError),
        (410, PermanentError),
        (401, PermanentError),
        (403, PermanentError),
    ],
)
def test_http_status_decides_between_retrying_and_giving_up(  # type: ignore[no-untyped-def]
    receiver, alert, kind, status, error
) -> None:
    receiver.answer(status, b"nope", {"Retry-After": "7"} if status == 429 else None)
    with pytest.raises(error) as caught:
        send(_http_channel(kind, receiver), alert)
    assert caught.value.permanent is (error is PermanentError)
    assert "secret-token-in-url" not in str(caught.value)
    if status == 404:
        assert "not found (404)" in str(caught.value)


def test_an_http_receiver_that_is_down_is_a_transient_error(alert) -> None:  # type: ignore[no-untyped-def]
    url = f"http://127.0.0.1:{free_port()}/hook"
    with pytest.raises(TransientError, match="could not reach"):
        send(channel("slack", secret=url), alert)


def test_an_http_receiver_that_does_not_answer_in_time_is_a_transient_error(  # type: ignore[no-untyped-def]
    receiver, alert, monkeypatch
) -> None:
    monkeypatch.setattr(base, "READ_TIMEOUT_SECONDS", 0.2)
    receiver.delay = 1.0
    with pytest.raises(TransientError, match="did not answer in time"):
        send(channel("webhook", secret=receiver.url(), signing_key="k"), alert)


def test_a_secret_that_cannot_be_decrypted_is_a_permanent_error(alert) -> None:  # type: ignore[no-untyped-def]
    made = channel("slack", secret="http://127.0.0.1/hook")
    made.secret_ciphertext = "gAAAAA-encrypted-with-a-key-that-is-gone"
    with pytest.raises(PermanentError, match="cannot be read"):
        send(made, alert)


def test_a_url_that_is_not_http_is_a_permanent_error(alert) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermanentError, match="not an http"):
        send(channel("slack", secret="ftp://example.test/hook"), alert)


# --- Sentry ------------------------------------------------------------------------------


def _envelope_event(body: bytes) -> dict[str, Any]:
    lines = body.split(b"\n")
    for header_line, payload_line in zip(lines[1::2], lines[2::2], strict=False):
        if json.loads(header_line).get("type") == "event":
            return json.loads(payload_line)
    raise AssertionError("no event in the envelope")


def test_sentry_gets_an_envelope_with_the_title_tags_and_figures(receiver, alert) -> None:  # type: ignore[no-untyped-def]
    receiver.answer(200, {"id": "abc"})
    process_dsn = sentry_sdk.get_client().options.get("dsn")
    sdk_name = SDK_INFO["name"]
    made = channel("sentry", config={"dsn": f"http://public@127.0.0.1:{receiver.port}/1"})

    receipt = send(made, alert)

    [request] = receiver.requests
    assert request.path == "/api/1/envelope/"
    assert "sentry_key=public" in request.headers["X-Sentry-Auth"]
    event = _envelope_event(request.body)
    assert event["message"] == "[Tollgate Alert] Rate limit 100% — org: acme, feature: chat"
    assert event["level"] == "fatal"
    assert event["tags"] == {
        "org": "acme",
        "feature": "chat",
        "rule": "Limits near the edge",
        "severity": "critical",
        "alert": "firing",
    }
    assert event["extra"]["limit"] == "60 requests per minute"
    assert event["extra"]["threshold"] == 100
    assert receipt == f'event {event["event_id"]}: 200 {{"id": "abc"}}'
    # The process-wide SDK is untouched.
    assert sentry_sdk.get_client().options.get("dsn") == process_dsn
    assert SDK_INFO["name"] == sdk_name


def test_a_sentry_ingest_error_is_transient_and_a_missing_dsn_permanent(  # type: ignore[no-untyped-def]
    receiver, alert, settings
) -> None:
    receiver.answer(503, b"overloaded")
    made = channel("sentry", config={"dsn": f"http://public@127.0.0.1:{receiver.port}/1"})
    with pytest.raises(TransientError, match="503"):
        send(made, alert)
    settings.SENTRY_DSN = None
    with pytest.raises(PermanentError, match="no Sentry DSN"):
        send(channel("sentry"), alert)
    with pytest.raises(PermanentError, match="not valid"):
        send(channel("sentry", config={"dsn": "http://127.0.0.1/"}), alert)
