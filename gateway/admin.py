from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from gateway.models import LlmModel, Provider
from policies.admin_scope import OrgScopedAdmin, request_scope

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
    list_display = ["name", "kind", "base_url", "org", "has_api_key", "is_active"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name", "base_url"]

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
