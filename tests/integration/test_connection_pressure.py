"""Connection pressure (issue 12): idle clients cannot lock a writing agent out, one uid cannot
take every slot, and refusals are logged (rate-limited) and counted on the health panel."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import Any

from tests.conftest import Daemon, LineClient, query
from tests.integration.test_overnight import BIN

NOBODY_UID = 65534


def _served(daemon: Daemon) -> dict[str, Any]:
    writer = LineClient(daemon.connect())
    try:
        return writer.request({"type": "session_heartbeat"})
    finally:
        writer.close()


def test_1500_idle_connections_do_not_lock_out_a_writer(daemon_factory: Any) -> None:
    daemon: Daemon = daemon_factory(limits={"evict_idle_after_s": 2.0})  # default limits: 1024 per uid
    daemon.start()
    idle: list[socket.socket] = []
    try:
        for _ in range(1500):
            idle.append(daemon.connect())
        time.sleep(2.5)  # the idle ones are now evictable
        assert _served(daemon)["ok"] is True
        # The longest-idle connection was told why it is closed.
        first = idle[0].makefile("rb")
        line = first.readline()
        assert b'"code": "evicted_idle"' in line and b"longest idle" in line, line
        # ... and a writer keeps getting in while the flood holds its slots.
        for _ in range(3):
            assert _served(daemon)["ok"] is True
    finally:
        for sock in idle:
            sock.close()
    log = daemon.log()
    assert "connections in the last 10 s:" in log and "refused" in log
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rows = query(daemon.dsn, "SELECT connections_refused, connections_evicted FROM monitor_hosts")
        if rows and rows[0]["connections_evicted"] >= 1 and rows[0]["connections_refused"] > 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"counters not recorded: {rows}")
    status = subprocess.run([str(BIN / "ralph-query"), "status", "--config", str(daemon.config_path)],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    assert "connections refused" in status and "idle ones closed to make room" in status


def test_one_uid_cannot_take_every_slot(daemon_factory: Any) -> None:
    daemon: Daemon = daemon_factory(socket={"mode": "0660", "group": "nogroup"}, limits={"max_connections_per_uid": 5})
    daemon.start()
    os.chmod(daemon.root, 0o755)
    held = [LineClient(daemon.connect()) for _ in range(5)]
    try:
        for client in held:
            assert client.request({"type": "session_heartbeat"})["ok"]
        sixth = LineClient(daemon.connect())
        reply = sixth.reply()
        assert reply["code"] == "too_many_connections_for_uid"
        assert "[limits] max_connections_per_uid" in reply["error"]
        sixth.close()
        # Another user still gets in.
        other = subprocess.run(["socat", "-t", "5", "-", f"UNIX-CONNECT:{daemon.socket_path}"],
                               input='{"type":"session_heartbeat"}\n', capture_output=True, text=True,
                               timeout=30, user=NOBODY_UID, group=NOBODY_UID)
        assert '"ok": true' in other.stdout, other
        assert query(daemon.dsn, "SELECT count(*) AS n FROM events WHERE writer_uid = %s", (NOBODY_UID,)) == [{"n": 1}]
    finally:
        for client in held:
            client.close()
