"""Admin for alerts: SMTP settings (one row, with a test email), channels, rules, history."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html

from alerts import validation
from alerts.models import Alert, AlertChannel, AlertRule, Delivery, Severity, SmtpSettings
from policies.admin_scope import OrgScopedAdmin, request_scope

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups
    from django.urls import URLPattern


def _password_input() -> forms.PasswordInput:
    return forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"})


# --- SMTP settings ---------------------------------------------------------------------------


class SmtpSettingsForm(forms.ModelForm):  # type: ignore[type-arg]
    """The password is write-only: never rendered back, blank keeps the stored one."""

    port = forms.IntegerField(initial=587, help_text="1-65535; usually 587 (STARTTLS) or 465.")
    password = forms.CharField(
        required=False,
        strip=False,
        widget=_password_input(),
        help_text="Write-only. Leave blank to keep the stored password.",
    )
    clear_password = forms.BooleanField(required=False, help_text="Remove the stored password.")

    class Meta:
        model = SmtpSettings
        fields = ["host", "port", "username", "from_address", "tls_mode", "timeout_seconds"]

    def clean_port(self) -> int:
        try:
            return validation.clean_port(self.cleaned_data["port"])
        except DjangoValidationError as exc:
            raise forms.ValidationError(exc.messages) from None

    def clean_host(self) -> str:
        host = (self.cleaned_data.get("host") or "").strip()
        if any(ch.isspace() or ch in "/:@" for ch in host):
            raise forms.ValidationError("Give a host name or IP address only.")
        return host

    def save(self, commit: bool = True) -> SmtpSettings:
        settings: SmtpSettings = super().save(commit=False)
        if self.cleaned_data.get("clear_password"):
            settings.password = ""
        elif self.cleaned_data.get("password"):
            settings.password = self.cleaned_data["password"]
        if commit:
            settings.save()
        return settings


@admin.register(SmtpSettings)
class SmtpSettingsAdmin(OrgScopedAdmin):
    """One row (id 1), global staff only; the list opens that row."""

    form = SmtpSettingsForm
    org_field = None
    global_only = True

    def _global(self, request: HttpRequest) -> bool:
        return request_scope(request).is_global

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._global(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._global(request)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return self._global(request) and not SmtpSettings.objects.exists()

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._global(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_fields(self, request: HttpRequest, obj: Any = None) -> _FieldGroups:
        fields: list[Any] = ["host", "port", "tls_mode", "username"]
        if self.has_change_permission(request, obj):
            fields += ["password", "clear_password"]
        fields += ["has_password", "from_address", "timeout_seconds"]
        if obj is not None and obj.pk is not None:
            fields.append("send_test_email")
        return fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["has_password", "send_test_email"]

    @admin.display(description="Password set", boolean=True)
    def has_password(self, obj: SmtpSettings | None) -> bool:
        return bool(obj is not None and obj.password_ciphertext)

    @admin.display(description="Send test email")
    def send_test_email(self, obj: SmtpSettings) -> str:
        # A submit button of the change form that posts to the test view instead (formaction):
        # no nested form, and the form's CSRF token goes along.
        return format_html(
            '<input type="email" name="test_email_to" placeholder="you@example.com" '
            'aria-label="Test email recipient" size="30"> '
            '<button type="submit" class="button" formaction="{}" formnovalidate '
            'name="_send_test_email">Send test email</button>'
            '<div class="help">Sends with the <em>saved</em> settings (save changes first) '
            "and shows the server's answer.</div>",
            reverse("admin:alerts_smtpsettings_test_email"),
        )

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        row = SmtpSettings.objects.filter(pk=1).first()
        if row is None:
            return HttpResponseRedirect(reverse("admin:alerts_smtpsettings_add"))
        return HttpResponseRedirect(reverse("admin:alerts_smtpsettings_change", args=[row.pk]))

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        obj.pk = 1  # the single row
        super().save_model(request, obj, form, change)

    def get_urls(self) -> list[URLPattern]:
        urls = [
            path(
                "test-email/",
                self.admin_site.admin_view(self.test_email_view),
                name="alerts_smtpsettings_test_email",
            )
        ]
        # First: the default "<path:object_id>/" route would take "test-email/".
        return urls + super().get_urls()

    def test_email_view(self, request: HttpRequest) -> HttpResponse:
        """Send a test email with the saved settings; the server's answer or error as a message.

        Nothing is saved: neither the form's unsaved edits nor any record of the send.
        """
        if not self.has_change_permission(request):
            raise PermissionDenied
        settings = SmtpSettings.objects.filter(pk=1).first()
        back = (
            reverse("admin:alerts_smtpsettings_change", args=[settings.pk])
            if settings is not None
            else reverse("admin:alerts_smtpsettings_add")
        )
        if request.method != "POST":
            return HttpResponseRedirect(back)
        to = request.POST.get("test_email_to", "").strip()
        try:
            to = validation.clean_email(to)
        except DjangoValidationError as exc:
            self.message_user(request, f"Test email not sent: {exc.messages[0]}", messages.ERROR)
            return HttpResponseRedirect(back)
        if settings is None or not settings.configured:
            self.message_user(
                request,
                "Test email not sent: save a host and a from address first.",
                messages.ERROR,
            )
            return HttpResponseRedirect(back)
        from alerts.notifiers.email import send_test_email

        try:
            answer = send_test_email(settings=settings, to=to)
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            self.message_user(request, f"Test email to {to} failed: {error}", messages.ERROR)
        else:
            self.message_user(
                request, f"Test email sent to {to}. The server answered: {answer}", messages.SUCCESS
            )
        return HttpResponseRedirect(back)


# --- channels --------------------------------------------------------------------------------


class AlertChannelForm(forms.ModelForm):  # type: ignore[type-arg]
    """Secrets are write-only: never rendered back, blank keeps the stored one."""

    email_to = forms.CharField(
        required=False,
        label="Email recipients",
        widget=forms.TextInput(attrs={"size": 80}),
        help_text=(
            "Email channels: comma-separated addresses (the org's and feature's alert lists "
            "are added)."
        ),
    )
    secret = forms.CharField(
        required=False,
        strip=True,
        label="Webhook URL / routing key",
        widget=_password_input(),
        help_text=(
            "Write-only. Slack, Discord, webhook: the http(s) URL; PagerDuty: the routing key. "
            "Leave blank to keep the stored one."
        ),
    )
    clear_secret = forms.BooleanField(required=False, help_text="Remove the stored secret.")
    signing_key = forms.CharField(
        required=False,
        strip=True,
        label="HMAC signing key",
        widget=_password_input(),
        help_text="Write-only; webhook channels. Leave blank to keep the stored key.",
    )
    clear_signing_key = forms.BooleanField(required=False, help_text="Remove the signing key.")
    severities = forms.MultipleChoiceField(
        choices=Severity.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        initial=validation.SEVERITIES,
        help_text="The severities this channel receives.",
    )

    class Meta:
        model = AlertChannel
        fields = ["org", "name", "kind", "config", "severities", "is_active"]
        help_texts = {"config": "Other options as a JSON object (usually empty)."}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = dict(self.instance.config or {}) if self.instance.pk else {}
        if "email_to" in self.fields and not self.is_bound:
            self.initial["email_to"] = ", ".join(config.get("to") or [])
        if "config" in self.fields:
            self.fields["config"].required = False
            self.initial["config"] = {k: v for k, v in config.items() if k != "to"}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind") or self.instance.kind
        if "config" in self.fields and "config" not in self.errors:
            config = data.get("config") or {}
            if isinstance(config, dict) and "to" in config:
                self.add_error("config", 'Put the recipients in "Email recipients".')
            else:
                try:
                    data["config"] = validation.clean_channel_config(kind, config)
                except DjangoValidationError as exc:
                    self.add_error("config", exc)
        try:
            recipients = validation.clean_email_list(data.get("email_to") or "")
        except DjangoValidationError as exc:
            self.add_error("email_to", exc)
        else:
            if recipients and kind != AlertChannel.Kind.EMAIL:
                self.add_error("email_to", "Only email channels have recipients.")
            data["email_to"] = recipients
        if "severities" in data:
            try:
                data["severities"] = validation.clean_severities(data.get("severities") or [])
            except DjangoValidationError as exc:
                self.add_error("severities", exc)
        secret: str | None = "" if data.get("clear_secret") else (data.get("secret") or None)
        stored = bool(
            self.instance.pk
            and self.instance.kind == kind
            and self.instance.secret_ciphertext
            and not data.get("clear_secret")
        )
        try:
            data["secret"] = validation.clean_channel_secret(kind, secret, stored=stored)
        except DjangoValidationError as exc:
            self.add_error("secret", exc)
        return data

    def save(self, commit: bool = True) -> AlertChannel:
        channel: AlertChannel = super().save(commit=False)
        config = {k: v for k, v in (channel.config or {}).items() if k != "to"}
        if self.cleaned_data.get("email_to"):
            config["to"] = self.cleaned_data["email_to"]
        channel.config = config
        if self.cleaned_data.get("secret") is not None:
            channel.secret = self.cleaned_data["secret"]
        if self.cleaned_data.get("clear_signing_key"):
            channel.signing_key = ""
        elif self.cleaned_data.get("signing_key"):
            channel.signing_key = self.cleaned_data["signing_key"]
        if commit:
            channel.save()
        return channel


@admin.register(AlertChannel)
class AlertChannelAdmin(OrgScopedAdmin):
    form = AlertChannelForm
    shared_rows = True
    list_display = [
        "name",
        "kind",
        "org",
        "status_badge",
        "severity_list",
        "has_secret",
        "is_active",
        "last_error_short",
    ]
    list_filter = ["status", "kind", "is_active"]
    search_fields = ["name"]
    actions = ["mark_ok"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> _FieldGroups:
        fields: list[Any] = ["org", "name", "kind", "email_to"]
        if self.has_change_permission(request, obj):
            # Write-only inputs only for those who may change the row: a read-only view
            # would otherwise show the decrypted value.
            fields += ["secret", "clear_secret", "signing_key", "clear_signing_key"]
        fields += ["has_secret", "has_signing_key", "config", "severities", "is_active"]
        if obj is not None:
            fields += ["status", "last_error", "failing_since"]
        if not request_scope(request).is_global:
            fields.remove("org")
        return fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["has_secret", "has_signing_key", "status", "last_error", "failing_since"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AlertChannel]:
        return super().get_queryset(request).select_related("org")

    @admin.display(description="Secret set", boolean=True)
    def has_secret(self, obj: AlertChannel | None) -> bool:
        return bool(obj is not None and obj.secret_ciphertext)

    @admin.display(description="Signing key set", boolean=True)
    def has_signing_key(self, obj: AlertChannel | None) -> bool:
        return bool(obj is not None and obj.signing_key_ciphertext)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: AlertChannel) -> str:
        if obj.status == AlertChannel.Status.FAILING:
            return format_html(
                '<strong class="{}" style="color:#fff;background:#ba2121;padding:2px 6px;'
                'border-radius:3px">{}</strong>',
                "alert-channel-failing",
                "FAILING",
            )
        return format_html(
            '<span class="{}" style="color:#287c28">{}</span>', "alert-channel-ok", "OK"
        )

    @admin.display(description="Severities")
    def severity_list(self, obj: AlertChannel) -> str:
        return ", ".join(obj.severities or [])

    @admin.display(description="Last error")
    def last_error_short(self, obj: AlertChannel) -> str:
        text = obj.last_error or ""
        return text if len(text) <= 120 else text[:117] + "..."

    @admin.action(description="Mark selected channels OK (clear the failing status)")
    def mark_ok(self, request: HttpRequest, queryset: QuerySet[AlertChannel]) -> None:
        scope = request_scope(request)
        if not scope.can_write:
            self.message_user(request, "Org members cannot change channels.", messages.ERROR)
            return
        count = 0
        for channel in queryset.filter(scope.owned_filter()):
            channel.status = AlertChannel.Status.OK
            channel.last_error = ""
            channel.failing_since = None
            channel.save(update_fields=["status", "last_error", "failing_since", "updated_at"])
            count += 1
        self.message_user(request, f"Marked {count} channel(s) OK.", messages.SUCCESS)


# --- rules -----------------------------------------------------------------------------------


class AlertRuleForm(forms.ModelForm):  # type: ignore[type-arg]
    cooldown_seconds = forms.IntegerField(
        initial=900,
        help_text="One alert per rule and scope per cooldown, however often it fires.",
    )

    class Meta:
        model = AlertRule
        fields = [
            "org",
            "name",
            "kind",
            "feature",
            "params",
            "severity",
            "cooldown_seconds",
            "channels",
            "is_active",
        ]
        help_texts = {
            "params": (
                "JSON per kind (defaults filled in): limit/budget threshold "
                '{"thresholds": [80, 100]}; cost spike {"factor": 3} and/or '
                '{"amount_usd": 50}; daily spend {"amount_usd": 100}; error rate '
                '{"percent": 20, "window_minutes": 15, "min_requests": 20}; p95 latency '
                '{"p95_ms": 10000, "window_minutes": 15}; others: {}.'
            )
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "channels" in self.fields:
            self.fields["channels"].required = False  # checked in clean(), with a clear message
        if "params" in self.fields:
            self.fields["params"].required = False

    def clean_cooldown_seconds(self) -> int:
        try:
            return validation.clean_cooldown(self.cleaned_data["cooldown_seconds"])
        except DjangoValidationError as exc:
            raise forms.ValidationError(exc.messages) from None

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind") or self.instance.kind
        if "params" in self.fields and "params" not in self.errors and kind:
            try:
                data["params"] = validation.clean_rule_params(kind, data.get("params"))
            except DjangoValidationError as exc:
                self.add_error("params", exc)
        if "channels" in self.fields and "channels" not in self.errors:
            org = data.get("org") if "org" in self.fields else None
            if org is None and "org" not in self.fields:
                org = self.instance.org if self.instance.pk else getattr(self, "scope_org", None)
            try:
                validation.check_rule_channels(data.get("channels"), getattr(org, "pk", None))
            except DjangoValidationError as exc:
                self.add_error("channels", exc)
        return data


@admin.register(AlertRule)
class AlertRuleAdmin(OrgScopedAdmin):
    form = AlertRuleForm
    shared_rows = True
    list_display = [
        "name",
        "kind",
        "org",
        "feature",
        "severity",
        "cooldown_seconds",
        "channel_list",
        "is_active",
    ]
    list_filter = ["kind", "severity", "is_active"]
    search_fields = ["name"]
    filter_horizontal = ["channels"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AlertRule]:
        return (
            super()
            .get_queryset(request)
            .select_related("org", "feature")
            .prefetch_related("channels")
        )

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        form.scope_org = request_scope(request).org  # type: ignore[attr-defined]
        return form

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "channels":
            kwargs["queryset"] = AlertChannel.objects.filter(
                request_scope(request).visible_filter(shared=True)
            )
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    @admin.display(description="Channels")
    def channel_list(self, obj: AlertRule) -> str:
        return ", ".join(channel.name for channel in obj.channels.all())


# --- history ---------------------------------------------------------------------------------


DELIVERY_INLINE_FIELDS = (
    "channel",
    "state",
    "attempts",
    "last_error",
    "duration_ms",
    "sent_at",
    "created_at",
)
ALERT_FIELDS = (
    "title",
    "kind",
    "severity",
    "rule",
    "org",
    "feature",
    "scope",
    "figures",
    "observed_at",
    "created_at",
)
DELIVERY_FIELDS = (
    "alert",
    "channel",
    "state",
    "attempts",
    "last_error",
    "duration_ms",
    "claimed_at",
    "next_attempt_at",
    "sent_at",
    "created_at",
)


class DeliveryInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Delivery
    extra = 0
    can_delete = False
    fields = DELIVERY_INLINE_FIELDS
    readonly_fields = DELIVERY_INLINE_FIELDS
    ordering = ["created_at"]

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The alert itself is already org-scoped; its deliveries come with it.
        return not request_scope(request).is_nobody

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _ReadOnly:
    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(_ReadOnly, OrgScopedAdmin):
    """Alert history, newest first, with each channel's delivery. Read-only."""

    list_display = ["title", "kind", "severity", "org", "feature", "delivery_states", "created_at"]
    list_filter = ["kind", "severity", ("rule", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["title", "scope", "feature"]
    date_hierarchy = "created_at"
    inlines = [DeliveryInline]
    fields = ALERT_FIELDS
    readonly_fields = ALERT_FIELDS

    def get_queryset(self, request: HttpRequest) -> QuerySet[Alert]:
        return (
            super()
            .get_queryset(request)
            .select_related("org", "rule")
            .prefetch_related("deliveries")
        )

    @admin.display(description="Deliveries")
    def delivery_states(self, obj: Alert) -> str:
        states = [delivery.state for delivery in obj.deliveries.all()]
        return ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "-"


@admin.register(Delivery)
class DeliveryAdmin(_ReadOnly, OrgScopedAdmin):
    org_field = "alert__org"
    list_display = [
        "alert",
        "channel",
        "state",
        "attempts",
        "duration_ms",
        "sent_at",
        "last_error",
        "created_at",
    ]
    list_filter = ["state", ("channel", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["alert__title", "last_error"]
    fields = DELIVERY_FIELDS
    readonly_fields = DELIVERY_FIELDS

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        return super().get_queryset(request).select_related("alert", "channel")
