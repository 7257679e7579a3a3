"""One request checked against 5 limits on the same Redis: Tollgate's engine (one Lua call,
all-or-none) beside DRF's SimpleRateThrottle, django-ratelimit and the `limits` library
(moving and fixed window). Single-thread decisions/s and latency, Redis round trips and
commands per decision, then exactness: 16 processes x 250 requests against 1,000/minute.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python -m gateway.devstack exec --ephemeral -- .venv/bin/python bench/limiter.py
"""

from __future__ import annotations

import os
import sys

# bench/queue.py is named like the standard library's `queue`: look in this folder last.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import argparse
import hashlib
import multiprocessing
import time
import uuid
from collections import Counter
from collections.abc import Callable

import psutil
from common import percentile

HUGE = 10**9  # throughput phase: nothing is ever denied
# (window, amount); DRF, django-ratelimit and limits have no calendar day: a second daily limit.
FIVE = [("second", HUGE), ("minute", HUGE + 1), ("hour", HUGE + 2), ("day", HUGE + 3),
        ("calendar_day", HUGE + 4)]  # fmt: skip
LETTER = {"second": "s", "minute": "m", "hour": "h", "day": "d", "calendar_day": "d"}
SENT: Counter[str] = Counter()  # commands this process sent, and "round trips"

Decide = Callable[[], bool]


def make_tollgate(tag: str, limits: list[tuple[str, int]]) -> Decide:
    from django.conf import settings

    from policies.engine import sync
    from policies.engine.specs import LimitSpec

    settings.TOLLGATE_REDIS_PREFIX = f"bench:{tag}"
    specs = [
        LimitSpec(id=i + 1, scope="org", metric="requests", window=window, amount=amount,
                  action="reject", max_wait_seconds=None, failure_mode="fail_open",
                  thresholds="80,100", default_output_tokens=0, description="", org_id=1)
        for i, (window, amount) in enumerate(limits)
    ]  # fmt: skip
    charges = [1] * len(specs)
    return lambda: sync.admit(uuid.uuid4().hex, specs, charges, org_id=1).admitted


def make_drf(tag: str, limits: list[tuple[str, int]]) -> Decide:
    from django.test import RequestFactory
    from rest_framework.request import Request
    from rest_framework.throttling import SimpleRateThrottle

    def get_cache_key(self, request, view):  # type: ignore[no-untyped-def]
        return self.cache_format % {"scope": self.scope, "ident": tag}

    classes = [
        type(f"Bench{i}Throttle", (SimpleRateThrottle,),
             {"scope": f"bench{i}", "rate": f"{amount}/{LETTER[window]}",
              "get_cache_key": get_cache_key})
        for i, (window, amount) in enumerate(limits)
    ]  # fmt: skip
    request = Request(RequestFactory().get("/v1/chat/completions"))
    # Like APIView.check_throttles: new instances per request, every throttle is asked.
    return lambda: all([cls().allow_request(request, None) for cls in classes])


def make_ratelimit(tag: str, limits: list[tuple[str, int]]) -> Decide:
    from django.test import RequestFactory
    from django_ratelimit.core import is_ratelimited

    request = RequestFactory().get("/v1/chat/completions")
    groups = [(f"bench{i}", f"{amount}/{LETTER[w]}") for i, (w, amount) in enumerate(limits)]

    def key(group: str, request: object) -> str:
        return tag

    return lambda: (
        not any(
            [is_ratelimited(request, group=g, key=key, rate=r, increment=True) for g, r in groups]
        )
    )


def make_limits(strategy: str) -> Callable[[str, list[tuple[str, int]]], Decide]:
    def make(tag: str, limits: list[tuple[str, int]]) -> Decide:
        import limits as lib
        from django.conf import settings
        from limits.storage import RedisStorage

        limiter = getattr(lib.strategies, strategy)(RedisStorage(settings.REDIS_URL))
        units = {"calendar_day": "day"}
        items = [lib.parse(f"{amount}/{units.get(w, w)}") for w, amount in limits]
        return lambda: all([limiter.hit(item, tag) for item in items])

    return make


CONTENDERS: dict[str, Callable[[str, list[tuple[str, int]]], Decide]] = {
    "tollgate": make_tollgate,
    "DRF throttle": make_drf,
    "django-ratelimit": make_ratelimit,
    "limits moving": make_limits("MovingWindowRateLimiter"),
    "limits fixed": make_limits("FixedWindowRateLimiter"),
}


def count_commands() -> None:
    """Count what every redis-py connection of this process sends, and its round trips."""
    from redis.connection import AbstractConnection as Conn

    send_packed, send_command, pack_commands = (
        Conn.send_packed_command, Conn.send_command, Conn.pack_commands
    )  # fmt: skip

    def name(arg: object) -> str:
        return (arg.decode() if isinstance(arg, bytes) else str(arg)).lower()

    def packed(self, command, check_health=True):  # type: ignore[no-untyped-def]
        SENT["round trips"] += 1
        return send_packed(self, command, check_health)

    def single(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        SENT[name(args[0])] += 1
        return send_command(self, *args, **kwargs)

    def many(self, commands):  # type: ignore[no-untyped-def]
        SENT.update(name(c[0]) for c in commands)
        return pack_commands(self, commands)

    Conn.send_packed_command, Conn.send_command, Conn.pack_commands = packed, single, many


def commandstats(r) -> dict[str, tuple[int, int]]:  # type: ignore[no-untyped-def]
    stats = r.info("commandstats")
    return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in stats.items()}


def throughput(decide: Decide, n: int, r) -> dict[str, object]:  # type: ignore[no-untyped-def]
    for _ in range(200):  # warm-up: connections, script cache
        decide()
    before = commandstats(r)
    SENT.clear()
    times, denied = [], 0
    started = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        denied += not decide()
        times.append((time.perf_counter() - t) * 1000)
    elapsed = time.perf_counter() - started
    sent = SENT.copy()
    after = commandstats(r)
    delta = {
        cmd: (calls - before.get(cmd, (0, 0))[0], usec - before.get(cmd, (0, 0))[1])
        for cmd, (calls, usec) in after.items()
        if cmd != "info" and calls != before.get(cmd, (0, 0))[0]
    }
    # Commands run inside a Lua script count in commandstats too, and their time is part
    # of the script's: server time is that of the commands the client sent.
    server_usec = sum(usec for cmd, (_, usec) in delta.items() if cmd in sent)
    return {
        "rate": n / elapsed, "p50": percentile(times, 50), "p99": percentile(times, 99),
        "trips": sent["round trips"] / n, "denied": denied,
        "commands": sum(calls for calls, _ in delta.values()) / n,
        "server_us": server_usec / n,
        "which": ", ".join(
            f"{cmd}{'*' if cmd in sent else ''} {calls / n:g}"
            for cmd, (calls, _) in sorted(delta.items(), key=lambda kv: -kv[1][0])
        ),
    }  # fmt: skip


def hammer(name: str, tag: str, limit: int, count: int, barrier, out) -> None:  # type: ignore[no-untyped-def]
    os.environ["DJANGO_SETTINGS_MODULE"] = "gateway.settings"
    import django

    django.setup()
    decide = CONTENDERS[name](tag, [("minute", limit)])
    barrier.wait()
    out.put(sum(decide() for _ in range(count)))


def exactness(name: str, procs: int, count: int, limit: int) -> tuple[int, float, str]:
    from django_ratelimit.core import _get_window

    tag = f"exact-{uuid.uuid4().hex[:10]}"
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(procs + 1), ctx.Queue()
    workers = [
        ctx.Process(target=hammer, args=(name, tag, limit, count, barrier, out))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    barrier.wait(120)
    started = time.perf_counter()
    window = _get_window(tag, 60)
    admitted = sum(out.get(timeout=300) for _ in workers)
    elapsed = time.perf_counter() - started
    for w in workers:
        w.join(30)
    note = ""
    if name == "django-ratelimit" and _get_window(tag, 60) != window:
        # Its fixed window ends at a per-key minute boundary: crossing one during the run
        # legitimately admits a second 1,000.
        note = "a window boundary fell within the run"
    elif name == "DRF throttle":
        from django.core.cache import cache

        kept = len(cache.get(f"throttle_bench0_{tag}", []))
        note = f"history kept {kept} timestamps (lost updates)"
    return admitted, elapsed, note


def row(label: str, *cells: str, note: str = "") -> None:
    print(f"  {label:<26}" + "".join(f"{c:>17}" for c in cells) + (f"   {note}" if note else ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decisions", type=int, default=5000, help="single-thread decisions")
    parser.add_argument("--procs", type=int, default=16, help="processes in the exactness phase")
    parser.add_argument("--per-proc", type=int, default=250, help="requests per process")
    parser.add_argument("--limit", type=int, default=1000, help="requests per minute")
    args = parser.parse_args()

    import django
    import redis

    django.setup()
    from django.conf import settings

    from gateway.redis import get_redis

    count_commands()
    r = redis.Redis.from_url(settings.REDIS_URL)
    names = list(CONTENDERS)
    from policies.engine.core import SCRIPT

    print(
        f"limiter benchmark (python {sys.version.split()[0]}, {psutil.cpu_count()} cores, "
        f"Redis {r.info('server')['redis_version']} on {settings.REDIS_URL.split('/')[2]}; "
        f"client and Redis share them; load average {os.getloadavg()[0]:.1f}; "
        f"engine script {hashlib.sha1(SCRIPT.encode()).hexdigest()[:10]})"  # noqa: S324
    )
    print()
    print(f"one request against 5 limits, {args.decisions} decisions in one thread")
    results = {}
    for name in names:
        tag = f"tp-{uuid.uuid4().hex[:10]}"
        results[name] = throughput(CONTENDERS[name](tag, FIVE), args.decisions, r)
    row("", *names)
    row("decisions/s", *(f"{results[n]['rate']:.0f}" for n in names))
    row("p50 per decision (ms)", *(f"{results[n]['p50']:.3f}" for n in names))
    row("p99 per decision (ms)", *(f"{results[n]['p99']:.3f}" for n in names))
    row("round trips/decision", *(f"{results[n]['trips']:.2f}" for n in names))
    row("Redis commands/decision", *(f"{results[n]['commands']:.2f}" for n in names))
    row("Redis server us/decision", *(f"{results[n]['server_us']:.1f}" for n in names))
    row("denied", *(str(results[n]["denied"]) for n in names))
    print("  commands per decision (INFO commandstats; * sent by the client, others run in Lua):")
    for name in names:
        print(f"    {name:<18} {results[name]['which']}")

    client = get_redis()  # the connection Tollgate's engine uses
    trivial = client.register_script("return 1")
    baselines = []
    for call in (client.ping, trivial):
        times = []
        for _ in range(2000):
            t = time.perf_counter()
            call()
            times.append((time.perf_counter() - t) * 1000)
        baselines.append(percentile(times, 50))
    print(
        f"  same-connection baseline p50: PING {baselines[0]:.3f} ms, "
        f"EVALSHA 'return 1' {baselines[1]:.3f} ms"
    )

    print()
    total = args.procs * args.per_proc
    print(
        f"exactness: {args.procs} processes x {args.per_proc} requests ({total}) "
        f"against {args.limit} per minute, one ident"
    )
    row("", "admitted", "over the limit", "seconds")
    for name in names:
        admitted, elapsed, note = exactness(name, args.procs, args.per_proc, args.limit)
        row(name, str(admitted), f"{admitted - args.limit:+d}", f"{elapsed:.2f}", note=note)


if __name__ == "__main__":
    main()
