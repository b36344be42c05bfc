"""Backups: pg_dump with a verified read-back, rotation, restore into an empty database
(checked against the backup's manifest), and failures that never disturb ingestion."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from ralph_monitor import backup
from ralph_monitor.config import Settings
from ralph_monitor.backup import Backup, BackupError, backups_to_keep, list_backups, rotate
from tests.conftest import Daemon, LineClient, admin_connect, create_database, drop_database, query
from tests.integration.test_overnight import wait_until_settled
from tests.ops import BIN, AckProbe, execute, monitor, utc_time_in, wait_for_event, write_config
from tests.scenario import overnight_events

UTC = timezone.utc
TABLES_BY_KEY = {
    "events": "event_id", "event_ids": "event_id", "rejects": "reject_id", "sessions": "id",
    "spec_runs": "id", "interventions": "event_id", "metric_buckets": "bucket_time, event_type",
    "monitor_hosts": "host", "schema_migrations": "version",
}


def new_database(pg_cluster: Any, prefix: str) -> str:
    return create_database(pg_cluster, f"{prefix}_{uuid.uuid4().hex[:8]}")


def backup_settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(paths_state_dir=str(tmp_path / "state"), paths_backup_dir=str(tmp_path / "backups"),
                    reports_timezone="UTC", **values)


def populate(daemon: Daemon, client: LineClient) -> None:
    """A realistic night, plus rejects and events in old, default and future partitions."""
    now = datetime.now(UTC)
    for event in overnight_events(now):
        assert client.request(event)["ok"]
    for days in (2, 3):  # days whose partitions must be created
        query(daemon.dsn, "SELECT ensure_event_partitions(%s, %s)", ((now - timedelta(days=days)).date(),) * 2)
        assert client.request({"type": "spec_started", "spec_id": f"OLD-{days}",
                               "ts": (now - timedelta(days=days)).isoformat()})["ok"]
    assert client.request({"type": "spec_started", "ts": "2020-02-29T12:00:00Z"})["ok"]  # default partition
    assert client.request({"type": "custom.thing", "data": {"nested": {"a": [1, "\\n", None]}}})["ok"]
    assert not client.request(b'{"type": "spec_started", "session_id": "not-a-uuid"}')["ok"]
    assert not client.request(b"not json")["ok"]
    wait_until_settled(daemon.dsn)


def rows_of(dsn: str, table: str) -> list[dict[str, Any]]:
    return query(dsn, f"SELECT * FROM {table} ORDER BY {TABLES_BY_KEY[table]}")


def partitions(dsn: str) -> list[str]:
    return [r["name"] for r in query(dsn, """
        SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'events'::regclass ORDER BY 1""")]


def test_backup_then_restore_into_a_fresh_database_gives_equal_rows(
        daemon: Daemon, client: LineClient, pg_cluster: Any, tmp_path: Path) -> None:
    populate(daemon, client)
    client.close()
    assert daemon.stop() == 0  # nothing may change the source after the snapshot (a stall mark, ...)
    settings = backup_settings(tmp_path)
    result = backup.backup(settings, daemon.dsn)

    # Published under its final name only, private, with a manifest.
    assert result.path.parent == settings.backup_dir
    assert backup.BACKUP_NAME.fullmatch(result.path.name)
    assert sorted(p.name for p in settings.backup_dir.iterdir()) == [result.path.name, result.path.name + ".json"]
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o600
    manifest = json.loads((settings.backup_dir / (result.path.name + ".json")).read_text())
    assert manifest["size_bytes"] == result.path.stat().st_size == result.size_bytes
    assert manifest["counts"]["events"] == query(daemon.dsn, "SELECT count(*) AS n FROM events")[0]["n"]

    target = new_database(pg_cluster, "restored")
    config = write_config(tmp_path / "config.toml", {"paths": {"state_dir": str(tmp_path / "state")}})
    proc = monitor("restore", str(result.path), "--into", target, config=config)
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout

    for table in TABLES_BY_KEY:
        source, restored = rows_of(daemon.dsn, table), rows_of(target, table)
        assert len(restored) == len(source) == manifest["counts"][table], table
        # Sample rows (all of them here: the night is small) are equal column by column.
        assert restored == source, table
    assert len(rows_of(target, "sessions")) == 3
    assert partitions(target) == partitions(daemon.dsn)

    # The restored database is a working one: a daemon on it stores new events after the old ones.
    assert target != daemon.dsn
    restored_daemon = Daemon(root=tmp_path / "d2", dsn=target)
    restored_daemon.root.mkdir()
    restored_daemon.start()
    try:
        c = LineClient(restored_daemon.connect())
        new_id = c.request({"type": "session_heartbeat"})["id"]
        c.close()
    finally:
        assert restored_daemon.stop() == 0
    old_max = max(r["id"] for r in rows_of(daemon.dsn, "events"))
    assert query(target, "SELECT id FROM events WHERE event_id = %s", (new_id,))[0]["id"] > old_max


def test_restore_refuses_a_database_that_is_not_empty_unless_forced(
        db_dsn: str, pg_cluster: Any, tmp_path: Path) -> None:
    execute(db_dsn, "INSERT INTO rejects (reject_id, received_at, host, reason, detail, line_bytes, excerpt) "
                  "VALUES (gen_random_uuid(), now(), 'h', 'invalid_json', 'x', 1, 'x')")
    settings = backup_settings(tmp_path)
    result = backup.backup(settings, db_dsn)
    config = write_config(tmp_path / "config.toml", {"paths": {"state_dir": str(tmp_path / "state")}})

    target = new_database(pg_cluster, "busy")
    execute(target, "CREATE TABLE precious (x int)")
    proc = monitor("restore", str(result.path), "--into", target, config=config)
    assert proc.returncode == 1
    assert "is not empty" in proc.stderr and "public.precious" in proc.stderr and "--force" in proc.stderr
    assert query(target, "SELECT to_regclass('events') IS NULL AS absent")[0]["absent"]

    # --force over a database holding the same schema (a second restore of the same backup).
    first = new_database(pg_cluster, "again")
    assert monitor("restore", str(result.path), "--into", first, config=config).returncode == 0
    execute(first, "DELETE FROM rejects")
    proc = monitor("restore", str(result.path), "--into", first, "--force", config=config)
    assert proc.returncode == 0, proc.stderr
    assert query(first, "SELECT count(*) AS n FROM rejects")[0]["n"] == 1


def test_restore_force_with_a_role_gives_it_the_restored_objects(
        db_dsn: str, pg_cluster: Any, tmp_path: Path) -> None:
    """--role with --force: the preamble's SET ROLE quotes a name that needs it."""
    result = backup.backup(backup_settings(tmp_path), db_dsn)
    config = write_config(tmp_path / "config.toml", {"paths": {"state_dir": str(tmp_path / "state")}})
    role, name = f'restorer "{uuid.uuid4().hex[:6]}"', f"owned_{uuid.uuid4().hex[:8]}"
    target = create_database(pg_cluster, name)
    with admin_connect(pg_cluster) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(role)))
    try:
        assert monitor("restore", str(result.path), "--into", target, config=config).returncode == 0
        proc = monitor("restore", str(result.path), "--into", target, "--force", "--role", role, config=config)
        assert proc.returncode == 0, proc.stderr
        owner = query(target, "SELECT tableowner FROM pg_tables WHERE tablename = 'events'")[0]["tableowner"]
        assert owner == role
    finally:
        drop_database(pg_cluster, name)
        with admin_connect(pg_cluster) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_restore_rejects_a_damaged_backup(db_dsn: str, pg_cluster: Any, tmp_path: Path) -> None:
    result = backup.backup(backup_settings(tmp_path), db_dsn)
    data = bytearray(result.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    result.path.write_bytes(bytes(data))
    target = new_database(pg_cluster, "damaged")
    with pytest.raises(backup.RestoreError, match="damaged"):
        backup.restore(backup_settings(tmp_path), result.path, target)
    assert query(target, "SELECT to_regclass('events') IS NULL AS absent")[0]["absent"]


def _touch_backups(directory: Path, stamps: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for stamp in stamps:
        (directory / f"ralph-monitor-{stamp}Z.dump").write_bytes(b"x")
        (directory / f"ralph-monitor-{stamp}Z.dump.json").write_text("{}")


def test_rotation_keeps_exactly_the_configured_files(tmp_path: Path) -> None:
    directory = tmp_path / "backups"
    day = datetime(2026, 9, 1, 3, 30, tzinfo=UTC)
    stamps = []
    while day <= datetime(2026, 11, 25, 3, 30, tzinfo=UTC):
        if day.date() != datetime(2026, 11, 22).date():  # the machine was off that night
            stamps.append(f"{day:%Y%m%dT%H%M%S}")
        day += timedelta(days=1)
    stamps += ["20261125T120000", "20261120T010000"]  # manual runs
    _touch_backups(directory, stamps)
    (directory / "notes.txt").write_text("not ours")
    (directory / "ralph-monitor-20200101T000000Z.dump.json").write_text("{}")  # orphan manifest
    stale = directory / ".ralph-monitor-20261001T033000Z.dump.partial"
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7 * 3600,) * 2)
    fresh = directory / ".ralph-monitor-20261125T130000Z.dump.partial"  # a backup in progress
    fresh.write_bytes(b"half")

    removed = rotate(directory, keep_daily=7, keep_weekly=4, zone=UTC)

    kept = sorted(b.path.name.removeprefix("ralph-monitor-").removesuffix("Z.dump") for b in list_backups(directory))
    assert kept == sorted([
        # the newest of each of the 7 newest days that have a backup (11-22 has none)
        "20261125T120000", "20261124T033000", "20261123T033000", "20261121T033000",
        "20261120T033000", "20261119T033000", "20261118T033000",
        # then the newest of each of 4 ISO weeks before those: weeks 47 (Tue 11-17), 46, 45, 44
        "20261117T033000", "20261115T033000", "20261108T033000", "20261101T033000",
    ])
    assert len(removed) == len(stamps) - 11
    names = {p.name for p in directory.iterdir()}
    assert names == ({f"ralph-monitor-{s}Z.dump" for s in kept} | {f"ralph-monitor-{s}Z.dump.json" for s in kept}
                     | {"notes.txt", fresh.name})


def test_rotation_days_follow_the_report_zone(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    backups = [Backup(Path(f"b{i}"), datetime(2026, 11, 25, h, 0, tzinfo=UTC)) for i, h in enumerate((1, 23))]
    # In UTC both are on 11-25; in New York the first is still on 11-24.
    assert backups_to_keep(backups, keep_daily=7, keep_weekly=0, zone=UTC) == {Path("b1")}
    assert backups_to_keep(backups, keep_daily=7, keep_weekly=0,
                           zone=ZoneInfo("America/New_York")) == {Path("b0"), Path("b1")}


def test_two_backups_with_one_kept_leave_exactly_one_file_pair(db_dsn: str, tmp_path: Path) -> None:
    settings = backup_settings(tmp_path, backup_keep_daily=1, backup_keep_weekly=0)
    first = backup.backup(settings, db_dsn)
    second = backup.backup(settings, db_dsn)
    assert first.path != second.path and second.removed == [first.path]
    assert sorted(p.name for p in settings.backup_dir.iterdir()) == [second.path.name, second.path.name + ".json"]


def _fake_pg_dump(tmp_path: Path, body: str) -> Path:
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    script = bindir / "pg_dump"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    (bindir / "pg_restore").symlink_to(backup.pg_tool(Settings(), "pg_restore"))
    return script


def test_backup_failures_name_the_cause(db_dsn: str, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="not an executable file; fix \\[backup\\] pg_dump"):
        backup.backup(backup_settings(tmp_path, backup_pg_dump="/nonexistent/pg_dump"), db_dsn)
    with pytest.raises(BackupError, match="cannot connect"):
        backup.backup(backup_settings(tmp_path), f"host={tmp_path} dbname=nothing user=nobody")
    script = _fake_pg_dump(tmp_path, 'echo "pg_dump: error: aborting because of server version mismatch" >&2\n'
                                     "exit 1\n")
    with pytest.raises(BackupError, match="pg_dump failed: pg_dump: error: aborting because of server version"):
        backup.backup(backup_settings(tmp_path, backup_pg_dump=str(script)), db_dsn)
    # A dump that pg_restore cannot read back is never published.
    script.write_text('#!/bin/sh\nfor a; do case "$a" in --file=*) echo garbage > "${a#--file=}";; esac; done\n')
    with pytest.raises(BackupError, match="reading the backup back"):
        backup.backup(backup_settings(tmp_path, backup_pg_dump=str(script)), db_dsn)
    assert list((tmp_path / "backups").iterdir()) == []


def test_failing_pg_dump_records_backup_failed_and_ingestion_continues(
        daemon_factory: Any, tmp_path: Path) -> None:
    script = _fake_pg_dump(tmp_path, 'sleep 2\necho "pg_dump: error: could not write to output file: '
                                     'No space left on device" >&2\nexit 1\n')
    d = daemon_factory(backup={"pg_dump": str(script)}, reports={"timezone": "UTC"},
                       schedule={"backup_time": utc_time_in(8), "prune_time": ""})
    d.start()
    probe = AckProbe(d.socket_path).start()
    failed = wait_for_event(d.dsn, "backup_failed", timeout=30)
    time.sleep(0.5)
    probe.stop()
    assert "No space left on device" in failed["data"]["error"]
    assert not probe.errors and len(probe.latencies) > 50
    assert probe.worst < 1.0, f"an ack took {probe.worst:.3f} s while pg_dump ran"
    stored = {r["id"] for r in query(d.dsn, "SELECT event_id::text AS id FROM events")}
    assert set(probe.ids) <= stored
    assert list((d.root / "state" / "backups").iterdir()) == []
    assert "backup failed: pg_dump failed" in d.log()
    assert d.process is not None and d.process.poll() is None
    assert d.stop() == 0


def test_scheduled_backup_is_recorded_and_shown_by_status(daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(reports={"timezone": "UTC"}, schedule={"backup_time": utc_time_in(8), "prune_time": ""})
    d.start()
    completed = wait_for_event(d.dsn, "backup_completed", timeout=30)
    path = Path(completed["data"]["path"])
    assert path.parent == d.root / "state" / "backups" and path.exists()
    assert completed["data"]["size_bytes"] == path.stat().st_size
    status = json.loads(subprocess.run(
        [str(BIN / "ralph-query"), "status", "--json", "--config", str(d.config_path)],
        capture_output=True, text=True, check=True).stdout)
    assert status["last_backup"]["data"]["path"] == str(path)


def test_backup_command_records_its_outcome(daemon: Daemon, tmp_path: Path) -> None:
    proc = monitor("backup", config=daemon.config_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("backup written: ")
    completed = wait_for_event(daemon.dsn, "backup_completed", timeout=5)
    assert Path(completed["data"]["path"]).exists()
    assert len(list_backups(daemon.root / "state" / "backups")) == 1


def test_sigterm_during_a_backup_stops_pg_dump_and_exits_cleanly(daemon_factory: Any, tmp_path: Path) -> None:
    script = _fake_pg_dump(tmp_path, "exec sleep 60\n")
    d = daemon_factory(backup={"pg_dump": str(script)}, reports={"timezone": "UTC"},
                       schedule={"backup_time": utc_time_in(8), "prune_time": ""})
    d.start()
    backups = d.root / "state" / "backups"
    deadline = time.monotonic() + 20
    while not (backups.exists() and list(backups.iterdir())):  # the dump has started
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.1)
    time.sleep(0.5)
    started = time.monotonic()
    assert d.stop(timeout=30) == 0
    assert time.monotonic() - started < 10, "the daemon waited for pg_dump"
    assert "Traceback" not in d.log()
    assert "scheduled job backup stopped: the daemon is shutting down" in d.log()
    assert list(backups.iterdir()) == []
