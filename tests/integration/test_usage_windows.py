"""Usage windows: `ralph-monitor statusline` prints a line from Claude Code's status-line JSON and
forwards its rate limits as an event; a session whose agent hit the limit is
paused_for_usage_limit until the window resets (or it works again), not failed and not
stalled; `ralph-query status` and the overview show the windows with their reset times."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ralph_monitor.config import load_settings
from ralph_monitor.dashboard.render import render_once
from tests.agent_tools import BIN, agent_env, events, settle, wait_for
from tests.conftest import Daemon, LineClient, query
from tests.hook_payloads import CC_SESSION, status_input
from tests.site_helpers import read_page


def statusline(daemon: Daemon, stdin: bytes, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(BIN / "ralph-monitor"), "statusline", "--config", str(daemon.config_path)],
                          input=stdin, capture_output=True, env=env, timeout=30)


def test_statusline_prints_a_line_and_forwards_the_rate_limits(daemon: Daemon, tmp_path: Path) -> None:
    env = agent_env(tmp_path / "spool")
    resets = int(time.time()) + 3600
    windows = {"five_hour": {"used_percentage": 42, "resets_at": resets},
               "seven_day": {"used_percentage": 36.5, "resets_at": resets + 5 * 86400}}
    done = statusline(daemon, json.dumps(status_input(**windows)).encode(), env)
    assert done.returncode == 0
    local = datetime.fromtimestamp(resets).strftime("%H:%M")
    assert done.stdout.decode().startswith(f"[Opus 4.6] · 5h 42% ↻{local} · 7d 36% ↻")
    assert done.stdout.decode().endswith(" · $1.37\n")
    sent = wait_for(lambda: events(daemon.dsn, "event_type = 'rate_limits'"), what="the rate_limits event")
    assert sent[0]["session_id"] == CC_SESSION
    data = sent[0]["payload"]["data"]
    assert data["five_hour"] == windows["five_hour"] and data["seven_day"] == windows["seven_day"]
    assert data["cc_session_id"] == CC_SESSION and data["model"] == "claude-opus-4-6"

    # The same windows again: the line, but no second event; changed windows: a new one.
    again = statusline(daemon, json.dumps(status_input(**windows)).encode(), env)
    assert again.stdout == done.stdout
    windows["five_hour"]["used_percentage"] = 57
    statusline(daemon, json.dumps(status_input(**windows)).encode(), env)
    wait_for(lambda: len(events(daemon.dsn, "event_type = 'rate_limits'")) == 2, what="the changed windows")

    plain = statusline(daemon, json.dumps(status_input()).encode(), env)  # an API-key user: no rate_limits
    assert (plain.returncode, plain.stdout) == (0, b"[Opus 4.6] \xc2\xb7 $1.37\n")
    broken = statusline(daemon, b"{not json", env)
    assert (broken.returncode, broken.stdout) == (0, b"ralph-monitor: no status input\n")
    # Inside `ralph-monitor loop` the event joins the loop's session and spec.
    loop_env = {**env, "RALPH_SESSION_ID": "6f1c2b4e-1618-4000-8000-000000000018", "RALPH_SPEC_ID": "CR-11"}
    statusline(daemon, json.dumps(status_input(five_hour={"used_percentage": 60, "resets_at": resets})).encode(),
               loop_env)
    joined = wait_for(lambda: events(daemon.dsn, "event_type = 'rate_limits' AND spec_id = 'CR-11'"),
                      what="the loop's rate_limits event")
    assert joined[0]["session_id"] == "6f1c2b4e-1618-4000-8000-000000000018"
    alone = subprocess.run([str(BIN / "ralph-monitor"), "statusline", "--no-session", "--config", str(daemon.config_path)],
                           input=json.dumps(status_input(five_hour={"used_percentage": 61, "resets_at": resets})).encode(),
                           capture_output=True, env=env, timeout=30)
    assert alone.returncode == 0 and alone.stdout.startswith(b"[Opus 4.6]")
    wait_for(lambda: events(daemon.dsn, "event_type = 'rate_limits' AND session_id IS NULL"), what="the sessionless event")
    time.sleep(0.5)  # nothing else was sent meanwhile
    assert len(events(daemon.dsn, "event_type = 'rate_limits'")) == 4


def test_statusline_is_quick_when_the_daemon_is_away(daemon: Daemon, tmp_path: Path) -> None:
    """The line comes out and the command exits though nobody listens; the event waits in the spool."""
    env = agent_env(tmp_path / "spool")
    payload = json.dumps(status_input(five_hour={"used_percentage": 10, "resets_at": int(time.time()) + 60}))
    done = subprocess.run([str(BIN / "ralph-monitor"), "statusline", "--socket", str(tmp_path / "nobody.sock")],
                          input=payload.encode(), capture_output=True, env=env, timeout=30)
    assert done.returncode == 0 and done.stdout.startswith(b"[Opus 4.6]")
    spooled = tmp_path / "spool" / str(tmp_path / "nobody.sock").replace("/", "%2F") / "spool.jsonl"
    line = wait_for(lambda: spooled.exists() and spooled.read_text(), what="the spooled event")
    assert json.loads(line)["type"] == "rate_limits"


def _state(dsn: str, session: str) -> dict[str, Any]:
    rows = query(dsn, "SELECT execution_state, paused_until FROM sessions WHERE id = %s", (session,))
    return rows[0] if rows else {}


@pytest.fixture
def paused_daemon(daemon_factory: Any) -> Daemon:
    d = daemon_factory(aggregates={"stall_after_s": 20.0})  # checks for stalls and resets every 2 s
    d.start()
    return d


def test_a_session_at_its_usage_limit_is_paused_until_the_reset_then_running(
        paused_daemon: Daemon, tmp_path: Path) -> None:
    d = paused_daemon
    a, b, c = ("6f1c2b4e-1619-4000-8000-00000000001a", "6f1c2b4e-1619-4000-8000-00000000001b",
               "6f1c2b4e-1619-4000-8000-00000000001c")
    resets = datetime.now(timezone.utc) + timedelta(hours=1)
    soon = datetime.now(timezone.utc) + timedelta(seconds=3)
    far = datetime.now(timezone.utc) + timedelta(hours=3)
    client = LineClient(d.connect())
    for event in (
            {"type": "session_started", "session_id": a, "data": {"name": "limited"}},
            {"type": "spec_started", "session_id": a, "spec_id": "CR-1"},
            {"type": "rate_limits", "session_id": a, "spec_id": "CR-1",
             "data": {"five_hour": {"used_percentage": 100, "resets_at": int(resets.timestamp())},
                      "seven_day": {"used_percentage": 71, "resets_at": int(far.timestamp()) + 86400}}},
            {"type": "session_started", "session_id": b, "data": {"name": "interactive"}},
            {"type": "rate_limits", "session_id": b,
             "data": {"five_hour": {"used_percentage": 97.5, "resets_at": int(far.timestamp())}}},
            {"type": "cc.StopFailure", "session_id": b, "data": {"error": "rate_limit", "hook_event_name": "StopFailure"}},
            {"type": "session_started", "session_id": c, "data": {"name": "short window"}},
            {"type": "rate_limits", "session_id": c,
             "data": {"five_hour": {"used_percentage": 100, "resets_at": int(soon.timestamp())}}}):
        assert client.request(event)["ok"]
    settle(d.dsn, lambda: _state(d.dsn, a).get("execution_state") == "paused_for_usage_limit")
    assert abs((_state(d.dsn, a)["paused_until"] - resets).total_seconds()) < 1
    paused_b = _state(d.dsn, b)
    assert paused_b["execution_state"] == "paused_for_usage_limit"
    assert abs((paused_b["paused_until"] - far).total_seconds()) < 1  # the fullest window's reset

    shown = subprocess.run([str(BIN / "ralph-query"), "status", "--config", str(d.config_path)],
                           capture_output=True, text=True, timeout=30, env=agent_env(tmp_path / "spool"))
    assert shown.returncode == 0, shown.stderr
    assert "~ paused for the usage limit: limited — until" in shown.stdout
    assert "Usage windows (reported" in shown.stdout
    assert "5-hour window 100% used, resets" in shown.stdout  # the latest report (session c's)
    one = subprocess.run([str(BIN / "ralph-query"), "session", a, "--config", str(d.config_path)],
                         capture_output=True, text=True, timeout=30, env=agent_env(tmp_path / "spool"))
    assert "  state paused_for_usage_limit until " in one.stdout, one.stderr

    site = tmp_path / "site"
    render_once(load_settings(d.config_path), dsn=d.dsn, site_dir=site, full=True)
    _, values, _ = read_page(site, "index.html")
    assert values["usage-five_hour"].startswith("5-hour window: 100% used, resets ")
    _, page, _ = read_page(site, f"sessions/{a}.html")
    assert page["paused"].startswith("Paused for the usage limit until ")

    # Work again (a tool call) ends b's pause; the reset time ends c's.
    assert client.request({"type": "cc.PostToolUse", "session_id": b, "data": {"tool_name": "Bash"}})["ok"]
    settle(d.dsn, lambda: _state(d.dsn, b).get("execution_state") == "running")
    assert _state(d.dsn, b)["paused_until"] is None
    settle(d.dsn, lambda: _state(d.dsn, c).get("execution_state") == "running")
    reset = events(d.dsn, "event_type = 'usage_limit_reset'")
    assert [e["session_id"] for e in reset] == [c]
    assert reset[0]["occurred_at"] >= soon.replace(microsecond=0)  # resets_at is in whole seconds
    assert _state(d.dsn, a)["execution_state"] == "paused_for_usage_limit"  # its window has not reset yet
    client.close()


def test_usage_limit_event_pauses_and_odd_windows_are_skipped_with_a_warning(daemon: Daemon) -> None:
    session = "6f1c2b4e-1620-4000-8000-000000000020"
    until = int((datetime.now(timezone.utc) + timedelta(hours=2)).timestamp())
    client = LineClient(daemon.connect())
    reply = client.request({"type": "rate_limits", "session_id": session,
                            "data": {"five_hour": {"used_percentage": "100", "resets_at": 1e30},
                                     "seven_day": "full"}})
    assert reply["ok"] and any('five_hour.used_percentage="100" ignored' in w for w in reply["warnings"])
    assert any("seven_day=\"full\" ignored" in w for w in reply["warnings"])
    assert client.request({"type": "usage_limit", "session_id": session,
                           "data": {"resets_at": until, "message": "Claude usage limit reached"}})["ok"]
    settle(daemon.dsn, lambda: _state(daemon.dsn, session).get("execution_state") == "paused_for_usage_limit")
    assert int(_state(daemon.dsn, session)["paused_until"].timestamp()) == until
    assert client.request({"type": "spec_started", "session_id": session, "spec_id": "CR-2"})["ok"]
    settle(daemon.dsn, lambda: _state(daemon.dsn, session).get("execution_state") == "running")
    client.close()
