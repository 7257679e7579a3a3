from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.template.response import TemplateResponse

from audit.services import audit_record
from gateway.jobs import admin as jobs_admin  # noqa: F401 - registers the job admin
from gateway.jobs.breaker import breaker_reset, breaker_states
from gateway.models import LlmModel, Provider, UsageReport, UsageRollup
from gateway.params import FilterError
from gateway.usage_report import (
    budget_burndown,
    usage_query_parse,
    usage_series,
    usage_top_keys,
    usage_totals,
)
from policies.admin_scope import OrgScopedAdmin, ReadOnlyScopedAdmin, request_scope
from policies.models import Feature

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups
    from django.utils.datastructures import _ListOrTuple


class ProviderForm(forms.ModelForm):  # type: ignore[type-arg]
    """The provider's key is write-only: never rendered back, blank keeps the stored one."""

    api_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave blank to keep the stored key.",
    )
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the stored key.")

    class Meta:
        model = Provider
        fields = ["org", "name", "kind", "base_url", "is_active"]

    def save(self, commit: bool = True) -> Provider:
        provider: Provider = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            provider.api_key = ""
        elif self.cleaned_data.get("api_key"):
            provider.api_key = self.cleaned_data["api_key"]
        if commit:
            provider.save()
        return provider


@admin.register(Provider)
class ProviderAdmin(OrgScopedAdmin):
    form = ProviderForm
    shared_rows = True
    list_display = ["name", "kind", "base_url", "org", "has_api_key", "is_active", "breaker"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name", "base_url"]
    actions = ["close_breaker"]

    @admin.display(description="circuit breaker")
    def breaker(self, obj: Provider) -> str:
        try:
            state = breaker_states([obj.pk])[obj.pk]
        except Exception:  # Redis down: shown, not raised
            return "unknown (Redis unreachable)"
        if state["state"] == "open":
            return f"open ({state['failures']} failures; probe in {state['retry_in_seconds']}s)"
        if state["state"] == "half_open":
            return "half-open (probing)"
        return "closed"

    def has_close_breaker_permission(self, request: HttpRequest) -> bool:
        return request_scope(request).is_global

    @admin.action(
        permissions=["close_breaker"], description="Close the circuit breaker (jobs call again)"
    )
    def close_breaker(self, request: HttpRequest, queryset: Any) -> None:
        for provider in queryset:
            breaker_reset(provider.pk)
            audit_record(action="provider.breaker_closed", target=provider)
        self.message_user(request, f"{queryset.count()} breaker(s) closed.")

    @admin.display(boolean=True, description="API key set")
    def has_api_key(self, obj: Provider) -> bool:
        return obj.has_api_key

    def get_fields(self, request: HttpRequest, obj: Any = None) -> _FieldGroups:
        fields: list[str | _ListOrTuple[str]] = [
            "org",
            "name",
            "kind",
            "base_url",
            "api_key",
            "clear_api_key",
            "is_active",
        ]
        if not request_scope(request).is_global:
            fields.remove("org")
        if not self.has_change_permission(request, obj):
            # A read-only page shows fields as text: the key field would show the secret.
            fields.remove("api_key")
            fields.remove("clear_api_key")
        return fields


@admin.register(LlmModel)
class LlmModelAdmin(OrgScopedAdmin):
    shared_rows = True
    list_display = [
        "name",
        "provider",
        "upstream_name",
        "mode",
        "input_price_per_million",
        "output_price_per_million",
        "cached_input_price_per_million",
        "org",
        "is_active",
    ]
    list_filter = [("provider", admin.RelatedOnlyFieldListFilter), "mode", "is_active"]
    search_fields = ["name", "upstream_name"]

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "provider":
            kwargs["queryset"] = Provider.objects.filter(
                request_scope(request).visible_filter(shared=True)
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(UsageReport)
class UsageReportAdmin(ReadOnlyScopedAdmin):
    """Usage and cost as charts: per hour or day by org, feature or model, top keys by
    spend and each budget's burn-down; the same figures as ``GET /api/usage/``."""

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> TemplateResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        scope = request_scope(request)
        params = request.GET.copy()
        params.setdefault("group_by", "org" if scope.is_global else "feature")
        error = None
        try:
            query = usage_query_parse(params, scope=scope)
        except FilterError as exc:
            error = f"{exc.param}: {exc.message}"
            query = usage_query_parse({"group_by": params["group_by"]}, scope=scope)
        if len(query.group_by) != 1:
            query = replace(query, group_by=query.group_by[:1] or ("feature",))
        group = query.group_by[0]
        rows = usage_series(scope=scope, query=query)
        charts = usage_chart_data(rows, group)
        budgets = budget_burndown(scope=scope, org=query.org)
        csv_params = {**query.params, "group_by": group, "format": "csv"}
        for name in ("feature", "model", "org"):
            if getattr(query, name):
                csv_params[name] = (
                    getattr(query, name).slug if name == "org" else getattr(query, name)
                )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Usage and cost",
            "error": error,
            "query": query,
            "group": group,
            "form": {
                "from": query.start.strftime("%Y-%m-%dT%H:%M"),
                # Empty means "now", so a page left open and reloaded shows new usage.
                "to": query.end.strftime("%Y-%m-%dT%H:%M") if query.params.get("to") else "",
            },
            "orgs": scope.orgs().order_by("slug") if scope.is_global else [],
            "features": Feature.objects.order_by("name").values_list("name", flat=True),
            "models": sorted(
                set(
                    UsageRollup.objects.filter(org__in=scope.orgs()).values_list("model", flat=True)
                )
            ),
            "totals": usage_totals(rows),
            "top_keys": usage_top_keys(scope=scope, query=query),
            "budgets": budgets,
            "chart_data": {"series": charts, "budgets": budgets, "group": group},
            "csv_url": "/api/usage/?" + urlencode(csv_params),
        }
        return TemplateResponse(request, "admin/gateway/usage.html", context)


def usage_chart_data(rows: list[dict[str, Any]], group: str) -> dict[str, Any]:
    """Periods and, per group, requests, tokens and cost aligned on them."""
    periods = sorted({row["period"] for row in rows})
    index = {period: i for i, period in enumerate(periods)}
    groups: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        name = row[group] or "(none)"
        series = groups.setdefault(
            name, {k: [0.0] * len(periods) for k in ("requests", "tokens", "cost_usd")}
        )
        i = index[row["period"]]
        series["requests"][i] += row["requests"]
        series["tokens"][i] += row["input_tokens"] + row["output_tokens"]
        series["cost_usd"][i] += float(row["cost_usd"])
    return {"periods": periods, "groups": groups}
