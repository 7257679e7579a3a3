"""The trail is append-only in the database, tamper-evident, and complete."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.urls import reverse

from audit.models import AppendOnlyError, AuditEvent
from audit.services import audit_record
from audit.verify import audit_verify
from policies.models import Limit, Organization

pytestmark = pytest.mark.django_db


def rows(action: str | None = None) -> list[AuditEvent]:
    qs = AuditEvent.objects.order_by("id")
    return list(qs.filter(action=action) if action else qs)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_auditevent SET action = 'x'",
        "DELETE FROM audit_auditevent",
        "TRUNCATE audit_auditevent",
    ],
)
def test_the_database_refuses_to_change_history(statement: str) -> None:
    audit_record(action="test.event", target_type="test", target_repr="t")
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement)
    assert len(rows("test.event")) == 1
    assert audit_verify().ok


def test_the_model_refuses_edits_and_deletes() -> None:
    audit_record(action="test.event", target_type="test", target_repr="t")
    event = rows("test.event")[0]
    event.action = "changed"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()


def _tamper(sql: str, params: list) -> None:  # type: ignore[type-arg]
    """What a superuser could do: switch the trigger off, change history, switch it on."""
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_append_only_rows")
        cursor.execute(sql, params)
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_append_only_rows")


def test_verify_names_the_first_altered_row() -> None:
    for i in range(5):
        audit_record(action="test.event", target_type="test", target_repr=f"t{i}")
    assert audit_verify().ok
    victim = rows("test.event")[2]
    _tamper("UPDATE audit_auditevent SET target = 'innocent' WHERE id = %s", [victim.pk])
    result = audit_verify()
    assert not result.ok
    assert result.first_bad_id == victim.pk
    assert "altered" in result.problem
    with pytest.raises(CommandError, match=f"row {victim.pk}"):
        call_command("audit_verify", verbosity=0)


def test_verify_names_the_row_after_a_deleted_one() -> None:
    for i in range(4):
        audit_record(action="test.event", target_type="test", target_repr=f"t{i}")
    victim, follower = rows("test.event")[1:3]
    _tamper("DELETE FROM audit_auditevent WHERE id = %s", [victim.pk])
    result = audit_verify()
    assert not result.ok and result.first_bad_id == follower.pk
    assert "missing" in result.problem


def test_every_admin_change_writes_exactly_one_row_with_before_and_after(staff, org_a) -> None:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(staff)
    start = AuditEvent.objects.count()
    response = client.post(
        reverse("admin:policies_limit_add"),
        {
            "name": "",
            "scope": "org",
            "org": org_a.pk,
            "metric": "requests",
            "window": "minute",
            "amount": 60,
            "action": "reject",
            "failure_mode": "fail_open",
            "thresholds": "[80, 100]",
            "default_output_tokens": 1024,
            "is_active": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    created = rows("limit.created")
    assert len(created) == 1 and AuditEvent.objects.count() == start + 1
    event = created[0]
    assert event.actor == "staff" and event.actor_type == "user"
    assert event.org_slug == "acme"
    assert event.changes["after"]["amount"] == 60

    limit = Limit.objects.get()
    response = client.post(
        reverse("admin:policies_limit_change", args=[limit.pk]),
        {
            "name": "",
            "scope": "org",
            "org": org_a.pk,
            "metric": "requests",
            "window": "minute",
            "amount": 120,
            "action": "reject",
            "failure_mode": "fail_open",
            "thresholds": "[80, 100]",
            "default_output_tokens": 1024,
            "is_active": "on",
        },
    )
    assert response.status_code == 302
    updated = rows("limit.updated")
    assert len(updated) == 1
    assert updated[0].changes == {"before": {"amount": 60}, "after": {"amount": 120}}

    response = client.post(reverse("admin:policies_limit_delete", args=[limit.pk]), {"post": "yes"})
    assert response.status_code == 302
    deleted = rows("limit.deleted")
    assert len(deleted) == 1 and deleted[0].changes["before"]["amount"] == 120
    assert AuditEvent.objects.count() == start + 3
    assert audit_verify().ok


def test_every_api_change_writes_exactly_one_row(api_alice, org_a, chat) -> None:  # type: ignore[no-untyped-def]
    start = AuditEvent.objects.count()
    response = api_alice.post(
        "/api/keys/", {"name": "ci", "allowed_features": ["chat"]}, format="json"
    )
    assert response.status_code == 201
    created = rows("apikey.created")
    assert len(created) == 1
    event = created[0]
    assert event.actor == "alice" and event.org_slug == "acme"
    assert event.changes["after"]["allowed_features"] == [chat.pk]
    assert event.changes["after"]["key_hash"].startswith("[redacted]")
    assert response.json()["key"] not in str(event.changes)

    key_id = response.json()["id"]
    assert api_alice.post(f"/api/keys/{key_id}/revoke/").status_code == 200
    assert len(rows("apikey.revoked")) == 1
    assert AuditEvent.objects.count() == start + 2


def test_a_provider_secret_is_redacted_in_the_trail(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.post(
        "/api/providers/",
        {
            "name": "p",
            "kind": "openai",
            "base_url": "https://api.example.test/v1",
            "api_key": "sk-very-secret",
        },
        format="json",
    )
    assert response.status_code == 201
    event = rows("provider.created")[0]
    assert "sk-very-secret" not in str(event.changes)
    assert event.changes["after"]["api_key_ciphertext"].startswith("[redacted]")


def test_a_management_command_is_recorded_as_the_system(tmp_path) -> None:  # type: ignore[no-untyped-def]
    call_command("tollgate_bootstrap", "--info-file", str(tmp_path / "info.json"), verbosity=0)
    created = rows("org.created")
    assert len(created) == 1 and created[0].actor_type == "system"
    assert rows("apikey.created")


def test_logins_and_failed_logins_are_recorded(staff) -> None:  # type: ignore[no-untyped-def]
    staff.set_password("a-good-password-123")
    staff.save()
    client = Client()
    url = reverse("admin:login")
    client.post(url, {"username": "staff", "password": "wrong"})
    client.post(url, {"username": "staff", "password": "a-good-password-123"})
    assert len(rows("user.login_failed")) == 1
    assert rows("user.login_failed")[0].actor == "staff"
    assert len(rows("user.login")) == 1


def test_a_failed_change_leaves_no_row(api_staff, org_a) -> None:  # type: ignore[no-untyped-def]
    start = AuditEvent.objects.count()
    response = api_staff.post("/api/orgs/", {"name": "ACME", "slug": "acme"}, format="json")
    assert response.status_code == 400
    assert AuditEvent.objects.count() == start
    assert Organization.objects.count() == 1
