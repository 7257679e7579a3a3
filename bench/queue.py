"""The burst queue draining a burst of jobs against a fixed limit: the rate the workers
achieve against the limit, queue wait by tier, and jobs lost or run twice.

A burst of ``--jobs`` calls (a ``--premium`` share from a premium-tier org, the rest from a
free-tier org) is accepted as jobs (``Prefer: respond-async``) while no worker runs; then a
Celery worker and beat start and drain it through one feature-wide limit of ``--rate``
requests per second (action ``queue``) to the fake provider.

    .venv/bin/python -m gateway.devstack exec --ephemeral -- .venv/bin/python bench/queue.py \\
        [--jobs 5000] [--rate 200] [--premium 0.2] [--latency-ms 20] [--broker redis|rabbitmq]

The sustained rate is how soon each admission's capacity went to a later job: under a
saturated limit of N per second, admission i+N follows admission i one window later at best.
"""

from __future__ import annotations

import os
import sys

# This file is named like the standard library's `queue`: look there first, here last.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import argparse
import asyncio
import json
import random
import time
import urllib.request

import aiohttp
from common import BASE_DIR, bench_model, django_setup, percentile, start, stop

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def make_rows(upstream: str, rate: int) -> tuple[str, str]:
    from gateway.jobs.models import Job
    from policies.models import Feature, Limit, Organization, Tier
    from policies.services import apikey_create

    Job.objects.all().delete()
    bench_model(upstream)
    feature, _ = Feature.objects.get_or_create(name="chat")
    Limit.objects.filter(feature=feature).delete()
    Limit.objects.create(
        scope="feature",
        feature=feature,
        metric="requests",
        window="second",
        amount=rate,
        action="queue",
    )
    keys = []
    for slug, tier_slug, priority in (("bench-free", "free", 0), ("bench-premium", "premium", 10)):
        tier, _ = Tier.objects.get_or_create(
            slug=tier_slug, defaults={"name": tier_slug.title(), "priority": priority}
        )
        org, _ = Organization.objects.get_or_create(
            slug=slug, defaults={"name": slug, "tier": tier}
        )
        keys.append(apikey_create(org=org, name="bench", default_feature=feature)[1])
    return keys[0], keys[1]


async def submit(url: str, keys: list[str], concurrency: int) -> tuple[list[float], list[int]]:
    body = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}
    connector = aiohttp.TCPConnector(limit=concurrency)
    latencies: list[float] = []
    statuses: list[int] = []
    async with aiohttp.ClientSession(connector=connector) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(key: str) -> None:
            headers = {"Authorization": f"Bearer {key}", "Prefer": "respond-async"}
            async with gate:
                started = time.perf_counter()
                async with client.post(
                    f"{url}/v1/chat/completions", json=body, headers=headers
                ) as r:
                    await r.read()
                    statuses.append(r.status)
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(one(k) for k in keys))
    return latencies, statuses


def wait_ready(url: str, key: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        request = urllib.request.Request(  # noqa: S310 - local URL
            f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}
        )
        try:
            urllib.request.urlopen(request, timeout=2)  # noqa: S310 - local URL
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the gateway never served the bench keys")


def cpu_by_component(worker_pid: int, upstream_pid: int) -> dict[str, float]:
    """CPU seconds so far of the worker (all its processes), the fake provider, PostgreSQL
    and Redis."""
    import psutil

    def seconds(procs: list[psutil.Process]) -> float:
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    worker = psutil.Process(worker_pid)
    found = {"worker": [worker, *worker.children(recursive=True)]}
    found["provider"] = [psutil.Process(upstream_pid)]
    for proc in psutil.process_iter(["name"]):
        name = proc.info["name"] or ""
        if name.startswith("postgres"):
            found.setdefault("postgres", []).append(proc)
        elif name.startswith("redis-server"):
            found.setdefault("redis", []).append(proc)
    return {name: seconds(procs) for name, procs in found.items()}


def upstream_count(upstream: str) -> int:
    with urllib.request.urlopen(f"{upstream}/_control") as response:  # noqa: S310 - local
        return int(json.loads(response.read())["requests"])


def most_in_any_second(times_ms: list[int]) -> int:
    best, first = 0, 0
    for last, t in enumerate(times_ms):
        while t - times_ms[first] >= 1000:
            first += 1
        best = max(best, last - first + 1)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=200, help="the limit, requests per second")
    parser.add_argument("--premium", type=float, default=0.2, help="share of premium-tier jobs")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="provider latency")
    parser.add_argument("--concurrency", type=int, default=64, help="submitting connections")
    parser.add_argument("--broker", choices=["redis", "rabbitmq"], default="redis")
    parser.add_argument("--pumps", type=int, default=1, help="TOLLGATE_JOB_PUMPS")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--admissions", help="write the admission times (ms) to this JSON file")
    args = parser.parse_args()

    django_setup()
    from gateway.devstack.servers import free_port
    from gateway.jobs.models import Job
    from gateway.models import UsageRecord
    from gateway.usage import usage_flush

    logs = BASE_DIR / ".tollgate" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    env = {"CELERY_BROKER_URL": RABBITMQ} if args.broker == "rabbitmq" else {}
    up_port, gw_port = free_port(), free_port()
    upstream, url = f"http://127.0.0.1:{up_port}", f"http://127.0.0.1:{gw_port}"
    procs = [
        start(
            [
                sys.executable,
                "-m",
                "gateway.fake_upstream",
                "--port",
                str(up_port),
                "--latency-ms",
                str(args.latency_ms),
            ],
            ready_url=f"{upstream}/v1/models",
            log=logs / "queue-upstream.log",
        )
    ]
    free_key, premium_key = make_rows(upstream, args.rate)
    procs.append(
        start(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "gateway.asgi:application",
                "--port",
                str(gw_port),
                "--no-access-log",
            ],
            env=env,
            ready_url=f"{url}/health/live",
            log=logs / "queue-gateway.log",
        )
    )
    try:
        wait_ready(url, free_key)
        wait_ready(url, premium_key)
        baseline = upstream_count(upstream)  # readiness probes
        rng = random.Random(8)
        keys = [premium_key if rng.random() < args.premium else free_key for _ in range(args.jobs)]
        started = time.perf_counter()
        latencies, statuses = asyncio.run(submit(url, keys, args.concurrency))
        submit_seconds = time.perf_counter() - started
        accepted = statuses.count(202)
        # A fresh broker queue: pump wake-ups sent while no worker ran are dropped.
        worker = start(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "gateway",
                "worker",
                "--loglevel",
                "WARNING",
                "--concurrency",
                "2",
                "--purge",
                "--beat",
                "--schedule",
                str(logs / "queue-beat-schedule"),
            ],
            env={**env, "TOLLGATE_JOB_PUMPS": str(args.pumps)},
            log=logs / "queue-worker.log",
        )
        procs.append(worker)
        cpu_before = cpu_by_component(worker.pid, procs[0].pid)
        drain_started = time.perf_counter()
        deadline = time.monotonic() + args.timeout
        active = ("queued", "running")
        while Job.objects.filter(status__in=active).exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        drain_seconds = time.perf_counter() - drain_started
        cpu_after = cpu_by_component(worker.pid, procs[0].pid)
        jobs = list(
            Job.objects.values("status", "priority", "attempts", "admitted_at_ms", "created_at")
        )
        upstream_calls = upstream_count(upstream) - baseline
        # The worker's own flush may hold records read but not yet written: let it finish.
        stop(worker)
        procs.remove(worker)
        usage_flush(consumer="bench")
        recorded = UsageRecord.objects.filter(endpoint="chat/completions").count()
    finally:
        for proc in reversed(procs):
            stop(proc)

    succeeded = [j for j in jobs if j["status"] == "succeeded"]
    admitted = sorted(j["admitted_at_ms"] for j in jobs if j["admitted_at_ms"] is not None)
    span = (admitted[-1] - admitted[0]) / 1000 if len(admitted) > 1 else 0.0
    # The whole drain: the first second's worth goes at once, the limit paces the rest.
    steady = (len(admitted) - args.rate) / span if span else float("nan")
    # Sustained: how soon each admission's capacity went to a later job. Under a saturated
    # limit of N per second, admission i+N comes one window after admission i at best.
    reuse = [b - a for a, b in zip(admitted, admitted[args.rate :], strict=False)]
    sustained = args.rate * 1000 / (sum(reuse) / len(reuse)) if reuse else float("nan")
    print(
        f"burst queue: {args.jobs} jobs, limit {args.rate}/s, broker {args.broker}, "
        f"{args.pumps} pump(s), provider latency {args.latency_ms:g} ms"
    )
    print(
        f"  submitted    {accepted} accepted (202) of {args.jobs} in {submit_seconds:.1f}s "
        f"({args.jobs / submit_seconds:.0f}/s); 202 latency p50 {percentile(latencies, 50):.1f} "
        f"ms, p95 {percentile(latencies, 95):.1f} ms"
    )
    print(f"  drained      {len(succeeded)} succeeded in {drain_seconds:.1f}s")
    print(
        f"  rate         sustained {sustained:.1f}/s vs limit {args.rate}/s "
        f"({(sustained / args.rate - 1) * 100:+.2f}%); whole drain {steady:.1f}/s after the "
        f"first second ({(steady / args.rate - 1) * 100:+.2f}%); busiest 1 s: "
        f"{most_in_any_second(admitted)} admitted"
    )
    per_second: dict[int, int] = {}
    for t in admitted:
        per_second[(t - admitted[0]) // 1000] = per_second.get((t - admitted[0]) // 1000, 0) + 1
    if args.admissions:
        with open(args.admissions, "w") as out:
            json.dump(admitted, out)
    print("  per second   " + " ".join(str(per_second.get(i, 0)) for i in range(len(per_second))))
    for priority, name in ((10, "premium"), (0, "free")):
        waits = [
            j["admitted_at_ms"] / 1000 - j["created_at"].timestamp()
            for j in jobs
            if j["priority"] == priority and j["admitted_at_ms"] is not None
        ]
        if waits:
            print(
                f"  wait {name:<8}{len(waits):>5} jobs: p50 {percentile(waits, 50):.1f}s, "
                f"p95 {percentile(waits, 95):.1f}s, max {max(waits):.1f}s"
            )
    used = {name: cpu_after.get(name, 0.0) - cpu_before.get(name, 0.0) for name in cpu_after}
    print(
        "  CPU per job  "
        + ", ".join(f"{name} {used[name] / max(len(succeeded), 1) * 1000:.2f} ms" for name in used)
    )
    lost = accepted - len(succeeded)
    duplicates = upstream_calls - len(succeeded)
    print(
        f"  lost {lost}, duplicates {duplicates} (provider calls {upstream_calls}, usage "
        f"records {recorded}, jobs with more than one attempt "
        f"{sum(1 for j in jobs if j['attempts'] > 1)})"
    )


if __name__ == "__main__":
    main()
