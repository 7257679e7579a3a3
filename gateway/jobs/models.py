"""Queued LLM calls. Postgres holds every job from acceptance to its result, so a worker,
broker or Redis restart loses none; the broker only carries wake-ups (see ``tasks``)."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class Job(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Cancelled"

    class Reason(models.TextChoices):
        LIMIT = "limit", "A limit with action queue"
        REQUESTED = "requested", "Prefer: respond-async"

    class Callback(models.TextChoices):
        NONE = "", "No callback"
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.EXPIRED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey("policies.Organization", on_delete=models.CASCADE, related_name="jobs")
    api_key = models.ForeignKey(
        "policies.ApiKey", null=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    feature = models.CharField(max_length=64, blank=True)
    endpoint = models.CharField(max_length=32)  # "chat/completions", "embeddings", "messages"
    model = models.CharField(max_length=200)
    provider = models.ForeignKey(
        "gateway.Provider", null=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    request = models.JSONField()
    request_headers = models.JSONField(default=dict, blank=True)
    reason = models.CharField(max_length=16, choices=Reason.choices)
    # Order of service: higher tier priority first, then the fair rank (see services).
    priority = models.SmallIntegerField(default=0)
    rank = models.BigIntegerField(default=0)
    # Jobs of one lane (API key + feature) meet the same limits; a denial holds the lane.
    lane = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    idempotency_key = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # Runs of this job (an admin's re-run starts another); each run is its own usage record.
    runs = models.PositiveSmallIntegerField(default=1)
    not_before = models.DateTimeField()
    expires_at = models.DateTimeField()
    claim_token = models.UUIDField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    # When the limiter admitted the last attempt (Redis time, milliseconds since the epoch).
    admitted_at_ms = models.BigIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=12, null=True, blank=True)
    error = models.JSONField(null=True, blank=True)  # the OpenAI-shaped error object
    # Failed after its last attempt (or re-run by an admin from here).
    dead_letter = models.BooleanField(default=False)
    callback_url = models.URLField(max_length=2000, blank=True)
    callback_status = models.CharField(
        max_length=16, choices=Callback.choices, default=Callback.NONE, blank=True
    )
    callback_attempts = models.PositiveSmallIntegerField(default=0)
    callback_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The claim: best queued job first.
            models.Index(
                fields=["-priority", "rank", "created_at"],
                name="job_queue_order",
                condition=Q(status="queued"),
            ),
            # An org's last rank (the next job's fair rank starts after it).
            models.Index(
                fields=["org", "priority", "rank"],
                name="job_org_rank",
                condition=Q(status__in=["queued", "running"]),
            ),
            models.Index(fields=["org", "status"], name="job_org_status"),
            # Recent admissions (the drain rate behind wait estimates).
            models.Index(fields=["admitted_at_ms"], name="job_admitted"),
            # Finished jobs past their retention are deleted.
            models.Index(fields=["finished_at"], name="job_finished"),
            # Callbacks never handed to the broker (the sweep sends them again).
            models.Index(
                fields=["finished_at"],
                name="job_callback_unsent",
                condition=Q(callback_status="pending", callback_attempts=0),
            ),
            models.Index(
                fields=["lease_until"], name="job_running_lease", condition=Q(status="running")
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["org", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="job_idempotency_key_per_org",
            )
        ]

    def __str__(self) -> str:
        return f"job_{self.id.hex}"

    @property
    def public_id(self) -> str:
        return f"job_{self.id.hex}"

    @property
    def request_id(self) -> str:
        """The id of this run's provider call and usage record."""
        return run_request_id(self.id, self.runs)


def run_request_id(job_id: uuid.UUID, run: int) -> str:
    return job_id.hex if run <= 1 else f"{job_id.hex}.{run}"
