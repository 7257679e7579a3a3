"""REST management API for providers and models."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers, viewsets

from audit.mixins import AuditedViewSetMixin
from gateway.models import LlmModel, Provider
from policies.models import Organization
from policies.permissions import IsTollgateAdmin, TenantViewSetMixin, scope_of


class _TenantSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """``org`` is writable by global staff (null = shared by all orgs), forced otherwise."""

    org = serializers.SlugRelatedField(
        slug_field="slug", queryset=Organization.objects.all(), required=False, allow_null=True
    )

    def get_fields(self) -> dict[str, serializers.Field]:  # type: ignore[type-arg]
        fields = super().get_fields()
        request = self.context.get("request")
        if request is not None and (not scope_of(request).is_global or self.instance is not None):
            fields["org"].read_only = True
        return fields

    def get_unique_together_validators(self) -> list[Any]:
        # Names are unique per org (or in the shared catalog); the org is only known in
        # validate(), which checks it (_validate_unique_name). DRF's validators would
        # make ``org`` required instead.
        return []

    def _target_org(self, attrs: dict[str, Any]) -> Organization | None:
        if self.instance is not None:
            return self.instance.org
        scope = scope_of(self.context["request"])
        return attrs.get("org") if scope.is_global else scope.org

    def _validate_unique_name(self, model: type[Any], attrs: dict[str, Any]) -> None:
        org = self._target_org(attrs)
        attrs["org"] = org
        name = attrs.get("name", getattr(self.instance, "name", None))
        clash = model.objects.filter(org=org, name=name)
        if self.instance is not None:
            clash = clash.exclude(pk=self.instance.pk)
        if clash.exists():
            where = f"organization {org.slug}" if org else "the shared catalog"
            raise serializers.ValidationError({"name": [f"{name!r} already exists in {where}."]})


class ProviderSerializer(_TenantSerializer):
    api_key = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=True,
        style={"input_type": "password"},
        help_text="Write-only. Omit to keep the stored key; send an empty string to clear it.",
    )
    has_api_key = serializers.BooleanField(read_only=True)

    class Meta:
        model = Provider
        fields = [
            "id",
            "org",
            "name",
            "kind",
            "base_url",
            "api_key",
            "has_api_key",
            "is_active",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def validate_base_url(self, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise serializers.ValidationError("Use an http:// or https:// URL.")
        return value.rstrip("/")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        self._validate_unique_name(Provider, attrs)
        return attrs

    def _apply_secret(self, provider: Provider, validated_data: dict[str, Any]) -> None:
        if "api_key" in validated_data:
            provider.api_key = validated_data.pop("api_key")

    def create(self, validated_data: dict[str, Any]) -> Provider:
        secret = validated_data.pop("api_key", "")
        provider = Provider(**validated_data)
        provider.api_key = secret
        provider.save()
        return provider

    def update(self, instance: Provider, validated_data: dict[str, Any]) -> Provider:
        self._apply_secret(instance, validated_data)
        validated_data.pop("org", None)
        return super().update(instance, validated_data)


class ProviderViewSet(AuditedViewSetMixin, TenantViewSetMixin, viewsets.ModelViewSet):  # type: ignore[type-arg]
    base_queryset = Provider.objects.select_related("org")
    serializer_class = ProviderSerializer
    shared_rows = True
    permission_classes = [IsTollgateAdmin]


class LlmModelSerializer(_TenantSerializer):
    provider = serializers.PrimaryKeyRelatedField(queryset=Provider.objects.none())

    class Meta:
        model = LlmModel
        fields = [
            "id",
            "org",
            "name",
            "provider",
            "upstream_name",
            "mode",
            "input_price_per_million",
            "output_price_per_million",
            "cached_input_price_per_million",
            "is_active",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def get_fields(self) -> dict[str, serializers.Field]:  # type: ignore[type-arg]
        fields = super().get_fields()
        request = self.context.get("request")
        if request is not None:
            fields["provider"].queryset = Provider.objects.filter(  # type: ignore[attr-defined]
                scope_of(request).visible_filter(shared=True)
            )
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        self._validate_unique_name(LlmModel, attrs)
        provider = attrs.get("provider", getattr(self.instance, "provider", None))
        org = attrs["org"]
        if provider is not None and provider.org_id not in (None, getattr(org, "pk", None)):
            raise serializers.ValidationError(
                {"provider": ["A model can only use a shared provider or one of its own org."]}
            )
        return attrs

    def update(self, instance: LlmModel, validated_data: dict[str, Any]) -> LlmModel:
        validated_data.pop("org", None)
        return super().update(instance, validated_data)


class LlmModelViewSet(AuditedViewSetMixin, TenantViewSetMixin, viewsets.ModelViewSet):  # type: ignore[type-arg]
    base_queryset = LlmModel.objects.select_related("org", "provider")
    serializer_class = LlmModelSerializer
    shared_rows = True
    permission_classes = [IsTollgateAdmin]
