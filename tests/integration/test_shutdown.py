"""Shutdown is bounded (issue 12): SIGTERM while a dashboard render, the alert rules and the
projector are all stuck on a table someone else holds locked still drains, acknowledges and
exits well within the unit's TimeoutStopSec, and nothing acknowledged is lost."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import Daemon, LineClient, query

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "ralph-monitor.service"
WAITING = """SELECT pid, backend_type, left(query, 60) AS query FROM pg_stat_activity
WHERE wait_event_type = 'Lock' AND datname = %s"""
EXIT_WITHIN_S = 15.0
"""Well within TimeoutStopSec (60 s in the unit)."""


def test_sigterm_during_a_stuck_render_exits_promptly(daemon_factory: Any) -> None:
    timeout_stop_s = int(re.search(r"^TimeoutStopSec=(\d+)", UNIT.read_text(), re.M).group(1))
    assert EXIT_WITHIN_S < timeout_stop_s
    daemon: Daemon = daemon_factory(schedule={"render_interval_s": 5.0},
                                    alerts={"check_interval_s": 0.5})
    daemon.start()
    sid = str(uuid.uuid4())
    client = LineClient(daemon.connect())
    assert client.request({"type": "session_started", "session_id": sid})["ok"]
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:
        with psycopg.connect(daemon.dsn) as conn:
            conn.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(120)

    holder = threading.Thread(target=hold_lock, daemon=True)
    holder.start()
    assert locked.wait(30)
    try:
        # The alert checks, the projector and the render (a session changed) all get stuck.
        assert client.request({"type": "spec_started", "session_id": sid, "spec_id": "S-1"})["ok"]
        deadline = time.monotonic() + 30
        while len(waiting := query(daemon.dsn, WAITING, (daemon.dsn.split("dbname=")[1].split()[0],))) < 3:
            assert time.monotonic() < deadline, f"not all stuck on the lock: {waiting}"
            time.sleep(0.2)
        acked = [client.request({"type": "session_heartbeat", "session_id": sid})["id"] for _ in range(50)]
        client.close()
        started = time.monotonic()
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        try:
            returncode = daemon.process.wait(EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {EXIT_WITHIN_S:g} s after SIGTERM:\n{daemon.log()[-4000:]}") from None
        took = time.monotonic() - started
    finally:
        release.set()
        holder.join(30)
    assert returncode == 0, daemon.log()[-3000:]
    assert took < EXIT_WITHIN_S, f"SIGTERM took {took:.1f} s:\n{daemon.log()[-3000:]}"
    stored = query(daemon.dsn, "SELECT count(*) AS n FROM events WHERE event_id = ANY(%s::uuid[])", (acked,))
    assert stored == [{"n": len(acked)}]
