"""systemd integration (guarantee 6): sd_notify READY/STATUS/WATCHDOG/STOPPING, socket
activation that keeps the socket across daemon restarts, and a SIGTERM that drains.

The tests play systemd's part: they bind the NOTIFY_SOCKET datagram socket themselves
(receiving the sender's credentials, as systemd does for NotifyAccess=main) and, for socket
activation, hold the listening socket across two daemon processes.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ralph_monitor.cluster import Cluster
from tests.conftest import Daemon, LineClient, create_database, drop_database, query

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
STATUS_WAIT_S = 8.0
"""The daemon sends STATUS= every 5 s (daemon.STATUS_INTERVAL_S)."""
EXITED_GRACE_S = 1.0

_UCRED = struct.Struct("3i")
_empty_db_counter = itertools.count()


@dataclass(frozen=True)
class Notification:
    at: float
    """time.monotonic() when received."""
    pid: int
    """The sender's pid (SCM_CREDENTIALS), as systemd sees it for NotifyAccess=main."""
    text: str

    @property
    def assignments(self) -> list[str]:
        return [line for line in self.text.split("\n") if line]


class NotifyListener:
    """A NOTIFY_SOCKET like systemd's: receives datagrams in a thread (so the daemon never
    blocks on a full queue) and records each with its sender pid."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(self.path)
        self._sock.settimeout(0.1)
        self._messages: list[Notification] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stopped:
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            with self._cond:
                self._messages.append(Notification(time.monotonic(), pid, data.decode("utf-8", "replace")))
                self._cond.notify_all()

    @property
    def messages(self) -> list[Notification]:
        with self._cond:
            return list(self._messages)

    def find(self, prefix: str, *, after: float = 0.0) -> list[Notification]:
        return [m for m in self.messages
                if m.at >= after and any(a.startswith(prefix) for a in m.assignments)]

    def wait_for(self, prefix: str, process: subprocess.Popen[bytes], *, after: float = 0.0,
                 timeout: float = READY_TIMEOUT_S, log: Path | None = None) -> Notification:
        """The first message at or after `after` with an assignment starting with `prefix`."""
        deadline = time.monotonic() + timeout
        exited = False
        with self._cond:
            while True:
                for m in self._messages:
                    if m.at >= after and any(a.startswith(prefix) for a in m.assignments):
                        return m
                if not exited and process.poll() is not None:
                    # Datagrams sent just before the exit may still be on their way to the thread.
                    exited = True
                    deadline = min(deadline, time.monotonic() + EXITED_GRACE_S)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    why = f"daemon exited with {process.returncode}" if exited else f"not within {timeout} s"
                    raise AssertionError(f"no {prefix}: {why}; got {self._messages}:\n{read_log(log)}")
                self._cond.wait(min(remaining, 0.2))

    def close(self) -> None:
        self._stopped = True
        self._thread.join(5)
        self._sock.close()
        with suppress(FileNotFoundError):
            os.unlink(self.path)


def read_log(path: Path | None) -> str:
    return path.read_text(errors="replace") if path is not None and path.exists() else ""


@pytest.fixture
def notify(daemon_factory: Any) -> Iterator[Any]:
    """Make NotifyListeners in a daemon's directory; all are closed at the end."""
    made: list[NotifyListener] = []

    def make(d: Daemon, name: str = "systemd-notify.sock") -> NotifyListener:
        listener = NotifyListener(d.root / name)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


@pytest.fixture
def empty_dsn(pg_cluster: Cluster) -> Iterator[str]:
    """A database with no schema at all: the daemon must migrate it before READY=1."""
    name = f"empty_{os.getpid()}_{next(_empty_db_counter)}"
    yield create_database(pg_cluster, name)
    drop_database(pg_cluster, name)


@pytest.fixture(autouse=True)
def not_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test process itself may run under systemd; its variables must not leak into daemons."""
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
        monkeypatch.delenv(name, raising=False)


def event(**fields: Any) -> dict[str, Any]:
    return {"type": "session_heartbeat", "event_id": str(uuid.uuid4()), **fields}


def stored_ids(dsn: str) -> set[str]:
    return {r["id"] for r in query(dsn, "SELECT event_id::text AS id FROM events")}


def assert_stopped_cleanly(d: Daemon) -> None:
    assert d.process is not None
    code = d.process.wait(STOP_TIMEOUT_S)
    assert code == 0, f"daemon exited with {code}:\n{d.log()}"
    assert "stopped;" in d.log()
    assert "Traceback" not in d.log()


# sd_notify


def test_ready_only_once_the_socket_accepts_and_the_schema_is_migrated(
        daemon_factory: Any, notify: Any, empty_dsn: str) -> None:
    d: Daemon = daemon_factory(dsn=empty_dsn)
    listener: NotifyListener = notify(d)
    d.start(wait=False, extra_env={"NOTIFY_SOCKET": listener.path})
    assert d.process is not None
    ready = listener.wait_for("READY=1", d.process, log=d.log_path)

    # The moment READY=1 is seen, the socket accepts and serves, and the schema exists.
    client = LineClient(d.connect())
    try:
        first = event(spec_id="CR-01")
        assert client.request(first) == {"ok": True, "id": first["event_id"]}
    finally:
        client.close()
    assert first["event_id"] in stored_ids(empty_dsn)
    assert query(empty_dsn, "SELECT count(*) AS n FROM schema_migrations")[0]["n"] >= 1

    # Only the daemon's main process speaks (NotifyAccess=main), and READY=1 comes once.
    assert ready.pid == d.process.pid
    assert len(listener.find("READY=1")) == 1
    assert not listener.find("WATCHDOG=1"), "no WATCHDOG_USEC was set"
    assert all(m.pid == d.process.pid for m in listener.messages)

    # STATUS= with rates, periodically.
    status = listener.wait_for("STATUS=", d.process, after=ready.at, timeout=STATUS_WAIT_S, log=d.log_path)
    text = next(a for a in status.assignments if a.startswith("STATUS="))
    assert "events/s" in text
    assert "connections" in text
    assert "database up" in text

    # SIGTERM: STOPPING=1, then a clean exit.
    sigterm_at = time.monotonic()
    d.process.send_signal(signal.SIGTERM)
    assert_stopped_cleanly(d)
    stopping = listener.wait_for("STOPPING=1", d.process, after=sigterm_at, timeout=5)
    assert stopping.pid == d.process.pid
    assert ready.at < status.at < stopping.at
    # Our own socket (not inherited) is cleaned up.
    assert not os.path.exists(d.socket_path)


def test_watchdog_pings_when_systemd_asks_for_them(daemon_factory: Any, notify: Any) -> None:
    d: Daemon = daemon_factory()
    listener: NotifyListener = notify(d)
    d.start(wait=False, extra_env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "1000000"})
    assert d.process is not None
    ready = listener.wait_for("READY=1", d.process, log=d.log_path)
    time.sleep(1.5)
    pings = listener.find("WATCHDOG=1", after=ready.at)
    assert len(pings) >= 2, f"expected a ping every 0.5 s, got {listener.messages}"
    assert all(p.pid == d.process.pid for p in pings)
    # Pings come from the event loop: they keep coming while it serves events.
    client = LineClient(d.connect())
    try:
        for _ in range(50):
            assert client.request(event())["ok"] is True
    finally:
        client.close()
    d.process.send_signal(signal.SIGTERM)
    assert_stopped_cleanly(d)


# Socket activation

_ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""
"""What systemd does for a socket unit: the listening socket as fd 3, LISTEN_FDS=1 and
LISTEN_PID set to the pid of the daemon itself (execv keeps the pid)."""


def start_activated(d: Daemon, listening: socket.socket, notify_path: str) -> subprocess.Popen[bytes]:
    d.write_config()
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    with open(d.log_path, "ab") as log:
        d.process = subprocess.Popen(
            [sys.executable, "-c", _ACTIVATE, str(listening.fileno()),
             "-m", "ralph_monitor", "run", "--config", str(d.config_path)],
            stdout=log, stderr=log, env=env, pass_fds=(listening.fileno(),))
    return d.process


def listening_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


def test_socket_activation_keeps_the_socket_across_a_restart(daemon_factory: Any, notify: Any) -> None:
    d: Daemon = daemon_factory()
    listener: NotifyListener = notify(d)
    listening = listening_socket(d.socket_path)
    inode = os.stat(d.socket_path).st_ino
    try:
        first = start_activated(d, listening, listener.path)
        ready = listener.wait_for("READY=1", first, log=d.log_path)
        assert ready.pid == first.pid

        client = LineClient(d.connect())
        before = event(spec_id="before-restart")
        assert client.request(before) == {"ok": True, "id": before["event_id"]}
        client.close()
        assert "socket from systemd" in d.log()
        assert before["event_id"] in stored_ids(d.dsn)

        first.send_signal(signal.SIGTERM)
        assert_stopped_cleanly(d)
        # The daemon neither unlinked nor replaced the inherited socket, nor changed its mode.
        assert os.stat(d.socket_path).st_ino == inode
        assert os.stat(d.socket_path).st_mode & 0o777 == 0o660

        # While no daemon runs, clients still connect (the kernel queues them) ...
        waiting = LineClient(d.connect(timeout=30))
        during = event(spec_id="during-restart")
        waiting.send(json.dumps(during) + "\n")
        # ... including one that writes and goes away at once (socat, nc -U).
        hasty_event = event(spec_id="hasty")
        hasty = d.connect()
        hasty.sendall(json.dumps(hasty_event).encode() + b"\n")
        hasty.close()

        # A new daemon on the same socket serves both: the restart lost nothing.
        restart_at = time.monotonic()
        second = start_activated(d, listening, listener.path)
        ready2 = listener.wait_for("READY=1", second, after=restart_at, log=d.log_path)
        assert ready2.pid == second.pid
        assert waiting.reply() == {"ok": True, "id": during["event_id"]}
        waiting.close()
        deadline = time.monotonic() + 10
        while hasty_event["event_id"] not in stored_ids(d.dsn) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {before["event_id"], during["event_id"], hasty_event["event_id"]} <= stored_ids(d.dsn)

        second.send_signal(signal.SIGTERM)
        assert second.wait(STOP_TIMEOUT_S) == 0, d.log()
        assert os.stat(d.socket_path).st_ino == inode
    finally:
        listening.close()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed")
def test_systemd_socket_activate_starts_the_daemon_on_first_connection(
        daemon_factory: Any, notify: Any) -> None:
    d: Daemon = daemon_factory()
    listener: NotifyListener = notify(d)
    d.write_config()
    with open(d.log_path, "ab") as log:
        # systemd-socket-activate passes only the variables named with -E.
        d.process = subprocess.Popen(
            ["systemd-socket-activate", "-l", d.socket_path, "-E", f"NOTIFY_SOCKET={listener.path}",
             sys.executable, "-m", "ralph_monitor", "run", "--config", str(d.config_path)],
            stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while True:  # wait for systemd-socket-activate to bind and listen
        try:
            sock = d.connect(timeout=READY_TIMEOUT_S)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            assert time.monotonic() < deadline, d.log()
            assert d.process.poll() is None, d.log()
            time.sleep(0.02)

    client = LineClient(sock)
    first = event(spec_id="activated")
    assert client.request(first) == {"ok": True, "id": first["event_id"]}
    client.close()
    ready = listener.wait_for("READY=1", d.process, log=d.log_path)
    assert ready.pid == d.process.pid  # systemd-socket-activate execs the daemon in place
    assert "socket from systemd" in d.log()
    assert first["event_id"] in stored_ids(d.dsn)

    d.process.send_signal(signal.SIGTERM)
    assert_stopped_cleanly(d)
    assert os.path.exists(d.socket_path), "an inherited socket must not be unlinked"


# SIGTERM drains


def test_sigterm_drains_commits_and_acks_before_exiting(daemon_factory: Any, notify: Any) -> None:
    d: Daemon = daemon_factory()
    listener: NotifyListener = notify(d)
    d.start(wait=False, extra_env={"NOTIFY_SOCKET": listener.path})
    assert d.process is not None
    listener.wait_for("READY=1", d.process, log=d.log_path)

    events = [event(spec_id="drain", data={"seq": i}) for i in range(5000)]
    payload = "".join(json.dumps(e) + "\n" for e in events).encode()
    sock = d.connect(timeout=30)
    reader = sock.makefile("rb")
    sock.sendall(payload)  # pipelined, no reply read yet
    d.process.send_signal(signal.SIGTERM)

    replies: list[dict[str, Any]] = []
    try:
        for line in reader:
            replies.append(json.loads(line))
    except ConnectionResetError:
        pass
    finally:
        reader.close()
        sock.close()
    assert_stopped_cleanly(d)
    listener.wait_for("STOPPING=1", d.process, log=d.log_path)

    # Replies keep the order of the lines; every acknowledged event is committed.
    assert len(replies) <= len(events)
    acked = []
    for sent, reply in zip(events, replies):
        if reply.get("ok"):
            assert reply["id"] == sent["event_id"]
            acked.append(sent["event_id"])
        else:
            assert reply.get("error"), reply
    assert acked, "the daemon acknowledged nothing before stopping"
    stored = stored_ids(d.dsn)
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged events are not in the table"
    # The client kept reading until the daemon closed: whatever was committed was also acked.
    assert stored == set(acked), f"{len(stored - set(acked))} events were committed but never acknowledged"
    assert f"{len(stored)} events stored in this run" in d.log()


def test_sigterm_while_a_client_is_still_writing(daemon_factory: Any, notify: Any) -> None:
    """SIGTERM lands mid-stream: what was read is committed and acknowledged, the rest is
    neither acknowledged nor half-done, and the daemon exits 0 without waiting for the client."""
    d: Daemon = daemon_factory()
    listener: NotifyListener = notify(d)
    d.start(wait=False, extra_env={"NOTIFY_SOCKET": listener.path})
    assert d.process is not None
    listener.wait_for("READY=1", d.process, log=d.log_path)

    events = [event(spec_id="mid-stream", data={"seq": i}) for i in range(20_000)]
    sock = d.connect(timeout=30)
    replies: list[dict[str, Any]] = []

    def read_replies() -> None:
        with sock.makefile("rb") as reader:
            try:
                for line in reader:
                    replies.append(json.loads(line))
            except (ConnectionResetError, TimeoutError):
                pass

    reader = threading.Thread(target=read_replies)
    reader.start()
    chunk = 500
    try:
        for start in range(0, len(events), chunk):
            sock.sendall("".join(json.dumps(e) + "\n" for e in events[start:start + chunk]).encode())
            if start == 4 * chunk:
                d.process.send_signal(signal.SIGTERM)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon closed the connection once it had drained
    reader.join(STOP_TIMEOUT_S)
    assert not reader.is_alive()
    sock.close()
    assert_stopped_cleanly(d)

    acked = []
    for sent, reply in zip(events, replies):
        if reply.get("ok"):
            assert reply["id"] == sent["event_id"]
            acked.append(sent["event_id"])
        else:
            assert reply.get("error"), reply
    assert len(acked) >= 4 * chunk
    stored = stored_ids(d.dsn)
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged events are not in the table"
    assert stored == set(acked), f"{len(stored - set(acked))} events were committed but never acknowledged"
