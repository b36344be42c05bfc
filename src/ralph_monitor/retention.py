"""Retention (pruning): old events, sessions, metric buckets and rejects are removed.

Everything here blocks: the daemon runs it in a worker thread (see `jobs`) so ingestion
never waits for it; the CLI calls it directly. PostgreSQL is reached only through the store.

Events go by whole UTC days (detach the daily partition, optionally archive it, drop it),
so the cost is the same whatever the table's size; the rest (event_ids, stray rows in the
default partition, sessions, metric buckets, rejects) are deleted in small batches, one
short transaction each. Locks on `events` are taken with a short lock_timeout and retried,
so ingestion never queues behind a long reader.
"""

from __future__ import annotations

import gzip
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path
from typing import Any

from ralph_monitor.config import Settings
from ralph_monitor.errors import MaintenanceError, StoreError
from ralph_monitor.private_files import PARTIAL_SUFFIX, UTC_STAMP, create_private, fsync_dir, unique_path
from ralph_monitor.store import LockBusy, MaintenanceSession, open_maintenance

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 0.2
"""Longest time ingestion can be held up by one attempt to detach a partition."""
BUSY_DEADLINE_S = 120.0
"""How long retention keeps retrying a lock on `events` before reporting it busy."""
DELETE_BATCH = 5000
SESSION_BATCH = 500


class PruneBusy(MaintenanceError):
    """Another prune holds the database's retention lock."""


_stopping = threading.Event()


def stop() -> None:
    """The daemon is stopping: a running prune stops retrying locks and skips its remaining
    parts, so the worker thread (which asyncio cannot cancel) returns promptly."""
    _stopping.set()


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
        self._path = unique_path(directory / f"{kind}-{stamp}.jsonl.gz")
        self._report = report
        self._raw: Any = None
        self._gz: gzip.GzipFile | None = None

    def write(self, lines: list[str]) -> None:
        if self._gz is None:
            create_private(self._path)
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
            fsync_dir(self._path.parent)


def _archive_table(db: MaintenanceSession, table: str, directory: Path) -> tuple[Path, int]:
    """Write every row of a detached partition to `<table>.jsonl.gz`; durable before return."""
    final = unique_path(directory / f"{table}.jsonl.gz")
    partial = final.with_name("." + final.name + PARTIAL_SUFFIX)
    partial.unlink(missing_ok=True)
    create_private(partial)
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
        fsync_dir(directory)
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
    stamp = now.astimezone(timezone.utc).strftime(UTC_STAMP) + "Z"
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
