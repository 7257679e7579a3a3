from __future__ import annotations

import socket

from celery import shared_task

from audit.buffer import audit_flush_events


@shared_task(ignore_result=True, acks_late=False)
def flush_events() -> int:
    # Entries are acknowledged only after their rows commit; a dead worker leaves them
    # pending for the next run to take over.
    return audit_flush_events(consumer=f"audit-{socket.gethostname()}")
