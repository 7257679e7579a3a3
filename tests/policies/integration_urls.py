"""A team's own endpoints, limited by Tollgate's policies (used by test_integrations)."""

from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from rest_framework.decorators import api_view, permission_classes, throttle_classes
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from policies.integrations import TollgateThrottle, tollgate_limited


@api_view(["POST"])
@permission_classes([AllowAny])
@throttle_classes([TollgateThrottle])
def drf_call(request):  # type: ignore[no-untyped-def]
    return Response({"ok": True})


@tollgate_limited(feature="summarize")
def plain_call(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def middleware_call(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [
    path("internal/drf", drf_call),
    path("internal/plain", plain_call),
    path("limited/call", middleware_call),
    path("", include("gateway.urls")),
]
