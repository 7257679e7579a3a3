"""Time from a threshold crossing to its email at a local SMTP server, with a worker (and
beat) running: p50 and p95 over 100 alerts.

    .venv/bin/python -m gateway.devstack exec --ephemeral -- .venv/bin/python bench/alerts.py
"""

from __future__ import annotations

import os
import sys

# bench/queue.py is named like the standard library's `queue`: look in this folder last.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import argparse
import email
import email.header
import tempfile
import time
from pathlib import Path
from typing import Any

from common import django_setup, percentile, start, stop


class Inbox:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content)
        subject = str(email.header.make_header(email.header.decode_header(message["Subject"])))
        self.arrived[subject] = time.time()
        return "250 OK"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=100)
    parser.add_argument("--spacing-ms", type=float, default=50)
    args = parser.parse_args()
    django_setup()
    import logging

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    from aiosmtpd.controller import Controller
    from django.conf import settings

    from alerts.models import AlertChannel, AlertRule, SmtpSettings
    from gateway.devstack.servers import free_port
    from gateway.redis import get_redis
    from policies import events
    from policies.models import Organization, Tier

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    smtp = SmtpSettings.load()
    smtp.host, smtp.port, smtp.tls_mode = "127.0.0.1", port, "none"
    smtp.from_address = "tollgate@example.test"
    smtp.save()
    channel = AlertChannel.objects.create(
        name="bench mail", kind="email", config={"to": ["ops@example.test"]}
    )
    rule = AlertRule.objects.create(name="bench", kind="limit_threshold", cooldown_seconds=600)
    rule.channels.add(channel)
    tier = Tier.objects.get(slug="free")
    orgs = [
        Organization.objects.get_or_create(
            slug=f"bench-{i}", defaults={"name": f"Bench {i}", "tier": tier}
        )[0]
        for i in range(args.alerts)
    ]
    schedule = Path(tempfile.mkdtemp()) / "beat"
    worker = start(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "gateway",
            "worker",
            "--beat",
            "--schedule",
            str(schedule),
            "--loglevel",
            "WARNING",
            "--concurrency",
            "2",
        ]
    )
    try:
        client = get_redis()
        deadline = time.monotonic() + 60
        while not client.zcard(f"{settings.TOLLGATE_REDIS_PREFIX}:workers:heartbeat"):
            if time.monotonic() > deadline:
                raise SystemExit("no worker came up")
            time.sleep(0.2)
        time.sleep(2)  # let beat start its schedule
        crossed: dict[str, float] = {}
        for i, org in enumerate(orgs):
            crossed[f"[Tollgate Alert] Rate limit 100% — org: {org.slug}"] = time.time()
            events.emit(
                client,
                [
                    events.event(
                        "limit.threshold_crossed",
                        limit_id=1000 + i,
                        limit="60 requests per minute",
                        code="org_requests_per_minute",
                        scope="org",
                        metric="requests",
                        threshold=100,
                        used=60,
                        amount=60,
                        org_id=org.pk,
                        org=org.slug,
                        feature=None,
                    )
                ],
            )
            time.sleep(args.spacing_ms / 1000)
        deadline = time.monotonic() + 60
        while len(inbox.arrived) < len(crossed) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop(worker)
        controller.stop()
    delays = [(inbox.arrived[s] - t) * 1000 for s, t in crossed.items() if s in inbox.arrived]
    print(
        f"alert latency: threshold crossing -> email at a local SMTP server "
        f"({len(delays)}/{len(crossed)} arrived, worker with beat, 2 processes)"
    )
    print(
        f"  p50 {percentile(delays, 50):.0f} ms   p95 {percentile(delays, 95):.0f} ms   "
        f"max {max(delays):.0f} ms   (target: p95 under 2,000 ms)"
    )


if __name__ == "__main__":
    main()
