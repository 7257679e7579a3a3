"""``GET /api/usage/``: the usage and cost figures of the admin's charts, as JSON or CSV."""

from __future__ import annotations

from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from gateway.params import FilterError, iso_utc
from gateway.usage_report import (
    UsageQuery,
    budget_burndown,
    usage_csv,
    usage_query_parse,
    usage_series,
    usage_top_keys,
    usage_totals,
)
from policies.permissions import scope_of

PARAMETERS = [
    OpenApiParameter(
        "from", OpenApiTypes.DATETIME, description="ISO 8601 date or date-time (UTC), inclusive."
    ),
    OpenApiParameter(
        "to",
        OpenApiTypes.DATETIME,
        description="Exclusive; a date means through its end. Default now; range default 7 days.",
    ),
    OpenApiParameter(
        "group_by", OpenApiTypes.STR, description="Comma-separated: org, feature, model."
    ),
    OpenApiParameter(
        "interval", OpenApiTypes.STR, enum=["hour", "day"], description="Default day."
    ),
    OpenApiParameter("org", OpenApiTypes.STR, description="Only this organization (slug)."),
    OpenApiParameter("feature", OpenApiTypes.STR, description="Only this feature."),
    OpenApiParameter("model", OpenApiTypes.STR, description="Only this model."),
    OpenApiParameter(
        "format", OpenApiTypes.STR, enum=["json", "csv"], description="csv: rows only."
    ),
]


def request_usage_query(request: Any) -> UsageQuery:
    """The request's usage query in its caller's scope; 400 or 404 naming the parameter."""
    try:
        return usage_query_parse(request.GET, scope=scope_of(request))
    except FilterError as exc:
        if exc.status == 404:
            raise NotFound(exc.message) from None
        raise ValidationError({exc.param: [exc.message]}) from None


class _CsvFormat(BaseRenderer):
    """Lets ``?format=csv`` through DRF's content negotiation; the view streams the CSV."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None
    ) -> Any:
        return data


class UsageView(APIView):
    """Requests, tokens and cost per period, grouped; top keys by spend; budget burn-down.
    Org users see only their organization."""

    renderer_classes = [*api_settings.DEFAULT_RENDERER_CLASSES, _CsvFormat]  # type: ignore[list-item]

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        # Errors are JSON, also when CSV was asked for.
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return response

    @extend_schema(parameters=PARAMETERS, responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Any:
        query = request_usage_query(request)
        scope = scope_of(request)
        rows = usage_series(scope=scope, query=query)
        if request.query_params.get("format") == "csv":
            response = StreamingHttpResponse(
                usage_csv(rows, query.group_by), content_type="text/csv; charset=utf-8"
            )
            stamp = f"{query.start:%Y%m%d}-{query.end:%Y%m%d}"
            response["Content-Disposition"] = f'attachment; filename="usage-{stamp}.csv"'
            return response
        return Response(
            {
                "from": iso_utc(query.start),
                "to": iso_utc(query.end),
                "interval": query.interval,
                "group_by": list(query.group_by),
                "results": rows,
                "totals": usage_totals(rows),
                "top_keys": usage_top_keys(scope=scope, query=query),
                "budgets": budget_burndown(scope=scope, org=query.org),
            }
        )
