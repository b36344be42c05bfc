"""`ralph-monitor demo` populates every view a newcomer looks at first."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from ralph_monitor.demo import demo_events, night_window
from ralph_monitor.protocol import Origin, parse_line
from ralph_monitor.agent.client import encode_event
from tests.agent_tools import BIN, agent_env, settle
from tests.conftest import query


def test_demo_events_are_valid_ordered_and_inside_the_night() -> None:
    now = datetime(2026, 11, 25, 13, 0, tzinfo=timezone.utc)
    since, until = night_window(now, ZoneInfo("UTC"), "18:00", "09:00")
    assert (since.isoformat(), until.isoformat()) == ("2026-11-24T18:00:00+00:00", "2026-11-25T09:00:00+00:00")
    sample = demo_events(now, night_since=since, night_until=until, stall_after_s=600)
    by_session: dict[str, list[dict[str, Any]]] = {}
    for event in sample:
        parse_line(encode_event(event).rstrip(b"\n"), received_at=now, origin=Origin("h", 0, 0))
        by_session.setdefault(event["session_id"], []).append(event)
        assert datetime.fromisoformat(event["ts"]) <= now
    assert len(by_session) == 4
    for session_events in by_session.values():
        times = [datetime.fromisoformat(e["ts"]) for e in session_events]
        assert times == sorted(times)
    finished = [s for s in by_session.values() if s[-1]["type"] == "session_ended"]
    assert len(finished) == 2
    for s in finished:
        assert since <= datetime.fromisoformat(s[0]["ts"]) and datetime.fromisoformat(s[-1]["ts"]) <= until
    # At 19:00, with the evening's window barely begun, the previous night is shown.
    since, until = night_window(datetime(2026, 11, 25, 19, 0, tzinfo=timezone.utc), ZoneInfo("UTC"), "18:00", "09:00")
    assert (since.isoformat(), until.isoformat()) == ("2026-11-24T18:00:00+00:00", "2026-11-25T09:00:00+00:00")


def test_demo_shows_sessions_failures_a_stall_and_a_pending_request(daemon_factory: Any, tmp_path: Any) -> None:
    d = daemon_factory(aggregates={"stall_after_s": 30.0})
    d.start()
    env = agent_env(tmp_path / "spool")
    result = subprocess.run([str(BIN / "ralph-monitor"), "demo", "--config", str(d.config_path)],
                            capture_output=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "in 4 sessions" in out and "ralph-query status" in out
    settle(d.dsn, lambda: query(d.dsn, "SELECT 1 FROM sessions WHERE execution_state = 'stalled'"))
    states = {r["name"]: r["execution_state"] for r in query(d.dsn, "SELECT name, execution_state FROM sessions")}
    assert states == {"nightly: shop-backend": "completed", "nightly: docs-site": "completed",
                      "refactor: payments": "stalled",
                      "live: api-migration": "waiting_for_human"}  # its permission prompt is open
    runs = query(
        d.dsn, "SELECT r.spec_id, r.attempt, r.status, r.error_message FROM spec_runs r "
               "JOIN sessions s ON s.id = r.session_id WHERE s.name = 'nightly: shop-backend' ORDER BY r.spec_id, r.attempt")
    statuses = {(r["spec_id"], r["attempt"]): r["status"] for r in runs}
    assert statuses[("CR-103", 1)] == "failed" and statuses[("CR-103", 2)] == "completed"
    assert statuses[("CR-105", 1)] == "timeout" and statuses[("CR-107", 1)] == "failed"
    assert "AssertionError: 19.99 != 20.0" in next(r["error_message"] for r in runs if r["spec_id"] == "CR-103")

    def ralph_query(*args: str) -> str:
        done = subprocess.run([str(BIN / "ralph-query"), *args, "--config", str(d.config_path)],
                              capture_output=True, text=True, timeout=30, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    status = ralph_query("status")
    assert "live: api-migration" in status and "refactor: payments" in status
    assert "Migration 0042 drops the column orders.legacy_id" in status
    assert "Usage windows (reported" in status and "5-hour window 64% used" in status
    night = json.loads(ralph_query("night", "--json"))
    assert {"nightly: shop-backend", "nightly: docs-site"} <= {s["name"] for s in night["sessions"]}
    assert {f["spec_id"] for f in night["still_failing"]} >= {"CR-105", "CR-107"}
    assert "CR-103" in {f["spec_id"] for f in night["fixed_on_retry"]}  # failed, then passed on its retry
    assert night["git"]["commits"] > 0 and night["git"]["left_dirty"] >= 3  # the failed runs left work behind
    assert "CR-107" in ralph_query("failures")
    since = datetime.now(timezone.utc) - timedelta(days=2)
    assert query(d.dsn, "SELECT count(*) AS n FROM events WHERE occurred_at > %s", (since,))[0]["n"] > 100
