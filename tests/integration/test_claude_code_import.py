"""`ralph-monitor import claude-code` on transcripts in the real CLI's format
(tests/transcripts.py): every session, turn, tool call and token arrives once, a second run
stores nothing new, a grown transcript sends only what is new, an interrupted import
completes on the next run, and no secret reaches the database."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ralph_monitor.agent.claude_import import Importer, state_path_for
from ralph_monitor.agent.client import Connection
from ralph_monitor.agent.prices import PriceTable
from ralph_monitor.agent.redact import Redactor
from ralph_monitor.errors import ClientError
from tests.agent_tools import BIN, agent_env, events, settle
from tests.conftest import Daemon, query
from tests.transcripts import SECRET_COMMAND, USAGE_FIELDS, TranscriptWriter, Truth


def run_import(daemon: Daemon, env: dict[str, str], projects: Path, *args: str) -> dict[str, Any]:
    result = subprocess.run([str(BIN / "ralph-monitor"), "import", "claude-code", "--config", str(daemon.config_path),
                             "--projects", str(projects), "--since", "all", "--json", *args],
                            capture_output=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


def write_days(projects: Path, days: int = 7) -> Truth:
    """A few days of sessions, each inside its day, ending yesterday (with a resumed session,
    an API error, a subagent, secrets, and the three ways transcripts say, or not, what it cost)."""
    end = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return TranscriptWriter(projects).month(end, days=days, sessions_per_day=3, turns=3)


def tokens_per_day_from_runs(dsn: str) -> dict[str, int]:
    """What the dashboard's spend per day adds up: the spec runs that ended that day (UTC)."""
    rows = query(dsn, "SELECT (end_time AT TIME ZONE 'UTC')::date::text AS day, sum(tokens_used)::bigint AS tokens "
                      "FROM spec_runs GROUP BY 1")
    return {r["day"]: r["tokens"] for r in rows}


def test_a_month_of_transcripts_is_recorded_once_with_its_tokens_costs_and_tool_calls(daemon: Daemon,
                                                                                       tmp_path: Path) -> None:
    projects = tmp_path / "projects"
    truth = write_days(projects)
    env = agent_env(tmp_path / "spool")
    summary = run_import(daemon, env, projects)
    assert summary["sessions"] == truth.sessions and summary["turns"] == truth.turns
    assert summary["tool_calls"] == truth.tool_calls
    assert summary["daily"] == truth.tokens  # per day and model, each request once
    assert summary["rejected"] == 0 and summary["events_stored"] == summary["events_sent"]
    settle(daemon.dsn)

    sessions = query(daemon.dsn, "SELECT * FROM sessions")
    assert len(sessions) == truth.sessions
    assert sum(s["tokens_used"] for s in sessions) == truth.total()
    assert {s["execution_state"] for s in sessions} == {"completed"}
    assert all(s["name"].startswith("claude proj") for s in sessions)
    assert tokens_per_day_from_runs(daemon.dsn) == {
        day: sum(u[f] for u in models.values() for f in USAGE_FIELDS) for day, models in truth.tokens.items()}
    runs = query(daemon.dsn, "SELECT status, count(*) AS n FROM spec_runs GROUP BY status")
    assert truth.api_errors >= 1  # a turn that ended in an API error is a failed run
    assert {r["status"]: r["n"] for r in runs} == {"completed": truth.turns - truth.api_errors, "failed": truth.api_errors}
    tools = events(daemon.dsn, "event_type IN ('cc.PostToolUse', 'cc.PostToolUseFailure')")
    assert len(tools) == truth.tool_calls and all(t["spec_id"].startswith("turn-") for t in tools)
    # Every cost is labelled with where it came from; the session's is the sum of its turns'.
    ends = events(daemon.dsn, "event_type = 'session_ended'")
    assert {e["payload"]["data"]["cost_source"] for e in ends} == {"api", "estimate"}
    for session in sessions:
        end = next(e["payload"]["data"] for e in ends if e["session_id"] == str(session["id"]))
        assert session["cost_usd"] == pytest.approx(Decimal(str(end["cost_usd"])), abs=Decimal("0.00001"))
    assert not query(daemon.dsn, "SELECT 1 FROM events WHERE strpos(payload::text, %s) > 0", (SECRET_COMMAND[22:60],))
    assert summary["redactions"] >= 1

    again = run_import(daemon, env, projects)
    assert (again["events_sent"], again["unchanged_sessions"]) == (0, truth.sessions)


def test_a_grown_transcript_sends_only_its_session_and_nothing_is_stored_twice(daemon: Daemon, tmp_path: Path) -> None:
    projects = tmp_path / "projects"
    writer = TranscriptWriter(projects)
    start = datetime.now(timezone.utc) - timedelta(hours=5)
    first = writer.session(start, turns=2, cost_style="none")
    writer.session(start + timedelta(hours=1), turns=2, cost_style="none")
    env = agent_env(tmp_path / "spool")
    run_import(daemon, env, projects)
    stored = len(events(daemon.dsn))
    # The session goes on: the CLI appends a turn to the same file.
    longer = TranscriptWriter(tmp_path / "scratch", seed=99).session(start + timedelta(hours=2), turns=1,
                                                                     cost_style="none")
    session_id = first.stem
    with first.open("a") as transcript:
        for line in longer.read_text().splitlines():
            entry = json.loads(line)
            entry["sessionId"] = session_id
            transcript.write(json.dumps(entry, separators=(",", ":")) + "\n")
    again = run_import(daemon, env, projects)
    assert again["unchanged_sessions"] == 1 and again["sessions"] == 1
    new_turn = [e for e in events(daemon.dsn) if e["spec_id"] == "turn-3"]
    assert again["events_stored"] == len(new_turn) + 1 >= 3  # the turn's events, and the session's new end
    assert len(events(daemon.dsn)) == stored + len(new_turn) + 1  # the session ends again, later
    settle(daemon.dsn)
    runs = query(daemon.dsn, "SELECT tokens_used FROM spec_runs WHERE session_id = %s", (session_id,))
    row = query(daemon.dsn, "SELECT tokens_used, end_time FROM sessions WHERE id = %s", (session_id,))[0]
    assert len(runs) == 3 and row["tokens_used"] == sum(r["tokens_used"] for r in runs)
    assert row["end_time"].isoformat().startswith(json.loads(first.read_text().splitlines()[-1])["timestamp"][:19])


def test_an_interrupted_import_completes_on_the_next_run(daemon: Daemon, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    projects = tmp_path / "projects"
    truth = write_days(projects, days=2)
    monkeypatch.setenv("RALPH_MONITOR_CLIENT_SPOOL", str(tmp_path / "spool"))
    state = state_path_for(daemon.socket_path)
    sent: list[int] = []

    with Connection(daemon.socket_path) as connection:
        def flaky(lines: Any) -> list[dict[str, Any]]:
            if len(sent) == 3:
                raise ClientError("the daemon went away")
            sent.append(len(lines))
            return connection.exchange(lines)

        importer = Importer(projects, since=None, redactor=Redactor(), prices=PriceTable(), state_path=state,
                            send=flaky)
        with pytest.raises(ClientError):
            importer.run()
        assert len(sent) == 3
        done = Importer(projects, since=None, redactor=Redactor(), prices=PriceTable(), state_path=state,
                        send=connection.exchange).run()
    assert done.unchanged == 3 and done.sessions == truth.sessions - 3
    settle(daemon.dsn)
    sessions = query(daemon.dsn, "SELECT tokens_used FROM sessions")
    assert len(sessions) == truth.sessions and sum(s["tokens_used"] for s in sessions) == truth.total()


def test_the_session_timeline_folds_each_turns_tool_calls_into_a_line(daemon: Daemon, tmp_path: Path) -> None:
    projects = tmp_path / "projects"
    writer = TranscriptWriter(projects, seed=7)
    writer.session(datetime.now(timezone.utc) - timedelta(hours=3), turns=6, cost_style="none")
    run_import(daemon, agent_env(tmp_path / "spool"), projects)
    settle(daemon.dsn)
    session_id = str(query(daemon.dsn, "SELECT id FROM sessions")[0]["id"])
    per_turn = {}
    for tool in events(daemon.dsn, "event_type LIKE 'cc.PostToolUse%%'"):
        per_turn.setdefault(tool["spec_id"], []).append(tool)

    def ralph_query(*args: str) -> str:
        done = subprocess.run([str(BIN / "ralph-query"), "session", session_id, *args, "--config",
                               str(daemon.config_path)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    grouped = ralph_query()
    for spec, tools in per_turn.items():
        failed = sum(t["event_type"] == "cc.PostToolUseFailure" for t in tools)
        line = next(line for line in grouped.splitlines() if "tool calls" in line and f" {spec} " in line)
        assert f"Bash ×{len(tools)}" in line and (f"{failed} failed" in line) == bool(failed)
    assert "cc.PostToolUse" not in grouped and "--verbose shows every event" in grouped
    verbose = ralph_query("--verbose")
    assert verbose.count("cc.PostToolUse") == sum(len(t) for t in per_turn.values())
