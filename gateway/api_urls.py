from django.urls import path
from rest_framework.routers import DefaultRouter

from alerts.api import (
    AlertChannelViewSet,
    AlertRuleViewSet,
    AlertViewSet,
    SmtpSettingsView,
    SmtpTestView,
)
from audit.api import AuditEventViewSet, AuditExportView
from gateway.api import LlmModelViewSet, ProviderViewSet
from gateway.api_usage import UsageView
from policies.api import ApiKeyViewSet, FeatureViewSet, OrganizationViewSet
from policies.api_limits import LimitViewSet

router = DefaultRouter()
router.register("orgs", OrganizationViewSet, basename="org")
router.register("features", FeatureViewSet, basename="feature")
router.register("keys", ApiKeyViewSet, basename="apikey")
router.register("limits", LimitViewSet, basename="limit")
router.register("providers", ProviderViewSet, basename="provider")
router.register("models", LlmModelViewSet, basename="model")
router.register("audit", AuditEventViewSet, basename="audit")
router.register("alert-channels", AlertChannelViewSet, basename="alertchannel")
router.register("alert-rules", AlertRuleViewSet, basename="alertrule")
router.register("alerts", AlertViewSet, basename="alert")

# Before the router: its detail route (with a format suffix) would take "export.csv".
urlpatterns = [
    path("audit/export.csv", AuditExportView.as_view(), name="audit-export"),
    path("usage/", UsageView.as_view(), name="usage"),
    path("settings/smtp/", SmtpSettingsView.as_view(), name="smtp-settings"),
    path("settings/smtp/test/", SmtpTestView.as_view(), name="smtp-settings-test"),
    *router.urls,
]
