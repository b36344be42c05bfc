"""Helpers for the agent-side tests: run `ralph-monitor` subcommands as an agent would,
each test with its own client spool directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Daemon, query

BIN = Path(sys.executable).parent
SETTLE_TIMEOUT_S = 20.0


def agent_env(spool_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RALPH_SESSION_ID", "RALPH_SPEC_ID", "RALPH_MONITOR_SOCKET", "RALPH_MONITOR_CONFIG")}
    env["RALPH_MONITOR_CLIENT_SPOOL"] = str(spool_dir)
    env.update(extra)
    return env


def monitor(daemon: Daemon, *args: str, env: dict[str, str], input: bytes | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """`ralph-monitor ARGS --config <the daemon's>` (for `loop`, put the command after this)."""
    return subprocess.run([str(BIN / "ralph-monitor"), *args], input=input, capture_output=True, env=env,
                          timeout=timeout)


def wait_for(predicate: Callable[[], Any], timeout: float = SETTLE_TIMEOUT_S, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.05)


def settled(dsn: str) -> bool:
    rows = query(dsn, "SELECT (SELECT count(*) FROM dirty_sessions) + (SELECT count(*) FROM dirty_buckets) AS n")
    return rows[0]["n"] == 0


def settle(dsn: str, predicate: Callable[[], Any] | None = None) -> None:
    wait_for(lambda: settled(dsn) and (predicate is None or predicate()), what="aggregates settled")


def events(dsn: str, where: str = "TRUE", params: Any = None) -> list[dict[str, Any]]:
    return query(dsn, f"SELECT event_id::text, event_type, session_id::text, spec_id, occurred_at, payload "
                      f"FROM events WHERE {where} ORDER BY occurred_at, id", params)
