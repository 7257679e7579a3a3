"""A burst far above a `queue` limit: every call is answered directly or as a job, every job
completes once, and the workers admit jobs no faster than the limit, on the Redis broker
and on RabbitMQ."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import pytest

from gateway.jobs.models import Job
from gateway.models import UsageRecord
from policies.models import Feature
from tests.gateway.test_proxy_limits import PROMPT, fresh_key, limit
from tests.job_fixtures import finished, wait_for
from tests.proxy_fixtures import (
    GATEWAY_PREFIX,
    Setup,
    _database_url,
    flush_usage,
    wait_until_served,
)

pytestmark = pytest.mark.django_db(transaction=True)

BURST = 2000
PER_SECOND = 200
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def most_in_any_second(times_ms: list[int]) -> int:
    """The largest number of times falling in any interval of 1,000 ms."""
    times = sorted(times_ms)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1000:
            start += 1
        best = max(best, end - start + 1)
    return best


async def burst(url: str, key: str, count: int) -> list[int]:
    """``count`` calls at once (64 connections), as fast as the gateway takes them."""
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as client:
        body = {"model": "gpt-test", "messages": PROMPT}
        headers = {"Authorization": f"Bearer {key}", "X-Tollgate-Feature": "chat"}

        async def one() -> int:
            async with client.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one() for _ in range(count))))


def rabbitmq_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("broker", ["redis", "rabbitmq", "redis, 1 s pump turns"])
def test_a_burst_of_2000_against_200_per_second_all_completes_within_the_limit(
    proxy: Setup, worker: Any, start_gateway: Any, broker: str
) -> None:
    env: dict[str, str] = {}
    turns: dict[str, str] = {}
    if broker.endswith("turns"):
        # A pump hands over every second: the jobs it kept claimed for its lane's next
        # opening go back to the queue for the next pump, none lost or run twice.
        turns["TOLLGATE_JOB_PUMP_SECONDS"] = "1"
    url = proxy.url
    if broker == "rabbitmq":
        if not rabbitmq_up():
            pytest.skip("no RabbitMQ on 127.0.0.1:5672")
        env["CELERY_BROKER_URL"] = RABBITMQ
        url = start_gateway(
            DATABASE_URL=_database_url(), TOLLGATE_REDIS_PREFIX=GATEWAY_PREFIX, **env
        )
    limit(
        scope="org_feature",
        org=proxy.org_a,
        feature=Feature.objects.get(name="chat"),
        window="second",
        amount=PER_SECOND,
        action="queue",
    )
    key = fresh_key(proxy, proxy.org_a)
    wait_until_served(url, key)
    running = worker(**env, **turns)
    started = time.monotonic()
    statuses = asyncio.run(burst(url, key, BURST))
    print(f"burst of {BURST} sent in {time.monotonic() - started:.1f}s")
    direct, queued = statuses.count(200), statuses.count(202)
    assert direct + queued == BURST, sorted(set(statuses))
    assert queued >= BURST // 4  # far more arrived than the limit admits
    assert Job.objects.count() == queued  # none dropped
    wait_for(finished(queued), timeout=180, what=f"{queued} jobs")
    jobs = Job.objects.all()
    assert {j.status for j in jobs} == {"succeeded"}
    assert {j.attempts for j in jobs} == {1}
    assert most_in_any_second([j.admitted_at_ms for j in jobs]) <= PER_SECOND
    # Each call reached the provider once and is charged once.
    assert proxy.fake.state.count == BURST

    def recorded() -> int:
        flush_usage()
        return UsageRecord.objects.filter(endpoint="chat/completions").count()

    wait_for(lambda: recorded() >= BURST, what="every usage record")
    assert recorded() == BURST
    # No job waited for a lease to run out: every claim a pump kept for its lane's next
    # opening went back to the queue when that pump handed over.
    assert "put back after their worker stopped" not in running.log.read_text()


def test_the_window_counter_finds_the_busiest_second() -> None:
    assert most_in_any_second([0, 999, 1000, 1999, 2500]) == 2
    assert most_in_any_second([0, 1, 2, 998, 999]) == 5
    assert most_in_any_second([]) == 0
