"""Audit trail at scale: write N chained rows, verify the chain, export it all as CSV, and
show that a rejected request costs the request path no Postgres round trip.

    .venv/bin/python -m gateway.devstack exec --ephemeral -- .venv/bin/python bench/audit.py
"""

from __future__ import annotations

import os
import sys

# bench/queue.py is named like the standard library's `queue`: look in this folder last.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import argparse
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import psutil
from common import bench_model, django_setup, start, stop


def generate(count: int) -> float:
    """Append ``count`` valid chained rows with COPY (what years of traffic would leave)."""
    from django.db import connection

    from audit.chain import COLUMNS, GENESIS, HASHED_FIELDS, row_hash

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT hash FROM audit_auditevent ORDER BY id DESC LIMIT 1")
        last = cursor.fetchone()
    prev = last[0] if last else GENESIS
    base = datetime(2026, 1, 1, tzinfo=UTC)
    batch = 50_000
    with connection.cursor() as cursor:
        raw = cursor.cursor
        for offset in range(0, count, batch):
            with raw.copy(f"COPY audit_auditevent ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for i in range(offset, min(offset + batch, count)):
                    row = {
                        "at": base + timedelta(seconds=i),
                        "actor_type": "api_key",
                        "actor_id": str(i % 97),
                        "actor": f"API key {i % 97}",
                        "ip": None,
                        "request_id": f"req-{i}",
                        "action": "request.rejected",
                        "org_id": i % 50,
                        "org_slug": f"org-{i % 50}",
                        "target_type": "policies.limit",
                        "target_id": str(i % 7),
                        "target": "org_requests_per_minute: 60 requests per minute",
                        "changes": {"feature": "chat", "status_code": 429},
                        "source_key": f"bench:{i}",
                    }
                    digest = row_hash(prev, row)
                    values = [row[name] for name in HASHED_FIELDS]
                    values[HASHED_FIELDS.index("changes")] = json.dumps(row["changes"])
                    copy.write_row([*values, prev, digest])
                    prev = digest
    return time.perf_counter() - started


class Peak(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process()
        self.peak = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    django_setup()
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    from audit.verify import audit_verify

    print(f"audit benchmark (python {sys.version.split()[0]}, {psutil.cpu_count()} cores)")
    seconds = generate(args.rows)
    print(f"  wrote {args.rows:,} chained rows with COPY in {seconds:.1f} s")

    started = time.perf_counter()
    result = audit_verify()
    seconds = time.perf_counter() - started
    print(
        f"  audit_verify: {result.checked:,} rows in {seconds:.1f} s "
        f"({result.checked / seconds:,.0f} rows/s), intact={result.ok}   (target < 60 s)"
    )

    try:
        from audit.export import audit_export_rows, parse_filters
    except ImportError:
        print("  CSV export: not available in this checkout")
        rejected_cost()
        return

    peak = Peak()
    rss_before = peak.proc.memory_info().rss
    peak.start()
    started = time.perf_counter()
    lines = 0
    size = 0
    for line in audit_export_rows(filters=parse_filters({})):
        lines += 1
        size += len(line)
    seconds = time.perf_counter() - started
    peak.running = False
    peak.join()
    print(
        f"  CSV export: {lines - 1:,} rows, {size / 2**20:,.0f} MiB in {seconds:.1f} s "
        f"({(lines - 1) / seconds:,.0f} rows/s)   (target >= 50,000 rows/s)"
    )
    print(
        f"  exporter RSS before / peak: {rss_before / 2**20:.0f} / {peak.peak / 2**20:.0f} MB"
        "   (target < 150 MB)"
    )
    rejected_cost()


def rejected_cost(requests: int = 1000) -> None:
    """Round trips a rejected request makes: Redis commands and Postgres transactions."""
    import httpx
    from django.db import connection

    from gateway.devstack.servers import free_port
    from gateway.redis import get_redis
    from policies.models import Limit, Organization, Tier
    from policies.services import apikey_create

    up_port, gw_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    fake = start(
        [sys.executable, "-m", "gateway.fake_upstream", "--port", str(up_port)],
        ready_url=f"{upstream}/v1/models",
    )
    bench_model(upstream)
    org, _ = Organization.objects.get_or_create(
        slug="bench-audit", defaults={"name": "Bench audit", "tier": Tier.objects.get(slug="free")}
    )
    Limit.objects.create(scope="org", org=org, metric="requests", window="hour", amount=1)
    _key, raw = apikey_create(org=org, name="bench")
    gateway = start(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "gateway.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(gw_port),
            "--log-level",
            "warning",
        ],
        ready_url=f"http://127.0.0.1:{gw_port}/health/live",
    )
    try:
        url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        body = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {raw}"}
        with httpx.Client() as http:
            deadline = time.monotonic() + 10
            while http.post(url, json=body, headers=headers).status_code not in (200, 429):
                if time.monotonic() > deadline:
                    raise SystemExit("gateway never served the key")
                time.sleep(0.1)
            redis = get_redis()
            redis.config_resetstat()

            def commits() -> int:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT xact_commit FROM pg_stat_database "
                        "WHERE datname = current_database()"
                    )
                    return int(cursor.fetchone()[0])

            # What the database does anyway in the same time (autovacuum, our own probes).
            idle_before = commits()
            time.sleep(2.0)
            idle = commits() - idle_before
            before = commits()
            started = time.perf_counter()
            statuses = [
                http.post(url, json=body, headers=headers).status_code for _ in range(requests)
            ]
            seconds = time.perf_counter() - started
            time.sleep(max(0.0, 2.0 - seconds))
            after = commits()
        stats = redis.info("commandstats")
        sent = {
            k.removeprefix("cmdstat_"): v["calls"]
            for k, v in stats.items()
            if k in ("cmdstat_evalsha", "cmdstat_xadd", "cmdstat_get")
        }
        print(
            f"  {requests} requests against a spent limit: {statuses.count(429)} rejected, "
            f"{seconds / requests * 1000:.2f} ms each"
        )
        print(
            "  Redis calls per rejected request: "
            + ", ".join(f"{k} {v / requests:.2f}" for k, v in sorted(sent.items()))
            + "  (one decision, one usage entry that also carries the audit record)"
        )
        print(
            f"  Postgres transactions while they ran: {after - before}, in the same time idle: "
            f"{idle}   (target: none on the request path; no worker was running)"
        )
    finally:
        stop(gateway)
        stop(fake)


if __name__ == "__main__":
    main()
