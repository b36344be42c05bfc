"""Backups with a verified read-back and rotation, restore, and retention (pruning).

Everything here blocks: the daemon runs it in a worker thread (`asyncio.to_thread`, see
`install`) so ingestion never waits for it; the CLI calls it directly. PostgreSQL is
reached only through the store; pg_dump / pg_restore run as child processes with the
password in their environment, never on their command line.

Backups: `pg_dump --format=custom` from an exported snapshot into a hidden `.partial`
file, read back with `pg_restore --list` (and a full read of every data block), then
renamed to `ralph-monitor-YYYYMMDDTHHMMSSZ.dump` beside a manifest (`.dump.json`) holding
its SHA-256 and the row count of every table in that same snapshot, which `restore`
checks the restored database against.

Retention: events go by whole UTC days (detach the daily partition, optionally archive
it, drop it), so the cost is the same whatever the table's size; the rest (event_ids,
stray rows in the default partition, sessions, metric buckets, rejects) are deleted in
small batches, one short transaction each. Locks on `events` are taken with a short
lock_timeout and retried, so ingestion never queues behind a long reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ralph_monitor.config import Settings, report_zone
from ralph_monitor.errors import RalphMonitorError, StoreError
from ralph_monitor.protocol import Event, internal_event
from ralph_monitor.store import (EventStore, LockBusy, MaintenanceSession, database_objects,
                                 describe_dsn, dump_snapshot, open_maintenance, table_counts,
                                 tool_conninfo)

if TYPE_CHECKING:
    from ralph_monitor.context import DaemonContext

log = logging.getLogger(__name__)

BACKUP_NAME = re.compile(r"ralph-monitor-(\d{8}T\d{6})Z\.dump")
BACKUP_STAMP = "%Y%m%dT%H%M%S"
MANIFEST_SUFFIX = ".json"
PARTIAL_SUFFIX = ".partial"
MANIFEST_FORMAT = "ralph-monitor-backup/1"
STALE_PARTIAL_S = 6 * 3600
"""A `.partial` file older than this is left over from a crashed backup and is removed."""
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_DUMP_LOCK_WAIT = "60s"
"""pg_dump gives up instead of waiting longer than this for a table lock."""
FILE_MODE = 0o600
"""Backups and archives hold every event: readable by their owner only."""

LOCK_TIMEOUT_S = 0.2
"""Longest time ingestion can be held up by one attempt to detach a partition."""
BUSY_DEADLINE_S = 120.0
"""How long retention keeps retrying a lock on `events` before reporting it busy."""
DELETE_BATCH = 5000
SESSION_BATCH = 500


class MaintenanceError(RalphMonitorError):
    """A backup, restore or prune could not be done; the message says why and what to do."""


class BackupError(MaintenanceError):
    pass


class RestoreError(MaintenanceError):
    pass


class PruneBusy(MaintenanceError):
    """Another prune holds the database's retention lock."""


# --------------------------------------------------------------------------- tools


def _tool_version(path: str) -> int:
    parent = Path(path).parent.parent.name
    return int(parent) if parent.isdigit() else 0


def pg_tool(settings: Settings, name: str) -> str:
    """Path of pg_dump / pg_restore: [backup] pg_dump (and its directory), else the newest
    /usr/lib/postgresql/*/bin one (pg_dump must be at least the server's version), else PATH."""
    if settings.backup_pg_dump:
        configured = Path(settings.backup_pg_dump)
        path = configured if name == "pg_dump" else configured.with_name(name)
        if not os.access(path, os.X_OK):
            raise BackupError(f"{path} is not an executable file; fix [backup] pg_dump in the config")
        return str(path)
    found = sorted(glob.glob(f"{PG_BIN_GLOB}/{name}"), key=_tool_version)
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise BackupError(f"{name} not found; install the PostgreSQL client "
                      "(apt-get install postgresql-client) or set [backup] pg_dump in the config")


_children: set[subprocess.Popen[str]] = set()
_children_lock = threading.Lock()
_stopping = threading.Event()


def stop_running_work() -> None:
    """The daemon is stopping: end pg_dump/pg_restore children and make retention stop
    retrying, so the worker thread (which asyncio cannot cancel) returns promptly."""
    _stopping.set()
    with _children_lock:
        for child in _children:
            with contextlib.suppress(OSError):
                child.terminate()


def _run_tool(command: list[str], env: dict[str, str], what: str,
              error: type[MaintenanceError] = BackupError) -> subprocess.CompletedProcess[str]:
    if _stopping.is_set():
        raise error(f"{what}: not started, the daemon is shutting down")
    try:
        child = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    except OSError as exc:
        raise error(f"cannot run {command[0]}: {exc.strerror}; install the PostgreSQL client "
                    "or fix [backup] pg_dump") from None
    with _children_lock:
        _children.add(child)
    try:
        stdout, stderr = child.communicate()
    finally:
        with _children_lock:
            _children.discard(child)
    proc = subprocess.CompletedProcess(command, child.returncode, stdout, stderr)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        detail = " / ".join(lines[-3:]) if lines else f"exit status {proc.returncode}"
        raise error(f"{what} failed: {detail}")
    return proc


def _tool_version_text(path: str) -> str:
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL).stdout.strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------- files


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _adopt_owner(directory: Path, path: Path) -> None:
    """Run as root (e.g. `sudo ralph-monitor backup`), give the file to the directory's owner
    so the daemon's rotation can remove it later."""
    if os.geteuid() != 0:
        return
    st = directory.stat()
    if st.st_uid != 0:
        os.chown(path, st.st_uid, st.st_gid)


def _create_private(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    os.close(fd)


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    stem, suffix = (path.name.split(".", 1) + [""])[:2]
    for n in range(2, 10_000):
        candidate = path.with_name(f"{stem}-{n}.{suffix}" if suffix else f"{stem}-{n}")
        if not candidate.exists():
            return candidate
    raise MaintenanceError(f"too many files named like {path}")


def _hash_and_sync(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return digest.hexdigest(), size


def _write_json_atomically(path: Path, value: dict[str, Any]) -> None:
    partial = path.with_name("." + path.name + PARTIAL_SUFFIX)
    partial.unlink(missing_ok=True)
    _create_private(partial)
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    _adopt_owner(path.parent, partial)
    os.replace(partial, path)


# --------------------------------------------------------------------------- backups


@dataclass(frozen=True)
class Backup:
    path: Path
    taken_at: datetime

    @property
    def manifest(self) -> Path:
        return self.path.with_name(self.path.name + MANIFEST_SUFFIX)


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size_bytes: int
    duration_s: float
    counts: dict[str, int]
    removed: list[Path]

    def event_data(self) -> dict[str, Any]:
        return {"path": str(self.path), "size_bytes": self.size_bytes,
                "duration_s": round(self.duration_s, 3), "events": self.counts.get("events"),
                "rows": sum(self.counts.values()), "rotated_out": [p.name for p in self.removed]}


def list_backups(directory: Path) -> list[Backup]:
    """The finished backups in `directory`, oldest first (other files are ignored)."""
    found = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    for path in entries:
        match = BACKUP_NAME.fullmatch(path.name)
        if match and path.is_file():
            taken = datetime.strptime(match[1], BACKUP_STAMP).replace(tzinfo=timezone.utc)
            found.append(Backup(path, taken))
    return sorted(found, key=lambda b: b.taken_at)


def _new_backup_path(directory: Path, now: datetime) -> Path:
    stamp = now.astimezone(timezone.utc).replace(microsecond=0)
    while True:
        path = directory / f"ralph-monitor-{stamp.strftime(BACKUP_STAMP)}Z.dump"
        if not path.exists() and not path.with_name("." + path.name + PARTIAL_SUFFIX).exists():
            return path
        stamp += timedelta(seconds=1)


def backups_to_keep(backups: Iterable[Backup], *, keep_daily: int, keep_weekly: int,
                    zone: tzinfo) -> set[Path]:
    """The rotation policy: the newest backup of each of the newest `keep_daily` days that
    have one, plus the newest backup of each of the newest `keep_weekly` ISO weeks among
    the backups older than those (days and weeks in `zone`)."""
    newest_first = sorted(backups, key=lambda b: b.taken_at, reverse=True)
    keep: set[Path] = set()
    days: set[date] = set()
    oldest_daily: datetime | None = None
    for b in newest_first:
        day = b.taken_at.astimezone(zone).date()
        if day not in days and len(days) < keep_daily:
            days.add(day)
            keep.add(b.path)
            oldest_daily = b.taken_at
    weeks: set[tuple[int, int]] = set()
    for b in newest_first:
        if oldest_daily is not None and b.taken_at >= oldest_daily:
            continue
        week = tuple(b.taken_at.astimezone(zone).isocalendar())[:2]
        if week not in weeks and len(weeks) < keep_weekly:
            weeks.add(week)  # type: ignore[arg-type]
            keep.add(b.path)
    return keep


def rotate(directory: Path, *, keep_daily: int, keep_weekly: int, zone: tzinfo,
           now: float | None = None) -> list[Path]:
    """Delete the backups the policy does not keep (with their manifests), manifests whose
    backup is gone, and stale `.partial` files. Returns the backups removed."""
    backups = list_backups(directory)
    keep = backups_to_keep(backups, keep_daily=keep_daily, keep_weekly=keep_weekly, zone=zone)
    removed = []
    for b in backups:
        if b.path not in keep:
            b.path.unlink(missing_ok=True)
            b.manifest.unlink(missing_ok=True)
            removed.append(b.path)
    now = time.time() if now is None else now
    for path in directory.iterdir():
        name = path.name
        if name.endswith(".dump" + MANIFEST_SUFFIX) and BACKUP_NAME.fullmatch(name[: -len(MANIFEST_SUFFIX)]):
            if not path.with_name(name[: -len(MANIFEST_SUFFIX)]).exists():
                path.unlink(missing_ok=True)
        elif name.startswith(".ralph-monitor-") and name.endswith(PARTIAL_SUFFIX):
            try:
                if now - path.stat().st_mtime > STALE_PARTIAL_S:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
    if removed:
        _fsync_dir(directory)
        log.info("rotation removed %s", ", ".join(p.name for p in removed))
    return removed


def _verify_archive(pg_restore: str, path: Path) -> None:
    """Read the dump back: its table of contents (`pg_restore --list`), then every data
    block (a restore to /dev/null), so a truncated or corrupt file is never kept."""
    listing = _run_tool([pg_restore, "--list", str(path)], {}, "reading the backup back (pg_restore --list)")
    if "TABLE DATA" not in listing.stdout:
        raise BackupError(f"pg_restore --list shows no table data in {path}; the dump is unusable")
    _run_tool([pg_restore, "--file=/dev/null", str(path)], {}, "reading the backup's data back (pg_restore)")


def backup(settings: Settings, dsn: str, *, now: datetime | None = None,
           zone: tzinfo | None = None) -> BackupResult:
    """Dump the database into the backup directory, verify, publish, rotate."""
    started = time.monotonic()
    directory = settings.backup_dir
    zone = zone or report_zone(settings.reports_timezone)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot create the backup directory {directory}: {exc.strerror}; "
                          "fix [paths] backup_dir") from None
    pg_dump = pg_tool(settings, "pg_dump")
    pg_restore = pg_tool(settings, "pg_restore")
    target = _new_backup_path(directory, now or datetime.now(timezone.utc))
    partial = target.with_name("." + target.name + PARTIAL_SUFFIX)
    database, env = tool_conninfo(settings, dsn)
    try:
        try:
            _create_private(partial)
        except OSError as exc:
            raise BackupError(f"cannot write in the backup directory {directory}: {exc.strerror}") from None
        try:
            with dump_snapshot(settings, dsn) as snap:
                _run_tool([pg_dump, "--format=custom", f"--file={partial}", f"--snapshot={snap.snapshot}",
                           f"--lock-wait-timeout={PG_DUMP_LOCK_WAIT}", "--no-password",
                           f"--dbname={database}"], env, "pg_dump")
        except StoreError as exc:
            raise BackupError(f"backup of {describe_dsn(dsn)} failed: {exc}") from None
        _verify_archive(pg_restore, partial)
        try:
            digest, size = _hash_and_sync(partial)
            _adopt_owner(directory, partial)
            os.rename(partial, target)
            _write_json_atomically(target.with_name(target.name + MANIFEST_SUFFIX), {
                "format": MANIFEST_FORMAT, "file": target.name,
                "created_at": datetime.now(timezone.utc).isoformat(), "database": snap.database,
                "server_version_num": snap.server_version, "pg_dump": _tool_version_text(pg_dump),
                "size_bytes": size, "sha256": digest, "counts": snap.counts})
            _fsync_dir(directory)
        except OSError as exc:
            raise BackupError(f"cannot finish the backup in {directory}: {exc.strerror}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    removed = rotate(directory, keep_daily=settings.backup_keep_daily,
                     keep_weekly=settings.backup_keep_weekly, zone=zone)
    return BackupResult(target, size, time.monotonic() - started, snap.counts, removed)


# --------------------------------------------------------------------------- restore


@dataclass(frozen=True)
class RestoreResult:
    counts: dict[str, int]
    expected: dict[str, int] | None
    """The manifest's counts, when the backup has one (then they matched)."""
    replaced: list[str]
    """Objects that were in the database before (--force)."""
    duration_s: float


def read_manifest(path: Path) -> dict[str, Any] | None:
    manifest = path.with_name(path.name + MANIFEST_SUFFIX)
    try:
        value = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RestoreError(f"{manifest} is unreadable ({exc}); move it away to restore without checks") from None
    return value if isinstance(value, dict) else None


def restore(settings: Settings, file: str | Path, into_dsn: str, *, force: bool = False,
            role: str | None = None) -> RestoreResult:
    """Restore a backup into the database at `into_dsn`, which must be empty unless `force`
    (then the objects in the backup are dropped and recreated), in one transaction; then
    check the row counts against the backup's manifest."""
    started = time.monotonic()
    path = Path(file)
    if not path.is_file():
        raise RestoreError(f"{path}: no such backup file")
    manifest = read_manifest(path)
    if manifest and manifest.get("sha256"):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != manifest["sha256"]:
            raise RestoreError(f"{path} is damaged: its SHA-256 differs from the one in its manifest")
    pg_restore = pg_tool(settings, "pg_restore")
    _run_tool([pg_restore, "--list", str(path)], {}, f"reading {path}", RestoreError)
    try:
        existing = database_objects(settings, into_dsn)
    except StoreError as exc:
        raise RestoreError(str(exc)) from None
    if existing and not force:
        shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise RestoreError(
            f"{describe_dsn(into_dsn)} is not empty ({shown}); restore into a new database "
            "(createdb NAME) or add --force to drop and recreate the objects in the backup")
    database, env = tool_conninfo(settings, into_dsn, configured=False)
    if existing:
        _restore_replacing(settings, path, database, env, role)
    else:
        command = [pg_restore, "--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error",
                   "--no-password", f"--dbname={database}"]
        if role:
            command.append(f"--role={role}")
        _run_tool([*command, str(path)], env, "pg_restore", RestoreError)
    try:
        counts = table_counts(settings, into_dsn)
    except StoreError as exc:
        raise RestoreError(f"restored, but cannot count the rows: {exc}") from None
    expected = manifest.get("counts") if manifest else None
    if isinstance(expected, dict):
        differ = {t: (n, counts.get(t)) for t, n in expected.items() if counts.get(t) != n}
        if differ:
            shown = ", ".join(f"{t}: {want} in backup, {got} restored" for t, (want, got) in sorted(differ.items()))
            raise RestoreError(f"restored, but row counts differ from the backup's manifest: {shown}")
    else:
        expected = None
    return RestoreResult(counts, expected, existing, time.monotonic() - started)


REPLACE_PREAMBLE = """\
\\set ON_ERROR_STOP on
DROP SCHEMA IF EXISTS public CASCADE;
CREATE SCHEMA public;
ALTER SCHEMA public OWNER TO pg_database_owner;
GRANT USAGE ON SCHEMA public TO PUBLIC;
"""
"""--force: the schema is emptied in the same transaction that restores into it
(pg_restore --clean cannot drop partitioned tables' inherited constraints)."""


def _restore_replacing(settings: Settings, path: Path, database: str, env: dict[str, str],
                       role: str | None) -> None:
    """pg_restore's SQL, after a preamble that empties the schema, through psql in one
    transaction: if anything fails, the database is left as it was."""
    pg_restore, psql = pg_tool(settings, "pg_restore"), pg_tool(settings, "psql")
    preamble = (f"SET ROLE {_quote_ident(role)};\n" if role else "") + REPLACE_PREAMBLE
    with tempfile.TemporaryFile() as restore_err, tempfile.TemporaryFile() as psql_err:
        try:
            producer = subprocess.Popen([pg_restore, "--no-owner", "--no-privileges", "--file=-", str(path)],
                                        stdout=subprocess.PIPE, stderr=restore_err, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise RestoreError(f"cannot run {pg_restore}: {exc.strerror}") from None
        try:
            consumer = subprocess.Popen([psql, "-X", "-q", "--no-password", "--single-transaction",
                                         "-v", "ON_ERROR_STOP=1", f"--dbname={database}", "--file=-"],
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=psql_err,
                                        env={**os.environ, **env})
        except OSError as exc:
            producer.kill()
            producer.wait()
            raise RestoreError(f"cannot run {psql}: {exc.strerror}") from None
        assert producer.stdout is not None and consumer.stdin is not None
        try:
            consumer.stdin.write(preamble.encode())
            shutil.copyfileobj(producer.stdout, consumer.stdin, 1 << 20)
        except BrokenPipeError:
            pass
        finally:
            with contextlib.suppress(BrokenPipeError):
                consumer.stdin.close()
        consumer.wait()
        producer.stdout.close()
        producer.wait()
        for proc, err, what in ((consumer, psql_err, "restore (psql)"), (producer, restore_err, "pg_restore")):
            if proc.returncode != 0:
                err.seek(0)
                lines = [line for line in err.read().decode(errors="replace").splitlines() if line.strip()]
                raise RestoreError(f"{what} failed, nothing was changed: " + (" / ".join(lines[-3:]) or
                                                                             f"exit status {proc.returncode}"))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- retention


@dataclass(frozen=True)
class Cutoffs:
    """Rows strictly older than these go."""

    events: datetime
    """00:00 UTC of (today - events_days): whole daily partitions before it are dropped."""
    sessions: datetime
    metric_buckets: datetime
    rejects: datetime

    @classmethod
    def at(cls, settings: Settings, now: datetime) -> Cutoffs:
        utc = now.astimezone(timezone.utc)
        first_kept_day = utc.date() - timedelta(days=settings.retention_events_days)
        return cls(events=datetime.combine(first_kept_day, dtime(0), tzinfo=timezone.utc),
                   sessions=utc - timedelta(days=settings.retention_sessions_days),
                   metric_buckets=utc - timedelta(days=settings.retention_metric_buckets_days),
                   rejects=utc - timedelta(days=settings.retention_rejects_days))


REMOVED_KINDS = ("events", "event_ids", "sessions", "spec_runs", "interventions", "metric_buckets", "rejects")


@dataclass
class PruneReport:
    dry_run: bool
    cutoffs: Cutoffs
    partitions: list[tuple[str, int]] = field(default_factory=list)
    """Daily partitions dropped (or that would be), with their row counts."""
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REMOVED_KINDS, 0))
    archives: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent per step: detach, count/archive, drop, and each batched DELETE."""

    def time(self, step: str, started: float) -> None:
        self.timings[step] = self.timings.get(step, 0.0) + time.monotonic() - started

    def event_data(self) -> dict[str, Any]:
        return {**self.removed, "partitions": [name for name, _ in self.partitions],
                "duration_s": round(self.duration_s, 3), "dry_run": self.dry_run,
                "timings": {k: round(v, 4) for k, v in self.timings.items()},
                "archives": [str(p) for p in self.archives], "errors": self.errors,
                "cutoffs": {k: v.isoformat() for k, v in vars(self.cutoffs).items()}}

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        c = self.cutoffs
        out = [f"events      {verb} {self.removed['events']:>9}  (before {c.events:%Y-%m-%d %H:%M} UTC; "
               f"{len(self.partitions)} daily partitions"
               + (": " + ", ".join(f"{n} ({rows})" for n, rows in self.partitions) if self.partitions else "") + ")",
               f"event_ids   {verb} {self.removed['event_ids']:>9}  (same cutoff: client event ids)",
               f"sessions    {verb} {self.removed['sessions']:>9}  (ended before {c.sessions:%Y-%m-%d %H:%M} UTC, "
               f"never running ones) with {self.removed['spec_runs']} spec runs, "
               f"{self.removed['interventions']} interventions",
               f"metrics     {verb} {self.removed['metric_buckets']:>9}  (5-minute buckets before "
               f"{c.metric_buckets:%Y-%m-%d %H:%M} UTC)",
               f"rejects     {verb} {self.removed['rejects']:>9}  (received before {c.rejects:%Y-%m-%d %H:%M} UTC)"]
        out += [f"archive     {p}" for p in self.archives]
        out += [f"ERROR       {e}" for e in self.errors]
        return out


class _BatchArchive:
    """Rows deleted batch by batch, appended to `<kind>-<stamp>.jsonl.gz`; each batch is
    flushed and fsync'd before its DELETE commits (a crash may archive a row twice, never lose it)."""

    def __init__(self, directory: Path, kind: str, stamp: str, report: PruneReport) -> None:
        self._path = _unique(directory / f"{kind}-{stamp}.jsonl.gz")
        self._report = report
        self._raw: Any = None
        self._gz: gzip.GzipFile | None = None

    def write(self, lines: list[str]) -> None:
        if self._gz is None:
            _create_private(self._path)
            self._raw = open(self._path, "wb")
            self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb")
            self._report.archives.append(self._path)
        self._gz.write("".join(line + "\n" for line in lines).encode())
        self._gz.flush(zlib.Z_SYNC_FLUSH)
        self._raw.flush()
        os.fsync(self._raw.fileno())

    def close(self) -> None:
        if self._gz is not None:
            self._gz.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            _fsync_dir(self._path.parent)


def _archive_table(db: MaintenanceSession, table: str, directory: Path) -> tuple[Path, int]:
    """Write every row of a detached partition to `<table>.jsonl.gz`; durable before return."""
    final = _unique(directory / f"{table}.jsonl.gz")
    partial = final.with_name("." + final.name + PARTIAL_SUFFIX)
    partial.unlink(missing_ok=True)
    _create_private(partial)
    rows = 0
    try:
        with open(partial, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb") as gz:
                for line in db.table_json(table):
                    gz.write(line.encode() + b"\n")
                    rows += 1
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(partial, final)
        _fsync_dir(directory)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return final, rows


def _retry_busy(what: str, action: Callable[[], None], deadline_s: float) -> None:
    """Run `action`, retrying while a lock is busy (each try waits at most lock_timeout)."""
    deadline = time.monotonic() + deadline_s
    pause = 0.25
    while True:
        if _stopping.is_set():
            raise MaintenanceError(f"{what}: stopped, the daemon is shutting down")
        try:
            action()
            return
        except LockBusy:
            if time.monotonic() + pause > deadline:
                raise LockBusy(f"{what}: the table stayed locked for {deadline_s:.0f} s "
                               "(a long backup, export or query); it is retried at the next prune") from None
            log.debug("%s: lock busy, retrying in %.2f s", what, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def _partition_day(name: str) -> date:
    return datetime.strptime(name.removeprefix("events_"), "%Y%m%d").date()


def prune(settings: Settings, dsn: str, *, now: datetime | None = None, dry_run: bool = False,
          archive_dir: str | Path | None = None, lock_timeout_s: float = LOCK_TIMEOUT_S,
          busy_deadline_s: float = BUSY_DEADLINE_S) -> PruneReport:
    """Apply the retention policy (see `Cutoffs`); with `dry_run`, only count what would go.
    With `archive_dir`, removed rows are written there as gzip'd JSON lines first.
    Each part runs on its own: one that fails is reported in `errors`, the rest still run."""
    started = time.monotonic()
    now = now or datetime.now(timezone.utc)
    cut = Cutoffs.at(settings, now)
    report = PruneReport(dry_run=dry_run, cutoffs=cut)
    directory = Path(archive_dir) if archive_dir is not None else None
    if directory is not None and not dry_run:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise MaintenanceError(f"cannot create the archive directory {directory}: {exc.strerror}") from None
    stamp = now.astimezone(timezone.utc).strftime(BACKUP_STAMP) + "Z"
    try:
        with open_maintenance(settings, dsn) as db:
            if not dry_run and not db.try_lock():
                raise PruneBusy("another prune is running on this database; try again when it has finished")
            try:
                if dry_run:
                    _count_all(db, cut, report)
                else:
                    _prune_all(db, cut, report, directory, stamp, lock_timeout_s, busy_deadline_s)
            finally:
                if not dry_run:
                    db.unlock()
    except StoreError as exc:
        report.errors.append(str(exc))
    report.duration_s = time.monotonic() - started
    return report


def _old_partitions(db: MaintenanceSession, cut: Cutoffs) -> list[tuple[str, bool]]:
    return [(name, attached) for name, attached in db.event_partitions()
            if _partition_day(name) < cut.events.date()]


def _count_all(db: MaintenanceSession, cut: Cutoffs, report: PruneReport) -> None:
    for name, _attached in _old_partitions(db, cut):
        rows = db.count_table(name)
        report.partitions.append((name, rows))
        report.removed["events"] += rows
    report.removed["events"] += db.count("count_events_default_before", {"cutoff": cut.events})
    report.removed["event_ids"] = db.count("count_event_ids_before", {"cutoff": cut.events})
    sessions, runs, interventions = db.counts("count_prunable_sessions", {"cutoff": cut.sessions})
    report.removed.update(sessions=sessions, spec_runs=runs, interventions=interventions)
    report.removed["metric_buckets"] = db.count("count_metric_buckets_before", {"cutoff": cut.metric_buckets})
    report.removed["rejects"] = db.count("count_rejects_before", {"cutoff": cut.rejects})


def _prune_all(db: MaintenanceSession, cut: Cutoffs, report: PruneReport, directory: Path | None,
               stamp: str, lock_timeout_s: float, busy_deadline_s: float) -> None:
    def step(what: str, action: Callable[[], None]) -> None:
        if _stopping.is_set():
            report.errors.append(f"{what}: skipped, the daemon is shutting down")
            return
        try:
            action()
        except (LockBusy, MaintenanceError) as exc:
            report.errors.append(f"{what}: {exc}")
            log.warning("prune: %s: %s", what, exc)
        except StoreError as exc:
            report.errors.append(f"{what}: {exc}")
            log.warning("prune: %s: %s", what, exc)
        except OSError as exc:
            report.errors.append(f"{what}: archive: {exc.strerror or exc}")
            log.warning("prune: %s: archive: %s", what, exc)

    for name, attached in _old_partitions(db, cut):
        def drop_partition(name: str = name, attached: bool = attached) -> None:
            started = time.monotonic()
            if attached:
                _retry_busy(f"detach {name}", lambda: db.detach_partition(name, lock_timeout_s=lock_timeout_s),
                            busy_deadline_s)
            report.time("detach", started)
            started = time.monotonic()
            if directory is not None:
                path, rows = _archive_table(db, name, directory)
                report.archives.append(path)
                report.time("archive", started)
            else:
                rows = db.count_table(name)
                report.time("count", started)
            started = time.monotonic()
            _retry_busy(f"drop {name}", lambda: db.drop_table(name, lock_timeout_s=1.0), busy_deadline_s)
            report.time("drop", started)
            report.partitions.append((name, rows))
            report.removed["events"] += rows
            log.info("prune: dropped partition %s (%d events)", name, rows)
        step(f"events partition {name}", drop_partition)

    def batches(kind: str, query: str, cutoff: datetime, archive_as: str | None) -> None:
        archive = _BatchArchive(directory, archive_as, stamp, report) if directory and archive_as else None
        started = time.monotonic()
        try:
            report.removed[kind] += db.delete_batches(query, {"cutoff": cutoff}, batch=DELETE_BATCH,
                                                      on_rows=archive.write if archive else None)
        finally:
            if archive is not None:
                archive.close()
            report.time(archive_as or kind, started)

    step("events in the default partition",
         lambda: batches("events", "prune_events_default", cut.events, "events_default"))
    def event_ids() -> None:
        started = time.monotonic()
        try:
            report.removed["event_ids"] += db.delete_event_ids(cut.events, batch=DELETE_BATCH)
        finally:
            report.time("event_ids", started)

    step("event_ids", event_ids)

    def sessions() -> None:
        archives = ({kind: _BatchArchive(directory, kind, stamp, report)
                     for kind in ("sessions", "spec_runs", "interventions")} if directory else {})

        def write(rows: dict[str, list[str]]) -> None:
            for kind, lines in rows.items():
                if lines:
                    archives[kind].write(lines)

        started = time.monotonic()
        try:
            for kind, n in db.delete_sessions(cut.sessions, batch=SESSION_BATCH,
                                              on_rows=write if archives else None).items():
                report.removed[kind] += n
        finally:
            for archive in archives.values():
                archive.close()
            report.time("sessions", started)

    step("sessions", sessions)
    step("metric buckets", lambda: batches("metric_buckets", "prune_metric_buckets", cut.metric_buckets,
                                           "metric_buckets"))
    step("rejects", lambda: batches("rejects", "prune_rejects", cut.rejects, "rejects"))


# --------------------------------------------------------------------------- recording


def record_now(settings: Settings, dsn: str, event: Event) -> None:
    """Store one of the monitor's own events from the CLI (the daemon uses context.record)."""
    async def write() -> None:
        store = EventStore(settings, dsn=dsn)
        try:
            await store.write_batch([event], [], excerpt_bytes=settings.limits_reject_excerpt_bytes)
        finally:
            await store.close()

    try:
        asyncio.run(write())
    except RalphMonitorError as exc:
        log.warning("could not record the %s event: %s", event.event_type, exc)


# --------------------------------------------------------------------------- daemon jobs


def install(context: DaemonContext) -> None:
    """Schedule the nightly backup and prune in the daemon (one at a time, in a thread)."""
    settings = context.settings
    zone = report_zone(settings.reports_timezone)
    exclusive = asyncio.Lock()

    async def backup_job() -> None:
        async with exclusive:
            started = time.monotonic()
            try:
                result = await asyncio.to_thread(backup, settings, context.dsn, zone=zone)
            except asyncio.CancelledError:
                stop_running_work()
                raise
            except Exception as exc:  # a failed backup must never disturb the daemon
                log.error("backup failed: %s", exc, exc_info=not isinstance(exc, RalphMonitorError))
                context.record(internal_event("backup_failed", origin=context.origin, data={
                    "error": str(exc), "duration_s": round(time.monotonic() - started, 3),
                    "backup_dir": str(settings.backup_dir)}))
                return
            log.info("backup %s written (%d bytes in %.1f s)", result.path, result.size_bytes, result.duration_s)
            context.record(internal_event("backup_completed", origin=context.origin, data=result.event_data()))

    async def prune_job() -> None:
        async with exclusive:
            try:
                report = await asyncio.to_thread(prune, settings, context.dsn)
            except asyncio.CancelledError:
                stop_running_work()
                raise
            except PruneBusy as exc:  # another daemon on the same database is pruning it
                log.info("prune skipped: %s", exc)
                return
            except Exception as exc:
                log.error("prune failed: %s", exc, exc_info=not isinstance(exc, RalphMonitorError))
                context.record(internal_event("prune_failed", origin=context.origin, data={"error": str(exc)}))
                return
            for line in report.lines():
                log.info("prune: %s", line)
            kind = "prune_failed" if report.errors else "prune_completed"
            data = report.event_data()
            if report.errors:
                data["error"] = "; ".join(report.errors)
            context.record(internal_event(kind, origin=context.origin, data=data))

    if settings.schedule_backup_time:
        context.scheduler.daily("backup", dtime.fromisoformat(settings.schedule_backup_time), backup_job)
    if settings.schedule_prune_time:
        context.scheduler.daily("prune", dtime.fromisoformat(settings.schedule_prune_time), prune_job)
