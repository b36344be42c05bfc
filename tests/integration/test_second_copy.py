"""A second `ralph-monitor run` on the same socket (a newcomer starting scripts/run twice)
refuses before it starts anything, so the first copy, and its private PostgreSQL cluster,
keep running untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Daemon, LineClient


def test_a_second_copy_refuses_and_leaves_the_first_alone(daemon: Daemon) -> None:
    second = subprocess.run([str(Path(sys.executable).parent / "ralph-monitor"), "run", "--config",
                             str(daemon.config_path)], capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"})
    assert second.returncode == 1
    assert f"another ralph-monitor is already listening on {daemon.socket_path}" in second.stderr
    assert "Traceback" not in second.stderr
    client = LineClient(daemon.connect())
    assert client.request({"type": "session_heartbeat"})["ok"] is True
    client.close()
