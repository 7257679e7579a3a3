"""compose.yaml and the Dockerfile match the application's entry points."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

BASE_DIR = Path(__file__).resolve().parent.parent


def load() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((BASE_DIR / "compose.yaml").read_text())


def command(service: dict) -> str:  # type: ignore[type-arg]
    value = service.get("command", "")
    return " ".join(value) if isinstance(value, list) else value


def test_it_runs_every_part_of_the_stack_with_health_checks() -> None:
    services = load()["services"]
    assert {"postgres", "redis", "gateway", "worker", "beat"} <= set(services)
    for name in ("postgres", "redis", "gateway", "worker", "beat"):
        assert "healthcheck" in services[name], name


def test_the_commands_use_the_documented_entry_points() -> None:
    services = load()["services"]
    assert "gateway.asgi:application" in command(services["gateway"])
    assert re.search(r"celery -A gateway worker", command(services["worker"]))
    assert re.search(r"celery -A gateway beat", command(services["beat"]))
    assert "migrate" in command(services["migrate"])


def test_app_services_get_the_required_environment() -> None:
    compose = load()
    required = {"DATABASE_URL", "REDIS_URL"}
    example = (BASE_DIR / ".env.example").read_text()
    for name in ("gateway", "worker", "beat", "migrate"):
        service = compose["services"][name]
        assert required <= set(service["environment"]), name
        assert service["env_file"] == ".env"
    for variable in (
        "SECRET_KEY",
        "TOLLGATE_ENCRYPTION_KEY",
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "SENTRY_DSN",
    ):
        assert re.search(rf"^{variable}=", example, re.MULTILINE), variable


def test_data_lives_in_volumes() -> None:
    services = load()["services"]
    assert any("/var/lib/postgresql/data" in v for v in services["postgres"]["volumes"])
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])


def test_every_setting_read_from_the_environment_is_documented() -> None:
    read = set()
    for path in (BASE_DIR / "gateway").glob("settings.py"):
        read |= set(re.findall(r'env\.\w+\(\s*"([A-Z0-9_]+)"', path.read_text()))
    example = (BASE_DIR / ".env.example").read_text()
    missing = {name for name in read if not re.search(rf"^{name}=", example, re.MULTILINE)}
    assert not missing
