"""Fuzz, end to end: whole sessions whose fields take arbitrary JSON values (any type in any
field, extreme numbers, dates and strings, unicode) go through the real socket into the real
database, and the monitor keeps its promises:

- the daemon answers every line;
- every acknowledged event is stored;
- every session with a valid id has its sessions row, and no projection failed;
- a clean session sent afterwards is projected within a bound;
- `rebuild-aggregates` gives exactly what live projection gave.

CI runs a bounded number of examples; RALPH_FUZZ_EXAMPLES=500 runs more.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Daemon, LineClient, query
from tests.integration.test_absurd_values import _clean_session_projected
from tests.integration.test_overnight import wait_until_settled
from tests.integration.test_projections_live import rebuild

EXAMPLES = int(os.environ.get("RALPH_FUZZ_EXAMPLES", "12"))
SESSION_POOL = [str(uuid.UUID(int=n, version=4)) for n in range(1, 6)]
TYPES = ["session_started", "session_ended", "session_heartbeat", "spec_started", "spec_completed",
         "spec_failed", "timeout_triggered", "intervention_request", "user_feedback", "cc.PostToolUse",
         "loop_stuck"]
FIELDS = ["tokens_used", "cost_usd", "total_specs", "duration_s", "name", "metadata", "error",
          "error_message", "reason", "message", "question", "answer", "status", "request_id",
          "output_summary"]

numbers = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 2**31, 2**63, 2**64, 1e30, 1e300, -1e-300, 0.1, 123456789.123456789]))
texts = st.one_of(st.text(max_size=40), st.text(max_size=3000).map(lambda t: t * 4),
                  st.sampled_from(["", "0.5", "1e30", "NaN", "💥" * 100, "<script>alert(1)</script>",
                                   "2026-11-28T03:00:00Z", "9999-12-31T23:59:59Z", SESSION_POOL[0]]))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)
timestamps = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "1970-01-01T00:00:00Z",
                     "2026-02-30T00:00:00Z", "yesterday"]),
    json_values)


@st.composite
def events(draw: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": draw(st.one_of(st.sampled_from(TYPES), json_values))}
    if draw(st.booleans()):
        event["session_id"] = draw(st.one_of(st.sampled_from(SESSION_POOL), json_values))
    if draw(st.booleans()):
        event["spec_id"] = draw(st.one_of(st.sampled_from(["S1", "S2", "S" * 300]), json_values))
    if draw(st.booleans()):
        event["ts"] = draw(timestamps)
    if draw(st.integers(0, 9)):
        event["data"] = draw(st.one_of(
            st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6), json_values))
    if draw(st.integers(0, 9)) == 0:
        event["event_id"] = draw(st.one_of(st.uuids().map(str), json_values))
    return event


def _session_rows_missing(dsn: str) -> list[Any]:
    return query(dsn, "SELECT DISTINCT e.session_id FROM events e LEFT JOIN sessions s ON s.id = e.session_id "
                      "WHERE e.session_id IS NOT NULL AND s.id IS NULL")


def snapshot(dsn: str) -> dict[str, list[dict[str, Any]]]:
    sessions = query(dsn, "SELECT * FROM sessions ORDER BY id")
    for row in sessions:
        row.pop("updated_at")
    return {"sessions": sessions,
            "spec_runs": query(dsn, "SELECT session_id, spec_id, attempt, start_time, end_time, duration_seconds, "
                                    "status, tokens_used, cost_usd, error_message, output_summary, value_problems "
                                    "FROM spec_runs ORDER BY 1, 2, 3"),
            "interventions": query(dsn, "SELECT * FROM interventions ORDER BY event_id"),
            "buckets": query(dsn, "SELECT * FROM metric_buckets ORDER BY 1, 2")}


@pytest.fixture
def quiet_daemon(daemon_factory: Any) -> Daemon:
    """A daemon that never marks a session stalled: fuzzed times lie years back, and a stall
    event arriving between the live snapshot and the rebuild would change what is compared."""
    daemon: Daemon = daemon_factory(aggregates={"stall_after_s": 1e9})
    daemon.start()
    return daemon


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(batch=st.lists(events(), min_size=1, max_size=40))
def test_fuzzed_sessions_keep_every_promise(quiet_daemon: Daemon, batch: list[dict[str, Any]]) -> None:
    daemon = quiet_daemon
    client = LineClient(daemon.connect())
    acked: set[str] = set()
    try:
        for event in batch:
            line = json.dumps(event, ensure_ascii=False).encode("utf-8", "surrogatepass")
            reply = client.request(line)
            assert isinstance(reply.get("ok"), bool), reply
            if reply["ok"]:
                acked.add(reply["id"])
            else:
                assert reply["code"] and reply["error"], reply
        _clean_session_projected(daemon, client)
    finally:
        client.close()
    if acked:
        stored = query(daemon.dsn, "SELECT count(*) AS n FROM events WHERE event_id = ANY(%s::uuid[])",
                       (sorted(acked),))[0]["n"]
        assert stored == len(acked)
    wait_until_settled(daemon.dsn)
    assert query(daemon.dsn, "SELECT session_id, error FROM projection_failures") == []
    assert _session_rows_missing(daemon.dsn) == []
    live = snapshot(daemon.dsn)
    rebuild(daemon)
    assert snapshot(daemon.dsn) == live
