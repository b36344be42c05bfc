"""Retention: exactly what the policy says goes (boundary timestamps), running sessions
stay, old daily partitions are detached and dropped, removed rows can be archived first,
and ingestion keeps acknowledging while a prune runs (even one waiting for a lock)."""

from __future__ import annotations

import gzip
import json
import stat
import subprocess
import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ralph_monitor import retention
from ralph_monitor.config import Settings
from tests.conftest import Daemon, query
from tests.ops import BIN, AckProbe, execute, monitor, utc_time_in, wait_for_event, write_config

UTC = timezone.utc
US = timedelta(microseconds=1)


def partition_names(dsn: str) -> set[str]:
    return {r["name"] for r in query(dsn, """
        SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'events'::regclass""")}


def add_event(dsn: str, at: datetime, *, client_id: bool = False, session: str | None = None) -> str:
    event_id = str(uuid.uuid4())
    execute(dsn, "INSERT INTO events (event_id, event_type, session_id, occurred_at, received_at, host, payload) "
                 "VALUES (%s, 'spec_started', %s, %s, %s, 'h', %s)",
            (event_id, session, at, at, json.dumps({"type": "spec_started", "ts": at.isoformat()})))
    if client_id:
        execute(dsn, "INSERT INTO event_ids (event_id, occurred_at) VALUES (%s, %s)", (event_id, at))
    return event_id


def add_session(dsn: str, state: str, *, end: datetime | None, last: datetime) -> str:
    sid = str(uuid.uuid4())
    execute(dsn, "INSERT INTO sessions (id, start_time, end_time, last_event_at, execution_state) "
                 "VALUES (%s, %s, %s, %s, %s)", (sid, last - timedelta(hours=1), end, last, state))
    execute(dsn, "INSERT INTO spec_runs (session_id, spec_id, attempt, status, outcome) "
                 "VALUES (%s, 'S-1', 1, 'completed', 'passed')",
            (sid,))
    execute(dsn, "INSERT INTO interventions (event_id, session_id, requested_at) VALUES (%s, %s, %s)",
            (str(uuid.uuid4()), sid, last))
    return sid


def add_bucket(dsn: str, at: datetime) -> None:
    execute(dsn, "INSERT INTO metric_buckets (bucket_time, event_type, count) VALUES (%s, 'spec_started', 1)", (at,))


def add_reject(dsn: str, at: datetime) -> str:
    rid = str(uuid.uuid4())
    execute(dsn, "INSERT INTO rejects (reject_id, received_at, host, reason, detail, line_bytes, excerpt) "
                 "VALUES (%s, %s, 'h', 'invalid_json', 'bad', 3, 'bad')", (rid, at))
    return rid


def ensure_partition(dsn: str, day: date) -> None:
    query(dsn, "SELECT ensure_event_partitions(%s, %s)", (day, day))


def ids(dsn: str, sql: str) -> set[str]:
    return {str(r["id"]) for r in query(dsn, sql)}


class Policy:
    """A database holding rows on both sides of every cutoff of Settings() at `now`."""

    def __init__(self, dsn: str, now: datetime) -> None:
        s = Settings()
        self.now = now
        self.cut = retention.Cutoffs.at(s, now)
        assert self.cut.events == datetime.combine(now.date() - timedelta(days=s.retention_events_days),
                                                   datetime.min.time(), tzinfo=UTC)
        first_kept = self.cut.events.date()
        for offset in (-3, -2, -1, 0):  # three whole days to drop, the first kept one
            ensure_partition(dsn, first_kept + timedelta(days=offset))
        self.gone = {add_event(dsn, self.cut.events - US, client_id=True),
                     add_event(dsn, self.cut.events - timedelta(days=2, hours=5)),
                     add_event(dsn, self.cut.events - timedelta(days=15))}  # a day with no partition: default
        self.kept = {add_event(dsn, self.cut.events, client_id=True),
                     add_event(dsn, self.cut.events + timedelta(days=10))}  # default partition, recent
        self.gone_partitions = {f"events_{first_kept + timedelta(days=o):%Y%m%d}" for o in (-3, -2, -1)}
        self.kept_partition = f"events_{first_kept:%Y%m%d}"
        self.gone_sessions = {add_session(dsn, "completed", end=self.cut.sessions - US, last=self.cut.sessions - US),
                              add_session(dsn, "stalled", end=None, last=self.cut.sessions - timedelta(days=3))}
        self.kept_sessions = {add_session(dsn, "completed", end=self.cut.sessions, last=self.cut.sessions),
                              add_session(dsn, "failed", end=self.cut.sessions + timedelta(days=1),
                                          last=self.cut.sessions - timedelta(days=1)),
                              add_session(dsn, "running", end=None, last=now - timedelta(days=800))}
        add_bucket(dsn, self.cut.metric_buckets - US)
        add_bucket(dsn, self.cut.metric_buckets)
        self.gone_reject = add_reject(dsn, self.cut.rejects - US)
        self.kept_reject = add_reject(dsn, self.cut.rejects)

    def expected(self) -> dict[str, int]:
        return {"events": 3, "event_ids": 1, "sessions": 2, "spec_runs": 2, "interventions": 2,
                "metric_buckets": 1, "rejects": 1}


def test_prune_removes_exactly_what_the_policy_says(db_dsn: str) -> None:
    now = datetime.now(UTC).replace(hour=13, minute=7, second=0, microsecond=0)
    p = Policy(db_dsn, now)
    before = query(db_dsn, "SELECT (SELECT count(*) FROM events) AS e, (SELECT count(*) FROM sessions) AS s")[0]

    dry = retention.prune(Settings(), db_dsn, now=now, dry_run=True)
    assert dry.removed == p.expected() and not dry.errors
    assert {n for n, _ in dry.partitions} == p.gone_partitions
    assert query(db_dsn, "SELECT (SELECT count(*) FROM events) AS e, (SELECT count(*) FROM sessions) AS s")[0] == before

    report = retention.prune(Settings(), db_dsn, now=now)
    assert not report.errors
    assert report.removed == p.expected()
    assert dict(report.partitions) == {name: n for name, n in dry.partitions}

    remaining = ids(db_dsn, "SELECT event_id AS id FROM events")
    assert p.kept <= remaining and not (p.gone & remaining)
    assert not (p.gone_partitions & partition_names(db_dsn)) and p.kept_partition in partition_names(db_dsn)
    assert query(db_dsn, "SELECT count(*) AS n FROM pg_class WHERE relname = ANY(%s)",
                 (list(p.gone_partitions),))[0]["n"] == 0
    assert [r["occurred_at"] for r in query(db_dsn, "SELECT occurred_at FROM event_ids")] == [p.cut.events]
    sessions = ids(db_dsn, "SELECT id FROM sessions")
    assert sessions == p.kept_sessions
    assert ids(db_dsn, "SELECT DISTINCT session_id AS id FROM spec_runs") == p.kept_sessions
    assert ids(db_dsn, "SELECT DISTINCT session_id AS id FROM interventions") == p.kept_sessions
    assert [r["bucket_time"] for r in query(db_dsn, "SELECT bucket_time FROM metric_buckets")] == [p.cut.metric_buckets]
    assert ids(db_dsn, "SELECT reject_id AS id FROM rejects") == {p.kept_reject}

    again = retention.prune(Settings(), db_dsn, now=now)
    assert sum(again.removed.values()) == 0 and not again.partitions


def test_prune_archive_holds_every_removed_row(db_dsn: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    p = Policy(db_dsn, now)
    archive = tmp_path / "archive"
    report = retention.prune(Settings(), db_dsn, now=now, archive_dir=archive)
    assert not report.errors and report.removed == p.expected()

    def rows(pattern: str) -> list[dict[str, Any]]:
        out = []
        for path in sorted(archive.glob(pattern)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            with gzip.open(path, "rt") as f:
                out += [json.loads(line) for line in f]
        return out

    archived_events = rows("events_*.jsonl.gz")
    assert {e["event_id"] for e in archived_events} == p.gone
    assert all(isinstance(e["payload"], dict) and e["payload"]["type"] == "spec_started" for e in archived_events)
    assert {s["id"] for s in rows("sessions-*.jsonl.gz")} == p.gone_sessions
    assert {r["session_id"] for r in rows("spec_runs-*.jsonl.gz")} == p.gone_sessions
    assert {r["session_id"] for r in rows("interventions-*.jsonl.gz")} == p.gone_sessions
    assert len(rows("metric_buckets-*.jsonl.gz")) == 1
    assert [r["reject_id"] for r in rows("rejects-*.jsonl.gz")] == [p.gone_reject]
    assert set(report.archives) == set(archive.iterdir())
    assert not list(archive.glob(".*"))  # no partial files left


def test_prune_command_dry_run_then_archive(daemon: Daemon, tmp_path: Path) -> None:
    p = Policy(daemon.dsn, datetime.now(UTC))
    proc = monitor("prune", "--dry-run", config=daemon.config_path)
    assert proc.returncode == 0, proc.stderr
    assert "dry run: nothing was removed" in proc.stdout
    assert "events      would remove         3" in proc.stdout
    assert p.gone <= ids(daemon.dsn, "SELECT event_id AS id FROM events")

    proc = monitor("prune", "--archive", str(tmp_path / "arch"), "--json", config=daemon.config_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # The command's "now" is a little later than the Policy's, so the rows that sat exactly
    # on the Policy's (non-daily) cutoffs are now just older than them, and go too.
    expected = {k: n + (k not in ("events", "event_ids")) for k, n in p.expected().items()}
    assert {k: result[k] for k in expected} == expected
    assert sorted(result["partitions"]) == sorted(p.gone_partitions)
    recorded = wait_for_event(daemon.dsn, "prune_completed", timeout=5)
    assert recorded["data"]["events"] == 3 and recorded["data"]["dry_run"] is False
    assert not (p.gone & ids(daemon.dsn, "SELECT event_id AS id FROM events"))


def test_a_partition_left_detached_by_an_interrupted_prune_is_dropped(db_dsn: str) -> None:
    now = datetime.now(UTC)
    old = now.date() - timedelta(days=40)
    ensure_partition(db_dsn, old)
    add_event(db_dsn, datetime.combine(old, datetime.min.time(), tzinfo=UTC) + timedelta(hours=1))
    execute(db_dsn, f"ALTER TABLE events DETACH PARTITION events_{old:%Y%m%d}")
    report = retention.prune(Settings(), db_dsn, now=now)
    assert report.partitions == [(f"events_{old:%Y%m%d}", 1)] and not report.errors
    assert query(db_dsn, "SELECT to_regclass(%s) IS NULL AS gone", (f"events_{old:%Y%m%d}",))[0]["gone"]


def test_only_one_prune_runs_at_a_time(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(7262687)")
        with pytest.raises(retention.PruneBusy, match="another prune is running"):
            retention.prune(Settings(), db_dsn)
        assert not retention.prune(Settings(), db_dsn, dry_run=True).errors  # a dry run only reads


def _old_days(dsn: str, days: int, rows_per_day: int, *, first_age_days: int = 60) -> list[str]:
    """`days` old daily partitions with `rows_per_day` events each (plus their client ids)."""
    today = datetime.now(UTC).date()
    names = []
    for age in range(first_age_days, first_age_days + days):
        day = today - timedelta(days=age)
        ensure_partition(dsn, day)
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        execute(dsn, """
            WITH rows AS (
                INSERT INTO events (event_id, event_type, session_id, occurred_at, received_at, host, payload)
                SELECT gen_random_uuid(), 'tool_use', NULL, %(start)s + g * interval '1 second',
                       %(start)s + g * interval '1 second', 'h', '{"type": "tool_use", "data": {"x": 1}}'
                FROM generate_series(0, %(n)s - 1) g
                RETURNING event_id, occurred_at)
            INSERT INTO event_ids SELECT event_id, occurred_at FROM rows""", {"start": start, "n": rows_per_day})
        names.append(f"events_{day:%Y%m%d}")
    execute(dsn, "ANALYZE events")
    return names


def test_a_prune_waiting_for_a_lock_never_holds_up_ingestion(daemon: Daemon) -> None:
    names = _old_days(daemon.dsn, 2, 1000)
    probe = AckProbe(daemon.socket_path).start()
    time.sleep(0.5)
    result: dict[str, Any] = {}
    # A long reader (like pg_dump or an export) holds events for 2 s: the detach must wait
    # for it, but without making the writer queue behind the detach.
    with psycopg.connect(daemon.dsn) as reader:
        reader.execute("SELECT count(*) FROM events")
        worker = threading.Thread(target=lambda: result.update(
            report=retention.prune(Settings(), daemon.dsn, busy_deadline_s=30)))
        worker.start()
        time.sleep(2.0)
        reader.rollback()
    worker.join(60)
    time.sleep(0.3)
    probe.stop()
    report = result["report"]
    assert not report.errors, report.errors
    assert sorted(n for n, _ in report.partitions) == sorted(names)
    assert not probe.errors and len(probe.latencies) > 50
    assert probe.worst < 1.0, f"worst ack {probe.worst:.3f} s: ingestion queued behind the prune"


def test_ingestion_keeps_acking_during_the_scheduled_prune(daemon_factory: Any, db_dsn: str) -> None:
    names = _old_days(db_dsn, 8, 5000)
    for age in (40, 41):
        add_reject(db_dsn, datetime.now(UTC) - timedelta(days=age))
    d = daemon_factory(reports={"timezone": "UTC"}, schedule={"prune_time": utc_time_in(8), "backup_time": ""})
    d.start()
    probe = AckProbe(d.socket_path).start()
    done = wait_for_event(d.dsn, "prune_completed", timeout=30)
    time.sleep(0.3)
    probe.stop()
    assert sorted(done["data"]["partitions"]) == sorted(names)
    assert done["data"]["events"] == 8 * 5000 and done["data"]["event_ids"] == 8 * 5000
    assert done["data"]["rejects"] == 2
    assert not (set(names) & partition_names(d.dsn))
    assert not probe.errors and len(probe.latencies) > 50
    assert probe.worst < 1.0, f"worst ack {probe.worst:.3f} s during the prune"
    stored = ids(d.dsn, "SELECT event_id AS id FROM events WHERE event_type = 'session_heartbeat'")
    assert set(probe.ids) <= stored
    status = subprocess.run([str(BIN / "ralph-query"), "status", "--json", "--config", str(d.config_path)],
                            capture_output=True, text=True, check=True, timeout=30)
    assert json.loads(status.stdout)["last_prune"]["data"]["partitions"] == done["data"]["partitions"]
