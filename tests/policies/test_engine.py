"""The limiter script against a real Redis, with the clock pinned where windows matter."""

from __future__ import annotations

import multiprocessing
import os
import uuid
from dataclasses import replace

from policies.engine import sync
from policies.engine.specs import LimitSpec

T0 = 1_800_000_000_000  # a fixed "now" in ms (2027-01-15T08:00:00Z)


def spec(**overrides) -> LimitSpec:  # type: ignore[no-untyped-def]
    base = LimitSpec(
        id=overrides.pop("id", 1),
        scope="org",
        metric="requests",
        window="minute",
        amount=10,
        action="reject",
        max_wait_seconds=None,
        failure_mode="fail_open",
        thresholds="80,100",
        default_output_tokens=100,
        description="10 requests per minute",
        org_id=1,
    )
    return replace(base, **overrides)


def admit(limits, charges=None, now=T0, rid=None):  # type: ignore[no-untyped-def]
    limits = limits if isinstance(limits, list) else [limits]
    return sync.admit(
        rid or uuid.uuid4().hex, limits, charges or [1] * len(limits), org_id=1, now_ms=now
    )


def test_it_admits_up_to_the_limit_then_denies_naming_the_limit() -> None:
    limit = spec()
    results = [admit(limit).admitted for _ in range(12)]
    assert results == [True] * 10 + [False] * 2
    denied = admit(limit)
    assert denied.denied == limit
    assert 0 < denied.retry_ms <= 61_000


def test_all_limits_are_charged_or_none() -> None:
    wide, narrow = spec(id=1, amount=100), spec(id=2, amount=2)
    assert admit([wide, narrow]).admitted
    assert admit([wide, narrow]).admitted
    denied = admit([wide, narrow])
    assert not denied.admitted and denied.denied == narrow
    # The denied request charged nothing: the wide limit still counts 2.
    assert admit([wide]).used == [3]


def test_a_rolling_minute_frees_capacity_exactly_one_window_later() -> None:
    limit = spec(amount=3)
    for offset in (0, 10_000, 20_000):
        assert admit(limit, now=T0 + offset).admitted
    denied = admit(limit, now=T0 + 30_000)
    assert not denied.admitted
    # The first request's sub-bucket (1/100 of the window) leaves it 60.6 s after it at most.
    free_at = T0 + 30_000 + denied.retry_ms
    assert T0 + 60_000 <= free_at <= T0 + 60_600
    assert not admit(limit, now=free_at - 1).admitted
    assert admit(limit, now=free_at).admitted


def test_no_sixty_second_interval_ever_holds_more_than_the_limit() -> None:
    limit = spec(amount=5)
    admitted = []
    for step in range(0, 240_000, 700):  # one attempt every 0.7 s for 4 minutes
        if admit(limit, now=T0 + step).admitted:
            admitted.append(T0 + step)
    for start in admitted:
        inside = [t for t in admitted if start <= t < start + 60_000]
        assert len(inside) <= 5
    assert len(admitted) >= 15  # and capacity does come back


def test_a_calendar_day_resets_at_utc_midnight() -> None:
    midnight = (T0 // 86_400_000 + 1) * 86_400_000
    limit = spec(window="calendar_day", amount=2)
    assert admit(limit, now=midnight - 5000).admitted
    assert admit(limit, now=midnight - 4000).admitted
    denied = admit(limit, now=midnight - 3000)
    assert not denied.admitted and denied.retry_ms == 3000
    assert admit(limit, now=midnight).admitted


def test_a_calendar_month_resets_on_the_first_of_the_month() -> None:
    # 2027-02-28T23:59:59Z, then 2027-03-01T00:00:00Z
    end_of_feb = 1_803_859_199_000
    limit = spec(window="calendar_month", amount=1)
    assert admit(limit, now=end_of_feb).admitted
    denied = admit(limit, now=end_of_feb)
    assert denied.retry_ms == 1000
    assert admit(limit, now=end_of_feb + 1000).admitted


def test_reserved_tokens_are_replaced_by_actual_use_on_settle() -> None:
    tokens = spec(metric="tokens", amount=1000)
    rid = uuid.uuid4().hex
    assert admit(tokens, [600], rid=rid).admitted
    assert not admit(tokens, [600]).admitted  # 600 held
    sync.settle(rid, [tokens], [150], org_id=1, now_ms=T0)
    assert admit(tokens, [600]).admitted  # 150 used + 600 held <= 1000
    assert admit(tokens, [250]).used == [1000]


def test_a_dead_requests_hold_and_lease_expire(settings) -> None:  # type: ignore[no-untyped-def]
    settings.TOLLGATE_LIMIT_LEASE_SECONDS = 30
    tokens = spec(id=1, metric="tokens", amount=100)
    concurrent = spec(id=2, metric="concurrent", window="none", amount=1)
    assert admit([tokens, concurrent], [100, 1]).admitted
    assert not admit([tokens, concurrent], [1, 1]).admitted
    # The request never settles (its process died). After the lease, capacity returns.
    assert not admit([tokens, concurrent], [1, 1], now=T0 + 29_000).admitted
    assert admit([tokens, concurrent], [100, 1], now=T0 + 30_001).admitted


def test_a_concurrency_lease_is_released_on_settle() -> None:
    concurrent = spec(metric="concurrent", window="none", amount=1)
    rid = uuid.uuid4().hex
    assert admit(concurrent, rid=rid).admitted
    assert not admit(concurrent).admitted
    sync.settle(rid, [concurrent], [0], org_id=1, now_ms=T0)
    assert admit(concurrent).admitted


def test_a_request_larger_than_the_whole_limit_never_fits() -> None:
    decision = admit(spec(metric="tokens", amount=100), [101])
    assert not decision.admitted and decision.retry_ms == -1 and decision.retry_seconds is None


def test_monitor_limits_admit_and_report() -> None:
    limit = spec(action="monitor", amount=2)
    decisions = [admit(limit) for _ in range(4)]
    assert all(d.admitted for d in decisions)
    reported = [(c.threshold, c.used) for d in decisions for c in d.crossings]
    assert reported == [(80, 2), (100, 2)]


def test_a_threshold_is_reported_once_per_window() -> None:
    limit = spec(amount=10, thresholds="80,100")
    found = []
    for i in range(30):
        found += [(c.threshold, i) for c in admit(limit, now=T0 + i).crossings]
    # 80% at the 8th request, 100% at the 10th; the 20 denials report nothing new.
    assert found == [(80, 7), (100, 9)]
    later = [c.threshold for c in admit(limit, now=T0 + 61_000).crossings]
    assert later == []  # 1 of 10 in the new window


def test_a_denial_reports_a_full_limit_once() -> None:
    tokens = spec(id=2, metric="tokens", amount=10, thresholds="100")
    assert admit(tokens, [4]).admitted
    denied = [admit(tokens, [7]) for _ in range(3)]
    assert [len(d.crossings) for d in denied] == [1, 0, 0]


def _hammer(prefix: str, redis_url: str, count: int, out) -> None:  # type: ignore[no-untyped-def]
    os.environ["DJANGO_SETTINGS_MODULE"] = "gateway.settings"
    import django

    django.setup()
    from django.conf import settings as live

    live.TOLLGATE_REDIS_PREFIX = prefix
    limit = spec(amount=1000)
    admitted = sum(
        sync.admit(uuid.uuid4().hex, [limit], [1], org_id=1).admitted for _ in range(count)
    )
    out.put(admitted)


def test_eight_processes_against_one_limit_admit_exactly_the_limit(redis_prefix) -> None:  # type: ignore[no-untyped-def]
    from django.conf import settings as live

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_hammer, args=(redis_prefix, live.REDIS_URL, 250, out)) for _ in range(8)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert sum(out.get(timeout=5) for _ in procs) == 1000


def _cross(prefix: str, count: int, out) -> None:  # type: ignore[no-untyped-def]
    os.environ["DJANGO_SETTINGS_MODULE"] = "gateway.settings"
    import django

    django.setup()
    from django.conf import settings as live

    live.TOLLGATE_REDIS_PREFIX = prefix
    limit = spec(id=7, amount=1000, action="monitor", thresholds="80,100")
    found = []
    for _ in range(count):
        found += [
            c.threshold for c in sync.admit(uuid.uuid4().hex, [limit], [1], org_id=1).crossings
        ]
    out.put(found)


def test_ten_thousand_requests_from_four_processes_report_each_crossing_once(redis_prefix) -> None:  # type: ignore[no-untyped-def]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_cross, args=(redis_prefix, 2500, out)) for _ in range(4)]
    for proc in procs:
        proc.start()
    found = []
    for _ in procs:
        found += out.get(timeout=120)
    for proc in procs:
        proc.join(30)
    assert sorted(found) == [80, 100]


def _hold_and_die(prefix: str, ready) -> None:  # type: ignore[no-untyped-def]
    os.environ["DJANGO_SETTINGS_MODULE"] = "gateway.settings"
    os.environ["TOLLGATE_LIMIT_LEASE_SECONDS"] = "2"
    import django

    django.setup()
    from django.conf import settings as live

    live.TOLLGATE_REDIS_PREFIX = prefix
    tokens = spec(id=21, metric="tokens", amount=100)
    concurrent = spec(id=22, metric="concurrent", window="none", amount=1)
    decision = sync.admit(uuid.uuid4().hex, [tokens, concurrent], [100, 1], org_id=1)
    ready.put(decision.admitted)
    import time

    time.sleep(60)  # killed long before this ends


def test_a_killed_process_gives_its_reservations_back_after_the_lease(
    redis_prefix, settings
) -> None:  # type: ignore[no-untyped-def]
    import signal
    import time

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    proc = ctx.Process(target=_hold_and_die, args=(redis_prefix, ready))
    proc.start()
    assert ready.get(timeout=60) is True
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    tokens = spec(id=21, metric="tokens", amount=100)
    concurrent = spec(id=22, metric="concurrent", window="none", amount=1)
    both = [tokens, concurrent]
    assert not sync.admit(uuid.uuid4().hex, both, [1, 1], org_id=1).admitted
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sync.admit(uuid.uuid4().hex, both, [100, 1], org_id=1).admitted:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("capacity never came back after the lease")


def test_on_a_cluster_a_denial_in_one_slot_takes_back_the_other_slots_charges(
    redis_cluster, settings
) -> None:  # type: ignore[no-untyped-def]
    from policies.engine.peek import current_usage

    settings.REDIS_CLUSTER = True
    settings.REDIS_URL = redis_cluster.url
    org = spec(id=31, scope="org", amount=10)
    everyone = spec(id=32, scope="global", amount=5)
    tokens = spec(id=33, scope="org", metric="tokens", amount=1000)
    limits = [org, everyone, tokens]
    results = [
        sync.admit(uuid.uuid4().hex, limits, [1, 1, 10], org_id=1).admitted for _ in range(8)
    ]
    assert results == [True] * 5 + [False] * 3
    assert current_usage(org, org_id=1) == 5  # not 8: the three denied were taken back
    assert current_usage(tokens, org_id=1) == 50


def test_undo_takes_back_an_admit() -> None:
    limits = [
        spec(id=41, amount=2),
        spec(id=42, metric="tokens", amount=100),
        spec(id=43, metric="concurrent", window="none", amount=1),
    ]
    rid = uuid.uuid4().hex
    assert admit(limits, [1, 60, 1], rid=rid).admitted
    sync._one("undo", rid, limits, [1, 60, 1], 1, T0, sync.get_redis())
    assert admit(limits, [1, 100, 1]).used == [1, 100, 1]


def test_the_same_request_id_twice_cannot_share_or_leak_a_hold() -> None:
    tokens = spec(id=51, metric="tokens", amount=1000)
    assert admit(tokens, [300], rid="dup").admitted
    sync.settle("dup", [tokens], [10], org_id=1, now_ms=T0)
    sync.settle("dup", [tokens], [10], org_id=1, now_ms=T0)  # a second settle frees nothing
    assert admit(tokens, [1]).used == [10 + 10 + 1]


def test_a_backwards_clock_never_forgets_what_was_counted() -> None:
    limit = spec(id=52, amount=10)
    for _ in range(5):
        assert admit(limit, now=T0 + 30_000).admitted
    for _ in range(5):
        assert admit(limit, now=T0 + 10_000).admitted
    assert not admit(limit, now=T0 + 31_000).admitted


def test_an_undo_takes_back_from_the_bucket_the_admit_charged() -> None:
    limit = spec(id=53, amount=1)
    rid = uuid.uuid4().hex
    first = admit(limit, rid=rid, now=T0)
    sync._one("undo", rid, [limit], [1], 1, first.now_ms, sync.get_redis())
    assert admit(limit, now=T0 + 1_000).admitted
    assert not admit(limit, now=T0 + 60_000).admitted  # the undo did not free a later bucket


def test_a_huge_charge_is_a_denial_not_a_script_error() -> None:
    from decimal import Decimal

    from policies.engine.limiter import charges_for

    tokens = spec(id=54, metric="tokens", amount=1000)
    charge = charges_for(
        [tokens], input_tokens=5, max_tokens=10**20, input_price=Decimal(1), output_price=Decimal(1)
    )
    decision = admit(tokens, charge)
    assert not decision.admitted and decision.retry_ms == -1


def test_a_reaped_hold_never_makes_the_counter_negative(settings) -> None:  # type: ignore[no-untyped-def]
    settings.TOLLGATE_LIMIT_LEASE_SECONDS = 3
    tokens = spec(id=55, metric="tokens", window="second", amount=1000)
    assert admit(tokens, [900], rid="crashed").admitted
    assert admit(tokens, [50], rid="ok").admitted
    sync.settle("ok", [tokens], [50], org_id=1, now_ms=T0)
    later = T0 + 5_500
    assert admit(tokens, [1000], now=later).admitted
    assert not admit(tokens, [900], now=later).admitted


def test_a_saturated_rolling_second_frees_capacity_within_1_percent_of_its_window() -> None:
    limit = spec(id=54, window="second", amount=50)
    admitted = []
    for step in range(0, 4_000, 3):  # a client asking every 3 ms for 4 s
        if admit(limit, now=T0 + step).admitted:
            admitted.append(step)
    # Every admission's capacity came back to a later one no more than 10 ms (one
    # sub-bucket) after the window, and never before it: >= 99 % of the amount per window.
    gaps = [later - earlier for earlier, later in zip(admitted, admitted[50:], strict=False)]
    assert gaps and min(gaps) >= 1_000 and max(gaps) <= 1_010 + 3


def test_a_counter_from_the_60_bucket_ring_keeps_its_count() -> None:
    from django.conf import settings

    limit = spec(id=55, window="minute", amount=10)
    base = limit.counter_key(settings.TOLLGATE_REDIS_PREFIX, 1)
    client = sync.get_redis()
    old_bucket = 1_000  # ms per bucket in the 60-bucket ring of a minute
    cur = T0 // old_bucket
    # Nine requests counted 30 s ago by the earlier ring: its fields, without a 'g'.
    client.delete(f"{base}:c")
    client.hset(
        f"{base}:c",
        mapping={f"b{(cur - 30) % 61}": f"{cur - 30}:9", "t": 9, "lp": cur - 30},
    )
    assert admit(limit, now=T0).admitted
    assert not admit(limit, now=T0 + 1).admitted
    assert client.hget(f"{base}:c", "g") == b"1000"
    # Capacity comes back when the old ring's bucket leaves the window.
    freed = admit(limit, now=T0 + 2)
    assert T0 + 2 + freed.retry_ms == (cur - 30 + 61) * old_bucket


def test_a_limit_whose_window_changed_counts_afresh_in_the_new_ring() -> None:
    hourly = spec(id=56, window="hour", amount=5)
    for _ in range(5):
        assert admit(hourly, now=T0).admitted
    assert not admit(hourly, now=T0 + 1).admitted
    per_second = replace(hourly, window="second")
    for step in range(5):
        assert admit(per_second, now=T0 + 2 + step).admitted
    denied = admit(per_second, now=T0 + 10)
    assert not denied.admitted
    # The first of them leaves the new ring (10 ms buckets) by 1,010 ms after it.
    assert T0 + 1_000 <= T0 + 10 + denied.retry_ms <= T0 + 1_010
    assert admit(per_second, now=T0 + 10 + denied.retry_ms).admitted
