"""Celery tasks of the alerts app: thin wrappers around services."""

from __future__ import annotations

import socket

from celery import shared_task

from alerts import evaluate, rules, services


@shared_task(bind=True, ignore_result=True)
def deliver(self, delivery_id: int) -> str:  # type: ignore[no-untyped-def]
    outcome, retry_in = services.delivery_attempt(delivery_id)
    if outcome == "retry":
        # Not self.retry(): the delivery row is the source of truth, and the sweep re-sends
        # it if this message is lost with its worker.
        deliver.apply_async((delivery_id,), countdown=retry_in)
    return outcome


@shared_task(ignore_result=True, acks_late=False)
def consume_events() -> int:
    return rules.consume_events(consumer=f"alerts-{socket.gethostname()}")


@shared_task(ignore_result=True)
def sweep_deliveries() -> int:
    due = services.deliveries_due()
    services._enqueue(due)
    return len(due)


@shared_task(ignore_result=True)
def resolve_cleared() -> int:
    return rules.resolve_cleared()


@shared_task(ignore_result=True)
def evaluate_windowed() -> int:
    return evaluate.evaluate_windowed()
