from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from gateway import health
from gateway.metrics import metrics_view

admin.site.site_header = "Tollgate"
admin.site.site_title = "Tollgate admin"
admin.site.index_title = "Limits, budgets, keys and providers"

urlpatterns = [
    path("health", health.health, name="health"),
    path("health/live", health.health_live, name="health-live"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/", include("gateway.api_urls")),
]
