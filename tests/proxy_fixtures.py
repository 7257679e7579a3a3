"""Fixtures for the proxy: a fake upstream and a real gateway process in front of it."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.db import connection

from gateway.devstack.servers import free_port
from gateway.fake_upstream import FakeUpstream
from gateway.models import LlmModel, Provider
from gateway.proxy.usage import STREAM as usage_stream
from gateway.redis import get_redis, key
from gateway.usage import usage_flush
from policies import events
from policies.models import Feature, Organization
from policies.services import apikey_create
from tests.conftest import ServiceProcess, service_env, wait_for_http

# The gateway process under test writes its Redis keys here; proxy tests read them.
GATEWAY_PREFIX = "test:proxy"
UPSTREAM_KEY = "sk-upstream-secret-do-not-leak"
MAX_BODY_BYTES = 65536
READ_TIMEOUT_SECONDS = 2


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.reset()
    return fake_upstream


def _database_url() -> str:
    params = connection.settings_dict
    auth = params["USER"] or ""
    if params.get("PASSWORD"):
        auth += f":{params['PASSWORD']}"
    return f"postgres://{auth}@{params['HOST']}:{params['PORT']}/{params['NAME']}"


@pytest.fixture(scope="session")
def gateway_url(django_db_setup: None, django_db_blocker, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """One real gateway process (uvicorn) on the test database for the whole session."""
    port = free_port()
    with django_db_blocker.unblock():
        database_url = _database_url()
    log = Path(tmp_path_factory.mktemp("gateway")) / "gateway.log"
    proc = ServiceProcess(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "gateway.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
        ],
        service_env(
            DATABASE_URL=database_url,
            TOLLGATE_REDIS_PREFIX=GATEWAY_PREFIX,
            TOLLGATE_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
            TOLLGATE_UPSTREAM_READ_TIMEOUT=str(READ_TIMEOUT_SECONDS),
            # Callback receivers in tests listen on 127.0.0.1.
            TOLLGATE_JOB_CALLBACK_PRIVATE="true",
        ),
        log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/health/live", proc)
        yield base
    finally:
        proc.stop()


@dataclass
class Setup:
    url: str
    fake: FakeUpstream
    org_a: Organization
    org_b: Organization
    key_a: str
    key_b: str
    chat: LlmModel
    embed: LlmModel
    claude: LlmModel
    private_a: LlmModel
    provider: Provider

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"


def wait_until_served(url: str, key: str, *, timeout: float = 5.0) -> None:
    """The gateway reloads its snapshot after a change; wait until it knows ``key``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        if response.status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"gateway never accepted the key: {response.status_code} {response.text}")


@pytest.fixture
def proxy(
    gateway_url: str, fake: FakeUpstream, transactional_db: None, free_tier, settings
) -> Setup:  # type: ignore[no-untyped-def]
    settings.TOLLGATE_REDIS_PREFIX = GATEWAY_PREFIX
    # The gateway process outlives tests: start without earlier tests' usage and engine
    # events, whose rows (and orgs) the database no longer has.
    get_redis().delete(key(*usage_stream), key(*events.STREAM))
    chat_feature = Feature.objects.create(name="chat")
    Feature.objects.create(name="summarize")
    org_a = Organization.objects.create(name="Acme", slug="acme", tier=free_tier)
    org_b = Organization.objects.create(name="Globex", slug="globex", tier=free_tier)
    provider = Provider(name="fake-openai", kind="openai_compatible", base_url=f"{fake.url}/v1")
    provider.api_key = UPSTREAM_KEY
    provider.save()
    anthropic = Provider(name="fake-anthropic", kind="anthropic", base_url=fake.url)
    anthropic.api_key = UPSTREAM_KEY
    anthropic.save()
    prices = {
        "input_price_per_million": "2.50",
        "output_price_per_million": "10.00",
        "cached_input_price_per_million": "1.25",
    }
    chat = LlmModel.objects.create(
        name="gpt-test", provider=provider, upstream_name="upstream-gpt", **prices
    )
    embed = LlmModel.objects.create(
        name="embed-test",
        provider=provider,
        mode="embedding",
        upstream_name="upstream-embed",
        input_price_per_million="0.02",
    )
    claude = LlmModel.objects.create(
        name="claude-test",
        provider=anthropic,
        upstream_name="upstream-claude",
        input_price_per_million="3",
        output_price_per_million="15",
        cached_input_price_per_million="0.30",
    )
    private_a = LlmModel.objects.create(
        org=org_a,
        name="acme-private",
        provider=provider,
        upstream_name="upstream-private",
        **prices,
    )
    _key, key_a = apikey_create(org=org_a, name="a", default_feature=chat_feature)
    _key, key_b = apikey_create(org=org_b, name="b", default_feature=chat_feature)
    wait_until_served(gateway_url, key_a)
    wait_until_served(gateway_url, key_b)
    return Setup(
        gateway_url, fake, org_a, org_b, key_a, key_b, chat, embed, claude, private_a, provider
    )


def flush_usage() -> None:
    """Move whatever the gateway recorded into Postgres, as the Celery task does."""
    usage_flush(consumer="test")
