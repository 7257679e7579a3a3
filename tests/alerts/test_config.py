"""Alert configuration through the API and the admin: channels, rules, SMTP settings and the
alert history. Bad input gives field errors, secrets are write-only and encrypted, tenancy
holds with an outsider, the SMTP test talks to a real aiosmtpd server, and every change
writes exactly one audit row with its secrets redacted.

The cast (tests/conftest.py): ``staff`` is global staff, ``alice`` administers org A
(acme), ``bob`` is a read-only member of org A, ``charlie`` administers org B (globex).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from alerts import validation
from alerts.admin import AlertChannelForm, AlertRuleForm, SmtpSettingsForm
from alerts.models import Alert, AlertChannel, AlertRule, Delivery, SmtpSettings
from audit.models import AuditEvent
from gateway import crypto
from gateway.devstack.servers import free_port
from policies.models import Organization

pytestmark = pytest.mark.django_db

HOOK_URL = "https://hooks.example.test/services/T000/B000/very-secret-token"
SIGNING_KEY = "hmac-signing-key-do-not-show"
ROUTING_KEY = "pd-routing-key-0123456789abcdef"
SMTP_PASSWORD = "smtp-password-never-shown"

CHANNELS = "/api/alert-channels/"
RULES = "/api/alert-rules/"
ALERTS = "/api/alerts/"
SMTP = "/api/settings/smtp/"
SMTP_TEST = "/api/settings/smtp/test/"


# --- helpers ---------------------------------------------------------------------------------


def logged_in(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


def audit_mark() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def audit_since(mark: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(id__gt=mark).order_by("id"))


def one_audit_row(mark: int, action: str) -> AuditEvent:
    rows = audit_since(mark)
    assert [row.action for row in rows] == [action], [(r.action, r.changes) for r in rows]
    return rows[0]


def column(table: str, name: str, pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {name} FROM {table} WHERE id = %s", [pk])  # noqa: S608
        (value,) = cursor.fetchone()
    return value


def results(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content
    body = response.json()
    return body["results"] if isinstance(body, dict) and "results" in body else body


def make_channel(org: Organization | None = None, **fields: Any) -> AlertChannel:
    secret = fields.pop("secret", HOOK_URL)
    values = {"name": "ops-slack", "kind": "slack", **fields}
    channel = AlertChannel(org=org, **values)
    channel.secret = secret
    channel.save()
    return channel


def make_email_channel(org: Organization | None = None, **fields: Any) -> AlertChannel:
    values = {"name": "ops-email", "kind": "email", "config": {"to": ["ops@example.test"]}}
    values.update(fields)
    return AlertChannel.objects.create(org=org, **values)


def configure_smtp(port: int, **fields: Any) -> SmtpSettings:
    smtp = SmtpSettings.load()
    smtp.host = "127.0.0.1"
    smtp.port = port
    smtp.from_address = "tollgate@example.test"
    smtp.tls_mode = SmtpSettings.TlsMode.NONE
    smtp.timeout_seconds = 5
    for name, value in fields.items():
        setattr(smtp, name, value)
    smtp.save()
    return smtp


class Sink:
    """An aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.received = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        self.received.set()
        return "250 2.0.0 Ok: queued as TEST1234"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Sink]]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, sink
    finally:
        controller.stop()


def email_body(envelope: Any) -> str:
    return envelope.content.decode(errors="replace")


# --- validation functions ----------------------------------------------------------------------


def test_email_lists_are_normalized_and_checked() -> None:
    assert validation.clean_email_list_text(" a@x.test, b@y.test;A@x.test ") == (
        "a@x.test, b@y.test"
    )
    assert validation.clean_email_list(["a@x.test", "c@z.test"]) == ["a@x.test", "c@z.test"]
    assert validation.clean_email_list("") == []
    with pytest.raises(ValidationError, match="not-an-email"):
        validation.clean_email_list("a@x.test, not-an-email")
    with pytest.raises(ValidationError):
        validation.clean_email_list([1, 2])


@pytest.mark.parametrize(
    ("kind", "params", "expected"),
    [
        ("limit_threshold", {}, {"thresholds": [80, 100]}),
        ("budget_threshold", {"thresholds": [100, 50, 50]}, {"thresholds": [50, 100]}),
        ("cost_spike", {}, {"factor": 3}),
        ("cost_spike", {"amount_usd": "12.5"}, {"amount_usd": 12.5}),
        ("cost_spike", {"factor": 2.5, "amount_usd": 10}, {"factor": 2.5, "amount_usd": 10}),
        ("daily_spend", {"amount_usd": 100}, {"amount_usd": 100}),
        ("error_rate", {}, {"percent": 20, "window_minutes": 15, "min_requests": 20}),
        (
            "error_rate",
            {"percent": 5.5},
            {"percent": 5.5, "window_minutes": 15, "min_requests": 20},
        ),
        ("latency_p95", {}, {"p95_ms": 10000, "window_minutes": 15}),
        ("redis_degraded", {}, {}),
        ("dependency_down", None, {}),
    ],
)
def test_rule_params_get_their_defaults(kind: str, params: Any, expected: dict[str, Any]) -> None:
    assert validation.clean_rule_params(kind, params) == expected


BAD_PARAMS = [
    ("limit_threshold", {"thresholds": []}, "thresholds"),
    ("limit_threshold", {"thresholds": [0]}, "thresholds"),
    ("limit_threshold", {"thresholds": [1001]}, "thresholds"),
    ("budget_threshold", {"thresholds": ["80"]}, "thresholds"),
    ("budget_threshold", {"thresholds": 80}, "thresholds"),
    ("cost_spike", {"factor": 1}, "factor"),
    ("cost_spike", {"amount_usd": 0}, "amount_usd"),
    ("cost_spike", {"factor": "lots"}, "factor"),
    ("daily_spend", {}, "amount_usd"),
    ("daily_spend", {"amount_usd": -5}, "amount_usd"),
    ("error_rate", {"percent": 101}, "percent"),
    ("error_rate", {"percent": -1}, "percent"),
    ("error_rate", {"window_minutes": 0}, "window_minutes"),
    ("error_rate", {"min_requests": 0}, "min_requests"),
    ("latency_p95", {"p95_ms": 0}, "p95_ms"),
    ("latency_p95", {"window_minutes": 0}, "window_minutes"),
    ("latency_p95", {"p95": 100}, "Unknown parameter"),
    ("redis_degraded", {"percent": 5}, "Unknown parameter"),
    ("error_rate", [1, 2], "JSON object"),
]


@pytest.mark.parametrize(("kind", "params", "message"), BAD_PARAMS)
def test_bad_rule_params_are_refused(kind: str, params: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validation.clean_rule_params(kind, params)


def test_scalar_checks() -> None:
    assert validation.clean_port(1) == 1
    assert validation.clean_port(65535) == 65535
    for bad in (0, 65536, -1, "x"):
        with pytest.raises(ValidationError):
            validation.clean_port(bad)
    assert validation.clean_cooldown(1) == 1
    with pytest.raises(ValidationError, match="at least 1"):
        validation.clean_cooldown(0)
    assert validation.clean_severities(["critical", "info"]) == ["info", "critical"]
    for bad in ([], ["urgent"], "nope"):
        with pytest.raises(ValidationError):
            validation.clean_severities(bad)
    assert validation.clean_http_url("http://127.0.0.1:8080/hook") == "http://127.0.0.1:8080/hook"
    for bad in ("ftp://x.test/hook", "hooks.example.test/x", "https://", "http://x:99999/"):
        with pytest.raises(ValidationError):
            validation.clean_http_url(bad)


# --- API: channels -----------------------------------------------------------------------------


def test_a_channel_secret_is_write_only_and_stored_encrypted(api_staff) -> None:  # type: ignore[no-untyped-def]
    mark = audit_mark()
    response = api_staff.post(
        CHANNELS,
        {
            "name": "signed-hook",
            "kind": "webhook",
            "secret": HOOK_URL,
            "signing_key": SIGNING_KEY,
            "severities": ["critical", "warning"],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["has_secret"] is True and body["has_signing_key"] is True
    assert "secret" not in body and "signing_key" not in body
    assert body["severities"] == ["warning", "critical"]
    assert body["status"] == "ok" and body["org"] is None

    channel = AlertChannel.objects.get(pk=body["id"])
    stored = column("alerts_alertchannel", "secret_ciphertext", channel.pk)
    assert HOOK_URL not in stored and crypto.decrypt(stored) == HOOK_URL
    assert SIGNING_KEY not in column("alerts_alertchannel", "signing_key_ciphertext", channel.pk)
    assert channel.signing_key == SIGNING_KEY

    row = one_audit_row(mark, "alert_channel.created")
    dumped = json.dumps(row.changes)
    assert row.changes["after"]["secret_ciphertext"].startswith("[redacted]")
    assert row.changes["after"]["signing_key_ciphertext"].startswith("[redacted]")
    assert HOOK_URL not in dumped and SIGNING_KEY not in dumped and stored not in dumped

    for url in (CHANNELS, f"{CHANNELS}{channel.pk}/"):
        text = api_staff.get(url).content.decode()
        assert HOOK_URL not in text and SIGNING_KEY not in text and stored not in text


def test_a_channel_update_without_a_secret_keeps_it(api_staff) -> None:  # type: ignore[no-untyped-def]
    channel = make_channel()
    mark = audit_mark()
    response = api_staff.patch(
        f"{CHANNELS}{channel.pk}/", {"name": "renamed", "is_active": False}, format="json"
    )
    assert response.status_code == 200, response.content
    channel.refresh_from_db()
    assert channel.name == "renamed" and channel.secret == HOOK_URL
    row = one_audit_row(mark, "alert_channel.updated")
    assert row.changes["after"] == {"name": "renamed", "is_active": False}

    mark = audit_mark()
    new_url = "https://hooks.example.test/rotated"
    response = api_staff.patch(f"{CHANNELS}{channel.pk}/", {"secret": new_url}, format="json")
    assert response.status_code == 200, response.content
    channel.refresh_from_db()
    assert channel.secret == new_url
    assert new_url not in json.dumps([r.changes for r in audit_since(mark)])


def test_a_channels_kind_change_needs_a_new_secret(api_staff) -> None:  # type: ignore[no-untyped-def]
    channel = make_channel()
    response = api_staff.patch(f"{CHANNELS}{channel.pk}/", {"kind": "pagerduty"}, format="json")
    assert response.status_code == 400
    assert "routing key" in response.json()["secret"][0]
    response = api_staff.patch(
        f"{CHANNELS}{channel.pk}/", {"kind": "pagerduty", "secret": ROUTING_KEY}, format="json"
    )
    assert response.status_code == 200, response.content


BAD_CHANNELS = [
    ({"kind": "email", "config": {"to": ["ops@example.test", "not-an-email"]}}, "config"),
    ({"kind": "email", "config": {"to": "a@b.test, nope@"}}, "config"),
    ({"kind": "email", "config": ["to"]}, "config"),
    ({"kind": "slack", "secret": "ftp://hooks.example.test/x"}, "secret"),
    ({"kind": "discord", "secret": "discord.example.test/webhook"}, "secret"),
    ({"kind": "webhook", "secret": "javascript:alert(1)"}, "secret"),
    ({"kind": "webhook"}, "secret"),
    ({"kind": "slack", "secret": ""}, "secret"),
    ({"kind": "pagerduty"}, "secret"),
    ({"kind": "pagerduty", "secret": "   "}, "secret"),
    ({"kind": "email", "severities": []}, "severities"),
    ({"kind": "email", "severities": ["urgent"]}, "severities"),
    ({"kind": "carrier-pigeon"}, "kind"),
]


@pytest.mark.parametrize(("fields", "field"), BAD_CHANNELS)
def test_bad_channel_input_is_a_field_error(api_staff, fields: dict[str, Any], field: str) -> None:  # type: ignore[no-untyped-def]
    mark = audit_mark()
    response = api_staff.post(CHANNELS, {"name": "bad", **fields}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not AlertChannel.objects.exists()
    assert audit_since(mark) == []


def test_an_email_channels_recipients_are_normalized(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post(
        CHANNELS,
        {"name": "mail", "kind": "email", "config": {"to": "a@x.test; b@y.test"}},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["config"] == {"to": ["a@x.test", "b@y.test"]}
    assert response.json()["has_secret"] is False


def test_channel_tenancy(api_alice, api_bob, api_charlie, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    shared = make_channel(name="shared-slack")
    own = make_channel(org_a, name="acme-slack")
    make_channel(org_b, name="globex-slack")

    assert {row["name"] for row in results(api_alice.get(CHANNELS))} == {
        "shared-slack",
        "acme-slack",
    }
    assert {row["name"] for row in results(api_charlie.get(CHANNELS))} == {
        "shared-slack",
        "globex-slack",
    }
    # The outsider never finds org A's channel.
    assert api_charlie.get(f"{CHANNELS}{own.pk}/").status_code == 404
    assert (
        api_charlie.patch(f"{CHANNELS}{own.pk}/", {"name": "x"}, format="json").status_code == 404
    )
    assert api_charlie.delete(f"{CHANNELS}{own.pk}/").status_code == 404
    # Shared channels: readable, not changeable by org users.
    assert api_alice.get(f"{CHANNELS}{shared.pk}/").status_code == 200
    response = api_alice.patch(f"{CHANNELS}{shared.pk}/", {"name": "mine"}, format="json")
    assert response.status_code == 403
    assert api_alice.delete(f"{CHANNELS}{shared.pk}/").status_code == 403
    # Members read only.
    response = api_bob.post(
        CHANNELS, {"name": "b", "kind": "slack", "secret": HOOK_URL}, format="json"
    )
    assert response.status_code == 403
    assert api_bob.patch(f"{CHANNELS}{own.pk}/", {"name": "x"}, format="json").status_code == 403
    # An org admin's new channel is always their org's.
    response = api_alice.post(
        CHANNELS,
        {"name": "alice-hook", "kind": "slack", "secret": HOOK_URL, "org": "globex"},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["org"] == "acme"
    assert AlertChannel.objects.get(name="alice-hook").org == org_a
    shared.refresh_from_db()
    assert shared.name == "shared-slack"


def test_status_and_last_error_are_read_only(api_staff) -> None:  # type: ignore[no-untyped-def]
    channel = make_channel(status="failing", last_error="404 Not Found")
    response = api_staff.patch(
        f"{CHANNELS}{channel.pk}/", {"status": "ok", "last_error": ""}, format="json"
    )
    assert response.status_code == 200
    channel.refresh_from_db()
    assert channel.status == "failing" and channel.last_error == "404 Not Found"
    assert response.json()["status"] == "failing"


# --- API: rules --------------------------------------------------------------------------------


def rule_body(channels: list[int], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "limit crossed",
        "kind": "limit_threshold",
        "severity": "warning",
        "cooldown_seconds": 600,
        "channels": channels,
    }
    body.update(overrides)
    return body


def test_a_rule_is_created_with_its_channels_and_one_audit_row(api_staff, chat) -> None:  # type: ignore[no-untyped-def]
    slack, mail = make_channel(), make_email_channel()
    mark = audit_mark()
    response = api_staff.post(
        RULES,
        rule_body([slack.pk, mail.pk], feature="chat", kind="error_rate", params={"percent": 5}),
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert sorted(body["channels"]) == sorted([slack.pk, mail.pk])
    assert body["feature"] == "chat"
    assert body["params"] == {"percent": 5, "window_minutes": 15, "min_requests": 20}
    row = one_audit_row(mark, "alert_rule.created")
    assert sorted(row.changes["after"]["channels"]) == sorted([slack.pk, mail.pk])
    rule = AlertRule.objects.get(pk=body["id"])
    assert set(rule.channels.all()) == {slack, mail}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"cooldown_seconds": 0}, "cooldown_seconds"),
        ({"cooldown_seconds": -5}, "cooldown_seconds"),
        ({"channels": []}, "channels"),
        ({"channels": None}, "channels"),
        ({"severity": "urgent"}, "severity"),
        ({"kind": "daily_spend", "params": {}}, "params"),
        ({"kind": "limit_threshold", "params": {"thresholds": [0, 100]}}, "params"),
        ({"kind": "cost_spike", "params": {"factor": 0.5}}, "params"),
        ({"kind": "error_rate", "params": {"percent": 150}}, "params"),
        ({"kind": "latency_p95", "params": {"p95_ms": -1}}, "params"),
        ({"feature": "no-such-feature"}, "feature"),
    ],
)
def test_bad_rule_input_is_a_field_error(api_staff, overrides: dict[str, Any], field: str) -> None:  # type: ignore[no-untyped-def]
    channel = make_channel()
    body = {**rule_body([channel.pk]), **overrides}
    if body["channels"] is None:
        del body["channels"]
    mark = audit_mark()
    response = api_staff.post(RULES, body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not AlertRule.objects.exists()
    assert audit_since(mark) == []


def test_a_rule_cannot_use_another_orgs_channel(api_charlie, api_staff, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    acme_channel = make_channel(org_a, name="acme-slack")
    response = api_charlie.post(RULES, rule_body([acme_channel.pk]), format="json")
    assert response.status_code == 400
    assert "does not exist" in response.json()["channels"][0]

    # Global staff see every channel, but a rule of org B still cannot use org A's.
    response = api_staff.post(RULES, rule_body([acme_channel.pk], org="globex"), format="json")
    assert response.status_code == 400
    assert "acme-slack" in response.json()["channels"][0]
    # ... nor can a shared rule (every org) use one org's channel.
    response = api_staff.post(RULES, rule_body([acme_channel.pk]), format="json")
    assert response.status_code == 400
    assert not AlertRule.objects.exists()


def test_rule_tenancy(api_alice, api_charlie, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    shared_channel = make_channel(name="shared")
    acme_channel = make_channel(org_a, name="acme")
    response = api_alice.post(
        RULES, rule_body([shared_channel.pk, acme_channel.pk], org="globex"), format="json"
    )
    assert response.status_code == 201, response.content
    rule = AlertRule.objects.get(pk=response.json()["id"])
    assert rule.org == org_a
    assert api_charlie.get(f"{RULES}{rule.pk}/").status_code == 404
    assert results(api_charlie.get(RULES)) == []

    shared_rule = AlertRule.objects.create(name="everyone", kind="redis_degraded")
    shared_rule.channels.set([shared_channel])
    assert api_alice.get(f"{RULES}{shared_rule.pk}/").status_code == 200
    response = api_alice.patch(f"{RULES}{shared_rule.pk}/", {"name": "x"}, format="json")
    assert response.status_code == 403


def test_a_rule_update_revalidates_and_is_audited_once(api_staff) -> None:  # type: ignore[no-untyped-def]
    first, second = make_channel(name="first"), make_channel(name="second")
    rule = AlertRule.objects.create(name="r", kind="limit_threshold", params={"thresholds": [80]})
    rule.channels.set([first])
    url = f"{RULES}{rule.pk}/"
    assert api_staff.patch(url, {"channels": []}, format="json").status_code == 400
    assert api_staff.patch(url, {"cooldown_seconds": 0}, format="json").status_code == 400
    # A new kind revalidates the stored params.
    assert api_staff.patch(url, {"kind": "latency_p95"}, format="json").status_code == 400

    mark = audit_mark()
    response = api_staff.patch(
        url, {"channels": [first.pk, second.pk], "cooldown_seconds": 60}, format="json"
    )
    assert response.status_code == 200, response.content
    row = one_audit_row(mark, "alert_rule.updated")
    assert row.changes["after"]["cooldown_seconds"] == 60
    assert sorted(row.changes["after"]["channels"]) == sorted([first.pk, second.pk])


# --- API: alert history ----------------------------------------------------------------------


def make_alert(org: Organization | None, channel: AlertChannel, **fields: Any) -> Alert:
    values = {
        "scope": f"org:{org.pk if org else '-'}",
        "severity": "warning",
        "title": f"[Tollgate Alert] Cost spike — org: {org.slug if org else 'all'}",
        "figures": {"last_hour_usd": "12.50"},
        "observed_at": timezone.now(),
    }
    values.update(fields)
    alert = Alert.objects.create(org=org, **values)
    Delivery.objects.create(
        alert=alert,
        channel=channel,
        state="failed",
        attempts=3,
        last_error="HTTP 404 from receiver",
        duration_ms=12.5,
    )
    return alert


def test_alert_history_with_deliveries_is_read_only_and_scoped(  # type: ignore[no-untyped-def]
    api_staff, api_alice, api_charlie, org_a, org_b
) -> None:
    channel = make_channel()
    acme = make_alert(org_a, channel)
    globex = make_alert(org_b, channel)
    make_alert(None, channel, title="Redis degraded")

    rows = results(api_alice.get(ALERTS))
    assert [row["id"] for row in rows] == [acme.pk]
    delivery = rows[0]["deliveries"][0]
    assert delivery["state"] == "failed" and delivery["attempts"] == 3
    assert delivery["last_error"] == "HTTP 404 from receiver"
    assert delivery["duration_ms"] == 12.5 and delivery["sent_at"] is None
    assert delivery["channel"] == channel.pk
    assert rows[0]["org"] == "acme"

    assert api_charlie.get(f"{ALERTS}{acme.pk}/").status_code == 404
    assert api_charlie.get(f"{ALERTS}{globex.pk}/").status_code == 200
    assert len(results(api_staff.get(ALERTS))) == 3
    assert len(results(api_staff.get(f"{ALERTS}?severity=critical"))) == 0
    assert api_staff.post(ALERTS, {"title": "x"}, format="json").status_code == 405
    assert api_staff.delete(f"{ALERTS}{acme.pk}/").status_code == 405
    assert HOOK_URL not in api_staff.get(ALERTS).content.decode()


# --- API: SMTP settings ----------------------------------------------------------------------


def test_smtp_settings_password_is_write_only_and_kept(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.get(SMTP)
    assert response.status_code == 200
    assert response.json()["has_password"] is False and response.json()["configured"] is False
    assert not SmtpSettings.objects.exists()  # reading creates nothing

    body = {
        "host": "smtp.example.test",
        "port": 587,
        "username": "tollgate",
        "password": SMTP_PASSWORD,
        "from_address": "alerts@example.test",
        "tls_mode": "starttls",
        "timeout_seconds": 10,
    }
    mark = audit_mark()
    response = api_staff.put(SMTP, body, format="json")
    assert response.status_code == 200, response.content
    assert "password" not in response.json() and response.json()["has_password"] is True
    one_audit_row(mark, "smtp.created")

    stored = column("alerts_smtpsettings", "password_ciphertext", 1)
    assert SMTP_PASSWORD not in stored and crypto.decrypt(stored) == SMTP_PASSWORD

    # PUT without a password keeps it; exactly one audit row, the password redacted.
    mark = audit_mark()
    del body["password"]
    response = api_staff.put(SMTP, {**body, "host": "smtp2.example.test"}, format="json")
    assert response.status_code == 200, response.content
    assert SmtpSettings.load().password == SMTP_PASSWORD
    row = one_audit_row(mark, "smtp.updated")
    assert row.changes["after"] == {"host": "smtp2.example.test"}

    mark = audit_mark()
    response = api_staff.put(
        SMTP, {**body, "port": 465, "tls_mode": "tls", "password": "rotated-pw"}, format="json"
    )
    assert response.status_code == 200, response.content
    row = one_audit_row(mark, "smtp.updated")
    assert "rotated-pw" not in json.dumps(row.changes)
    assert SMTP_PASSWORD not in json.dumps(row.changes)
    assert SmtpSettings.load().password == "rotated-pw"

    text = api_staff.get(SMTP).content.decode()
    assert "rotated-pw" not in text and SmtpSettings.load().password_ciphertext not in text


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": "smtp"}, "port"),
        ({"from_address": "not-an-email"}, "from_address"),
        ({"tls_mode": "ssl3"}, "tls_mode"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"host": "smtp://mail.example.test"}, "host"),
    ],
)
def test_bad_smtp_settings_are_field_errors(api_staff, fields: dict[str, Any], field: str) -> None:  # type: ignore[no-untyped-def]
    mark = audit_mark()
    response = api_staff.put(SMTP, {"host": "smtp.example.test", **fields}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not SmtpSettings.objects.exists()
    assert audit_since(mark) == []


def test_smtp_settings_are_global_staff_only(api_alice, api_bob, api_charlie) -> None:  # type: ignore[no-untyped-def]
    configure_smtp(25, password=SMTP_PASSWORD)
    for client in (api_alice, api_bob, api_charlie):
        assert client.get(SMTP).status_code == 403
        assert client.put(SMTP, {"host": "evil.example.test"}, format="json").status_code == 403
        response = client.post(SMTP_TEST, {"to": "me@example.test"}, format="json")
        assert response.status_code == 403
    assert SmtpSettings.load().host == "127.0.0.1"


def test_the_smtp_test_reaches_a_real_server(api_staff, smtp_server) -> None:  # type: ignore[no-untyped-def]
    port, sink = smtp_server
    configure_smtp(port)
    mark = audit_mark()
    response = api_staff.post(SMTP_TEST, {"to": "oncall@example.test"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["ok"] is True
    assert "TEST1234" in body["answer"]
    assert sink.received.wait(5)
    (envelope,) = sink.envelopes
    assert envelope.rcpt_tos == ["oncall@example.test"]
    assert envelope.mail_from == "tollgate@example.test"
    assert "Test email" in email_body(envelope)
    assert audit_since(mark) == []  # a test changes nothing
    assert not Delivery.objects.exists()


def test_the_smtp_test_shows_an_unreachable_servers_error(api_staff) -> None:  # type: ignore[no-untyped-def]
    closed = free_port()
    configure_smtp(closed)
    response = api_staff.post(SMTP_TEST, {"to": "oncall@example.test"}, format="json")
    assert response.status_code == 502, response.content
    body = response.json()
    assert body["ok"] is False
    assert f"127.0.0.1:{closed}" in body["error"]
    assert not Delivery.objects.exists()


def test_the_smtp_test_needs_an_address_and_settings(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post(SMTP_TEST, {"to": "me@example.test"}, format="json")
    assert response.status_code == 400
    assert "not configured" in response.json()["error"]
    configure_smtp(25)
    for bad in ({"to": "not-an-email"}, {}):
        response = api_staff.post(SMTP_TEST, bad, format="json")
        assert response.status_code == 400
        assert "to" in response.json()


def test_the_openapi_schema_describes_the_alert_api(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200, response.content
    paths = response.json()["paths"]
    for path in (CHANNELS, RULES, ALERTS, SMTP, SMTP_TEST):
        assert f"{path}" in paths


# --- admin: SMTP settings --------------------------------------------------------------------

SMTP_CHANGE = "admin:alerts_smtpsettings_change"


def smtp_form(**overrides: Any) -> dict[str, Any]:
    form = {
        "host": "smtp.example.test",
        "port": "587",
        "tls_mode": "starttls",
        "username": "tollgate",
        "password": "",
        "from_address": "alerts@example.test",
        "timeout_seconds": "10",
    }
    form.update(overrides)
    return form


def test_the_smtp_admin_is_one_row_with_a_write_only_password(staff) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(staff)
    changelist = reverse("admin:alerts_smtpsettings_changelist")
    response = client.get(changelist)
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:alerts_smtpsettings_add")

    mark = audit_mark()
    response = client.post(
        reverse("admin:alerts_smtpsettings_add"), smtp_form(password=SMTP_PASSWORD)
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    smtp = SmtpSettings.objects.get()
    assert smtp.pk == 1 and smtp.password == SMTP_PASSWORD
    row = one_audit_row(mark, "smtp.created")
    assert row.changes["after"]["password_ciphertext"].startswith("[redacted]")
    assert SMTP_PASSWORD not in json.dumps(row.changes)
    assert client.get(reverse("admin:alerts_smtpsettings_add")).status_code == 403

    response = client.get(changelist)
    assert response.status_code == 302
    assert response["Location"] == reverse(SMTP_CHANGE, args=[1])
    page = client.get(reverse(SMTP_CHANGE, args=[1])).content.decode()
    assert SMTP_PASSWORD not in page and smtp.password_ciphertext not in page
    assert 'type="password"' in page
    assert reverse("admin:alerts_smtpsettings_test_email") in page
    assert "Send test email" in page

    # Blank keeps the password; exactly one audit row for the change.
    mark = audit_mark()
    response = client.post(reverse(SMTP_CHANGE, args=[1]), smtp_form(port="2525"))
    assert response.status_code == 302
    smtp.refresh_from_db()
    assert smtp.port == 2525 and smtp.password == SMTP_PASSWORD
    one_audit_row(mark, "smtp.updated")

    response = client.post(reverse(SMTP_CHANGE, args=[1]), smtp_form(clear_password="on"))
    assert response.status_code == 302
    assert SmtpSettings.load().password == ""


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"port": "0"}, "port"),
        ({"port": "70000"}, "port"),
        ({"from_address": "not-an-email"}, "from_address"),
        ({"timeout_seconds": "0"}, "timeout_seconds"),
    ],
)
def test_bad_smtp_settings_are_admin_form_errors(staff, overrides, field) -> None:  # type: ignore[no-untyped-def]
    form = SmtpSettingsForm(data=smtp_form(**overrides))
    assert not form.is_valid()
    assert field in form.errors
    client = logged_in(staff)
    mark = audit_mark()
    response = client.post(reverse("admin:alerts_smtpsettings_add"), smtp_form(**overrides))
    assert response.status_code == 200
    assert "errorlist" in response.content.decode()
    assert not SmtpSettings.objects.exists()
    assert audit_since(mark) == []


def test_port_error_message(staff) -> None:  # type: ignore[no-untyped-def]
    form = SmtpSettingsForm(data=smtp_form(port="70000"))
    assert form.errors["port"] == ["The port must be between 1 and 65535."]


def test_the_admin_sends_a_test_email_and_shows_the_answer(staff, smtp_server) -> None:  # type: ignore[no-untyped-def]
    port, sink = smtp_server
    configure_smtp(port)
    client = logged_in(staff)
    response = client.post(
        reverse("admin:alerts_smtpsettings_test_email"),
        {**smtp_form(host="ignored.example.test"), "test_email_to": "oncall@example.test"},
        follow=True,
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "Test email sent to oncall@example.test" in page
    assert "TEST1234" in page
    assert sink.received.wait(5)
    assert sink.envelopes[0].rcpt_tos == ["oncall@example.test"]
    # The form's unsaved edits are not saved by a test.
    assert SmtpSettings.load().host == "127.0.0.1"


def test_the_admin_test_email_shows_an_unreachable_servers_error(staff) -> None:  # type: ignore[no-untyped-def]
    closed = free_port()
    configure_smtp(closed)
    client = logged_in(staff)
    mark = audit_mark()
    response = client.post(
        reverse("admin:alerts_smtpsettings_test_email"),
        {"test_email_to": "oncall@example.test"},
        follow=True,
    )
    page = response.content.decode()
    assert "Test email to oncall@example.test failed" in page
    assert f"127.0.0.1:{closed}" in page
    assert audit_since(mark) == []
    assert not Delivery.objects.exists()

    response = client.post(
        reverse("admin:alerts_smtpsettings_test_email"), {"test_email_to": "nope"}, follow=True
    )
    assert "Not a valid email address" in response.content.decode()


def test_org_users_cannot_open_the_smtp_admin(alice, bob) -> None:  # type: ignore[no-untyped-def]
    configure_smtp(25, password=SMTP_PASSWORD)
    for user in (alice, bob):
        client = logged_in(user)
        assert client.get(reverse("admin:alerts_smtpsettings_changelist")).status_code == 403
        assert client.get(reverse(SMTP_CHANGE, args=[1])).status_code in (302, 403)
        response = client.post(
            reverse("admin:alerts_smtpsettings_test_email"), {"test_email_to": "a@b.test"}
        )
        assert response.status_code == 403
        assert "SMTP" not in client.get(reverse("admin:index")).content.decode()


# --- admin: channels -------------------------------------------------------------------------


def channel_form(**overrides: Any) -> dict[str, Any]:
    form = {
        "name": "ops-hook",
        "kind": "slack",
        "email_to": "",
        "secret": HOOK_URL,
        "signing_key": "",
        "config": "{}",
        "severities": ["warning", "critical"],
        "is_active": "on",
    }
    form.update(overrides)
    return form


def test_the_channel_admin_keeps_secrets_write_only(staff) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(staff)
    mark = audit_mark()
    response = client.post(
        reverse("admin:alerts_alertchannel_add"),
        channel_form(kind="webhook", signing_key=SIGNING_KEY),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    channel = AlertChannel.objects.get()
    assert channel.secret == HOOK_URL and channel.signing_key == SIGNING_KEY
    assert channel.severities == ["warning", "critical"]
    row = one_audit_row(mark, "alert_channel.created")
    assert HOOK_URL not in json.dumps(row.changes)

    url = reverse("admin:alerts_alertchannel_change", args=[channel.pk])
    for page_url in (url, reverse("admin:alerts_alertchannel_changelist")):
        page = client.get(page_url).content.decode()
        assert HOOK_URL not in page and SIGNING_KEY not in page
        assert channel.secret_ciphertext not in page

    mark = audit_mark()
    response = client.post(url, channel_form(kind="webhook", secret="", name="renamed"))
    assert response.status_code == 302, response.content.decode()[:3000]
    channel.refresh_from_db()
    assert channel.name == "renamed"
    assert channel.secret == HOOK_URL and channel.signing_key == SIGNING_KEY
    one_audit_row(mark, "alert_channel.updated")

    response = client.post(
        url, channel_form(kind="webhook", secret="", name="renamed", clear_signing_key="on")
    )
    assert response.status_code == 302
    channel.refresh_from_db()
    assert channel.signing_key == "" and channel.secret == HOOK_URL


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"kind": "email", "secret": "", "email_to": "ops@example.test, not-an-email"}, "email_to"),
        ({"kind": "slack", "secret": "ftp://hooks.example.test/x"}, "secret"),
        ({"kind": "discord", "secret": "not a url"}, "secret"),
        ({"kind": "webhook", "secret": ""}, "secret"),
        ({"kind": "pagerduty", "secret": ""}, "secret"),
        ({"kind": "slack", "email_to": "ops@example.test"}, "email_to"),
        ({"severities": []}, "severities"),
        ({"config": "[1, 2]"}, "config"),
        ({"config": "not json"}, "config"),
    ],
)
def test_bad_channel_input_is_an_admin_form_error(staff, overrides, field) -> None:  # type: ignore[no-untyped-def]
    data = channel_form(**overrides)
    form = AlertChannelForm(data=data)
    assert not form.is_valid()
    assert field in form.errors, form.errors
    client = logged_in(staff)
    mark = audit_mark()
    response = client.post(reverse("admin:alerts_alertchannel_add"), data)
    assert response.status_code == 200
    assert "errorlist" in response.content.decode()
    assert not AlertChannel.objects.exists()
    assert audit_since(mark) == []


def test_an_email_channel_in_the_admin(staff) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(staff)
    response = client.post(
        reverse("admin:alerts_alertchannel_add"),
        channel_form(kind="email", secret="", email_to="a@x.test; b@y.test"),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    channel = AlertChannel.objects.get()
    assert channel.config == {"to": ["a@x.test", "b@y.test"]}
    page = client.get(reverse("admin:alerts_alertchannel_change", args=[channel.pk]))
    assert 'value="a@x.test, b@y.test"' in page.content.decode()


def test_failing_channels_are_highlighted_and_filterable(staff) -> None:  # type: ignore[no-untyped-def]
    make_channel(name="healthy")
    make_channel(name="broken", status="failing", last_error="webhook answered 404 Not Found")
    client = logged_in(staff)
    changelist = reverse("admin:alerts_alertchannel_changelist")
    page = client.get(changelist).content.decode()
    assert "alert-channel-failing" in page and "webhook answered 404 Not Found" in page
    assert "status__exact=failing" in page and "kind__exact=slack" in page
    page = client.get(f"{changelist}?status__exact=failing").content.decode()
    assert "broken" in page and "healthy" not in page

    broken = AlertChannel.objects.get(name="broken")
    mark = audit_mark()
    response = client.post(changelist, {"action": "mark_ok", "_selected_action": [broken.pk]})
    assert response.status_code == 302
    broken.refresh_from_db()
    assert broken.status == "ok" and broken.last_error == ""
    one_audit_row(mark, "alert_channel.updated")


def test_channel_admin_tenancy(alice, charlie, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    shared = make_channel(name="shared-slack")
    own = make_channel(org_a, name="acme-slack")
    client = logged_in(alice)
    page = client.get(reverse("admin:alerts_alertchannel_changelist")).content.decode()
    assert "shared-slack" in page and "acme-slack" in page

    # A shared channel: readable without its secret, not changeable.
    response = client.get(reverse("admin:alerts_alertchannel_change", args=[shared.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert HOOK_URL not in page and 'name="_save"' not in page
    response = client.post(
        reverse("admin:alerts_alertchannel_change", args=[shared.pk]), channel_form(name="mine")
    )
    assert response.status_code == 403

    # An outsider never finds org A's channel.
    outsider = logged_in(charlie)
    response = outsider.get(reverse("admin:alerts_alertchannel_change", args=[own.pk]))
    assert response.status_code == 302
    page = outsider.get(reverse("admin:alerts_alertchannel_changelist")).content.decode()
    assert "acme-slack" not in page

    # An org admin's new channel is their org's.
    response = client.post(reverse("admin:alerts_alertchannel_add"), channel_form(name="new"))
    assert response.status_code == 302, response.content.decode()[:3000]
    assert AlertChannel.objects.get(name="new").org == org_a


# --- admin: rules ----------------------------------------------------------------------------


def rule_form(channels: list[int], **overrides: Any) -> dict[str, Any]:
    form: dict[str, Any] = {
        "name": "limit crossed",
        "kind": "limit_threshold",
        "params": "{}",
        "severity": "warning",
        "cooldown_seconds": "900",
        "channels": channels,
        "is_active": "on",
    }
    form.update(overrides)
    return form


def test_a_rule_in_the_admin(staff) -> None:  # type: ignore[no-untyped-def]
    channel = make_channel()
    client = logged_in(staff)
    page = client.get(reverse("admin:alerts_alertrule_add")).content.decode()
    assert "selectfilter" in page.lower() or "SelectFilter" in page  # filter_horizontal
    mark = audit_mark()
    response = client.post(reverse("admin:alerts_alertrule_add"), rule_form([channel.pk]))
    assert response.status_code == 302, response.content.decode()[:3000]
    rule = AlertRule.objects.get()
    assert rule.params == {"thresholds": [80, 100]}
    assert list(rule.channels.all()) == [channel]
    row = one_audit_row(mark, "alert_rule.created")
    assert row.changes["after"]["channels"] == [channel.pk]


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"cooldown_seconds": "0"}, "cooldown_seconds", "at least 1 second"),
        ({"channels": []}, "channels", "at least one channel"),
        ({"kind": "daily_spend", "params": "{}"}, "params", "amount_usd"),
        ({"kind": "error_rate", "params": '{"percent": 300}'}, "params", "percent"),
        ({"params": '{"thresholds": [0]}'}, "params", "thresholds"),
    ],
)
def test_bad_rule_input_is_an_admin_form_error(staff, overrides, field, message) -> None:  # type: ignore[no-untyped-def]
    channel = make_channel()
    data = {**rule_form([channel.pk]), **overrides}
    form = AlertRuleForm(data=data)
    assert not form.is_valid()
    assert message in " ".join(form.errors[field]), form.errors
    client = logged_in(staff)
    mark = audit_mark()
    response = client.post(reverse("admin:alerts_alertrule_add"), data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not AlertRule.objects.exists()
    assert audit_since(mark) == []


def test_an_org_admin_cannot_pick_another_orgs_channel(alice, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    globex = make_channel(org_b, name="globex-slack")
    acme = make_channel(org_a, name="acme-slack")
    client = logged_in(alice)
    page = client.get(reverse("admin:alerts_alertrule_add")).content.decode()
    assert "acme-slack" in page and "globex-slack" not in page
    response = client.post(reverse("admin:alerts_alertrule_add"), rule_form([globex.pk]))
    assert response.status_code == 200
    assert not AlertRule.objects.exists()
    response = client.post(reverse("admin:alerts_alertrule_add"), rule_form([acme.pk]))
    assert response.status_code == 302
    assert AlertRule.objects.get().org == org_a


def test_staff_cannot_mix_orgs_in_a_rule(staff, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    acme = make_channel(org_a, name="acme-slack")
    response = logged_in(staff).post(
        reverse("admin:alerts_alertrule_add"), rule_form([acme.pk], org=org_b.pk)
    )
    assert response.status_code == 200
    assert "acme-slack" in response.content.decode()
    assert not AlertRule.objects.exists()


# --- admin: history --------------------------------------------------------------------------


def test_alert_history_in_the_admin(staff, alice, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    channel = make_channel()
    acme = make_alert(org_a, channel, title="Acme cost spike")
    globex = make_alert(org_b, channel, title="Globex cost spike")

    client = logged_in(staff)
    page = client.get(reverse("admin:alerts_alert_change", args=[acme.pk])).content.decode()
    assert "HTTP 404 from receiver" in page and "12.5" in page
    assert 'name="_save"' not in page
    assert client.get(reverse("admin:alerts_alert_add")).status_code == 403
    page = client.get(reverse("admin:alerts_delivery_changelist")).content.decode()
    assert "HTTP 404 from receiver" in page

    org_admin = logged_in(alice)
    page = org_admin.get(reverse("admin:alerts_alert_changelist")).content.decode()
    assert "Acme cost spike" in page and "Globex cost spike" not in page
    response = org_admin.get(reverse("admin:alerts_alert_change", args=[globex.pk]))
    assert response.status_code == 302
    page = org_admin.get(reverse("admin:alerts_delivery_changelist")).content.decode()
    assert "Acme cost spike" in page and "Globex cost spike" not in page


def test_org_and_feature_admins_show_alert_email_to(staff, org_a, chat) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(staff)
    for url in (
        reverse("admin:policies_organization_change", args=[org_a.pk]),
        reverse("admin:policies_feature_change", args=[chat.pk]),
    ):
        assert 'name="alert_email_to"' in client.get(url).content.decode()
