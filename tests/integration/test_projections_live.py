"""Aggregates maintained live equal a rebuild from scratch, also with two daemons writing
concurrently to one database (no double counting) and randomised event streams."""

from __future__ import annotations

import random
import subprocess
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Daemon, LineClient, query
from tests.integration.test_overnight import BIN, wait_until_settled
from tests.scenario import A, EXPECTED_A, EXPECTED_RUNS_A, overnight_events

KINDS = ["session_started", "session_ended", "session_heartbeat", "spec_started", "spec_completed",
         "spec_failed", "timeout_triggered", "intervention_request", "user_feedback", "cc.PostToolUse"]


def snapshot(dsn: str) -> dict[str, list[dict[str, Any]]]:
    sessions = query(dsn, "SELECT * FROM sessions ORDER BY id")
    for row in sessions:
        row.pop("updated_at")
    return {
        "sessions": sessions,
        "spec_runs": query(dsn, "SELECT session_id, spec_id, attempt, start_time, end_time, duration_seconds, "
                                "status, tokens_used, cost_usd, error_message FROM spec_runs ORDER BY 1, 2, 3"),
        "interventions": query(dsn, "SELECT * FROM interventions ORDER BY event_id"),
        "buckets": query(dsn, "SELECT * FROM metric_buckets ORDER BY 1, 2"),
    }


def rebuild(daemon: Daemon) -> None:
    subprocess.run([str(BIN / "ralph-monitor"), "rebuild-aggregates", "--config", str(daemon.config_path)],
                   check=True, capture_output=True, timeout=120)


def send_all(daemon: Daemon, events: list[dict[str, Any]]) -> None:
    client = LineClient(daemon.connect())
    for event in events:
        assert client.request(event)["ok"]
    client.close()


def random_stream(rnd: random.Random, now: datetime, n: int, *, spread_s: int = 400) -> list[dict[str, Any]]:
    """`n` random events within the last `spread_s` seconds (less than the default stall
    interval, so no session_stalled event races the comparison)."""
    sessions = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(4)]
    events = []
    for _ in range(n):
        event: dict[str, Any] = {"type": rnd.choice(KINDS), "session_id": rnd.choice(sessions),
                                 "ts": (now - timedelta(seconds=rnd.randint(0, spread_s))).isoformat(),
                                 "event_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4))}
        if rnd.random() < 0.8:
            event["spec_id"] = rnd.choice(["S1", "S2", "S3"])
        event["data"] = {"tokens_used": rnd.randint(0, 500), "cost_usd": rnd.randint(0, 100) / 100,
                         "duration_s": rnd.randint(1, 300)}
        events.append(event)
    return events


def test_two_daemons_writing_concurrently_do_not_double_count(daemon_factory: Any) -> None:
    never_stall = {"stall_after_s": 1e9}  # keep the daemons from adding session_stalled events
    first: Daemon = daemon_factory(aggregates=never_stall)
    second: Daemon = daemon_factory(aggregates=never_stall)
    first.start()
    second.start()
    now = datetime.now(timezone.utc)
    events = overnight_events(now) + random_stream(random.Random(3), now, 1500)
    random.Random(5).shuffle(events)
    halves = [events[0::2], events[1::2]]
    threads = [threading.Thread(target=send_all, args=(d, half)) for d, half in zip((first, second), halves)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # Both daemons resend everything the other one sent: still stored and counted once.
    send_all(first, halves[1][:200])
    wait_until_settled(first.dsn)
    live = snapshot(first.dsn)
    a = next(s for s in live["sessions"] if str(s["id"]) == A)
    assert {k: a[k] for k in EXPECTED_A} == EXPECTED_A
    runs_a = [(str(r["spec_id"]), r["attempt"], r["status"], r["tokens_used"], r["error_message"])
              for r in live["spec_runs"] if str(r["session_id"]) == A]
    assert runs_a == EXPECTED_RUNS_A
    assert query(first.dsn, "SELECT count(*) AS n FROM events")[0]["n"] == len(events)
    assert sum(b["count"] for b in live["buckets"]) == len(events)
    rebuild(first)
    assert snapshot(first.dsn) == live


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 300), split=st.integers(1, 50))
def test_live_equals_rebuild_on_random_streams(daemon: Daemon, seed: int, size: int, split: int) -> None:
    rnd = random.Random(seed)
    events = random_stream(rnd, datetime.now(timezone.utc), size)
    for start in range(0, len(events), split):  # arrival in bursts of random size
        send_all(daemon, events[start:start + split])
    wait_until_settled(daemon.dsn)
    live = snapshot(daemon.dsn)
    rebuild(daemon)
    assert snapshot(daemon.dsn) == live
