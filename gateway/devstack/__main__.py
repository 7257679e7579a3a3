"""``python -m gateway.devstack run|exec``: the local stack behind ``make run`` and ``make test``.

``run``  starts PostgreSQL and Redis (embedded, unless DATABASE_URL / REDIS_URL are set),
         migrates, creates the demo data on first run, then supervises the ASGI gateway,
         a Celery worker and beat until Ctrl-C, which stops every process it started.
``exec`` starts the embedded servers the environment lacks, runs one command with their
         URLs in its environment, stops them and exits with the command's status.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cryptography.fernet import Fernet

from gateway.devstack.servers import (
    EmbeddedPostgres,
    EmbeddedRedis,
    ManagedProcess,
    ServerError,
    free_port,
    port_is_open,
    remove_tree,
)

BASE_DIR = Path(__file__).resolve().parents[2]
DEFAULT_PORT = 8000
# How often the supervisor looks at its children.
POLL_SECONDS = 0.25


def _say(message: str) -> None:
    print(f"tollgate: {message}", flush=True)


def _load_or_create_secrets(home: Path, env: dict[str, str]) -> None:
    """SECRET_KEY and TOLLGATE_ENCRYPTION_KEY for a local install, kept under ``home``."""
    path = home / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    changed = False
    if "SECRET_KEY" not in stored:
        stored["SECRET_KEY"] = secrets.token_urlsafe(48)
        changed = True
    if "TOLLGATE_ENCRYPTION_KEY" not in stored:
        stored["TOLLGATE_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
        changed = True
    if changed:
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2))
        path.chmod(0o600)
    for name, value in stored.items():
        env.setdefault(name, value)


class Stack:
    def __init__(self, home: Path, *, durable: bool) -> None:
        self.home = home
        self.durable = durable
        self.postgres: EmbeddedPostgres | None = None
        self.redis: EmbeddedRedis | None = None
        self.children: list[ManagedProcess] = []

    def start_servers(self, env: dict[str, str]) -> None:
        logs = self.home / "logs"
        if not env.get("DATABASE_URL"):
            self.postgres = EmbeddedPostgres(
                self.home / "postgres", log_path=logs / "postgres.log", durable=self.durable
            )
            _say("starting embedded PostgreSQL ...")
            self.postgres.start()
            env["DATABASE_URL"] = self.postgres.url
        if not env.get("REDIS_URL"):
            self.redis = EmbeddedRedis(
                self.home / "redis", log_path=logs / "redis.log", durable=self.durable
            )
            _say("starting embedded Redis ...")
            self.redis.start()
            env["REDIS_URL"] = self.redis.url

    def stop(self) -> None:
        # Applications first, so nothing writes to a database that is going away.
        for child in reversed(self.children):
            child.stop()
        for server in (self.redis, self.postgres):
            if server is not None:
                server.stop()

    def write_state(self, **extra: object) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "postgres_pid": self.postgres.process.pid
            if self.postgres and self.postgres.process
            else None,
            "postgres_port": self.postgres.port if self.postgres else None,
            "postgres_data": str(self.postgres.data_dir) if self.postgres else None,
            "redis_pid": self.redis.process.pid if self.redis and self.redis.process else None,
            "redis_port": self.redis.port if self.redis else None,
            "children": {child.name: child.pid for child in self.children},
            **extra,
        }
        (self.home / "state.json").write_text(json.dumps(state, indent=2))


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, str(BASE_DIR / "manage.py"), *args], env=env, check=True)


def _wait_http(url: str, proc: ManagedProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            raise ServerError(f"{proc.name} exited during start-up")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local URL
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise ServerError(f"{proc.name} did not answer {url} within {timeout:.0f}s")


def _banner(home: Path, public_url: str) -> str:
    info_path = home / "first-run.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    key = info.get("api_key", "(created on first run; see the admin to make a new one)")
    lines = [
        "",
        "Tollgate is running.",
        f"  admin      {public_url}/admin/   user: {info.get('username', '?')}  "
        f"password: {info.get('password', '(set on first run)')}",
        f"  API        {public_url}/api/  (token: manage.py drf_create_token USER)",
        f"  health     {public_url}/health",
        f"  demo key   {key}",
        "",
        "Try it:",
        f"  curl {public_url}/v1/chat/completions \\",
        f"    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\",
        "    -H 'X-Tollgate-Feature: chat' \\",
        """    -d '{"model": "demo-chat", "messages": [{"role": "user", "content": "Hello"}]}'""",
        "",
        '  python -c "from openai import OpenAI; '
        f"c = OpenAI(base_url='{public_url}/v1', api_key='{key}'); "
        "print(c.chat.completions.create(model='demo-chat', "
        "messages=[{'role': 'user', 'content': 'Hello'}]).choices[0].message.content)\"",
        "",
        "demo-chat, demo-embedding and demo-claude are served by a local fake provider; add a",
        "real provider and its key in the admin to call real models (e.g. gpt-4o-mini).",
        f"Logs of the embedded servers: {home / 'logs'}.  Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    home = Path(os.environ.get("TOLLGATE_HOME", BASE_DIR / ".tollgate")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["TOLLGATE_HOME"] = str(home)
    _load_or_create_secrets(home, env)

    port = int(env.get("TOLLGATE_PORT") or DEFAULT_PORT)
    if port_is_open(port):
        if env.get("TOLLGATE_PORT"):
            _say(f"port {port} (TOLLGATE_PORT) is already in use")
            return 1
        port = free_port()
        _say(f"port {DEFAULT_PORT} is in use; serving on {port} instead")
    env.setdefault("TOLLGATE_PUBLIC_URL", f"http://127.0.0.1:{port}")
    # Metrics of every gateway and worker process, summed by /metrics; emptied each start.
    metrics_dir = home / "prometheus"
    remove_tree(metrics_dir)
    metrics_dir.mkdir(parents=True)
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    public_url = env["TOLLGATE_PUBLIC_URL"].rstrip("/")

    stack = Stack(home, durable=True)
    stopping = False
    # If whatever started us (make, a terminal) goes away without a signal, stop too.
    parent = os.getppid()

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start_servers(env)
        _say("applying migrations ...")
        _manage(env, "migrate", "--noinput", "-v", "0")
        _manage(env, "collectstatic", "--noinput", "-v", "0")
        bootstrap = ["tollgate_bootstrap", "--info-file", str(home / "first-run.json")]
        fake: ManagedProcess | None = None
        if env.get("TOLLGATE_FAKE_UPSTREAM", "true").lower() not in {"0", "false", "no", "off"}:
            # A local stand-in provider, so the demo works with no provider key configured.
            fake_port = free_port()
            fake = ManagedProcess(
                "fake-upstream",
                [
                    sys.executable,
                    "-m",
                    "gateway.fake_upstream",
                    "--port",
                    str(fake_port),
                    "--chunks",
                    "12",
                    "--chunk-delay-ms",
                    "40",
                ],
                log_path=home / "logs" / "fake-upstream.log",
                env=env,
                cwd=BASE_DIR,
            )
            bootstrap += ["--fake-upstream", f"http://127.0.0.1:{fake_port}"]
        _manage(env, *bootstrap)

        workers = env.get("TOLLGATE_WEB_WORKERS", "1")
        celery = [sys.executable, "-m", "celery", "-A", "gateway"]
        stack.children = [
            ManagedProcess(
                "gateway",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "gateway.asgi:application",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    workers,
                    "--no-access-log",
                    "--timeout-graceful-shutdown",
                    "10",
                ],
                log_path=None,
                env=env,
                cwd=BASE_DIR,
            ),
            ManagedProcess(
                "worker",
                [
                    *celery,
                    "worker",
                    "--loglevel",
                    "INFO",
                    "--concurrency",
                    "2",
                    "--hostname",
                    f"worker-{os.getpid()}@%h",
                ],
                log_path=None,
                env=env,
                cwd=BASE_DIR,
            ),
            ManagedProcess(
                "beat",
                [
                    *celery,
                    "beat",
                    "--loglevel",
                    "INFO",
                    "--schedule",
                    str(home / "celerybeat-schedule"),
                ],
                log_path=None,
                env=env,
                cwd=BASE_DIR,
            ),
        ]
        if fake is not None:
            stack.children.append(fake)
        for child in stack.children:
            if stopping:
                break
            child.start()
        stack.write_state(port=port)
        if not stopping:
            _wait_http(f"http://127.0.0.1:{port}/health/live", stack.children[0])
            print(_banner(home, public_url), flush=True)
        while not stopping:
            if os.getppid() != parent:
                _say("parent process exited; stopping")
                break
            for child in stack.children:
                if not child.running():
                    code = child.proc.returncode if child.proc else None
                    _say(f"{child.name} exited unexpectedly (status {code}); stopping")
                    stopping = True
                    break
            time.sleep(POLL_SECONDS)
        _say("stopping ...")
        return 0
    except (ServerError, subprocess.CalledProcessError) as exc:
        _say(f"start-up failed: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stack.stop()
        _say("stopped")


def cmd_exec(args: argparse.Namespace) -> int:
    command = [a for a in args.command if a != "--"] if args.command[:1] == ["--"] else args.command
    if not command:
        _say("exec needs a command after --")
        return 2
    env = dict(os.environ)
    tmp: Path | None = None
    if args.ephemeral:
        tmp = Path(tempfile.mkdtemp(prefix="tollgate-"))
        home = tmp
        env.setdefault("SECRET_KEY", secrets.token_urlsafe(48))
        env.setdefault("TOLLGATE_ENCRYPTION_KEY", Fernet.generate_key().decode())
    else:
        home = Path(env.get("TOLLGATE_HOME", BASE_DIR / ".tollgate")).resolve()
        _load_or_create_secrets(home, env)
    env.setdefault("TOLLGATE_HOME", str(home))
    stack = Stack(home, durable=not args.ephemeral)
    try:
        stack.start_servers(env)
        # The child shares our terminal: Ctrl-C reaches it directly; we wait for it to end.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        child = subprocess.Popen(command, env=env, preexec_fn=_default_sigint)
        return child.wait()
    except ServerError as exc:
        _say(f"start-up failed: {exc}")
        return 1
    finally:
        stack.stop()
        if tmp is not None:
            remove_tree(tmp)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.devstack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("run", help="run the whole local stack until Ctrl-C").set_defaults(func=cmd_run)
    exec_parser = sub.add_parser("exec", help="run one command with the servers it needs")
    exec_parser.add_argument(
        "--ephemeral",
        action="store_true",
        help="throwaway servers and secrets in a temporary directory",
    )
    exec_parser.add_argument("command", nargs=argparse.REMAINDER)
    exec_parser.set_defaults(func=cmd_exec)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
