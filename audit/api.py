"""REST API of the audit trail (read-only): ``GET /api/audit/`` (newest first, cursor
paginated) and ``GET /api/audit/export.csv`` (streamed CSV). Filters and columns are
described in ``audit.export``.

Tenancy: global staff see every row; org admins and members see only their org's rows,
and naming another org in ``org`` answers 404.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, viewsets
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from audit.export import (
    COLUMNS,
    AuditFilters,
    FilterError,
    audit_export_rows,
    csv_response,
    parse_filters,
    record_export,
)
from audit.models import AuditEvent
from policies.permissions import IsTollgateAdmin, scope_of

FILTER_PARAMETERS = [
    OpenApiParameter(
        "since", OpenApiTypes.DATETIME, description="ISO 8601, inclusive (no offset: UTC)."
    ),
    OpenApiParameter(
        "until", OpenApiTypes.DATETIME, description="ISO 8601, exclusive; after since."
    ),
    OpenApiParameter("org", OpenApiTypes.STR, description="Organization slug or id (staff only)."),
    OpenApiParameter("actor", OpenApiTypes.STR, description="Exact actor name or actor id."),
    OpenApiParameter(
        "action",
        OpenApiTypes.STR,
        description="Exact action, or a prefix with a trailing * (limit.*).",
    ),
    OpenApiParameter("target_type", OpenApiTypes.STR, description="Exact, e.g. policies.limit."),
    OpenApiParameter("target_id", OpenApiTypes.STR, description="Exact."),
]


def request_filters(request: Request, *, extra: tuple[str, ...] = ()) -> AuditFilters:
    """The request's filters for its caller's scope; 400 or 404 naming the parameter."""
    try:
        return parse_filters(request.query_params, scope=scope_of(request), extra=extra)
    except FilterError as exc:
        if exc.status == 404:
            raise NotFound(exc.message) from None
        raise ValidationError({exc.param: [exc.message]}) from None


class AuditEventSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = AuditEvent
        fields = list(COLUMNS)  # the export's documented columns
        read_only_fields = fields


class AuditPagination(CursorPagination):
    """Keyset pages by id: no COUNT(*), steady cost over tens of millions of rows."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


LIST_PARAMS = ("cursor", "page_size", "format")


@extend_schema_view(list=extend_schema(parameters=FILTER_PARAMETERS))
class AuditEventViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,  # type: ignore[type-arg]
):
    """The audit trail, newest first. Read-only: the trail cannot be changed."""

    serializer_class = AuditEventSerializer
    permission_classes = [IsTollgateAdmin]
    pagination_class = AuditPagination

    def get_queryset(self) -> QuerySet[AuditEvent]:
        scope = scope_of(self.request)
        queryset = AuditEvent.objects.all()
        if not scope.is_global:
            queryset = queryset.filter(org_id=scope.org.pk if scope.org else None)
        if self.action == "list":
            queryset = request_filters(self.request, extra=LIST_PARAMS).apply(queryset)
        return queryset.order_by("-id")


class AuditExportView(APIView):
    """The filtered trail as a streamed CSV attachment (columns: see ``audit.export``).

    Each export is recorded as an ``audit.exported`` row when it starts.
    """

    permission_classes = [IsTollgateAdmin]
    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # The CSV itself is a streamed response, not rendered; errors (400, 401, 404) are
        # always JSON, whatever the Accept header (text/csv included).
        return (JSONRenderer(), JSONRenderer.media_type)

    @extend_schema(
        parameters=FILTER_PARAMETERS,
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="CSV file"),
            400: OpenApiResponse(description="A bad filter, named."),
            404: OpenApiResponse(description="Another organization."),
        },
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        filters = record_export(request_filters(request), surface="api")
        return csv_response(audit_export_rows(filters=filters), request=request._request)
