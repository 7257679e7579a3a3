"""REST management API for alert channels, rules, history and the SMTP settings."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from alerts import validation
from alerts.models import Alert, AlertChannel, AlertRule, Delivery, SmtpSettings
from audit.mixins import AuditedViewSetMixin
from gateway.api import _TenantSerializer
from policies.models import Feature, Organization
from policies.permissions import IsTollgateAdmin, TenantViewSetMixin, _save_or_400, scope_of


def _check(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a ``validation`` function; its Django error becomes this field's DRF error."""
    try:
        return func(*args, **kwargs)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.messages) from None


# --- channels --------------------------------------------------------------------------------


class AlertChannelSerializer(_TenantSerializer):
    secret = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=True,
        style={"input_type": "password"},
        help_text=(
            "Write-only. Slack/Discord/webhook: the http(s) URL; PagerDuty: the routing key. "
            "Omit to keep the stored one."
        ),
    )
    signing_key = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=True,
        style={"input_type": "password"},
        help_text="Write-only HMAC key for webhook channels. Omit to keep; empty clears it.",
    )
    has_secret = serializers.SerializerMethodField()
    has_signing_key = serializers.SerializerMethodField()
    severities = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="info, warning, critical."
    )

    class Meta:
        model = AlertChannel
        fields = [
            "id",
            "org",
            "name",
            "kind",
            "config",
            "secret",
            "has_secret",
            "signing_key",
            "has_signing_key",
            "severities",
            "is_active",
            "status",
            "last_error",
            "failing_since",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["status", "last_error", "failing_since", "created_at", "updated_at"]

    def get_has_secret(self, obj: AlertChannel) -> bool:
        return bool(obj.secret_ciphertext)

    def get_has_signing_key(self, obj: AlertChannel) -> bool:
        return bool(obj.signing_key_ciphertext)

    def validate_severities(self, value: list[str]) -> list[str]:
        return _check(validation.clean_severities, value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs["org"] = self._target_org(attrs)
        kind = attrs.get("kind", getattr(self.instance, "kind", ""))
        errors: dict[str, list[str]] = {}
        if "config" in attrs or self.instance is None:
            try:
                attrs["config"] = validation.clean_channel_config(kind, attrs.get("config"))
            except DjangoValidationError as exc:
                errors["config"] = exc.messages
        stored = (
            self.instance is not None
            and self.instance.kind == kind
            and bool(self.instance.secret_ciphertext)
        )
        try:
            secret = validation.clean_channel_secret(kind, attrs.get("secret"), stored=stored)
        except DjangoValidationError as exc:
            errors["secret"] = exc.messages
        else:
            if secret is not None:
                attrs["secret"] = secret
        if errors:
            raise serializers.ValidationError(errors)
        return attrs

    def _apply_secrets(self, channel: AlertChannel, validated_data: dict[str, Any]) -> None:
        if "secret" in validated_data:
            channel.secret = validated_data.pop("secret")
        if "signing_key" in validated_data:
            channel.signing_key = validated_data.pop("signing_key")

    def create(self, validated_data: dict[str, Any]) -> AlertChannel:
        channel = AlertChannel()
        self._apply_secrets(channel, validated_data)
        for name, value in validated_data.items():
            setattr(channel, name, value)
        channel.save()
        return channel

    def update(self, instance: AlertChannel, validated_data: dict[str, Any]) -> AlertChannel:
        self._apply_secrets(instance, validated_data)
        validated_data.pop("org", None)
        return super().update(instance, validated_data)


class AlertChannelViewSet(AuditedViewSetMixin, TenantViewSetMixin, viewsets.ModelViewSet):  # type: ignore[type-arg]
    """Where alerts go. Shared channels (no org) are readable by org users, not changeable."""

    base_queryset = AlertChannel.objects.select_related("org")
    serializer_class = AlertChannelSerializer
    shared_rows = True
    permission_classes = [IsTollgateAdmin]


# --- rules -----------------------------------------------------------------------------------


class AlertRuleSerializer(_TenantSerializer):
    feature = serializers.SlugRelatedField(
        slug_field="name",
        queryset=Feature.objects.all(),
        required=False,
        allow_null=True,
        help_text="Empty: every feature.",
    )
    channels = serializers.PrimaryKeyRelatedField(
        many=True,
        queryset=AlertChannel.objects.none(),
        required=False,
        help_text="Channel ids: shared channels or the rule's own org's. At least one.",
    )

    class Meta:
        model = AlertRule
        fields = [
            "id",
            "org",
            "name",
            "kind",
            "feature",
            "params",
            "severity",
            "cooldown_seconds",
            "channels",
            "is_active",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]
        extra_kwargs = {"cooldown_seconds": {"min_value": None}}

    def get_fields(self) -> dict[str, serializers.Field]:  # type: ignore[type-arg]
        fields = super().get_fields()
        request = self.context.get("request")
        if request is not None:
            # Another org's channel is never found: "object does not exist".
            fields["channels"].child_relation.queryset = AlertChannel.objects.filter(  # type: ignore[attr-defined]
                scope_of(request).visible_filter(shared=True)
            )
        return fields

    def validate_cooldown_seconds(self, value: int) -> int:
        return _check(validation.clean_cooldown, value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        org = self._target_org(attrs)
        attrs["org"] = org
        kind = attrs.get("kind", getattr(self.instance, "kind", ""))
        errors: dict[str, list[str]] = {}
        if "params" in attrs or "kind" in attrs or self.instance is None:
            params = attrs.get("params", getattr(self.instance, "params", {}))
            try:
                attrs["params"] = validation.clean_rule_params(kind, params)
            except DjangoValidationError as exc:
                errors["params"] = exc.messages
        channels = attrs.get("channels")
        if channels is None and self.instance is not None:
            channels = list(self.instance.channels.all())
        try:
            validation.check_rule_channels(channels, getattr(org, "pk", None))
        except DjangoValidationError as exc:
            errors["channels"] = exc.messages
        if errors:
            raise serializers.ValidationError(errors)
        return attrs

    def update(self, instance: AlertRule, validated_data: dict[str, Any]) -> AlertRule:
        validated_data.pop("org", None)
        return super().update(instance, validated_data)


class AlertRuleViewSet(AuditedViewSetMixin, TenantViewSetMixin, viewsets.ModelViewSet):  # type: ignore[type-arg]
    """Rules: an org's own, or shared ones (no org: every organization) set by global staff."""

    base_queryset = AlertRule.objects.select_related("org", "feature").prefetch_related("channels")
    serializer_class = AlertRuleSerializer
    shared_rows = True
    permission_classes = [IsTollgateAdmin]


# --- history ---------------------------------------------------------------------------------


class DeliverySerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    channel_name = serializers.CharField(source="channel.name", read_only=True)
    channel_kind = serializers.CharField(source="channel.kind", read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "channel",
            "channel_name",
            "channel_kind",
            "state",
            "attempts",
            "last_error",
            "duration_ms",
            "sent_at",
            "created_at",
        ]
        read_only_fields = fields


class AlertSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    org: serializers.SlugRelatedField[Organization] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    rule_name = serializers.CharField(source="rule.name", read_only=True, default=None)
    deliveries = DeliverySerializer(many=True, read_only=True)

    class Meta:
        model = Alert
        fields = [
            "id",
            "rule",
            "rule_name",
            "scope",
            "kind",
            "severity",
            "title",
            "figures",
            "org",
            "feature",
            "observed_at",
            "created_at",
            "deliveries",
        ]
        read_only_fields = fields


class AlertViewSet(AuditedViewSetMixin, TenantViewSetMixin, viewsets.ReadOnlyModelViewSet):  # type: ignore[type-arg]
    """Alert history, newest first, each with its deliveries. Org users see their org's."""

    base_queryset = Alert.objects.select_related("org", "rule").prefetch_related(
        "deliveries__channel"
    )
    serializer_class = AlertSerializer
    permission_classes = [IsTollgateAdmin]

    def get_queryset(self) -> QuerySet[Alert]:
        queryset = super().get_queryset()
        params = self.request.query_params
        for name in ("kind", "severity", "feature"):
            if params.get(name):
                queryset = queryset.filter(**{name: params[name]})
        if params.get("rule", "").isdigit():
            queryset = queryset.filter(rule_id=int(params["rule"]))
        return queryset.order_by("-created_at", "-id")


# --- SMTP settings ---------------------------------------------------------------------------


class IsGlobalStaff(BasePermission):
    message = "Only global staff can see or change the SMTP settings."

    def has_permission(self, request: Request, view: Any) -> bool:
        return scope_of(request).is_global


class SmtpSettingsSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    password = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        style={"input_type": "password"},
        help_text="Write-only. Omit to keep the stored password; an empty string clears it.",
    )
    has_password = serializers.SerializerMethodField()
    configured = serializers.BooleanField(read_only=True)

    class Meta:
        model = SmtpSettings
        fields = [
            "host",
            "port",
            "username",
            "password",
            "has_password",
            "from_address",
            "tls_mode",
            "timeout_seconds",
            "configured",
            "updated_at",
        ]
        read_only_fields = ["updated_at"]
        extra_kwargs = {"port": {"min_value": None, "max_value": None}}

    def get_has_password(self, obj: SmtpSettings) -> bool:
        return bool(obj.password_ciphertext)

    def validate_port(self, value: int) -> int:
        return _check(validation.clean_port, value)

    def validate_host(self, value: str) -> str:
        value = value.strip()
        if any(ch.isspace() or ch in "/:@" for ch in value):
            raise serializers.ValidationError("Give a host name or IP address only.")
        return value

    def validate_from_address(self, value: str) -> str:
        return _check(validation.clean_email, value) if value else value

    def update(self, instance: SmtpSettings, validated_data: dict[str, Any]) -> SmtpSettings:
        if "password" in validated_data:
            instance.password = validated_data.pop("password")
        return super().update(instance, validated_data)


class SmtpSettingsView(AuditedViewSetMixin, APIView):
    """The one SMTP server alert email goes through. Global staff only."""

    permission_classes = [IsTollgateAdmin, IsGlobalStaff]
    serializer_class = SmtpSettingsSerializer

    def _current(self) -> SmtpSettings:
        # Reading never creates the row (a GET writes nothing, not even an audit row).
        return SmtpSettings.objects.filter(pk=1).first() or SmtpSettings(pk=1)

    @extend_schema(responses=SmtpSettingsSerializer)
    def get(self, request: Request) -> Response:
        return Response(SmtpSettingsSerializer(self._current()).data)

    @extend_schema(request=SmtpSettingsSerializer, responses=SmtpSettingsSerializer)
    def put(self, request: Request) -> Response:
        return self._save(request, partial=False)

    @extend_schema(request=SmtpSettingsSerializer, responses=SmtpSettingsSerializer)
    def patch(self, request: Request) -> Response:
        return self._save(request, partial=True)

    def _save(self, request: Request, *, partial: bool) -> Response:
        serializer = SmtpSettingsSerializer(
            self._current(), data=request.data, partial=partial, context={"request": request}
        )
        serializer.is_valid(raise_exception=True)
        _save_or_400(serializer)
        return Response(serializer.data)


class SmtpTestSerializer(serializers.Serializer):  # type: ignore[type-arg]
    to = serializers.CharField(help_text="Where the test email goes.")

    def validate_to(self, value: str) -> str:
        return _check(validation.clean_email, value)


_TEST_RESULT = inline_serializer(
    "SmtpTestResult",
    {
        "ok": serializers.BooleanField(),
        "answer": serializers.CharField(required=False),
        "error": serializers.CharField(required=False),
    },
)


class SmtpTestView(APIView):
    """Send a test email with the saved settings and report the server's answer.

    Nothing is recorded as sent; an unreachable or refusing server answers 502 with its error.
    """

    permission_classes = [IsTollgateAdmin, IsGlobalStaff]
    serializer_class = SmtpTestSerializer

    @extend_schema(
        request=SmtpTestSerializer,
        responses={
            200: _TEST_RESULT,
            400: OpenApiResponse(description="A bad address, or SMTP not configured."),
            502: _TEST_RESULT,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = SmtpTestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        settings = SmtpSettings.objects.filter(pk=1).first()
        if settings is None or not settings.configured:
            return Response(
                {"ok": False, "error": "SMTP is not configured: set the host and from address."},
                status=status.HTTP_400_BAD_REQUEST,
            )
        from alerts.notifiers.email import send_test_email

        try:
            answer = send_test_email(settings=settings, to=serializer.validated_data["to"])
        except Exception as exc:
            return Response(
                {"ok": False, "error": str(exc) or type(exc).__name__},
                status=status.HTTP_502_BAD_GATEWAY,
            )
        return Response({"ok": True, "answer": answer})
