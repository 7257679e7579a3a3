"""Bad or missing configuration stops start-up with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def start(**overrides: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SECRET_KEY", None),
        ("SECRET_KEY", "short"),
        ("TOLLGATE_ENCRYPTION_KEY", None),
        ("TOLLGATE_ENCRYPTION_KEY", "not-a-fernet-key"),
        ("DATABASE_URL", None),
        ("DATABASE_URL", "mysql://db/x"),
        ("DATABASE_URL", "postgres://127.0.0.1:notaport/x"),
        ("REDIS_URL", None),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("CELERY_BROKER_URL", "sqs://x"),
        ("TOLLGATE_DEBUG", "maybe"),
        ("TOLLGATE_HEALTH_TIMEOUT_SECONDS", "soon"),
        ("TOLLGATE_MAX_BODY_BYTES", "12"),
        ("TOLLGATE_LOG_LEVEL", "LOUD"),
        ("SENTRY_DSN", "not a url"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(variable: str, value: str | None) -> None:
    result = start(**{variable: value})
    assert result.returncode != 0
    assert variable in result.stderr.splitlines()[-1], result.stderr[-2000:]
    assert "Traceback" not in result.stderr.splitlines()[-1]


def test_a_good_configuration_passes_the_system_checks() -> None:
    result = start()
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_the_example_secret_fails_the_system_checks() -> None:
    result = start(SECRET_KEY="change-me-to-a-long-random-string-of-at-least-32-chars")
    assert result.returncode != 0
    assert "tollgate.E001" in result.stderr
