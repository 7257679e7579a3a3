"""Shared set-up for benchmarks: a migrated database, demo rows and child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")


def django_setup() -> None:
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def start(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    ready_url: str | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        argv, cwd=BASE_DIR, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
    )
    if ready_url:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(ready_url, timeout=1)  # noqa: S310 - local URL
                return proc
            except OSError:
                time.sleep(0.1)
        proc.kill()
        raise SystemExit(f"{argv[:4]} did not answer {ready_url}")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def bench_model(upstream: str) -> None:
    """The shared provider ``bench-upstream`` (at ``upstream``) and model ``bench-model``."""
    from gateway.models import LlmModel, Provider

    provider, _ = Provider.objects.get_or_create(
        org=None,
        name="bench-upstream",
        defaults={"kind": "openai_compatible", "base_url": f"{upstream}/v1"},
    )
    provider.base_url = f"{upstream}/v1"
    provider.api_key = "sk-bench"
    provider.save()
    LlmModel.objects.update_or_create(
        org=None,
        name="bench-model",
        defaults={
            "provider": provider,
            "upstream_name": "bench-upstream-model",
            "input_price_per_million": "2.5",
            "output_price_per_million": "10",
        },
    )
