"""`ralph-query events` (queries.recent_events) reads from a guessed floor: the newest events
of every filter equal a plain newest-first read of the events table, also when the guess is
wrong (the projections it is read from overcount, or a session or spec claims a later start)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any


from ralph_monitor import queries
from ralph_monitor.config import Settings, load_settings
from ralph_monitor.store import open_read_store
from tests.conftest import Daemon, LineClient, query
from tests.ops import execute
from tests.integration.test_overnight import wait_until_settled

SESSIONS = [str(uuid.UUID(int=n, version=4)) for n in (1, 2, 3)]
SPECS = ["CR-1", "CR-2", "CR-3", "CR-4"]


def events(now: datetime) -> list[dict[str, Any]]:
    """~600 events over two days: three sessions, four specs, a rare type among common ones."""
    out: list[dict[str, Any]] = []
    for n in range(600):
        session = SESSIONS[n % 3]
        spec = SPECS[(n // 7) % 4]
        kind = "spec_failed" if n % 50 == 0 else ("cc.PostToolUse" if n % 2 else "heartbeat")
        event: dict[str, Any] = {"type": kind, "session_id": session, "event_id": str(uuid.uuid4()),
                                 "ts": (now - timedelta(minutes=(600 - n) * 4.5)).isoformat()}
        if kind != "heartbeat":
            event["spec_id"] = spec
        out.append(event)
    return out


def newest(dsn: str, limit: int, **where: Any) -> list[int]:
    """The ids a plain read gives: every partition, newest first."""
    conditions = " AND ".join(f"{column} = %({column})s" for column in where) or "true"
    return [r["id"] for r in query(dsn, f"SELECT id FROM events WHERE {conditions} "
                                        f"ORDER BY occurred_at DESC, id DESC LIMIT {limit}", where)]


FILTERS: list[dict[str, Any]] = [
    {}, {"event_type": "cc.PostToolUse"}, {"event_type": "spec_failed"}, {"session_id": SESSIONS[1]},
    {"spec_id": "CR-3"}, {"session_id": SESSIONS[0], "event_type": "spec_failed"},
]


def assert_all_filters_agree(daemon: Daemon) -> None:
    settings = load_settings(daemon.config_path)
    with open_read_store(settings, dsn=daemon.dsn) as store:
        for where in FILTERS:
            for limit in (1, 10, 100, 1000):
                args = {k: uuid.UUID(v) if k == "session_id" else v for k, v in where.items()}
                got = [e.id for e in queries.recent_events(store, limit=limit, **args)]
                assert got == newest(daemon.dsn, limit, **where), (where, limit)


def test_the_newest_events_whatever_the_guess(daemon: Daemon) -> None:
    client = LineClient(daemon.connect())
    for event in events(datetime.now(timezone.utc)):
        assert client.request(event)["ok"]
    client.close()
    wait_until_settled(daemon.dsn)
    assert query(daemon.dsn, "SELECT count(*) AS n FROM metric_buckets")[0]["n"] > 0
    assert_all_filters_agree(daemon)

    # No counts yet and sessions that claim an early start: no floor, or a low one.
    daemon.stop()
    execute(daemon.dsn, "DELETE FROM metric_buckets")
    execute(daemon.dsn, "UPDATE sessions SET start_time = now() - interval '20 days'")
    assert_all_filters_agree(daemon)

    # Counts far too high put the floor in the newest bucket, starts in the future put it past
    # every event of the session and the spec: each read must notice and read again.
    execute(daemon.dsn, "INSERT INTO metric_buckets (bucket_time, event_type, count) "
                        "SELECT date_bin('5 minutes', now(), 'epoch'), t, 100000 "
                        "FROM unnest(ARRAY['cc.PostToolUse', 'heartbeat', 'spec_failed']) t")
    execute(daemon.dsn, "UPDATE sessions SET start_time = now() + interval '1 day'")
    execute(daemon.dsn, "UPDATE spec_runs SET start_time = now() + interval '1 day' WHERE start_time IS NOT NULL")
    assert_all_filters_agree(daemon)


def test_numbers_beyond_a_double_are_read_back(daemon: Daemon) -> None:
    # The socket refuses 1e400 (protocol.py), but jsonb keeps it: a row written by other means
    # must still be shown, with its integers beyond 64 bits.
    execute(daemon.dsn, """
        INSERT INTO events (event_id, event_type, session_id, occurred_at, received_at, host, payload)
        VALUES (gen_random_uuid(), 'odd', NULL, now(), now(), 'h',
                '{"data": {"huge": 1e400, "big": 100000000000000000000000000000}}'),
               (gen_random_uuid(), 'odd', NULL, now(), now(), 'h', '{"data": {"big": 100000000000000000000000000000}}')""")
    with open_read_store(load_settings(daemon.config_path), dsn=daemon.dsn) as store:
        rows = queries.recent_events(store, event_type="odd")
    # jsonb writes 1e400 out in full: json reads that row (exactly), orjson the other (a float).
    assert sorted((r.data for r in rows), key=len) == [{"big": 1e29}, {"huge": 10 ** 400, "big": 10 ** 29}]


def test_status_finds_a_backup_days_old_and_leaves_out_a_stale_usage_report(db_dsn: str) -> None:
    """status looks for the nightly jobs' events in the last days first: a backup that last ran
    five days ago is still found (the second look), and one from an hour ago is the one shown; a
    status line's usage report older than its longest window is not shown at all."""
    now = datetime.now(timezone.utc)
    insert = """INSERT INTO events (event_id, event_type, session_id, occurred_at, received_at, host, payload)
                VALUES (gen_random_uuid(), %s, NULL, %s, now(), %s, %s)"""
    usage = '{"data": {"five_hour": {"used_percentage": 64, "resets_at": 1781290000}}}'
    execute(db_dsn, insert, ("backup_completed", now - timedelta(days=5), "old", "{}"))
    execute(db_dsn, insert, ("prune_completed", now - timedelta(days=3), "old", "{}"))
    execute(db_dsn, insert, ("rate_limits", now - queries.USAGE_REPORT_MAX_AGE - timedelta(hours=1), "old", usage))
    with open_read_store(Settings(), dsn=db_dsn) as store:
        status = queries.status(store, now)
        assert status.last_backup is not None and status.last_backup.host == "old"
        assert status.last_prune is not None and status.last_prune.host == "old"
        assert status.usage is None
        execute(db_dsn, insert, ("backup_completed", now - timedelta(hours=1), "new", "{}"))
        execute(db_dsn, insert, ("rate_limits", now - timedelta(hours=2), "new", usage))
        status = queries.status(store, now)
        assert status.last_backup is not None and status.last_backup.host == "new"
        assert status.last_prune is not None and status.last_prune.host == "old"
        assert status.usage is not None and status.usage.host == "new"
