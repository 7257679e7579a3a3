"""Shared fixtures: real servers, isolation per test and a cast that includes an outsider.

The cast: ``alice`` administers org A, ``bob`` is a read-only member of org A,
``charlie`` administers org B (the outsider), ``staff`` is global staff.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from gateway.devstack.servers import EmbeddedPostgres, EmbeddedRedis, free_port
from gateway.models import LlmModel, Provider
from policies.models import Feature, Membership, Organization, Tier

BASE_DIR = Path(__file__).resolve().parent.parent

# The proxy's fixtures (a fake provider, a gateway process) serve several test packages.
pytest_plugins = ["tests.proxy_fixtures", "tests.job_fixtures"]


def _flush_past_the_audit_trigger() -> None:
    """Transactional tests end with TRUNCATE of every table, which the audit table's
    append-only trigger refuses. The test database's superuser lets this one flush through
    (replica mode skips ordinary triggers); the application's role could not."""
    from django.db import connection
    from django.test import TransactionTestCase

    original = TransactionTestCase._fixture_teardown

    def teardown(self):  # type: ignore[no-untyped-def]
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = replica")
        try:
            original(self)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SET session_replication_role = DEFAULT")

    TransactionTestCase._fixture_teardown = teardown  # type: ignore[method-assign]


_flush_past_the_audit_trigger()


@pytest.fixture(autouse=True)
def redis_prefix(settings: pytest.FixtureRequest) -> str:
    """Each test writes its Redis keys under its own prefix, so tests never see each other."""
    prefix = f"test:{uuid.uuid4().hex[:12]}"
    settings.TOLLGATE_REDIS_PREFIX = prefix  # type: ignore[attr-defined]
    return prefix


# --- the cast ---------------------------------------------------------------------------


@pytest.fixture
def free_tier(db: None) -> Tier:
    # get_or_create: transactional tests truncate the rows the data migration seeded.
    return Tier.objects.get_or_create(slug="free", defaults={"name": "Free"})[0]


@pytest.fixture
def org_a(free_tier: Tier) -> Organization:
    return Organization.objects.create(name="Acme", slug="acme", tier=free_tier)


@pytest.fixture
def org_b(free_tier: Tier) -> Organization:
    return Organization.objects.create(name="Globex", slug="globex", tier=free_tier)


@pytest.fixture
def chat(db: None) -> Feature:
    return Feature.objects.create(name="chat")


@pytest.fixture
def summarize(db: None) -> Feature:
    return Feature.objects.create(name="summarize")


def _user(username: str, *, staff: bool = False, superuser: bool = False):  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(
        username,
        f"{username}@example.test",
        "pw-" + uuid.uuid4().hex,
        is_staff=staff or superuser,
        is_superuser=superuser,
    )


@pytest.fixture
def staff(db: None):  # type: ignore[no-untyped-def]
    return _user("staff", staff=True)


@pytest.fixture
def alice(org_a: Organization):  # type: ignore[no-untyped-def]
    user = _user("alice", staff=True)
    Membership.objects.create(user=user, org=org_a, role=Membership.Role.ADMIN)
    return user


@pytest.fixture
def bob(org_a: Organization):  # type: ignore[no-untyped-def]
    user = _user("bob", staff=True)
    Membership.objects.create(user=user, org=org_a, role=Membership.Role.MEMBER)
    return user


@pytest.fixture
def charlie(org_b: Organization):  # type: ignore[no-untyped-def]
    user = _user("charlie", staff=True)
    Membership.objects.create(user=user, org=org_b, role=Membership.Role.ADMIN)
    return user


def token_client(user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api_staff(staff) -> APIClient:  # type: ignore[no-untyped-def]
    return token_client(staff)


@pytest.fixture
def api_alice(alice) -> APIClient:  # type: ignore[no-untyped-def]
    return token_client(alice)


@pytest.fixture
def api_bob(bob) -> APIClient:  # type: ignore[no-untyped-def]
    return token_client(bob)


@pytest.fixture
def api_charlie(charlie) -> APIClient:  # type: ignore[no-untyped-def]
    return token_client(charlie)


@pytest.fixture
def shared_provider(db: None) -> Provider:
    provider = Provider(
        name="openai-shared", kind=Provider.Kind.OPENAI, base_url="http://127.0.0.1:9/v1"
    )
    provider.api_key = "sk-shared-secret"
    provider.save()
    return provider


@pytest.fixture
def shared_model(shared_provider: Provider) -> LlmModel:
    return LlmModel.objects.create(
        name="gpt-4o-mini",
        provider=shared_provider,
        upstream_name="gpt-4o-mini",
        input_price_per_million="0.15",
        output_price_per_million="0.60",
        cached_input_price_per_million="0.075",
    )


@pytest.fixture
def org_a_model(org_a: Organization, shared_provider: Provider) -> LlmModel:
    return LlmModel.objects.create(
        org=org_a,
        name="acme-private",
        provider=shared_provider,
        upstream_name="gpt-4o",
        input_price_per_million="2.50",
        output_price_per_million="10.00",
    )


# --- real servers of a test's own (to stop them) -------------------------------------------


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", log_path=tmp_path / "redis.log", durable=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def throwaway_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg", log_path=tmp_path / "pg.log", durable=False)
    server.start()
    yield server
    server.stop()


class ServiceProcess:
    """A gateway or Celery process started by a test, with its output in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=BASE_DIR,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._file.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def service_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env


def wait_for_http(url: str, proc: ServiceProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise AssertionError(f"process exited early:\n{proc.output()}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - local URL
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {timeout}s:\n{proc.output()}")


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """Start ``gateway.asgi:application`` under uvicorn; returns its base URL."""
    started: list[ServiceProcess] = []

    def start(**env: str) -> str:
        port = free_port()
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
            service_env(**env),
            tmp_path / f"gateway-{port}.log",
        )
        started.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/health/live", proc)
        return base

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """Start a real Celery worker process (``celery -A gateway worker``)."""
    started: list[ServiceProcess] = []

    def start(*extra: str, **env: str) -> ServiceProcess:
        name = f"test-{uuid.uuid4().hex[:8]}@%h"
        proc = ServiceProcess(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "gateway",
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                "1",
                "--pool",
                "solo",
                "--hostname",
                name,
                *extra,
            ],
            service_env(**env),
            tmp_path / f"worker-{len(started)}.log",
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    from gateway.devstack.servers import EmbeddedRedisCluster

    cluster = EmbeddedRedisCluster(tmp_path / "cluster", masters=3)
    cluster.start()
    yield cluster
    cluster.stop()
