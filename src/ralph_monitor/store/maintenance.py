"""Maintenance connections: backup snapshots, row counts, retention (MaintenanceSession).

Backups, restores and retention run these synchronously in a worker thread (or in the CLI),
each on a connection of its own, never on the ingest writer's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql

from ralph_monitor import resources
from ralph_monitor.config import Settings
from ralph_monitor.errors import StoreError, StoreUnavailable
from ralph_monitor.store.connect import connect_plain, describe_dsn, describe_error, maintenance_conninfo
from ralph_monitor.store.reads import STREAM_BATCH_ROWS


class LockBusy(StoreError):
    """A lock could not be taken within lock_timeout (another session holds the table)."""


@dataclass(frozen=True)
class DumpSnapshot:
    """An exported snapshot for `pg_dump --snapshot`, and the row counts it sees."""

    snapshot: str
    counts: dict[str, int]
    server_version: int
    database: str


def _count_rows(table: sql.Identifier) -> sql.Composed:
    return sql.SQL(resources.query("count_table_rows")).format(table=table)


def _count_user_tables(conn: psycopg.Connection[Any]) -> dict[str, int]:
    counts = {}
    for row in conn.execute(resources.query("maintenance_user_tables")).fetchall():
        counts[row[1] if row[0] == "public" else f"{row[0]}.{row[1]}"] = conn.execute(
            _count_rows(sql.Identifier(row[0], row[1]))).fetchone()[0]  # type: ignore[index]
    return counts


@contextmanager
def dump_snapshot(settings: Settings, dsn: str) -> Iterator[DumpSnapshot]:
    """Hold a repeatable-read snapshot open (exported for pg_dump) with the row count of
    every table in it, so a restore can be checked against exactly what was dumped. The
    counts also lock every table against DROP/DETACH until the dump has its own locks."""
    try:
        conn = psycopg.connect(maintenance_conninfo(settings, dsn))
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {describe_error(exc)}") from exc
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            snapshot = conn.execute(resources.query("export_snapshot")).fetchone()[0]  # type: ignore[index]
            version, database = conn.execute(resources.query("server_identity")).fetchone()  # type: ignore[misc]
            counts = _count_user_tables(conn)
        except psycopg.Error as exc:
            raise StoreError(f"cannot take a snapshot for the backup: {describe_error(exc)}") from exc
        yield DumpSnapshot(snapshot, counts, int(version), database)
    finally:
        conn.close()


def database_objects(settings: Settings, dsn: str, *, configured: bool = False, limit: int = 10) -> list[str]:
    """Up to `limit` tables, views and sequences in the database (empty list: an empty database)."""
    with connect_plain(dsn, settings, configured=configured) as conn:
        try:
            rows = conn.execute(resources.query("database_objects"), {"limit": limit}).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"cannot list objects in {describe_dsn(dsn)}: {describe_error(exc)}") from exc
    return [f"{schema}.{name}" for schema, name in rows]


def table_counts(settings: Settings, dsn: str, *, configured: bool = False) -> dict[str, int]:
    """Row count of every table (a partitioned table counts all its partitions)."""
    with connect_plain(dsn, settings, configured=configured) as conn:
        try:
            return _count_user_tables(conn)
        except psycopg.Error as exc:
            raise StoreError(f"cannot count rows in {describe_dsn(dsn)}: {describe_error(exc)}") from exc


class MaintenanceSession:
    """Retention on its own autocommit connection. Each batch is one short transaction;
    locks on `events` are taken with a short lock_timeout so ingestion never queues
    behind a long reader (a backup, an export) for longer than that."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def _execute(self, query: str | sql.Composable, params: Any = None) -> psycopg.Cursor[Any]:
        try:
            return self._conn.execute(query, params)
        except psycopg.errors.LockNotAvailable as exc:
            raise LockBusy(describe_error(exc)) from exc
        except psycopg.Error as exc:
            raise StoreError(f"retention query failed: {describe_error(exc)}") from exc

    def try_lock(self) -> bool:
        """One pruner per database (several daemons may share it)."""
        return bool(self._execute(resources.query("maintenance_try_lock")).fetchone()[0])

    def unlock(self) -> None:
        self._execute(resources.query("maintenance_unlock"))

    def event_partitions(self) -> list[tuple[str, bool]]:
        """(name, attached) of every events_YYYYMMDD table, attached or left detached."""
        return [(r[0], r[1]) for r in self._execute(resources.query("event_partition_tables")).fetchall()]

    def count(self, name: str, params: dict[str, Any]) -> int:
        return int(self._execute(resources.query(name), params).fetchone()[0])

    def counts(self, name: str, params: dict[str, Any]) -> tuple[int, ...]:
        return tuple(int(v) for v in self._execute(resources.query(name), params).fetchone())

    def count_table(self, table: str) -> int:
        return int(self._execute(_count_rows(sql.Identifier(table))).fetchone()[0])

    def _with_lock_timeout(self, statement: sql.Composable, lock_timeout_s: float) -> None:
        try:
            with self._conn.transaction():
                self._conn.execute(resources.query("set_local_lock_timeout"),
                                   {"timeout": f"{max(1, round(lock_timeout_s * 1000))}ms"})
                self._conn.execute(statement)
        except psycopg.errors.LockNotAvailable as exc:
            raise LockBusy(describe_error(exc)) from exc
        except psycopg.Error as exc:
            raise StoreError(f"retention failed: {describe_error(exc)}") from exc

    def detach_partition(self, name: str, *, lock_timeout_s: float) -> None:
        """Detach one daily partition (a catalog change: no rows are read or written)."""
        self._with_lock_timeout(sql.SQL(resources.query("detach_event_partition")).format(
            partition=sql.Identifier(name)), lock_timeout_s)

    def drop_table(self, name: str, *, lock_timeout_s: float) -> None:
        """Drop a detached partition (locks only that table)."""
        self._with_lock_timeout(sql.SQL(resources.query("drop_detached_partition")).format(
            partition=sql.Identifier(name)), lock_timeout_s)

    def table_json(self, table: str) -> Iterator[str]:
        """Every row of `table` as one JSON object per line, through a server-side cursor."""
        try:
            with self._conn.transaction(), self._conn.cursor(name=f"archive_{table}") as cur:
                cur.itersize = STREAM_BATCH_ROWS
                cur.execute(sql.SQL(resources.query("table_rows_json")).format(table=sql.Identifier(table)))
                for row in cur:
                    yield row[0]
        except psycopg.Error as exc:
            raise StoreError(f"cannot read {table} for the archive: {describe_error(exc)}") from exc

    def delete_batches(self, name: str, params: dict[str, Any], *, batch: int,
                       on_rows: Callable[[list[str]], None] | None = None) -> int:
        """Run DELETE query `name` (… LIMIT %(batch)s … RETURNING line) until it deletes less
        than a batch; each batch is its own transaction, committed only after `on_rows`
        (the archive writer) returned. How many rows were deleted."""
        total = 0
        while True:
            try:
                with self._conn.transaction():
                    cur = self._conn.execute(resources.query(name), {**params, "batch": batch})
                    deleted = cur.rowcount
                    if on_rows is not None and cur.description is not None:
                        lines = [r[0] for r in cur.fetchall()]
                        if lines:
                            on_rows(lines)
            except psycopg.errors.LockNotAvailable as exc:
                raise LockBusy(describe_error(exc)) from exc
            except psycopg.Error as exc:
                raise StoreError(f"retention query {name} failed: {describe_error(exc)}") from exc
            total += deleted
            if deleted < batch:
                return total

    def delete_event_ids(self, cutoff: datetime, *, batch: int) -> int:
        """Delete the client event ids older than `cutoff`, a batch per transaction."""
        total = 0
        upto = datetime.max.replace(tzinfo=timezone.utc)
        while True:
            try:
                deleted, oldest = self._conn.execute(resources.query("prune_event_ids"), {
                    "cutoff": cutoff, "upto": upto, "batch": batch}).fetchone()  # type: ignore[misc]
            except psycopg.Error as exc:
                raise StoreError(f"pruning event_ids failed: {describe_error(exc)}") from exc
            total += deleted
            if deleted < batch:
                return total
            upto = oldest

    def delete_sessions(self, cutoff: datetime, *, batch: int,
                        on_rows: Callable[[dict[str, list[str]]], None] | None = None) -> dict[str, int]:
        """Delete sessions that ended (or, if never ended, went silent) before `cutoff` and
        are not running, with their spec runs and interventions, a batch per transaction."""
        totals = {"sessions": 0, "spec_runs": 0, "interventions": 0}
        while True:
            try:
                with self._conn.transaction():
                    ids = [r[0] for r in self._conn.execute(resources.query("prunable_session_ids"),
                                                            {"cutoff": cutoff, "batch": batch}).fetchall()]
                    rows: dict[str, list[str]] = {}
                    if ids:
                        for kind, query in (("interventions", "prune_interventions_of"),
                                            ("spec_runs", "prune_spec_runs_of"), ("sessions", "prune_sessions_of")):
                            rows[kind] = [r[0] for r in self._conn.execute(
                                resources.query(query), {"ids": ids}).fetchall()]
                        # Quarter hours left without runs (spec_run_totals); the delete's trigger
                        # holds the totals' lock in this transaction.
                        self._conn.execute(resources.query("prune_empty_spec_run_totals"))
                        if on_rows is not None:
                            on_rows(rows)
            except psycopg.Error as exc:
                raise StoreError(f"pruning sessions failed: {describe_error(exc)}") from exc
            for kind, lines in rows.items():
                totals[kind] += len(lines)
            if len(ids) < batch:
                return totals


@contextmanager
def open_maintenance(settings: Settings, dsn: str) -> Iterator[MaintenanceSession]:
    """A MaintenanceSession on the configured database."""
    conn = connect_plain(dsn, settings, configured=True)
    with conn:
        yield MaintenanceSession(conn)
