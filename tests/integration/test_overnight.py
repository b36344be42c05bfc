"""A scripted overnight run fed through the socket (out of order, with resends), then every
`ralph-query` command checked against what the script implies."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, LineClient, query
from tests.scenario import A, B, C, EXPECTED_A, EXPECTED_RUNS_A, overnight_events, scenario_zone, shuffled

BIN = Path(sys.executable).parent
SETTLE_TIMEOUT_S = 20.0


def ralph_query(daemon: Daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ralph-query"), *args, "--config", str(daemon.config_path)],
                          capture_output=True, text=True, check=check, timeout=30)


def wait_until_settled(dsn: str, predicate: Any = None) -> None:
    """Until the projector has nothing left to do (and `predicate` holds)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        dirty = query(dsn, "SELECT (SELECT count(*) FROM dirty_sessions) + (SELECT count(*) FROM dirty_buckets) AS n")
        if dirty[0]["n"] == 0 and (predicate is None or predicate()):
            return
        time.sleep(0.1)
    raise AssertionError("aggregates did not settle")


def session_state(dsn: str, session_id: str) -> str | None:
    rows = query(dsn, "SELECT execution_state FROM sessions WHERE id = %s", (session_id,))
    return rows[0]["execution_state"] if rows else None


@pytest.fixture
def overnight(daemon_factory: Any) -> Daemon:
    now = datetime.now(timezone.utc)
    # B's last event is 40 min old, so it stalls; C (heartbeat now) stays running even on a
    # loaded machine for the 2 minutes any test using this fixture needs.
    d = daemon_factory(aggregates={"stall_after_s": 120.0},
                       reports={"timezone": scenario_zone(now), "night_start": "08:00", "night_end": "16:00"})
    d.start()
    events = overnight_events(now)
    client = LineClient(d.connect())
    for event in shuffled(events):
        assert client.request(event)["ok"]
    for event in events[:5]:  # resends are stored once
        assert client.request(event).get("duplicate") is True
    wait_until_settled(d.dsn, lambda: session_state(d.dsn, B) == "stalled")
    # A fresh sign of life for C, in case a loaded machine took longer than stall_after_s.
    assert client.request({"type": "session_heartbeat", "session_id": C})["ok"]
    client.close()
    wait_until_settled(d.dsn, lambda: session_state(d.dsn, C) == "running")
    return d


def test_aggregates_follow_the_script(overnight: Daemon) -> None:
    dsn = overnight.dsn
    a = query(dsn, "SELECT * FROM sessions WHERE id = %s", (A,))[0]
    assert {k: a[k] for k in EXPECTED_A} == EXPECTED_A
    runs = query(dsn, "SELECT spec_id, attempt, status, tokens_used, error_message FROM spec_runs "
                      "WHERE session_id = %s ORDER BY spec_id, attempt", (A,))
    assert [tuple(r.values()) for r in runs] == EXPECTED_RUNS_A
    assert session_state(dsn, B) == "stalled"
    assert session_state(dsn, C) == "running"
    # Session A may also look stalled for a moment while its (shuffled, old) events arrive.
    stalls = query(dsn, "SELECT session_id::text AS s, payload->'data' AS d FROM events "
                        "WHERE event_type = 'session_stalled'")
    assert [r["d"]["stalled_after_s"] for r in stalls if r["s"] == B] == [120.0]
    assert query(dsn, "SELECT sum(count) AS n FROM metric_buckets")[0]["n"] == 26 + len(stalls)  # 25 + C's fresh heartbeat


def test_status_shows_running_stalled_and_waiting(overnight: Daemon) -> None:
    out = ralph_query(overnight, "status").stdout
    assert "live-run" in out and "CR-20" in out
    assert "stalled: docs-run" in out
    assert "Which branch should I rebase on?" in out
    assert "Need the staging API key" not in out  # answered
    data = json.loads(ralph_query(overnight, "status", "--json").stdout)
    assert sorted(s["name"] for s in data["active"]) == ["docs-run", "live-run"]
    assert [i["message"] for i in data["pending_interventions"]] == ["Which branch should I rebase on?"]
    assert data["hosts"] and data["hosts"][0]["spool_backlog"] == 0


def test_session_command_accepts_a_prefix_and_shows_the_timeline(overnight: Daemon) -> None:
    out = ralph_query(overnight, "session", A[:6]).stdout
    assert "nightly-batch" in out and "state completed" in out
    assert "TypeError: cart is undefined" in out
    assert out.count("spec_started") == 5
    detail = json.loads(ralph_query(overnight, "session", A, "--json").stdout)
    assert len([e for e in detail["timeline"] if e["event_type"] != "session_stalled"]) == 15
    assert [(r["spec_id"], r["attempt"], r["status"]) for r in detail["spec_runs"]] == [
        (s, n, st) for s, n, st, _, _ in sorted(EXPECTED_RUNS_A, key=lambda r: r[0])]
    # A big session shows its newest events, in time order, and says so.
    newest = json.loads(ralph_query(overnight, "session", A, "--json", "--limit", "3").stdout)["timeline"]
    assert newest == detail["timeline"][-3:]
    paged = ralph_query(overnight, "session", A, "--limit", "3").stdout
    assert f"Timeline: the newest 3 of {detail['session']['event_count']} events (--limit N, or --limit 0 for all)" in paged
    assert len(json.loads(ralph_query(overnight, "session", A, "--json", "--limit", "0").stdout)["timeline"]) == \
        detail["session"]["event_count"]
    negative = ralph_query(overnight, "session", A, "--limit", "-1", check=False)
    assert negative.returncode == 2 and "argument --limit: -1 is too small; give 0 or more" in negative.stderr
    unknown = ralph_query(overnight, "session", "ffff", check=False)
    assert unknown.returncode == 1 and "no session id starts with 'ffff'" in unknown.stderr
    ambiguous_prefix = ""  # A, B, C differ in the first character: no ambiguity among them
    assert ralph_query(overnight, "session", A[:1]).returncode == 0, ambiguous_prefix


def test_spec_failures_cost_and_compare(overnight: Daemon) -> None:
    spec = json.loads("[" + ",".join(ralph_query(overnight, "spec", "CR-02", "--json").stdout.split("\n")[:-1]) + "]")
    assert [(r["attempt"], r["status"]) for r in spec] == [(2, "completed"), (1, "failed")]
    failures = [json.loads(line) for line in ralph_query(overnight, "failures", "--top", "10", "--json").stdout.splitlines()]
    assert {(f["spec_id"], f["failures"], f["runs"]) for f in failures} == {("CR-02", 1, 2), ("CR-03", 1, 1)}
    assert "TypeError: cart is undefined" in ralph_query(overnight, "failures").stdout
    cost = json.loads(ralph_query(overnight, "cost", "--json").stdout)
    assert Decimal(str(cost["today"]["cost_usd"])) == Decimal("0.31")
    assert cost["today"]["tokens_used"] == 3100
    assert "$0.31" in ralph_query(overnight, "cost", "--day").stdout
    compare = json.loads(ralph_query(overnight, "compare", "--json").stdout)
    # Specs decided (outcomes.py): CR-01, CR-04, CR-10 passed, CR-02 fixed on retry, CR-03 timed out.
    current = compare["current"]
    assert (current["completed"], current["fixed_on_retry"], current["failed"], current["timed_out"]) == (4, 1, 0, 1)
    assert current["runs"] == 6
    assert "80%" in ralph_query(overnight, "compare").stdout


def test_night_events_and_sessions(overnight: Daemon) -> None:
    night = json.loads(ralph_query(overnight, "night", "--json").stdout)
    assert sorted(s["name"] for s in night["sessions"]) == ["docs-run", "live-run", "nightly-batch"]
    assert (night["outcomes"]["completed"], night["outcomes"]["fixed_on_retry"], night["outcomes"]["timed_out"]) == (4, 1, 1)
    assert [f["spec_id"] for f in night["still_failing"]] == ["CR-03"]
    assert [(f["spec_id"], f["attempts"], f["error"]) for f in night["fixed_on_retry"]] == [
        ("CR-02", 2, "TypeError: cart is undefined")]
    failed = ralph_query(overnight, "events", "--type", "spec_failed", "--json").stdout.splitlines()
    assert len(failed) == 2
    by_session = ralph_query(overnight, "events", "--session", B[:4], "--limit", "100", "--json").stdout.splitlines()
    assert len(by_session) == 8  # 7 sent + the stall
    expected = query(overnight.dsn, "SELECT event_id::text AS id FROM events WHERE session_id = %s "
                                    "ORDER BY occurred_at DESC, id DESC", (A,))
    newest_of_a = [json.loads(line)["event_id"] for line in ralph_query(
        overnight, "events", "--session", A, "--limit", "4", "--json").stdout.splitlines()]
    assert newest_of_a == [r["id"] for r in expected[:4]]
    failed_in_a = [json.loads(line) for line in ralph_query(
        overnight, "events", "--session", A, "--type", "spec_failed", "--json").stdout.splitlines()]
    assert [e["event_id"] for e in failed_in_a] == [r["id"] for r in query(
        overnight.dsn, "SELECT event_id::text AS id FROM events WHERE session_id = %s AND event_type = 'spec_failed' "
                       "ORDER BY occurred_at DESC, id DESC", (A,))]
    assert len(failed_in_a) == 2
    assert len(ralph_query(overnight, "sessions", "--since", "1d", "--json").stdout.splitlines()) == 3


def test_export_round_trips(overnight: Daemon, tmp_path: Path) -> None:
    rows = query(overnight.dsn, "SELECT event_id::text AS id, event_type FROM events ORDER BY occurred_at, events.id")
    jsonl = tmp_path / "events.jsonl"
    result = ralph_query(overnight, "export", "--format", "jsonl", "-o", str(jsonl))
    assert f"exported {len(rows)} events rows" in result.stderr
    exported = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(e["event_id"], e["event_type"]) for e in exported] == [(r["id"], r["event_type"]) for r in rows]
    assert exported[0]["payload"]["type"] == exported[0]["event_type"]
    out = ralph_query(overnight, "export", "--format", "csv", "--table", "spec_runs").stdout
    parsed = list(csv.DictReader(io.StringIO(out)))
    db_runs = query(overnight.dsn, "SELECT spec_id, status, error_message FROM spec_runs ORDER BY coalesce(start_time, end_time), id")
    assert [(r["spec_id"], r["status"], r["error_message"]) for r in parsed] == [
        (r["spec_id"], r["status"], r["error_message"] or "") for r in db_runs]


def test_rebuild_equals_live(overnight: Daemon) -> None:
    def snapshot() -> dict[str, list[Any]]:
        return {
            "sessions": query(overnight.dsn, "SELECT * FROM sessions ORDER BY id"),
            "spec_runs": query(overnight.dsn, "SELECT session_id, spec_id, attempt, start_time, end_time, status, "
                                              "tokens_used, cost_usd, error_message FROM spec_runs ORDER BY 1, 2, 3"),
            "interventions": query(overnight.dsn, "SELECT * FROM interventions ORDER BY event_id"),
            "buckets": query(overnight.dsn, "SELECT * FROM metric_buckets ORDER BY 1, 2"),
        }

    live = snapshot()
    for row in live["sessions"]:
        row.pop("updated_at")
    subprocess.run([str(BIN / "ralph-monitor"), "rebuild-aggregates", "--config", str(overnight.config_path)],
                   check=True, capture_output=True, timeout=60)
    rebuilt = snapshot()
    for row in rebuilt["sessions"]:
        row.pop("updated_at")
    assert rebuilt == live


def test_unreachable_database_is_a_clear_error(daemon_factory: Any) -> None:
    d = daemon_factory(dsn="host=/nonexistent dbname=x")
    d.write_config()
    result = ralph_query(d, "status", check=False)
    assert result.returncode == 1
    assert "cannot connect to PostgreSQL" in result.stderr and "[database] dsn" in result.stderr
