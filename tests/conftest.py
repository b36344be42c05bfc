"""Shared fixtures: one throwaway PostgreSQL cluster per test run, a fresh database per test
cloned from a migrated template, and real daemon processes on real Unix sockets.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from ralph_monitor.cluster import Cluster
from ralph_monitor.store import prepare_database
from tests import leaks
from tests.daemon_proc import start_daemon

RUN_TMP = leaks.start_run()
"""Every temporary file of this run, checked to be gone at its end (tests/leaks.py)."""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    problems = leaks.check_and_clean(RUN_TMP)
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "the test run left things behind", red=True)
            for problem in problems:
                reporter.write_line(problem)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

TEMPLATE_DB = "ralph_template"
READY_TIMEOUT_S = 30.0
_db_counter = itertools.count()


def short_tempdir(prefix: str) -> Path:
    """A directory with a short path (Unix socket paths are limited to 107 bytes),
    traversable by the `postgres` user that runs clusters when tests run as root."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=RUN_TMP))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    root = short_tempdir("rm-pg-")
    cluster = Cluster(root / "cluster")
    cluster.start()
    yield cluster
    cluster.stop(mode="immediate")
    shutil.rmtree(root, ignore_errors=True)


def admin_connect(cluster: Cluster) -> psycopg.Connection[Any]:
    return psycopg.connect(cluster.dsn("postgres"), autocommit=True)


def create_database(cluster: Cluster, name: str, *, template: str | None = None) -> str:
    """Create database `name` afresh (dropping one an earlier run left behind), as a copy of
    `template` if given, else empty; its DSN."""
    with admin_connect(cluster) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    return cluster.dsn(name)


def drop_database(cluster: Cluster, name: str) -> None:
    """Drop database `name`, disconnecting whoever is still on it."""
    with admin_connect(cluster) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def template_dsn(pg_cluster: Cluster) -> str:
    dsn = create_database(pg_cluster, TEMPLATE_DB)
    asyncio.run(prepare_database(dsn))
    return dsn


@pytest.fixture
def db_dsn(pg_cluster: Cluster, template_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"test_{os.getpid()}_{next(_db_counter)}"
    yield create_database(pg_cluster, name, template=TEMPLATE_DB)
    drop_database(pg_cluster, name)


def query(dsn: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    """Rows of one query, as dicts, on a short-lived connection."""
    with psycopg.connect(dsn, row_factory=dict_row, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


@dataclass
class Daemon:
    """A `ralph-monitor run` process with its own config, socket and state dir."""

    root: Path
    dsn: str
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def socket_path(self) -> str:
        return str(self.root / "events.sock")

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def log_path(self) -> Path:
        return self.root / "daemon.log"

    @property
    def spool_path(self) -> Path:
        return self.root / "state" / "spool" / "events.spool"

    def write_config(self) -> None:
        sections: dict[str, dict[str, Any]] = {
            "socket": {"path": self.socket_path, "group": ""},
            "database": {"dsn": self.dsn, "connect_timeout_s": 2.0, "retry_interval_s": 0.5},
            "paths": {"state_dir": str(self.root / "state")},
            "monitor": {"log_level": "debug"},
        }
        for section, values in self.settings.items():
            sections.setdefault(section, {}).update(values)
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        self.config_path.write_text("\n".join(lines) + "\n")
        self.config_path.chmod(0o640)   # as packaged: it may hold alert tokens

    def start(self, *, wait: bool = True, extra_env: dict[str, str] | None = None,
              pass_fds: tuple[int, ...] = ()) -> None:
        self.write_config()
        self.process = start_daemon(self.config_path, log_path=self.log_path, notify_path=self.root / "notify.sock",
                                    env={**self.env, **(extra_env or {})}, wait=wait,
                                    timeout_s=READY_TIMEOUT_S, pass_fds=pass_fds)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(self.socket_path)
        return sock


@pytest.fixture
def daemon_factory(db_dsn: str) -> Iterator[Any]:
    """Make daemons (not yet started) on the test's database; all are stopped at the end."""
    made: list[Daemon] = []

    def make(dsn: str | None = None, **settings: dict[str, Any]) -> Daemon:
        daemon = Daemon(root=short_tempdir("rm-d-"), dsn=dsn or db_dsn, settings=settings)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        if daemon.process is not None and daemon.process.poll() is None:
            # Its children too (the render child, pg_dump): one that outlived the daemon would
            # write into the directory removed below.
            leaks.kill_all([*leaks.descendants(daemon.process.pid), daemon.process.pid])
            daemon.process.wait(10)
        shutil.rmtree(daemon.root, ignore_errors=True)


@pytest.fixture
def daemon(daemon_factory: Any) -> Daemon:
    """A running daemon on a fresh database."""
    d = daemon_factory()
    d.start()
    return d


class LineClient:
    """A test client that sends lines and reads reply lines on one connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._file = sock.makefile("rb")

    def send(self, line: bytes | str) -> None:
        self.sock.sendall(line.encode() if isinstance(line, str) else line)

    def reply(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise EOFError("connection closed without a reply")
        return json.loads(line)

    def request(self, event: dict[str, Any] | str | bytes) -> dict[str, Any]:
        if isinstance(event, dict):
            event = json.dumps(event)
        data = event.encode() if isinstance(event, str) else event
        self.send(data if data.endswith(b"\n") else data + b"\n")
        return self.reply()

    def close(self) -> None:
        self._file.close()
        self.sock.close()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[LineClient]:
    c = LineClient(daemon.connect())
    yield c
    c.close()
