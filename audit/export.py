"""CSV export of the audit trail: one function behind the admin, the REST API and the
``audit_export`` command.

Columns (stable; new columns are only ever appended at the end)::

    id           the row's id; rows are written in id order (the chain's order)
    at           when it happened, ISO 8601 in UTC: 2026-01-31T12:34:56.789012Z
    actor_type   user, api_key or system
    actor_id     the user's or key's id ("" for system)
    actor        who, as shown to people (user name, key name, "manage.py <command>")
    ip           the actor's IP address, or ""
    request_id   the request's X-Request-ID, or ""
    action       a dotted name: limit.created, apikey.revoked, request.rejected, ...
    org_id       the organization's id, or "" (plain number: history outlives the org)
    org_slug     the organization's slug at the time, or ""
    target_type  what was acted on, as app.model (policies.limit), or ""
    target_id    its id, or ""
    target       its name as shown to people, or ""
    changes      the change as JSON ({"before": {...}, "after": {...}}; secrets redacted)
    prev_hash    the previous row's SHA-256 (the chain link)
    hash         this row's SHA-256

The first line is the header. Lines end with CRLF (RFC 4180), UTF-8, no BOM.

A cell a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, a
tab or a carriage return) is written with a leading ``'``, so an export of hostile names
(a key called ``=HYPERLINK(...)``) opens as text. Such a cell no longer equals the stored
value byte for byte; the database copy (``audit_verify``) is the one the hashes cover.

Filters (query parameters of ``GET /api/audit/`` and ``/api/audit/export.csv``; options
of the command), all optional and combined with AND:

    since        ISO 8601 date or date-time, inclusive (at >= since); no offset means UTC
    until        ISO 8601 date or date-time, exclusive (at < until); must be after since
    org          an organization's slug or id (staff; a deleted org's history by its id).
                 Org admins and members always get their own org's rows only; naming
                 another org answers 404.
    actor        exact match on the actor's name (``alice``) or the actor's id (``12``)
    action       exact (``limit.updated``), or a prefix with a trailing ``*`` (``limit.*``)
    target_type  exact (``policies.apikey``)
    target_id    exact

Constant memory whatever the size: rows come through a server-side cursor in chunks
(inside one read transaction, so the cursor streams instead of being materialized) and
are turned into CSV lines one at a time.

Each export is itself audited, as ``audit.exported``, when it starts: the row count is only
known at the end of a stream, so the row records the filters, the surface (``api``,
``admin``, ``command``) and ``through_id``, the last row id that existed when the export
started. The export contains exactly the matching rows with ``id <= through_id`` (so not
its own ``audit.exported`` row, nor anything appended while it streams): the filters and
``through_id`` determine its content and count.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import F, Func, Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone

from audit.context import Actor
from audit.models import AuditEvent
from audit.services import audit_record
from gateway.params import FORMULA_STARTS, FilterError, FilterNotFound, iso_utc, parse_moment

if TYPE_CHECKING:
    from policies.selectors import AdminScope

COLUMNS = (
    "id",
    "at",
    "actor_type",
    "actor_id",
    "actor",
    "ip",
    "request_id",
    "action",
    "org_id",
    "org_slug",
    "target_type",
    "target_id",
    "target",
    "changes",
    "prev_hash",
    "hash",
)
# What is selected for each column: ``at`` already formatted and ``changes`` as jsonb's
# own text, by PostgreSQL (no datetime or JSON objects built per row in Python).
_SELECTED = tuple({"at": "at_text", "changes": "changes_text"}.get(name, name) for name in COLUMNS)
# Columns that can hold text from outside (names, headers, ids given by callers): the
# ones checked for formulas. The others are numbers, hex, an ISO time or an IP address.
_FREE_TEXT = tuple(
    COLUMNS.index(name)
    for name in (
        "actor_type",
        "actor_id",
        "actor",
        "request_id",
        "action",
        "org_slug",
        "target_type",
        "target_id",
        "target",
        "changes",
    )
)
FILTER_PARAMS = ("since", "until", "org", "actor", "action", "target_type", "target_id")
CHUNK_SIZE = 2000
# Lines joined per chunk sent to an HTTP client.
HTTP_CHUNK_LINES = 500
_MAX_VALUE = 300
# iso_utc()'s format, as PostgreSQL's to_char writes it.
_PG_ISO_UTC = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


@dataclass(frozen=True)
class AuditFilters:
    since: datetime | None = None
    until: datetime | None = None
    org_id: int | None = None
    org_slug: str = ""
    actor: str = ""
    action: str = ""
    target_type: str = ""
    target_id: str = ""
    # Set when an export starts (``record_export``): the last row id it may include.
    through_id: int | None = None

    def q(self) -> Q:
        q = Q()
        if self.since is not None:
            q &= Q(at__gte=self.since)
        if self.until is not None:
            q &= Q(at__lt=self.until)
        if self.org_id is not None:
            q &= Q(org_id=self.org_id)
        if self.actor:
            q &= Q(actor=self.actor) | Q(actor_id=self.actor)
        if self.action.endswith("*"):
            q &= Q(action__startswith=self.action[:-1])
        elif self.action:
            q &= Q(action=self.action)
        if self.target_type:
            q &= Q(target_type=self.target_type)
        if self.target_id:
            q &= Q(target_id=self.target_id)
        if self.through_id is not None:
            q &= Q(id__lte=self.through_id)
        return q

    def apply(self, queryset: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        return queryset.filter(self.q())

    def describe(self) -> dict[str, Any]:
        """The filters that are set, as the ``audit.exported`` row records them."""
        described: dict[str, Any] = {}
        if self.since is not None:
            described["since"] = iso_utc(self.since)
        if self.until is not None:
            described["until"] = iso_utc(self.until)
        if self.org_id is not None:
            described["org"] = self.org_slug or str(self.org_id)
            described["org_id"] = self.org_id
        for name in ("actor", "action", "target_type", "target_id"):
            if getattr(self, name):
                described[name] = getattr(self, name)
        return described


def _resolve_org(raw: str, scope: AdminScope | None) -> tuple[int, str]:
    from policies.models import Organization

    if scope is not None and not scope.is_global:
        own = scope.org
        if own is not None and raw in (own.slug, str(own.pk)):
            return own.pk, own.slug
        raise FilterNotFound("org", "no such organization")
    org = None
    if raw.isdigit():
        org = Organization.objects.filter(pk=int(raw)).only("slug").first()
    if org is None:
        org = Organization.objects.filter(slug=raw).only("slug").first()
    if org is not None:
        return org.pk, org.slug
    if raw.isdigit() and AuditEvent.objects.filter(org_id=int(raw)).exists():
        return int(raw), ""  # a deleted organization's history
    raise FilterError("org", f"no organization with slug or id {raw[:64]!r}")


def parse_filters(
    params: Mapping[str, Any], *, scope: AdminScope | None = None, extra: Iterable[str] = ()
) -> AuditFilters:
    """Validated filters from query parameters (or command options).

    ``scope`` is the caller's ``policies.selectors.AdminScope`` (None: unrestricted, as for
    the command). An org user's filters are always pinned to their org. Parameters other
    than the filters and ``extra`` (e.g. pagination's) are refused, so a misspelt filter
    never silently exports everything. Raises ``FilterError`` (400) or ``FilterNotFound``
    (404) naming the parameter.
    """
    allowed = set(FILTER_PARAMS) | set(extra)
    for name in params:
        if name not in allowed:
            raise FilterError(name, f"unknown parameter; filters are: {', '.join(FILTER_PARAMS)}")

    def text(name: str) -> str:
        value = params.get(name)
        value = "" if value is None else str(value).strip()
        if len(value) > _MAX_VALUE:
            raise FilterError(name, f"longer than {_MAX_VALUE} characters")
        return value

    since = parse_moment("since", text("since")) if text("since") else None
    until = parse_moment("until", text("until")) if text("until") else None
    if since is not None and until is not None and since >= until:
        raise FilterError("until", "must be later than since (until is exclusive)")

    org_id: int | None = None
    org_slug = ""
    if text("org"):
        org_id, org_slug = _resolve_org(text("org"), scope)
    elif scope is not None and not scope.is_global:
        if scope.org is None:
            raise FilterNotFound("org", "no organization")
        org_id, org_slug = scope.org.pk, scope.org.slug

    action = text("action")
    if "*" in action[:-1]:
        raise FilterError("action", "'*' is only allowed at the end (a prefix: limit.*)")

    return AuditFilters(
        since=since,
        until=until,
        org_id=org_id,
        org_slug=org_slug,
        actor=text("actor"),
        action=action,
        target_type=text("target_type"),
        target_id=text("target_id"),
    )


# --- the export ------------------------------------------------------------------------


def record_export(
    filters: AuditFilters,
    *,
    surface: str,
    actor: Actor | None = None,
    extra: Mapping[str, Any] | None = None,
) -> AuditFilters:
    """Audit an export as it starts; returns the filters bounded by ``through_id``.

    The ``audit.exported`` row belongs to the exported org (so that org sees who exported
    its trail), or to no org for a staff export of all orgs.
    """
    with transaction.atomic():
        last = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
        bounded = replace(filters, through_id=last)
        changes: dict[str, Any] = {
            "surface": surface,
            "filters": filters.describe(),
            "through_id": last,
            **(extra or {}),
        }
        audit_record(
            action="audit.exported",
            target_type="audit.auditevent",
            target_repr="CSV export",
            changes=changes,
            org=(filters.org_id, filters.org_slug) if filters.org_id is not None else None,
            actor=actor,
        )
    return bounded


class _Echo:
    """csv.writer's file: hands back each formatted line instead of storing it."""

    def write(self, line: str) -> str:
        return line


def audit_export_rows(
    *,
    filters: AuditFilters,
    queryset: QuerySet[AuditEvent] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[str]:
    """CSV lines: the header, then one line per matching row in id order.

    ``queryset`` narrows the rows further (the admin's current changelist or selection);
    it is always combined with ``filters``. Iterate it in one thread (it holds a server-side
    cursor inside a read transaction until exhausted or closed).
    """
    base = queryset if queryset is not None else AuditEvent.objects.all()
    rows = (
        filters.apply(base)
        .annotate(
            at_text=Func(
                F("at"),
                template=f"to_char(%(expressions)s AT TIME ZONE 'UTC', '{_PG_ISO_UTC}')",
                output_field=TextField(),
            ),
            changes_text=Cast("changes", output_field=TextField()),
        )
        .order_by("id")
        .values_list(*_SELECTED)
    )
    writer = csv.writer(_Echo())  # None is written as an empty cell
    yield writer.writerow(COLUMNS)
    free_text = _FREE_TEXT
    starts = FORMULA_STARTS
    with transaction.atomic():
        for row in rows.iterator(chunk_size=chunk_size):
            cells = list(row)
            for index in free_text:
                value = cells[index]
                if value and value[0] in starts:
                    cells[index] = "'" + value
            yield writer.writerow(cells)


# --- HTTP ------------------------------------------------------------------------------


def _chunks(lines: Iterator[str], size: int = HTTP_CHUNK_LINES) -> Generator[str, None, None]:
    batch: list[str] = []
    try:
        for line in lines:
            batch.append(line)
            if len(batch) >= size:
                yield "".join(batch)
                batch = []
        if batch:
            yield "".join(batch)
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()  # ends the read transaction of a stream left early


async def _async_chunks(chunks: Generator[str, None, None]) -> AsyncIterator[str]:
    """Serve a sync stream under ASGI without Django first reading it all into a list.

    Every step runs in the request's own thread (thread_sensitive), where its database
    connection and server-side cursor live.
    """
    step = sync_to_async(lambda: next(chunks, None), thread_sensitive=True)
    try:
        while True:
            chunk = await step()
            if chunk is None:
                return
            yield chunk
    finally:
        await sync_to_async(chunks.close, thread_sensitive=True)()


def export_filename(now: datetime | None = None) -> str:
    return f"audit-{(now or timezone.now()).astimezone(UTC):%Y%m%dT%H%M%SZ}.csv"


def csv_response(lines: Iterator[str], *, request: HttpRequest) -> StreamingHttpResponse:
    """A streamed ``text/csv`` attachment of ``lines``."""
    from django.core.handlers.asgi import ASGIRequest

    chunks = _chunks(lines)
    content: Any = _async_chunks(chunks) if isinstance(request, ASGIRequest) else chunks
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{export_filename()}"'
    response["Cache-Control"] = "no-store"
    return response
