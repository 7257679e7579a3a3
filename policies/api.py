"""REST management API for organizations, features and API keys."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.db.models.deletion import ProtectedError, RestrictedError
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from audit.mixins import AuditedViewSetMixin
from gateway.models import LlmModel
from policies import services
from policies.models import ApiKey, Feature, Organization, Tier
from policies.permissions import (
    GlobalWriteOnly,
    InUse,
    IsTollgateAdmin,
    TenantViewSetMixin,
    scope_of,
)


class _ScopedSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    @property
    def scope(self):  # type: ignore[no-untyped-def]
        return scope_of(self.context["request"])


class OrganizationSerializer(_ScopedSerializer):
    tier = serializers.SlugRelatedField(
        slug_field="slug", queryset=Tier.objects.all(), required=False
    )

    class Meta:
        model = Organization
        fields = [
            "id",
            "name",
            "slug",
            "tier",
            "is_active",
            "alert_email_to",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def get_fields(self) -> dict[str, serializers.Field]:  # type: ignore[type-arg]
        fields = super().get_fields()
        if "request" in self.context and not self.scope.is_global:
            # An org admin may rename their org, nothing else.
            for name in ("slug", "tier", "is_active"):
                fields[name].read_only = True
        return fields

    def validate_name(self, value: str) -> str:
        clash = Organization.objects.filter(name__iexact=value)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            raise serializers.ValidationError("An organization with this name already exists.")
        return value

    def create(self, validated_data: dict[str, Any]) -> Organization:
        if "tier" not in validated_data:
            tier = Tier.objects.filter(slug="free").first()
            if tier is None:
                raise serializers.ValidationError({"tier": ["No default tier exists; give one."]})
            validated_data["tier"] = tier
        return super().create(validated_data)


class OrganizationViewSet(AuditedViewSetMixin, viewsets.ModelViewSet):  # type: ignore[type-arg]
    serializer_class = OrganizationSerializer
    lookup_field = "slug"
    permission_classes = [IsTollgateAdmin]

    def get_queryset(self) -> QuerySet[Organization]:
        return scope_of(self.request).orgs().select_related("tier")

    def _require_global(self) -> None:
        if not scope_of(self.request).is_global:
            raise PermissionDenied("Only global staff can create or delete organizations.")

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # Before validation, so an org admin learns nothing (e.g. other orgs' names).
        self._require_global()
        return super().create(request, *args, **kwargs)

    def perform_destroy(self, instance: Organization) -> None:
        self._require_global()
        try:
            with transaction.atomic():
                # The org's models go first: their providers (also the org's) PROTECT them.
                LlmModel.objects.filter(org=instance).delete()
                instance.delete()
        except (ProtectedError, RestrictedError) as exc:
            blocking = (
                exc.protected_objects if isinstance(exc, ProtectedError) else exc.restricted_objects
            )
            names = sorted({str(obj) for obj in blocking})[:10]
            raise InUse(f"Still in use by: {', '.join(names)}.") from None


class FeatureSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = Feature
        fields = ["id", "name", "description", "alert_email_to", "created_at"]
        read_only_fields = ["created_at"]


class FeatureViewSet(AuditedViewSetMixin, viewsets.ModelViewSet):  # type: ignore[type-arg]
    """The global feature list: readable by every admin user, changed by global staff."""

    serializer_class = FeatureSerializer
    queryset = Feature.objects.all()
    lookup_field = "name"
    permission_classes = [IsTollgateAdmin, GlobalWriteOnly]


class ApiKeySerializer(_ScopedSerializer):
    org = serializers.SlugRelatedField(slug_field="slug", queryset=Organization.objects.none())
    default_feature = serializers.SlugRelatedField(
        slug_field="name", queryset=Feature.objects.all(), required=False, allow_null=True
    )
    allowed_features = serializers.SlugRelatedField(
        slug_field="name", queryset=Feature.objects.all(), many=True, required=False
    )
    allowed_models = serializers.PrimaryKeyRelatedField(
        queryset=LlmModel.objects.none(), many=True, required=False
    )
    status = serializers.CharField(read_only=True)
    display = serializers.CharField(read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "org",
            "name",
            "prefix",
            "display",
            "status",
            "default_feature",
            "allowed_features",
            "allowed_models",
            "expires_at",
            "revoked_at",
            "created_at",
            "last_used_at",
        ]
        read_only_fields = ["prefix", "revoked_at", "created_at", "last_used_at"]

    def get_fields(self) -> dict[str, serializers.Field]:  # type: ignore[type-arg]
        fields = super().get_fields()
        if "request" not in self.context:
            return fields
        scope = self.scope
        fields["org"].queryset = scope.orgs()  # type: ignore[attr-defined]
        fields["allowed_models"].child_relation.queryset = LlmModel.objects.filter(  # type: ignore[attr-defined]
            scope.visible_filter(shared=True)
        )
        if self.instance is not None:
            fields["org"].read_only = True  # a key never moves between orgs
        elif not scope.is_global:
            fields["org"].required = False
        return fields

    def validate_expires_at(self, value: Any) -> Any:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("The expiry must be in the future.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        org = attrs.get("org") or (self.instance.org if self.instance else self.scope.org)
        if org is None:
            raise serializers.ValidationError({"org": ["This field is required."]})
        attrs["org"] = org
        models = attrs.get("allowed_models", [])
        foreign = [m.pk for m in models if m.org_id not in (None, org.pk)]
        if foreign:
            raise serializers.ValidationError(
                {
                    "allowed_models": [
                        f'Invalid pk "{pk}" - object does not exist.' for pk in foreign
                    ]
                }
            )
        default = attrs.get(
            "default_feature", self.instance.default_feature if self.instance else None
        )
        allowed = attrs.get(
            "allowed_features",
            list(self.instance.allowed_features.all()) if self.instance else [],
        )
        if default is not None and allowed and default not in allowed:
            raise serializers.ValidationError(
                {"default_feature": ["The default feature must be one of the allowed features."]}
            )
        return attrs

    def create(self, validated_data: dict[str, Any]) -> ApiKey:
        key, raw = services.apikey_create(
            org=validated_data["org"],
            name=validated_data["name"],
            actor=self.context["request"].user,
            default_feature=validated_data.get("default_feature"),
            allowed_features=validated_data.get("allowed_features", []),
            allowed_models=validated_data.get("allowed_models", []),
            expires_at=validated_data.get("expires_at"),
        )
        key.raw_key = raw  # type: ignore[attr-defined]
        return key

    def update(self, instance: ApiKey, validated_data: dict[str, Any]) -> ApiKey:
        validated_data.pop("org", None)
        features = validated_data.pop("allowed_features", None)
        models = validated_data.pop("allowed_models", None)
        instance = super().update(instance, validated_data)
        services.apikey_set_allowed(key=instance, features=features, models=models)
        return instance


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.CharField(
        source="raw_key", read_only=True, help_text="The full key. Shown once, never again."
    )

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]


class ApiKeyViewSet(
    AuditedViewSetMixin,
    TenantViewSetMixin,
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.ListModelMixin,
    viewsets.GenericViewSet,  # type: ignore[type-arg]
):
    """Client API keys. Keys are revoked, never deleted, so their history stays."""

    base_queryset = ApiKey.objects.select_related("org", "default_feature").prefetch_related(
        "allowed_features", "allowed_models"
    )
    permission_classes = [IsTollgateAdmin]

    def get_serializer_class(self) -> type[ApiKeySerializer]:
        return ApiKeyCreatedSerializer if self.action == "create" else ApiKeySerializer

    @extend_schema(request=None, responses=ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        key = self.get_object()
        services.apikey_revoke(key=key, actor=request.user)
        return Response(
            ApiKeySerializer(key, context=self.get_serializer_context()).data,
            status=status.HTTP_200_OK,
        )
