"""CSV export and the read-only viewer: columns, escaping, filters, tenancy, self-audit."""

from __future__ import annotations

import csv
import io
import itertools
import json
from datetime import UTC, datetime

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from audit.context import Actor
from audit.export import COLUMNS, FilterError, audit_export_rows, parse_filters
from audit.models import AuditEvent
from audit.services import audit_record
from audit.verify import audit_verify

pytestmark = pytest.mark.django_db

EXPORT = "/api/audit/export.csv"
LIST = "/api/audit/"


def event(action: str, org=None, *, at: datetime | None = None, **kwargs) -> None:  # type: ignore[no-untyped-def]
    kwargs.setdefault("target_type", "test.thing")
    kwargs.setdefault("target_id", "1")
    kwargs.setdefault("target_repr", f"{action} thing")
    audit_record(
        action=action,
        org=(org.pk, org.slug) if org is not None else None,
        at=at,
        **kwargs,
    )


def read_csv(response) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, getattr(response, "content", b"")[:500]
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    body = b"".join(response.streaming_content).decode()
    return parse(body)


def parse(body: str) -> list[dict[str, str]]:
    reader = csv.reader(io.StringIO(body, newline=""))
    header = next(reader)
    assert tuple(header) == COLUMNS
    return [dict(zip(header, row, strict=True)) for row in reader]


def actions(rows: list[dict[str, str]]) -> list[str]:
    return [row["action"] for row in rows]


def test_columns_values_and_formula_escaping(api_staff, org_a) -> None:  # type: ignore[no-untyped-def]
    hostile = Actor(
        type="user", id="-7", name="=cmd|' /C calc'!A0", ip="10.0.0.1", request_id="@req"
    )
    audit_record(
        action="test.hostile",
        target_type="policies.apikey",
        target_id="+42",
        target_repr="-2+3",
        org=(org_a.pk, org_a.slug),
        actor=hostile,
        changes={"after": {"name": '=HYPERLINK("http://x")'}},
        at=datetime(2026, 1, 31, 12, 34, 56, 789012, tzinfo=UTC),
    )
    event("test.tabbed", target_repr="\tTAB", actor=Actor(type="system", name="\rCR"))
    rows = read_csv(api_staff.get(EXPORT, {"action": "test.*"}))
    assert actions(rows) == ["test.hostile", "test.tabbed"]
    row = rows[0]
    stored = AuditEvent.objects.get(action="test.hostile")
    assert row["id"] == str(stored.pk)
    assert row["at"] == "2026-01-31T12:34:56.789012Z"
    assert row["actor_type"] == "user"
    assert row["actor_id"] == "'-7"
    assert row["actor"] == "'=cmd|' /C calc'!A0"
    assert row["ip"] == "10.0.0.1"
    assert row["request_id"] == "'@req"
    assert row["org_id"] == str(org_a.pk) and row["org_slug"] == "acme"
    assert row["target_type"] == "policies.apikey"
    assert row["target_id"] == "'+42"
    assert row["target"] == "'-2+3"
    assert json.loads(row["changes"]) == {"after": {"name": '=HYPERLINK("http://x")'}}
    assert row["prev_hash"] == stored.prev_hash and row["hash"] == stored.hash
    assert rows[1]["target"] == "'\tTAB" and rows[1]["actor"] == "'\rCR"
    assert rows[1]["org_id"] == "" and rows[1]["ip"] == ""
    # Nothing in a cell starts a formula.
    for exported in rows:
        for value in exported.values():
            assert not value or value[0] not in "=+-@\t\r"


def test_rows_come_in_chain_order_and_link_up(api_staff, org_a) -> None:  # type: ignore[no-untyped-def]
    for i in range(5):
        event("test.chain", org_a, target_id=str(i))
    rows = read_csv(api_staff.get(EXPORT))
    ids = [int(row["id"]) for row in rows]
    assert ids == sorted(ids)
    for before, after in itertools.pairwise(rows):
        assert after["prev_hash"] == before["hash"]
    assert audit_verify().ok


def test_filters_time_range_org_action_actor_and_target(api_staff, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    jan = datetime(2026, 1, 15, tzinfo=UTC)
    feb = datetime(2026, 2, 1, tzinfo=UTC)  # exactly the exclusive end below
    mar = datetime(2026, 3, 1, tzinfo=UTC)
    event("limit.created", org_a, at=jan, target_type="policies.limit", target_id="5")
    event("limit.updated", org_a, at=feb, target_type="policies.limit", target_id="5")
    event("limit.deleted", org_b, at=mar, target_type="policies.limit", target_id="6")
    event("limitless.thing", org_a, at=jan)
    event("apikey.created", org_b, at=jan, actor=Actor(type="user", id="99", name="zed"))

    def export(**params: str) -> list[str]:
        return actions(read_csv(api_staff.get(EXPORT, params)))

    assert export(since="2026-01-01", until="2026-02-01") == [
        "limit.created",
        "limitless.thing",
        "apikey.created",
    ]
    # since is inclusive, until exclusive; offsets are honoured.
    assert export(since="2026-02-01T00:00:00Z", until="2026-03-01T00:00:00Z") == ["limit.updated"]
    assert export(since="2026-02-01T01:00:00+01:00", until="2026-02-01T00:00:01") == [
        "limit.updated"
    ]
    assert export(action="limit.*") == ["limit.created", "limit.updated", "limit.deleted"]
    assert export(action="limit.updated") == ["limit.updated"]
    assert export(action="limit.*", org="acme") == ["limit.created", "limit.updated"]
    assert export(action="limit.*", org=str(org_b.pk)) == ["limit.deleted"]
    assert export(actor="zed") == ["apikey.created"]
    assert export(actor="99") == ["apikey.created"]
    assert export(actor="ze") == []  # exact, not a substring
    assert export(target_type="policies.limit", target_id="6") == ["limit.deleted"]

    # The list takes the same filters, newest first.
    listed = api_staff.get(LIST, {"action": "limit.*", "org": "acme"}).json()
    assert [row["action"] for row in listed["results"]] == ["limit.updated", "limit.created"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-02-30"}, "until"),
        ({"since": "2026-13-01T00:00:00"}, "since"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, "until"),
        ({"since": "2026-02-01", "until": "2026-02-01"}, "until"),
        ({"org": "no-such-org"}, "org"),
        ({"action": "limit.*.created"}, "action"),
        ({"form": "2026-01-01"}, "form"),
    ],
)
def test_bad_filters_answer_400_naming_the_parameter(api_staff, params, named) -> None:  # type: ignore[no-untyped-def]
    for url in (EXPORT, LIST):
        response = api_staff.get(url, params)
        assert response.status_code == 400, (url, response.content)
        assert named in response.json(), response.json()
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


def test_parse_filters_reads_dates_leniently_but_exactly() -> None:
    filters = parse_filters({"since": "2026-01-02", "until": "2026-01-03T04:05:06 02:00"})
    assert filters.since == datetime(2026, 1, 2, tzinfo=UTC)
    assert filters.until == datetime(2026, 1, 3, 2, 5, 6, tzinfo=UTC)  # "+" decoded as " "
    with pytest.raises(FilterError) as raised:
        parse_filters({"since": "2026-01-02", "until": "2026-01-01"})
    assert raised.value.param == "until" and raised.value.status == 400


# --- tenancy ---------------------------------------------------------------------------


@pytest.fixture
def two_orgs_rows(org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    event("test.a", org_a)
    event("test.b", org_b)
    event("test.global")


def test_staff_see_and_export_every_org(api_staff, two_orgs_rows) -> None:  # type: ignore[no-untyped-def]
    assert actions(read_csv(api_staff.get(EXPORT, {"action": "test.*"}))) == [
        "test.a",
        "test.b",
        "test.global",
    ]
    listed = api_staff.get(LIST, {"action": "test.*"}).json()["results"]
    assert [row["action"] for row in listed] == ["test.global", "test.b", "test.a"]


def test_an_org_admin_sees_and_exports_only_their_org(api_alice, org_a, two_orgs_rows) -> None:  # type: ignore[no-untyped-def]
    rows = read_csv(api_alice.get(EXPORT))
    assert {row["org_id"] for row in rows} == {str(org_a.pk)}
    assert "test.a" in actions(rows)
    assert actions(read_csv(api_alice.get(EXPORT, {"org": "acme", "action": "test.*"}))) == [
        "test.a"
    ]
    listed = api_alice.get(LIST, {"page_size": 500}).json()["results"]
    assert listed and {row["org_id"] for row in listed} == {org_a.pk}
    other = AuditEvent.objects.get(action="test.b")
    assert api_alice.get(f"{LIST}{other.pk}/").status_code == 404
    own = AuditEvent.objects.get(action="test.a")
    assert api_alice.get(f"{LIST}{own.pk}/").json()["action"] == "test.a"


def test_an_org_admin_asking_for_another_org_gets_404(api_alice, org_b, two_orgs_rows) -> None:  # type: ignore[no-untyped-def]
    for org in ("globex", str(org_b.pk), "no-such-org"):
        assert api_alice.get(EXPORT, {"org": org}).status_code == 404
        assert api_alice.get(LIST, {"org": org}).status_code == 404
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


def test_a_member_can_read_and_export_their_org(api_bob, org_a, two_orgs_rows) -> None:  # type: ignore[no-untyped-def]
    rows = read_csv(api_bob.get(EXPORT, {"action": "test.*"}))
    assert actions(rows) == ["test.a"]
    assert [r["action"] for r in api_bob.get(LIST, {"action": "test.*"}).json()["results"]] == [
        "test.a"
    ]
    assert api_bob.post(LIST, {}, format="json").status_code in (403, 405)


def test_the_outsider_sees_only_their_own_org(api_charlie, org_b, two_orgs_rows) -> None:  # type: ignore[no-untyped-def]
    assert actions(read_csv(api_charlie.get(EXPORT, {"action": "test.*"}))) == ["test.b"]


def test_anonymous_requests_get_401(db, two_orgs_rows) -> None:  # type: ignore[no-untyped-def]
    from rest_framework.test import APIClient

    client = APIClient()
    assert client.get(EXPORT).status_code == 401
    assert client.get(LIST).status_code == 401


def test_the_audit_api_is_read_only(api_staff, two_orgs_rows) -> None:  # type: ignore[no-untyped-def]
    row = AuditEvent.objects.get(action="test.a")
    url = f"{LIST}{row.pk}/"
    assert api_staff.put(url, {"action": "x"}, format="json").status_code == 405
    assert api_staff.patch(url, {"action": "x"}, format="json").status_code == 405
    assert api_staff.delete(url).status_code == 405
    assert api_staff.post(EXPORT).status_code == 405
    assert AuditEvent.objects.get(pk=row.pk).action == "test.a"


def test_the_list_is_cursor_paginated_newest_first(api_staff, org_a) -> None:  # type: ignore[no-untyped-def]
    for i in range(7):
        event("test.page", org_a, target_id=str(i))
    first = api_staff.get(LIST, {"action": "test.page", "page_size": 4}).json()
    assert [r["target_id"] for r in first["results"]] == ["6", "5", "4", "3"]
    second = api_staff.get(first["next"]).json()
    assert [r["target_id"] for r in second["results"]] == ["2", "1", "0"]
    assert second["next"] is None


# --- each export is audited ------------------------------------------------------------


def test_an_export_records_itself_with_its_filters(api_staff, api_alice, org_a) -> None:  # type: ignore[no-untyped-def]
    event("test.one", org_a)
    rows = read_csv(api_staff.get(EXPORT, {"action": "test.*", "since": "2020-01-01"}))
    assert actions(rows) == ["test.one"]
    exported = AuditEvent.objects.get(action="audit.exported")
    assert exported.actor == "staff" and exported.actor_type == "user"
    assert exported.org_id is None  # all orgs
    assert exported.changes["surface"] == "api"
    assert exported.changes["filters"] == {
        "action": "test.*",
        "since": "2020-01-01T00:00:00.000000Z",
    }
    assert exported.changes["through_id"] == int(rows[-1]["id"])

    # The first export's row is in a later unfiltered export; no export contains itself.
    later = read_csv(api_alice.get(EXPORT))
    assert "audit.exported" not in actions(later)  # staff's export row has no org
    all_rows = read_csv(api_staff.get(EXPORT, {"action": "audit.exported"}))
    assert len(all_rows) == 2  # staff's first, alice's; not this one
    alices = AuditEvent.objects.filter(action="audit.exported", actor="alice").get()
    assert alices.org_id == org_a.pk and alices.changes["filters"]["org"] == "acme"
    assert AuditEvent.objects.filter(action="audit.exported").count() == 3
    assert audit_verify().ok


def test_a_stream_left_early_releases_its_cursor(org_a) -> None:  # type: ignore[no-untyped-def]
    for i in range(5):
        event("test.early", org_a, target_id=str(i))
    lines = audit_export_rows(filters=parse_filters({"action": "test.early"}), chunk_size=2)
    assert next(lines).startswith("id,at,")
    assert next(lines).count(",") >= len(COLUMNS) - 1
    lines.close()  # e.g. the client went away
    event("test.after", org_a)  # the connection is usable
    assert AuditEvent.objects.filter(action="test.after").count() == 1


@pytest.mark.django_db(transaction=True)
def test_under_asgi_the_export_is_streamed_not_buffered(staff, org_a) -> None:  # type: ignore[no-untyped-def]
    """Django reads a sync iterator into a list before serving it over ASGI; the export
    hands ASGI an async iterator that pulls chunks from the request's own thread."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient
    from rest_framework.authtoken.models import Token

    for i in range(1200):
        event("test.asgi", org_a, target_id=str(i))
    token, _ = Token.objects.get_or_create(user=staff)

    async def fetch():  # type: ignore[no-untyped-def]
        response = await AsyncClient().get(
            EXPORT, {"action": "test.asgi"}, headers={"Authorization": f"Token {token.key}"}
        )
        return response, [chunk async for chunk in response.streaming_content]

    response, chunks = async_to_sync(fetch)()
    assert response.status_code == 200 and response.is_async
    assert len(chunks) >= 3  # lines sent in chunks
    rows = parse(b"".join(chunks).decode())
    assert [row["target_id"] for row in rows] == [str(i) for i in range(1200)]
    assert AuditEvent.objects.filter(action="audit.exported").count() == 1


# --- admin -----------------------------------------------------------------------------


def logged_in(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


def test_the_admin_refuses_add_change_and_delete(staff, two_orgs_rows) -> None:  # type: ignore[no-untyped-def]
    client = logged_in(staff)
    row = AuditEvent.objects.get(action="test.a")
    assert client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    assert client.post(reverse("admin:audit_auditevent_add"), {"action": "x"}).status_code == 403
    change = reverse("admin:audit_auditevent_change", args=[row.pk])
    page = client.get(change)
    assert page.status_code == 200  # the read-only view
    assert b'name="_save"' not in page.content
    assert client.post(change, {"action": "forged"}).status_code == 403
    delete = reverse("admin:audit_auditevent_delete", args=[row.pk])
    assert client.get(delete).status_code == 403
    assert client.post(delete, {"post": "yes"}).status_code == 403
    changelist = reverse("admin:audit_auditevent_changelist")
    response = client.post(
        changelist, {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"}
    )
    assert response.status_code in (200, 302)
    assert AuditEvent.objects.get(pk=row.pk).action == "test.a"
    assert audit_verify().ok


def test_the_admin_changelist_is_scoped_and_has_the_export_button(
    alice, staff, two_orgs_rows
) -> None:  # type: ignore[no-untyped-def]
    url = reverse("admin:audit_auditevent_changelist")
    page = logged_in(alice).get(url, {"action__exact": "test.a"}).content.decode()
    assert "Export CSV (current filters)" in page
    assert reverse("admin:audit_auditevent_export") + "?action__exact=test.a" in page
    assert "test.a thing" in page
    page = logged_in(alice).get(url).content.decode()
    assert "test.b thing" not in page and "test.global thing" not in page
    page = logged_in(staff).get(url).content.decode()
    assert "test.b thing" in page and "test.global thing" in page
    other = AuditEvent.objects.get(action="test.b")
    response = logged_in(alice).get(reverse("admin:audit_auditevent_change", args=[other.pk]))
    assert response.status_code == 302  # "doesn't exist", as for any row they cannot see


def test_the_admin_exports_the_current_filters(alice, staff, two_orgs_rows) -> None:  # type: ignore[no-untyped-def]
    url = reverse("admin:audit_auditevent_export")
    rows = read_csv(logged_in(staff).get(url, {"action__exact": "test.b"}))
    assert actions(rows) == ["test.b"]
    rows = read_csv(logged_in(staff).get(url, {"q": "test."}))
    assert actions(rows) == ["test.a", "test.b", "test.global"]
    rows = read_csv(logged_in(alice).get(url, {"q": "test."}))
    assert actions(rows) == ["test.a"]
    exported = AuditEvent.objects.filter(action="audit.exported").order_by("id")
    assert [e.changes["surface"] for e in exported] == ["admin", "admin", "admin"]
    assert exported[0].changes["admin_filters"] == {"action__exact": "test.b"}
    assert exported[2].actor == "alice" and exported[2].org_slug == "acme"
    assert logged_in(staff).get(url, {"no_such_field": "1"}).status_code == 400


def test_the_admin_action_exports_the_selection(staff, two_orgs_rows) -> None:  # type: ignore[no-untyped-def]
    picked = AuditEvent.objects.filter(action__in=["test.a", "test.global"]).order_by("id")
    response = logged_in(staff).post(
        reverse("admin:audit_auditevent_changelist"),
        {
            "action": "export_selected",
            "_selected_action": [e.pk for e in picked],
            "index": 0,
        },
    )
    assert actions(read_csv(response)) == ["test.a", "test.global"]
    exported = AuditEvent.objects.get(action="audit.exported")
    assert exported.changes["ids"] == sorted(e.pk for e in picked)


def test_an_anonymous_admin_export_is_sent_to_login(two_orgs_rows) -> None:  # type: ignore[no-untyped-def]
    response = Client().get(reverse("admin:audit_auditevent_export"))
    assert response.status_code == 302 and "/login/" in response["Location"]


# --- management command ----------------------------------------------------------------


def test_the_command_writes_the_file_and_is_audited(tmp_path, org_a, org_b) -> None:  # type: ignore[no-untyped-def]
    event("limit.created", org_a, at=datetime(2026, 1, 10, tzinfo=UTC))
    event("limit.updated", org_b, at=datetime(2026, 1, 11, tzinfo=UTC))
    event("apikey.created", org_a, at=datetime(2026, 1, 12, tzinfo=UTC))
    event("limit.deleted", org_a, at=datetime(2026, 3, 1, tzinfo=UTC))
    out = tmp_path / "trail.csv"
    stdout = io.StringIO()
    call_command(
        "audit_export",
        "--since", "2026-01-01",
        "--until", "2026-02-01",
        "--org", "acme",
        "--action", "limit.*",
        "--out", str(out),
        stdout=stdout,
    )  # fmt: skip
    rows = parse(out.read_text(encoding="utf-8"))
    assert actions(rows) == ["limit.created"]
    assert "exported 1 audit rows" in stdout.getvalue()
    assert not list(tmp_path.glob(".*.partial"))
    exported = AuditEvent.objects.get(action="audit.exported")
    assert exported.actor_type == "system"
    assert exported.changes["surface"] == "command"
    assert exported.changes["filters"]["action"] == "limit.*"
    assert exported.org_slug == "acme"

    # "-" writes to standard output.
    stdout = io.StringIO()
    call_command("audit_export", "--action", "apikey.created", "--out", "-", stdout=stdout)
    assert actions(parse(stdout.getvalue())) == ["apikey.created"]


def test_the_command_refuses_bad_input(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "x.csv"
    with pytest.raises(CommandError, match="--since"):
        call_command("audit_export", "--since", "nope", "--out", str(out))
    with pytest.raises(CommandError, match="--until"):
        call_command(
            "audit_export", "--since", "2026-02-01", "--until", "2026-01-01", "--out", str(out)
        )
    with pytest.raises(CommandError, match="--out"):
        call_command("audit_export", "--out", str(tmp_path / "missing" / "x.csv"))
    assert not out.exists()
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


def test_the_openapi_schema_describes_the_audit_api(api_staff) -> None:  # type: ignore[no-untyped-def]
    response = api_staff.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200, response.content
    schema = response.json()
    assert "/api/audit/export.csv" in schema["paths"]
    listing = schema["paths"]["/api/audit/"]["get"]
    assert {"since", "until", "org", "action"} <= {p["name"] for p in listing["parameters"]}
