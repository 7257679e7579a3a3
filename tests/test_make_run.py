"""Smoke test: ``make run`` boots the whole local stack and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from gateway.devstack.servers import free_port

BASE_DIR = Path(__file__).resolve().parent.parent
BOOT_TIMEOUT_SECONDS = 120


def _health(url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - local URL
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _descendants(pid: int) -> set[int]:
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.slow
def test_make_run_serves_health_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "CELERY_BROKER_URL",
            "SECRET_KEY",
            "TOLLGATE_ENCRYPTION_KEY",
            "TOLLGATE_HOME",
            "MAKEFLAGS",
            "MAKELEVEL",
        }
    }
    env.update(TOLLGATE_HOME=str(tmp_path / "home"), TOLLGATE_PORT=str(port))
    log = open(tmp_path / "make-run.log", "wb")  # noqa: SIM115
    # Its own process group, like a terminal's foreground job, so SIGINT reaches it as Ctrl-C would.
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_SECONDS
        body: dict = {}  # type: ignore[type-arg]
        code = 0
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "make-run.log").read_text()
            seen |= _descendants(proc.pid)
            try:
                code, body = _health(f"http://127.0.0.1:{port}/health")
            except OSError:
                time.sleep(0.5)
                continue
            if code == 200:
                break
            time.sleep(0.5)
        assert code == 200, (body, (tmp_path / "make-run.log").read_text()[-3000:])
        assert all(dep["status"] == "ok" for dep in body["dependencies"].values())
        seen |= _descendants(proc.pid)
        info = json.loads((tmp_path / "home" / "first-run.json").read_text())
        assert info["api_key"].startswith("tg_")
        # The banner follows the gateway's readiness; under load it can trail /health a bit.
        deadline = time.monotonic() + 15
        output = ""
        while time.monotonic() < deadline and info["api_key"] not in output:
            output = (tmp_path / "make-run.log").read_text()
            time.sleep(0.2)
        assert info["api_key"] in output
        assert f"http://127.0.0.1:{port}/admin/" in output
        assert info["password"] in output

        # The printed example works: the demo key, through the gateway, to the fake provider.
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=json.dumps(
                {"model": "demo-chat", "messages": [{"role": "user", "content": "Hello"}]}
            ).encode(),
            headers={
                "Authorization": f"Bearer {info['api_key']}",
                "Content-Type": "application/json",
                "X-Tollgate-Feature": "chat",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - local URL
            completion = json.loads(response.read())
        assert completion["choices"][0]["message"]["content"]

        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert len(seen) >= 6, "expected postgres, redis, gateway, worker and beat under make run"
    deadline = time.monotonic() + 10
    while _alive(seen) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = _alive(seen)
    assert not survivors, [psutil.Process(p).cmdline() for p in survivors]
