"""Backups with a verified read-back and rotation, and restore.

Everything here blocks: the daemon runs it in a worker thread (see `jobs`) so ingestion
never waits for it; the CLI calls it directly. PostgreSQL is reached only through the
store; pg_dump / pg_restore run as child processes with the password in their environment,
never on their command line.

Backups: `pg_dump --format=custom` from an exported snapshot into a hidden `.partial`
file, read back with `pg_restore --list` (and a full read of every data block), then
renamed to `ralph-monitor-YYYYMMDDTHHMMSSZ.dump` beside a manifest (`.dump.json`) holding
its SHA-256 and the row count of every table in that same snapshot, which `restore`
checks the restored database against.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

from ralph_monitor import resources
from ralph_monitor.cluster import find_program
from ralph_monitor.config import Settings, report_zone
from ralph_monitor.errors import MaintenanceError, StoreError
from ralph_monitor.private_files import PARTIAL_SUFFIX, UTC_STAMP, create_private, fsync_dir
from ralph_monitor.store import database_objects, describe_dsn, dump_snapshot, table_counts, tool_conninfo

log = logging.getLogger(__name__)

BACKUP_NAME = re.compile(r"ralph-monitor-(\d{8}T\d{6})Z\.dump")
MANIFEST_SUFFIX = ".json"
MANIFEST_FORMAT = "ralph-monitor-backup/1"
STALE_PARTIAL_S = 6 * 3600
"""A `.partial` file older than this is left over from a crashed backup and is removed."""
PG_DUMP_LOCK_WAIT = "60s"
"""pg_dump gives up instead of waiting longer than this for a table lock."""


class BackupError(MaintenanceError):
    """A backup could not be written, verified or published."""


class RestoreError(MaintenanceError):
    """A restore could not be done, or the restored rows differ from the backup's manifest."""


# --------------------------------------------------------------------------- tools


def pg_tool(settings: Settings, name: str) -> str:
    """Path of pg_dump / pg_restore: [backup] pg_dump (and its directory), else the newest
    /usr/lib/postgresql/*/bin one (pg_dump must be at least the server's version), else PATH."""
    if settings.backup_pg_dump:
        configured = Path(settings.backup_pg_dump)
        path = configured if name == "pg_dump" else configured.with_name(name)
        if not os.access(path, os.X_OK):
            raise BackupError(f"{path} is not an executable file; fix [backup] pg_dump in the config")
        return str(path)
    found = find_program(name)
    if found:
        return found
    raise BackupError(f"{name} not found; install the PostgreSQL client "
                      "(apt-get install postgresql-client) or set [backup] pg_dump in the config")


_children: set[subprocess.Popen[str]] = set()
_children_lock = threading.Lock()
_stopping = threading.Event()


def stop() -> None:
    """The daemon is stopping: end pg_dump/pg_restore children and start no more, so the
    worker thread (which asyncio cannot cancel) returns promptly."""
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


def _adopt_owner(directory: Path, path: Path) -> None:
    """Run as root (e.g. `sudo ralph-monitor backup`), give the file to the directory's owner
    so the daemon's rotation can remove it later."""
    if os.geteuid() != 0:
        return
    st = directory.stat()
    if st.st_uid != 0:
        os.chown(path, st.st_uid, st.st_gid)


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
    create_private(partial)
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
            taken = datetime.strptime(match[1], UTC_STAMP).replace(tzinfo=timezone.utc)
            found.append(Backup(path, taken))
    return sorted(found, key=lambda b: b.taken_at)


def _new_backup_path(directory: Path, now: datetime) -> Path:
    stamp = now.astimezone(timezone.utc).replace(microsecond=0)
    while True:
        path = directory / f"ralph-monitor-{stamp.strftime(UTC_STAMP)}Z.dump"
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
        fsync_dir(directory)
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
            create_private(partial)
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
            fsync_dir(directory)
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


def _restore_replacing(settings: Settings, path: Path, database: str, env: dict[str, str],
                       role: str | None) -> None:
    """pg_restore's SQL, after sql/restore_force.sql (which empties the schema), through psql
    in one transaction: if anything fails, the database is left as it was."""
    pg_restore, psql = pg_tool(settings, "pg_restore"), pg_tool(settings, "psql")
    preamble = resources.psql_script("restore_force")
    role_variable = ["-v", f"role={role}"] if role else []
    with tempfile.TemporaryFile() as restore_err, tempfile.TemporaryFile() as psql_err:
        try:
            producer = subprocess.Popen([pg_restore, "--no-owner", "--no-privileges", "--file=-", str(path)],
                                        stdout=subprocess.PIPE, stderr=restore_err, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise RestoreError(f"cannot run {pg_restore}: {exc.strerror}") from None
        try:
            consumer = subprocess.Popen([psql, "-X", "-q", "--no-password", "--single-transaction",
                                         "-v", "ON_ERROR_STOP=1", *role_variable, f"--dbname={database}",
                                         "--file=-"],
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

