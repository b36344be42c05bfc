"""One bad value never stops anything (guarantee 8), through a real daemon and database.

Each class of absurd value is answered `ok` with a warning naming the field, the event is
stored as sent, the aggregates skip the value and record why, and a clean session sent
afterwards is projected as usual. A session whose projection fails for any reason (here: a
trigger that raises for it) is quarantined, reported, and recovered once the cause is gone,
while every other session goes on being projected.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest

from tests.conftest import Daemon, LineClient, query
from tests.integration.test_overnight import BIN, wait_until_settled

PROJECTED_WITHIN_S = 20.0

VALUE_CLASSES: dict[str, tuple[dict[str, Any], str]] = {
    "tokens_1e30": ({"tokens_used": 1e30}, "tokens_used=1e+30 ignored: out of range"),
    "tokens_huge_int": ({"tokens_used": 10**30}, "ignored: out of range (at most 1,000,000,000,000)"),
    "tokens_1e400": ({"tokens_used": "1e400 as text"}, "tokens_used=\"1e400 as text\" ignored: a string"),
    "tokens_negative": ({"tokens_used": -5}, "tokens_used=-5 ignored: negative"),
    "tokens_fraction": ({"tokens_used": 12.5}, "tokens_used=12.5 ignored: not a whole number"),
    "tokens_numeric_string": ({"tokens_used": "1200"}, "ignored: a string, not a number (send a JSON number"),
    "tokens_boolean": ({"tokens_used": True}, "tokens_used=true ignored: a boolean, not a number"),
    "tokens_object": ({"tokens_used": {"input": 5}}, "ignored: an object, not a number"),
    "cost_string": ({"cost_usd": "0.5"}, "cost_usd=\"0.5\" ignored: a string, not a number"),
    "cost_negative": ({"cost_usd": -0.01}, "cost_usd=-0.01 ignored: negative"),
    "cost_huge": ({"cost_usd": 1e12}, "cost_usd=1000000000000.0 ignored: out of range"),
    "cost_array": ({"cost_usd": [1, 2]}, "cost_usd=[1, 2] ignored: an array, not a number"),
    "duration_huge": ({"duration_s": 1e300}, "duration_s=1e+300 ignored: out of range"),
    "error_huge": ({"error": "E" * 50_000}, "error cut to 10,000 characters (was 50,000)"),
}
TIMESTAMPS = {
    "year_9999": "9999-12-31T23:59:59Z",
    "year_1": "0001-01-01T00:00:00+01:00",
    "before_1970": "1969-07-20T20:17:00Z",
}


def _ralph_query(daemon: Daemon, *args: str) -> str:
    return subprocess.run([str(BIN / "ralph-query"), *args, "--config", str(daemon.config_path)],
                          capture_output=True, text=True, check=True, timeout=60).stdout


def _clean_session_projected(daemon: Daemon, client: LineClient) -> None:
    """A clean session sent now is projected within PROJECTED_WITHIN_S."""
    sid = str(uuid.uuid4())
    for event in ({"type": "session_started", "session_id": sid, "data": {"name": "clean", "total_specs": 1}},
                  {"type": "spec_started", "session_id": sid, "spec_id": "OK-1"},
                  {"type": "spec_completed", "session_id": sid, "spec_id": "OK-1",
                   "data": {"tokens_used": 42, "cost_usd": 0.25}}):
        reply = client.request(event)
        assert reply["ok"] and "warnings" not in reply, reply
    deadline = time.monotonic() + PROJECTED_WITHIN_S
    while time.monotonic() < deadline:
        rows = query(daemon.dsn, "SELECT specs_completed, tokens_used FROM sessions WHERE id = %s", (sid,))
        if rows and rows[0] == {"specs_completed": 1, "tokens_used": 42}:
            return
        time.sleep(0.1)
    raise AssertionError(f"a clean session was not projected within {PROJECTED_WITHIN_S} s")


def test_each_absurd_value_is_acked_with_a_warning_and_skipped_by_the_aggregates(
        daemon: Daemon, client: LineClient) -> None:
    sid = str(uuid.uuid4())
    assert client.request({"type": "session_started", "session_id": sid, "data": {"name": "absurd"}})["ok"]
    spec_of = {}
    for name, (data, expected) in VALUE_CLASSES.items():
        spec_of[name] = f"V-{name}"
        assert client.request({"type": "spec_started", "session_id": sid, "spec_id": spec_of[name]})["ok"]
        reply = client.request({"type": "spec_completed", "session_id": sid, "spec_id": spec_of[name],
                                "data": {"tokens_used": 7, **data}})
        assert reply["ok"] is True, (name, reply)
        assert any(expected in w for w in reply["warnings"]), (name, reply)
    # The events are stored as sent: the source of truth keeps the absurd values.
    stored = query(daemon.dsn, "SELECT payload->'data'->>'tokens_used' AS t FROM events WHERE session_id = %s "
                               "AND spec_id = %s AND event_type = 'spec_completed'", (sid, spec_of["tokens_1e30"]))
    assert stored == [{"t": "1" + "0" * 30}]
    _clean_session_projected(daemon, client)
    wait_until_settled(daemon.dsn)
    session = query(daemon.dsn, "SELECT * FROM sessions WHERE id = %s", (sid,))[0]
    assert session["specs_completed"] == len(VALUE_CLASSES)
    # Only the valid 7 tokens of the runs whose tokens_used was not the bad field are counted.
    token_classes = [n for n in VALUE_CLASSES if n.startswith("tokens_")]
    assert session["tokens_used"] == 7 * (len(VALUE_CLASSES) - len(token_classes))
    assert session["cost_usd"] == 0
    assert any("tokens_used=1e+30 ignored: out of range" in p for p in session["value_problems"])
    runs = {r["spec_id"]: r for r in query(daemon.dsn, "SELECT * FROM spec_runs WHERE session_id = %s", (sid,))}
    for name, (_, expected) in VALUE_CLASSES.items():
        assert any(expected in p for p in runs[spec_of[name]]["value_problems"]), (name, runs[spec_of[name]])
    assert len(runs[spec_of["error_huge"]]["error_message"]) == 10_000
    shown = _ralph_query(daemon, "session", sid)
    assert "! not counted: V-tokens_1e30 attempt 1: tokens_used=1e+30 ignored: out of range" in shown


@pytest.mark.parametrize("label", sorted(TIMESTAMPS))
def test_absurd_timestamp_is_kept_in_the_event_but_stored_with_the_receive_time(
        daemon: Daemon, client: LineClient, label: str) -> None:
    sid = str(uuid.uuid4())
    before = datetime.now(timezone.utc)
    reply = client.request({"type": "session_started", "session_id": sid, "ts": TIMESTAMPS[label],
                            "data": {"name": label}})
    assert reply["ok"] is True
    assert any(w.startswith("ts=") and "stored with the time received" in w for w in reply["warnings"]), reply
    row = query(daemon.dsn, "SELECT occurred_at, payload FROM events WHERE session_id = %s", (sid,))[0]
    assert row["payload"]["ts"] == TIMESTAMPS[label]
    assert before <= row["occurred_at"] <= datetime.now(timezone.utc)
    _clean_session_projected(daemon, client)
    assert query(daemon.dsn, "SELECT name FROM sessions WHERE id = %s", (sid,)) == [{"name": label}]


def test_session_level_values_are_checked_too(daemon: Daemon, client: LineClient) -> None:
    sid = str(uuid.uuid4())
    reply = client.request({"type": "session_started", "session_id": sid,
                            "data": {"name": "N" * 500, "total_specs": -3, "metadata": "not an object"}})
    assert reply["ok"] is True
    assert set(reply["warnings"]) == {"name cut to 200 characters (was 500)",
                                      "total_specs=-3 ignored: negative",
                                      "metadata=\"not an object\" ignored: a string, not an object"}
    wait_until_settled(daemon.dsn, lambda: bool(query(daemon.dsn, "SELECT 1 FROM sessions WHERE id = %s", (sid,))))
    row = query(daemon.dsn, "SELECT name, total_specs, metadata, value_problems FROM sessions WHERE id = %s",
                (sid,))[0]
    assert row["name"] == "N" * 200 and row["total_specs"] is None and row["metadata"] == {}
    assert len(row["value_problems"]) == 3


INJECT_FAILURE = """
CREATE FUNCTION fail_projection() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = %(sid)s::uuid THEN RAISE EXCEPTION 'injected failure for this session'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_projection BEFORE INSERT OR UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION fail_projection();
"""


def test_a_failing_session_is_quarantined_reported_and_recovered(daemon: Daemon, client: LineClient) -> None:
    bad = str(uuid.uuid4())
    with __import__("psycopg").connect(daemon.dsn, autocommit=True) as conn:
        conn.execute(INJECT_FAILURE.replace("%(sid)s", f"'{bad}'"))
    assert client.request({"type": "session_started", "session_id": bad, "data": {"name": "poisoned"}})["ok"]
    # Every other session goes on being projected, again and again.
    for _ in range(3):
        _clean_session_projected(daemon, client)
    deadline = time.monotonic() + PROJECTED_WITHIN_S
    while not query(daemon.dsn, "SELECT 1 FROM projection_failures WHERE session_id = %s", (bad,)):
        assert time.monotonic() < deadline, "the failing session was not recorded"
        time.sleep(0.1)
    failure = query(daemon.dsn, "SELECT * FROM projection_failures")[0]
    assert "injected failure for this session" in failure["error"]
    assert failure["retry_at"] > failure["last_failed_at"]
    status = _ralph_query(daemon, "status")
    assert "! aggregates NOT updated for 1 session(s)" in status and "injected failure" in status
    status_json = json.loads(_ralph_query(daemon, "status", "--json"))
    assert status_json["projection_failures_total"] == 1
    doctor = subprocess.run([str(BIN / "ralph-monitor"), "doctor", "--config", str(daemon.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert "aggregates" in doctor.stdout and "injected failure" in doctor.stdout
    # Cause fixed: rebuild-aggregates projects it at once, and the failure is gone everywhere.
    with __import__("psycopg").connect(daemon.dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER fail_projection ON sessions")
    subprocess.run([str(BIN / "ralph-monitor"), "rebuild-aggregates", "--config", str(daemon.config_path)],
                   check=True, capture_output=True, timeout=120)
    assert query(daemon.dsn, "SELECT name FROM sessions WHERE id = %s", (bad,)) == [{"name": "poisoned"}]
    assert query(daemon.dsn, "SELECT count(*) AS n FROM projection_failures") == [{"n": 0}]
    assert "aggregates NOT updated" not in _ralph_query(daemon, "status")
    log = daemon.log()
    assert f"aggregates of session {bad} not updated: injected failure for this session" in log
    assert "aggregates of 1 session(s) not updated (projection failing)" in log
