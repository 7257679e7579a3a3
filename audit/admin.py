"""The audit viewer: read-only (nobody may add, change or delete a row), org-scoped, with
CSV export of a selection (admin action) or of the current filters (changelist button)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseBadRequest
from django.http.response import HttpResponseBase
from django.urls import URLPattern, path
from django.utils.html import format_html

from audit.export import AuditFilters, audit_export_rows, csv_response, record_export
from audit.models import AuditEvent
from policies.admin_scope import ReadOnlyScopedAdmin, request_scope

# The detail page: every column, read-only.
DETAIL_FIELDS = (
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
    "formatted_changes",
    "source_key",
    "prev_hash",
    "hash",
)


class _QueryOnlyChangeList(ChangeList):
    """The changelist's filtered queryset without its page or counts (for the export)."""

    def get_results(self, request: HttpRequest) -> None:
        self.result_count = self.full_result_count = 0
        self.result_list = []  # type: ignore[assignment]
        self.can_show_all = self.multi_page = False
        self.paginator = None  # type: ignore[assignment]


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyScopedAdmin):
    list_display = ["at", "actor", "action", "org_slug", "target", "request_id"]
    list_filter = ["action", "actor_type", "at"]
    date_hierarchy = "at"
    search_fields = ["actor", "target", "request_id", "action"]
    actions = ["export_selected"]
    list_per_page = 100
    # No COUNT(*) of the whole trail on every page (tens of millions of rows).
    show_full_result_count = False
    fields = DETAIL_FIELDS
    readonly_fields = DETAIL_FIELDS

    # --- who sees what: read-only for everyone, org users see their org's rows ---------

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        queryset = super().get_queryset(request)
        scope = request_scope(request)
        if scope.is_global:
            return queryset
        if scope.org is None:
            return queryset.none()
        return queryset.filter(org_id=scope.org.pk)

    @admin.display(description="changes")
    def formatted_changes(self, obj: AuditEvent) -> str:
        return format_html(
            "<pre>{}</pre>", json.dumps(obj.changes, indent=2, sort_keys=True, default=str)
        )

    # --- export --------------------------------------------------------------------------

    def _scope_filters(self, request: HttpRequest) -> AuditFilters:
        """What the export's own row records about the scope (the rows come from the
        changelist's queryset, already scoped)."""
        scope = request_scope(request)
        if scope.is_global or scope.org is None:
            return AuditFilters()
        return AuditFilters(org_id=scope.org.pk, org_slug=scope.org.slug)

    @admin.action(description="Export selected as CSV", permissions=["view"])
    def export_selected(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> Any:
        if request.POST.get("select_across") == "1":
            extra: dict[str, Any] = {"selection": "all matching", **self._admin_filters(request)}
        else:
            ids = request.POST.getlist(ACTION_CHECKBOX_NAME)[:1000]
            extra = {"selection": "selected", "ids": [int(i) for i in ids if i.isdigit()]}
        filters = record_export(self._scope_filters(request), surface="admin", extra=extra)
        return csv_response(audit_export_rows(filters=filters, queryset=queryset), request=request)

    def _admin_filters(self, request: HttpRequest) -> dict[str, Any]:
        return {"admin_filters": {k: v[:300] for k, v in sorted(request.GET.items())}}

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        if getattr(request, "_audit_export", False):
            return _QueryOnlyChangeList
        return super().get_changelist(request, **kwargs)

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        """``Export CSV (current filters)``: the changelist's filters, search and date
        drill-down, streamed as CSV (columns: see ``audit.export``)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        request._audit_export = True  # type: ignore[attr-defined]
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("Unknown or invalid filter in the query string.")
        filters = record_export(
            self._scope_filters(request), surface="admin", extra=self._admin_filters(request)
        )
        return csv_response(
            audit_export_rows(filters=filters, queryset=changelist.queryset), request=request
        )

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "export.csv",
                self.admin_site.admin_view(self.export_view),
                name="{}_{}_export".format(*info),
            ),
            *super().get_urls(),
        ]
