from rest_framework.routers import DefaultRouter

from gateway.api import LlmModelViewSet, ProviderViewSet
from policies.api import ApiKeyViewSet, FeatureViewSet, OrganizationViewSet
from policies.api_limits import LimitViewSet

router = DefaultRouter()
router.register("orgs", OrganizationViewSet, basename="org")
router.register("features", FeatureViewSet, basename="feature")
router.register("keys", ApiKeyViewSet, basename="apikey")
router.register("limits", LimitViewSet, basename="limit")
router.register("providers", ProviderViewSet, basename="provider")
router.register("models", LlmModelViewSet, basename="model")

urlpatterns = router.urls
