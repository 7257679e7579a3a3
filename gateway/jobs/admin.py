"""Admin for queued jobs: read-only rows, dead letters, and the re-run and cancel actions."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from gateway.jobs.models import Job
from gateway.jobs.services import job_cancel, job_rerun
from policies.admin_scope import ReadOnlyScopedAdmin, request_scope


@admin.register(Job)
class JobAdmin(ReadOnlyScopedAdmin):
    list_display = [
        "__str__",
        "org",
        "status",
        "dead_letter",
        "reason",
        "model",
        "priority",
        "attempts",
        "created_at",
        "finished_at",
        "callback_status",
    ]
    list_filter = ["status", "dead_letter", "reason", "callback_status"]
    search_fields = ["model", "feature", "idempotency_key"]
    list_select_related = ["org"]
    actions = ["rerun", "cancel"]
    exclude = ["request", "response_body", "error", "claim_token"]
    readonly_fields = ["request_json", "error_json", "response_json"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        qs = super().get_queryset(request)
        return qs.filter(request_scope(request).visible_filter("org"))

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        shown = [f.name for f in Job._meta.fields if f.name not in self.exclude]
        return [*shown, *self.readonly_fields]

    def has_rerun_permission(self, request: HttpRequest) -> bool:
        return request_scope(request).can_write

    has_cancel_permission = has_rerun_permission

    @admin.display(description="request")
    def request_json(self, obj: Job) -> str:
        return _pre(obj.request)

    @admin.display(description="error")
    def error_json(self, obj: Job) -> str:
        return _pre(obj.error) if obj.error else "-"

    @admin.display(description="provider's answer")
    def response_json(self, obj: Job) -> str:
        if not obj.response_body:
            return "-"
        try:
            return _pre(json.loads(obj.response_body))
        except ValueError:
            return _pre(obj.response_body)

    @admin.action(
        permissions=["rerun"], description="Re-run the selected failed, expired or cancelled jobs"
    )
    def rerun(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        from gateway.jobs.tasks import jobs_kick

        done = sum(job_rerun(job=job) for job in queryset)
        if done:
            jobs_kick()
        skipped = queryset.count() - done
        self.message_user(request, f"{done} job(s) queued again.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"{skipped} job(s) left as they are: only failed, expired or cancelled jobs "
                "run again.",
                messages.WARNING,
            )

    @admin.action(permissions=["cancel"], description="Cancel the selected queued jobs")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done = sum(job_cancel(job=job) for job in queryset)
        self.message_user(request, f"{done} job(s) cancelled.", messages.SUCCESS)


def _pre(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    return format_html('<pre style="white-space: pre-wrap">{}</pre>', text)
