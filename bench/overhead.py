"""What the gateway costs: the same load straight to the fake upstream and through the
gateway's full path (key auth, model routing, usage record to Redis), side by side.

    .venv/bin/python -m gateway.devstack exec --ephemeral -- .venv/bin/python bench/overhead.py
"""

from __future__ import annotations

import os
import sys

# bench/queue.py is named like the standard library's `queue`: look in this folder last.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import argparse
import asyncio
import statistics
import threading
import time

import aiohttp
import psutil
from common import BASE_DIR, bench_model, django_setup, percentile, start, stop

BODY = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "hello there bench"}],
    "max_tokens": 8,
}


def make_rows(upstream: str) -> str:
    from policies.models import Feature, Organization, Tier
    from policies.services import apikey_create

    bench_model(upstream)
    feature, _ = Feature.objects.get_or_create(name="chat")
    tier = Tier.objects.get(slug="free")
    org, _ = Organization.objects.get_or_create(
        slug="bench", defaults={"name": "Bench", "tier": tier}
    )
    _key, raw = apikey_create(org=org, name="bench", default_feature=feature)
    return raw


def make_limits(count: int) -> None:
    """Limits on the bench org's request path, large enough never to deny."""
    from policies.models import ApiKey, Feature, Limit, Organization

    org = Organization.objects.get(slug="bench")
    Limit.objects.filter(org=org).delete()
    key = ApiKey.objects.filter(org=org).order_by("-created_at").first()
    shapes = [
        {"scope": "org", "metric": "requests", "window": "minute", "amount": 10**9},
        {"scope": "org", "metric": "tokens", "window": "hour", "amount": 10**12},
        {"scope": "org", "metric": "cost", "window": "calendar_day", "amount": 10**12},
        {
            "scope": "org_feature",
            "feature": Feature.objects.get(name="chat"),
            "metric": "requests",
            "window": "second",
            "amount": 10**9,
        },
        {
            "scope": "api_key",
            "api_key": key,
            "metric": "concurrent",
            "window": "none",
            "amount": 10**6,
        },
    ]
    for shape in shapes[:count]:
        Limit.objects.create(org=org, **shape)


async def latency(url: str, headers: dict[str, str], n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(50):  # warm-up
            async with session.post(url, json=BODY, headers=headers) as r:
                await r.read()
        for _ in range(n):
            started = time.perf_counter()
            async with session.post(url, json=BODY, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            out.append((time.perf_counter() - started) * 1000)
    return out


async def throughput(
    url: str, headers: dict[str, str], concurrency: int, seconds: float
) -> tuple[int, int, float]:
    done = errors = 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop_at:
                async with session.post(url, json=BODY, headers=headers) as r:
                    await r.read()
                    if r.status == 200:
                        done += 1
                    else:
                        errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, errors, time.perf_counter() - started


async def streams(url: str, headers: dict[str, str], count: int) -> tuple[int, list[float], float]:
    body = {**BODY, "stream": True}
    ttfb: list[float] = []
    completed = 0
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> None:
            nonlocal completed
            started = time.perf_counter()
            first = True
            try:
                async with session.post(url, json=body, headers=headers) as r:
                    async for chunk in r.content.iter_any():
                        if first and chunk:
                            ttfb.append((time.perf_counter() - started) * 1000)
                            first = False
                    if r.status == 200:
                        completed += 1
            except aiohttp.ClientError:
                pass

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return completed, ttfb, time.perf_counter() - started


def tree(pid: int) -> list[psutil.Process]:
    """The server process and its workers (granian serves from a child process)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_cpu(pid: int) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in tree(pid))


def tree_rss(pid: int) -> int:
    return sum(p.memory_info().rss for p in tree(pid))


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(0.02)


def row(name: str, direct: str, gateway: str, added: str = "") -> None:
    print(f"  {name:<34} {direct:>14} {gateway:>14} {added:>14}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests at c=1")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration at c=50")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument(
        "--limits",
        type=int,
        default=0,
        choices=range(6),
        help="limits on the request path (0-5: org requests/min, tokens/hour, "
        "cost/day, org+feature requests/s, key concurrency)",
    )
    parser.add_argument(
        "--server",
        choices=["uvicorn", "granian"],
        default="uvicorn",
        help="ASGI server for the gateway process (granian: pip install granian)",
    )
    args = parser.parse_args()

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    django_setup()
    from gateway.devstack.servers import free_port

    logs = BASE_DIR / ".tollgate" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    up_port, gw_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    fake = start(
        [
            sys.executable,
            "-m",
            "gateway.fake_upstream",
            "--port",
            str(up_port),
            "--chunks",
            "20",
            "--chunk-delay-ms",
            "50",
        ],
        ready_url=f"{upstream}/v1/models",
        log=logs / "upstream.log",
    )
    key = make_rows(upstream)
    make_limits(args.limits)
    if args.server == "granian":
        command = [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(gw_port),
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--backlog",
            "4096",
            "--log-level",
            "warning",
            "gateway.asgi:application",
        ]
    else:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "gateway.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(gw_port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--backlog",
            "4096",
        ]
    gateway = start(
        command, ready_url=f"http://127.0.0.1:{gw_port}/health/live", log=logs / "gateway.log"
    )
    direct_url = f"{upstream}/v1/chat/completions"
    gateway_url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {key}"}
    try:
        # Wait until the gateway's snapshot has the key.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            import urllib.request

            try:
                req = urllib.request.Request(f"http://127.0.0.1:{gw_port}/v1/models", headers=auth)
                urllib.request.urlopen(req, timeout=2)  # noqa: S310
                break
            except OSError:
                time.sleep(0.1)
        print(
            f"gateway overhead benchmark, {args.server} (python {sys.version.split()[0]}, "
            f"{psutil.cpu_count()} cores; upstream, gateway and load generator share them)"
        )
        print()
        print(f"concurrency 1, {args.requests} sequential non-streamed requests (ms)")
        row("", "direct", "via gateway", "added")
        direct = asyncio.run(latency(direct_url, {}, args.requests))
        via = asyncio.run(latency(gateway_url, auth, args.requests))
        for p in (50, 95, 99):
            d, g = percentile(direct, p), percentile(via, p)
            row(f"p{p}", f"{d:.3f}", f"{g:.3f}", f"{g - d:.3f}")
        row(
            "mean",
            f"{statistics.mean(direct):.3f}",
            f"{statistics.mean(via):.3f}",
            f"{statistics.mean(via) - statistics.mean(direct):.3f}",
        )

        print()
        print(f"concurrency {args.concurrency}, {args.seconds:.0f} s, non-streamed")
        row("", "direct", "via gateway")
        d_done, d_err, d_elapsed = asyncio.run(
            throughput(direct_url, {}, args.concurrency, args.seconds)
        )
        cpu_before = tree_cpu(gateway.pid)
        g_done, g_err, g_elapsed = asyncio.run(
            throughput(gateway_url, auth, args.concurrency, args.seconds)
        )
        cpu_used = tree_cpu(gateway.pid) - cpu_before
        row("requests/s", f"{d_done / d_elapsed:.0f}", f"{g_done / g_elapsed:.0f}")
        row("errors", str(d_err), str(g_err))
        row("gateway CPU per request (ms)", "", f"{cpu_used / max(g_done, 1) * 1000:.3f}")

        print()
        print(f"{args.streams} concurrent streams (20 chunks, 50 ms apart)")
        row("", "direct", "via gateway")
        d_completed, d_ttfb, d_elapsed = asyncio.run(streams(direct_url, {}, args.streams))
        sampler = RssSampler(gateway.pid)
        rss_before = tree_rss(gateway.pid)
        sampler.start()
        g_completed, g_ttfb, g_elapsed = asyncio.run(streams(gateway_url, auth, args.streams))
        sampler.running = False
        sampler.join()
        row("completed", f"{d_completed}/{args.streams}", f"{g_completed}/{args.streams}")
        row(
            "time to first byte p50 (ms)",
            f"{percentile(d_ttfb, 50):.1f}",
            f"{percentile(g_ttfb, 50):.1f}",
        )
        row(
            "time to first byte p95 (ms)",
            f"{percentile(d_ttfb, 95):.1f}",
            f"{percentile(g_ttfb, 95):.1f}",
        )
        row("wall time (s)", f"{d_elapsed:.2f}", f"{g_elapsed:.2f}")
        row(
            "gateway RSS before / peak (MB)",
            "",
            f"{rss_before / 2**20:.0f} / {sampler.peak / 2**20:.0f}",
        )
    finally:
        stop(gateway)
        stop(fake)


if __name__ == "__main__":
    main()
