"""Helpers for the operations tests (backups, retention, doctor, package)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import query

BIN = Path(sys.executable).parent


def execute(dsn: str, sql: str, params: Any = None) -> None:
    """Run one statement that returns no rows, on a short-lived autocommit connection."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql, params)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o640)
    return path


def monitor(*args: str, config: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `ralph-monitor ARGS` (with --config) and return the finished process."""
    full = [str(BIN / "ralph-monitor"), *args]
    if config is not None:
        full += ["--config", str(config)]
    return subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def utc_time_in(seconds: float) -> str:
    """HH:MM:SS (UTC) `seconds` from now: a daily job time that comes up right away."""
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).strftime("%H:%M:%S")


def wait_for_event(dsn: str, event_type: str, *, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = query(dsn, "SELECT occurred_at, host, payload->'data' AS data FROM events "
                          "WHERE event_type = %s ORDER BY occurred_at DESC LIMIT 1", (event_type,))
        if rows:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"no {event_type} event within {timeout} s")


@dataclass
class AckProbe:
    """One writer that sends an event, waits for its ack, and records the latency, until stopped."""

    socket_path: str
    interval_s: float = 0.01
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> AckProbe:
        self._thread = threading.Thread(target=self._run, name="ack-probe", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self.socket_path)
        reader = sock.makefile("rb")
        try:
            while not self._stop.is_set():
                event_id = str(uuid.uuid4())
                line = json.dumps({"type": "session_heartbeat", "event_id": event_id}).encode() + b"\n"
                started = time.monotonic()
                sock.sendall(line)
                reply = json.loads(reader.readline())
                self.latencies.append(time.monotonic() - started)
                if reply.get("ok"):
                    self.ids.append(event_id)
                else:
                    self.errors.append(str(reply))
                time.sleep(self.interval_s)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))
        finally:
            reader.close()
            sock.close()

    def stop(self) -> AckProbe:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)
        return self

    @property
    def worst(self) -> float:
        return max(self.latencies) if self.latencies else float("inf")
