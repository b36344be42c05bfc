"""The store: the only module that talks to PostgreSQL (psycopg 3).

Writes use group commit: a whole batch of events goes in with one COPY and one COMMIT.
A batch that COPY cannot take as a whole (a duplicate `event_id`, a value PostgreSQL
refuses) is retried row by row inside savepoints, so one bad row never sinks the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ralph_monitor import resources
from ralph_monitor.config import Settings, read_password
from ralph_monitor.errors import InvalidEvent, StoreError, StoreUnavailable
from ralph_monitor.protocol import Event, Reject, make_reject

log = logging.getLogger(__name__)

APPLICATION_NAME = "ralph-monitor"

PARTITION_DAYS_BEHIND = 1
PARTITION_DAYS_AHEAD = 7
"""Daily `events` partitions kept ready around today (UTC); checked whenever the date changes."""

STORED = "stored"
DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Refused:
    """An event PostgreSQL itself refused; it is recorded as a reject instead."""

    reject: Reject


Outcome = str | Refused
"""Per event: STORED, DUPLICATE, or Refused."""


def conninfo(settings: Settings, *, dsn: str | None = None, dbname: str | None = None) -> str:
    """The libpq connection string: configured DSN (or `dsn`), plus password file and timeout."""
    extra: dict[str, Any] = {
        "connect_timeout": max(1, round(settings.database_connect_timeout_s)),
        "application_name": APPLICATION_NAME,
    }
    password = read_password(settings)
    if password is not None:
        extra["password"] = password
    if dbname is not None:
        extra["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(dsn if dsn is not None else settings.database_dsn, **extra)


def _describe(exc: psycopg.Error) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _event_row(event: Event) -> tuple[Any, ...]:
    return (event.event_id, event.event_type, event.session_id, event.spec_id, event.occurred_at,
            event.received_at, event.origin.host, event.origin.uid, event.origin.pid, event.payload)


def _reject_row(reject: Reject) -> tuple[Any, ...]:
    return (reject.reject_id, reject.received_at, reject.origin.host, reject.origin.uid,
            reject.origin.pid, reject.code, reject.detail, reject.line_bytes, reject.excerpt)


def _refused(event: Event, exc: psycopg.Error, *, excerpt_bytes: int) -> Refused:
    error = InvalidEvent("refused_by_database", f"PostgreSQL refused the event: {_describe(exc)}")
    return Refused(make_reject(event.payload.encode(), error, received_at=event.received_at,
                               origin=event.origin, excerpt_bytes=excerpt_bytes))


async def apply_migrations(conn: psycopg.AsyncConnection[Any]) -> list[int]:
    """Apply the migrations this database lacks, under a lock (several daemons may start at once)."""
    applied_now = []
    async with conn.transaction():
        await conn.execute(resources.query("migrations_lock"))
        await conn.execute(resources.query("migrations_table"))
        cur = await conn.execute(resources.query("applied_migrations"))
        done = {row[0] for row in await cur.fetchall()}
        for migration in resources.migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(resources.query("record_migration"),
                               {"version": migration.version, "name": migration.name})
            applied_now.append(migration.version)
    return applied_now


class EventStore:
    """The daemon's writer connection. Not shared: one batch at a time."""

    def __init__(self, settings: Settings, *, dsn: str | None = None) -> None:
        self._settings = settings
        self._dsn = dsn
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._partitions_day: date | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def connect(self) -> None:
        """Connect (if needed) and bring the schema up to date. Raises StoreUnavailable."""
        if self.connected:
            return
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo(self._settings, dsn=self._dsn))
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {_describe(exc)}") from exc
        try:
            applied = await apply_migrations(conn)
        except psycopg.OperationalError as exc:
            await conn.close()
            raise StoreUnavailable(f"lost PostgreSQL while migrating: {_describe(exc)}") from exc
        except psycopg.Error as exc:
            await conn.close()
            raise StoreError(f"migration failed: {_describe(exc)}") from exc
        if applied:
            log.info("applied database migrations %s", applied)
        self._conn = conn
        self._partitions_day = None
        await self._ensure_partitions()

    async def _ensure_partitions(self) -> None:
        """Create the daily partitions around today that do not exist yet (once per UTC day)."""
        today = datetime.now(timezone.utc).date()
        if self._partitions_day == today:
            return
        assert self._conn is not None
        try:
            async with self._conn.transaction():
                await self._conn.execute(resources.query("migrations_lock"))
                await self._conn.execute(resources.query("ensure_event_partitions"), {
                    "first_day": today - timedelta(days=PARTITION_DAYS_BEHIND),
                    "last_day": today + timedelta(days=PARTITION_DAYS_AHEAD)})
        except psycopg.Error as exc:
            await self._drop_connection()
            raise StoreUnavailable(f"cannot create event partitions: {_describe(exc)}") from exc
        self._partitions_day = today

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def write_batch(self, events: Sequence[Event], rejects: Sequence[Reject], *,
                          excerpt_bytes: int) -> list[Outcome]:
        """Commit events and rejects in one transaction; one outcome per event.

        Raises StoreUnavailable when the database cannot be reached or the commit's fate is
        unknown; the caller then spools the batch (replay is idempotent by event_id).
        """
        await self.connect()
        await self._ensure_partitions()
        assert self._conn is not None
        try:
            try:
                return await self._write_copy(events, rejects)
            except (psycopg.errors.IntegrityError, psycopg.errors.DataError,
                    psycopg.errors.InternalError_) as exc:
                log.debug("COPY of %d events refused (%s); retrying row by row", len(events), _describe(exc))
                return await self._write_rows(events, rejects, excerpt_bytes=excerpt_bytes)
        except psycopg.Error as exc:
            await self._drop_connection()
            raise StoreUnavailable(f"PostgreSQL write failed: {_describe(exc)}") from exc

    async def _write_copy(self, events: Sequence[Event], rejects: Sequence[Reject]) -> list[Outcome]:
        assert self._conn is not None
        async with self._conn.transaction():
            cur = self._conn.cursor()
            if events:
                async with cur.copy(resources.query("copy_events")) as copy:
                    for event in events:
                        await copy.write_row(_event_row(event))
                claimed = [(e.event_id, e.occurred_at) for e in events if e.client_event_id]
                if claimed:
                    async with cur.copy(resources.query("copy_event_ids")) as copy:
                        for row in claimed:
                            await copy.write_row(row)
            if rejects:
                await cur.executemany(resources.query("insert_reject"), [_reject_row(r) for r in rejects])
        return [STORED] * len(events)

    async def _write_rows(self, events: Sequence[Event], rejects: Sequence[Reject], *,
                          excerpt_bytes: int) -> list[Outcome]:
        assert self._conn is not None
        outcomes: list[Outcome] = []
        refused: list[Reject] = []
        async with self._conn.transaction():
            cur = self._conn.cursor()
            for event in events:
                try:
                    async with self._conn.transaction():
                        outcomes.append(STORED if await self._insert_one(cur, event) else DUPLICATE)
                except (psycopg.errors.DataError, psycopg.errors.InternalError_,
                        psycopg.errors.IntegrityError) as exc:
                    outcome = _refused(event, exc, excerpt_bytes=excerpt_bytes)
                    refused.append(outcome.reject)
                    outcomes.append(outcome)
            all_rejects = [*rejects, *refused]
            if all_rejects:
                await cur.executemany(resources.query("insert_reject"), [_reject_row(r) for r in all_rejects])
        return outcomes

    @staticmethod
    async def _insert_one(cur: psycopg.AsyncCursor[Any], event: Event) -> bool:
        """Insert one event unless its client-chosen id (or its own row) is already stored."""
        if event.client_event_id:
            await cur.execute(resources.query("claim_event_id"), (event.event_id, event.occurred_at))
            if await cur.fetchone() is None:
                return False
        await cur.execute(resources.query("insert_event"), _event_row(event))
        return await cur.fetchone() is not None

    async def record_host(self, values: dict[str, Any]) -> None:
        """Upsert this daemon's health row (spool backlog, counters)."""
        await self.connect()
        assert self._conn is not None
        try:
            async with self._conn.transaction():
                await self._conn.execute(resources.query("upsert_monitor_host"), values)
        except psycopg.Error as exc:
            await self._drop_connection()
            raise StoreUnavailable(f"PostgreSQL write failed: {_describe(exc)}") from exc

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            finally:
                self._conn = None


async def migrate(dsn: str) -> list[int]:
    """Bring the schema of the database at `dsn` up to date; the versions applied now."""
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            return await apply_migrations(conn)
    except psycopg.Error as exc:
        raise StoreError(f"migration failed: {_describe(exc)}") from exc


def ensure_database(admin_dsn: str, name: str) -> None:
    """Create database `name` through a superuser connection if it does not exist yet."""
    try:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            if conn.execute(resources.query("database_exists"), {"name": name}).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise StoreError(f"cannot create database {name!r}: {_describe(exc)}") from exc


class ReadStore:
    """A synchronous connection for the CLI and the site renderer: runs named queries."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        self._conn = conn

    def fetch(self, name: str, params: dict[str, Any] | Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """All rows of named query `name` as dicts."""
        try:
            return self._conn.execute(resources.query(name), params).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"query {name} failed: {_describe(exc)}") from exc

    def stream(self, name: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Rows of named query `name`, fetched through a server-side cursor (constant memory)."""
        try:
            with self._conn.cursor(name=f"stream_{name}") as cur:
                cur.execute(resources.query(name), params)
                yield from cur
        except psycopg.Error as exc:
            raise StoreError(f"query {name} failed: {_describe(exc)}") from exc


@contextmanager
def open_read_store(settings: Settings, *, dsn: str | None = None) -> Iterator[ReadStore]:
    """A read-only session on the database; the error names the DSN setting to fix."""
    try:
        conn = psycopg.connect(conninfo(settings, dsn=dsn), row_factory=dict_row, autocommit=True)
    except psycopg.Error as exc:
        raise StoreUnavailable(
            f"cannot connect to PostgreSQL ({_describe(exc)}); check [database] dsn in the config "
            "or that the daemon (and its embedded cluster) is running") from exc
    with conn:
        conn.execute(resources.query("read_only_session"))
        yield ReadStore(conn)
