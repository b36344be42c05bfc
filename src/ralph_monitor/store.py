"""The store: the only module that talks to PostgreSQL (psycopg 3).

Writes use group commit: a whole batch of events goes in with one COPY and one COMMIT.
A batch that COPY cannot take as a whole (a duplicate `event_id`, a value PostgreSQL
refuses) is retried row by row inside savepoints, so one bad row never sinks the rest.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ralph_monitor import resources
from ralph_monitor.config import Settings, read_password
from ralph_monitor.errors import InvalidEvent, StoreError, StoreUnavailable
from ralph_monitor.projections import SESSION_TYPES, SessionEvent, SessionProjection
from ralph_monitor.protocol import Event, Origin, Reject, make_reject

log = logging.getLogger(__name__)
T = TypeVar("T")

APPLICATION_NAME = "ralph-monitor"

PARTITION_DAYS_BEHIND = 1
PARTITION_DAYS_AHEAD = 7
"""Daily `events` partitions kept ready around today (UTC); checked whenever the date changes."""

BUCKET_S = 300
"""metric_buckets width; date_bin's origin (2000-01-01) is a multiple of it since the epoch."""
STREAM_BATCH_ROWS = 2000
"""Rows fetched per round trip when streaming an export."""

SMALL_BATCH_EVENTS = 64
"""Batches up to this size are one autocommit statement (one round trip) instead of BEGIN,
COPY, marks and COMMIT: what keeps a lone event's ack latency near a bare INSERT's."""

FAILURES_MIGRATION = 4
"""The migration that made projection_failures (doctor may look at an older database)."""
MAX_FAILURE_CHARS = 2000
"""Characters of a projection error kept in projection_failures."""

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


def _copy_text(value: str) -> str:
    """A value in COPY's text format (backslash, tab, newline and CR escaped)."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


_COPY_NULL = "\\N"


def _copy_data(events: Sequence[Event]) -> bytes:
    """The events as COPY text-format rows: cheaper than per-value adaptation for big batches.
    Events read together share `received_at` and come from few connections, so those fields
    are formatted once per run of equal values rather than once per event."""
    rows = []
    received_at: datetime | None = None
    received_text = ""
    origin: Origin | None = None
    origin_text = ""
    for event in events:
        if event.received_at is not received_at:
            received_at = event.received_at
            received_text = received_at.isoformat()
        if event.origin is not origin:
            origin = event.origin
            origin_text = "\t".join((_copy_text(origin.host), _COPY_NULL if origin.uid is None else str(origin.uid),
                                     _COPY_NULL if origin.pid is None else str(origin.pid)))
        occurred_text = received_text if event.occurred_at is received_at else event.occurred_at.isoformat()
        spec_text = _COPY_NULL if event.spec_id is None else _copy_text(event.spec_id)
        rows.append(f"{event.event_id}\t{event.event_type}\t{event.session_id or _COPY_NULL}\t{spec_text}\t"
                    f"{occurred_text}\t{received_text}\t{origin_text}\t{_copy_text(event.payload)}\n")
    return "".join(rows).encode()


def _reject_row(reject: Reject) -> tuple[Any, ...]:
    return (reject.reject_id, reject.received_at, reject.origin.host, reject.origin.uid,
            reject.origin.pid, reject.code, reject.detail, reject.line_bytes, reject.excerpt)


def _refused(event: Event, exc: psycopg.Error, *, excerpt_bytes: int) -> Refused:
    error = InvalidEvent("refused_by_database", f"PostgreSQL refused the event: {_describe(exc)}")
    return Refused(make_reject(event.payload.encode(), error, received_at=event.received_at,
                               origin=event.origin, excerpt_bytes=excerpt_bytes))


async def _mark_dirty(cur: psycopg.AsyncCursor[Any], events: Sequence[Event]) -> None:
    """Queue the sessions and 5-minute buckets these events change for the projector,
    in the same transaction as the events themselves (so a crash cannot lose the work)."""
    if not events:
        return
    sessions = sorted({e.session_id for e in events if e.session_id is not None})
    buckets = sorted({int(e.occurred_at.timestamp()) // BUCKET_S for e in events})
    await cur.execute(resources.query("mark_dirty"), {
        "session_ids": sessions,
        "buckets": [datetime.fromtimestamp(b * BUCKET_S, timezone.utc) for b in buckets]})


def _statement_batch(events: Sequence[Event]) -> str:
    """The insert_events parameter: a JSON array with one object per event, its payload
    embedded as received (parse_line made sure it is JSON PostgreSQL stores)."""
    rows = []
    for e in events:
        origin = e.origin
        rows.append(
            f'{{"event_id":"{e.event_id}","event_type":"{e.event_type}",'
            f'"session_id":{_json_or_null(e.session_id)},"spec_id":{_json_or_null(e.spec_id)},'
            f'"occurred_at":"{e.occurred_at.isoformat()}","received_at":"{e.received_at.isoformat()}",'
            f'"host":{json.dumps(origin.host)},"writer_uid":{_json_or_null(origin.uid)},'
            f'"writer_pid":{_json_or_null(origin.pid)},"claim":{"true" if e.client_event_id else "false"},'
            f'"payload":{e.payload}}}')
    return "[" + ",".join(rows) + "]"


def _json_or_null(value: str | int | None) -> str:
    return "null" if value is None else json.dumps(value)


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
            # Autocommit: a small batch is one statement, its own transaction; bigger ones
            # open their own (see write_batch).
            conn = await psycopg.AsyncConnection.connect(conninfo(self._settings, dsn=self._dsn), autocommit=True)
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
                if events and not rejects and len(events) <= SMALL_BATCH_EVENTS:
                    claimed = [e.event_id for e in events if e.client_event_id]
                    if len(set(claimed)) == len(claimed):
                        return await self._write_statement(events)
                return await self._write_copy(events, rejects)
            except (psycopg.errors.IntegrityError, psycopg.errors.DataError,
                    psycopg.errors.InternalError_) as exc:
                log.debug("COPY of %d events refused (%s); retrying row by row", len(events), _describe(exc))
                return await self._write_rows(events, rejects, excerpt_bytes=excerpt_bytes)
        except psycopg.Error as exc:
            await self._drop_connection()
            raise StoreUnavailable(f"PostgreSQL write failed: {_describe(exc)}") from exc

    async def _write_statement(self, events: Sequence[Event]) -> list[Outcome]:
        assert self._conn is not None
        cur = await self._conn.execute(resources.query("insert_events"), {"batch": _statement_batch(events)})
        stored = {row[0] for row in await cur.fetchall()}
        return [STORED if e.event_id in stored else DUPLICATE for e in events]

    async def _write_copy(self, events: Sequence[Event], rejects: Sequence[Reject]) -> list[Outcome]:
        assert self._conn is not None
        async with self._conn.transaction():
            cur = self._conn.cursor()
            if events:
                # Claims first and sorted, as insert_events makes them: two lanes claiming the same
                # ids at once (one event resent on two connections) wait for each other in one
                # order instead of deadlocking.
                claimed = sorted((e.event_id, e.occurred_at) for e in events if e.client_event_id)
                if claimed:
                    async with cur.copy(resources.query("copy_event_ids")) as copy:
                        for row in claimed:
                            await copy.write_row(row)
                async with cur.copy(resources.query("copy_events")) as copy:
                    await copy.write(_copy_data(events))
            if rejects:
                await cur.executemany(resources.query("insert_reject"), [_reject_row(r) for r in rejects])
            await _mark_dirty(cur, events)
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
            await _mark_dirty(cur, [e for e, o in zip(events, outcomes) if o == STORED])
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
                await self._conn.execute(resources.query("upsert_monitor_host"),
                                         {**values, "disks": Jsonb(values.get("disks") or {})})
        except psycopg.Error as exc:
            await self._drop_connection()
            raise StoreUnavailable(f"PostgreSQL write failed: {_describe(exc)}") from exc

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            finally:
                self._conn = None


async def prepare_database(dsn: str) -> None:
    """Migrate and create the event partitions around today, as the daemon's writer does when
    it connects (for test templates and benchmarks, whose rows must land in today's partition)."""
    store = EventStore(Settings(), dsn=dsn)
    await store.connect()
    await store.close()


async def migrate(dsn: str) -> list[int]:
    """Bring the schema of the database at `dsn` up to date; the versions applied now."""
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            return await apply_migrations(conn)
    except psycopg.Error as exc:
        raise StoreError(f"migration failed: {_describe(exc)}") from exc


class ProjectionStore:
    """The projector's own connection: recomputes dirty sessions and buckets."""

    def __init__(self, settings: Settings, *, dsn: str | None = None) -> None:
        self._settings = settings
        self._dsn = dsn
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    conninfo(self._settings, dsn=self._dsn), row_factory=dict_row)
            except psycopg.Error as exc:
                raise StoreUnavailable(f"cannot connect to PostgreSQL: {_describe(exc)}") from exc
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        conn = await self._connection()
        try:
            async with conn.transaction():
                return await work(conn)
        except psycopg.OperationalError as exc:
            await conn.close()
            self._conn = None
            raise StoreUnavailable(f"projector lost PostgreSQL: {_describe(exc)}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"projection failed: {_describe(exc)}") from exc

    async def project_sessions(self, compute: Callable[..., SessionProjection], *, limit: int) -> int:
        """Recompute up to `limit` dirty sessions, each in its own short transaction; how many
        were recomputed (sessions another projector is working on are skipped, and a session
        whose projection fails is recorded in projection_failures and skipped until its retry)."""
        batch = await self._run(lambda conn: _fetch(conn, "dirty_sessions_batch", {"limit": limit}))
        done = 0
        for row in batch:
            done += await self._project(row["session_id"], row["version"], compute)
        return done

    async def _project(self, session_id: uuid.UUID, version: int,
                       compute: Callable[..., SessionProjection]) -> bool:
        """One session in its own transaction. The database being away stops the pass (the
        caller retries); any other error is this session's alone: recorded, and the pass goes on."""

        async def work(conn: psycopg.AsyncConnection[Any]) -> bool:
            if not await _try_lock(conn, f"session:{session_id}"):
                return False
            await _project_one(conn, session_id, compute)
            params = {"session_id": session_id, "version": version}
            await conn.execute(resources.query("delete_dirty_session_version"), params)
            await conn.execute(resources.query("clear_projection_failure"), params)
            return True

        conn = await self._connection()
        try:
            async with conn.transaction():
                return await work(conn)
        except psycopg.OperationalError as exc:
            await conn.close()
            self._conn = None
            raise StoreUnavailable(f"projector lost PostgreSQL: {_describe(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - any failure of one session must not stop the others
            if conn.closed:
                self._conn = None
                raise StoreUnavailable(f"projector lost PostgreSQL: {exc}") from exc
            error = _describe(exc) if isinstance(exc, psycopg.Error) else f"{type(exc).__name__}: {exc}"
            error = error[:MAX_FAILURE_CHARS]
            log.warning("aggregates of session %s not updated: %s; other sessions go on, retrying later",
                        session_id, error)
            await self._run(lambda c: c.execute(resources.query("record_projection_failure"),
                                                {"session_id": session_id, "error": error}))
            return False

    async def project_buckets(self, *, limit: int) -> int:
        """Recompute up to `limit` dirty 5-minute buckets in one transaction."""

        async def work(conn: psycopg.AsyncConnection[Any]) -> int:
            if not await _try_lock(conn, "buckets"):
                return 0
            rows = await _fetch(conn, "dirty_buckets_batch", {"limit": limit})
            buckets = [r["bucket_time"] for r in rows]
            if buckets:
                for name in ("recompute_buckets_delete", "recompute_buckets_insert"):
                    await conn.execute(resources.query(name), {"buckets": buckets})
                await conn.execute(resources.query("delete_dirty_buckets_versions"),
                                   {"buckets": buckets, "versions": [r["version"] for r in rows]})
            return len(buckets)

        return await self._run(work)

    async def mark_all_dirty(self) -> None:
        """Queue every session and bucket for recomputation (rebuild-aggregates)."""

        async def work(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(resources.query("mark_all_dirty_sessions"))
            await conn.execute(resources.query("mark_all_dirty_buckets"))
            await conn.execute(resources.query("clear_projection_failures"))

        await self._run(work)

    async def stalled_candidates(self, stall_after_s: float) -> list[tuple[uuid.UUID, datetime]]:
        """Running sessions with no sign of life for longer than `stall_after_s`."""

        async def work(conn: psycopg.AsyncConnection[Any]) -> list[tuple[uuid.UUID, datetime]]:
            cur = await conn.execute(resources.query("stalled_candidates"), {"stall_after_s": stall_after_s})
            return [(r["id"], r["last_event_at"]) for r in await cur.fetchall()]

        return await self._run(work)

    async def backlog(self) -> tuple[int, int]:
        """Dirty sessions and buckets still waiting."""

        async def work(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
            row = await (await conn.execute(resources.query("dirty_backlog"))).fetchone()
            assert row is not None
            return row["sessions"], row["buckets"]

        return await self._run(work)

    async def failing_sessions(self, *, limit: int = 1) -> tuple[int, list[dict[str, Any]]]:
        """How many sessions' projections are failing, and the oldest `limit` of them."""

        async def work(conn: psycopg.AsyncConnection[Any]) -> tuple[int, list[dict[str, Any]]]:
            count = await (await conn.execute(resources.query("projection_failure_count"))).fetchone()
            assert count is not None
            return count["failing"], await _fetch(conn, "projection_failures", {"limit": limit})

        return await self._run(work)


async def _fetch(conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return await (await conn.execute(resources.query(name), params)).fetchall()


async def _try_lock(conn: psycopg.AsyncConnection[Any], key: str) -> bool:
    """A transaction-scoped advisory lock on `key`, if no other projector holds it."""
    row = await (await conn.execute(resources.query("try_lock_projection"), {"key": key})).fetchone()
    return bool(row and row["locked"])


async def _project_one(conn: psycopg.AsyncConnection[Any], session_id: uuid.UUID,
                       compute: Callable[..., SessionProjection]) -> None:
    params = {"session_id": session_id}
    activity = await (await conn.execute(resources.query("session_activity"), params)).fetchone()
    if activity is None or activity["event_count"] == 0:
        # All its events were pruned: the aggregate goes with them.
        await conn.execute(resources.query("delete_session_aggregate"), params)
        return
    rows = await (await conn.execute(resources.query("session_events"),
                                     {**params, "types": list(SESSION_TYPES)})).fetchall()
    events = [SessionEvent(r["event_id"], r["event_type"], r["spec_id"], r["occurred_at"], r["host"],
                           r["data"] if isinstance(r["data"], dict) else {}) for r in rows]
    projection = compute(session_id, events, event_count=activity["event_count"],
                         last_event_at=activity["last_event_at"] or activity["last_any_at"])
    values = {k: v for k, v in vars(projection).items() if k not in ("spec_runs", "interventions")}
    values["final_result"] = Jsonb(values["final_result"]) if values["final_result"] is not None else None
    values["metadata"] = Jsonb(values["metadata"] or {})
    await conn.execute(resources.query("upsert_session"), values)
    await conn.execute(resources.query("delete_session_spec_runs"), params)
    async with conn.cursor() as cur:
        if projection.spec_runs:
            await cur.executemany(resources.query("insert_spec_run"), [
                {**vars(run), "session_id": session_id,
                 "output_summary": Jsonb(run.output_summary) if run.output_summary is not None else None}
                for run in projection.spec_runs])
        await cur.execute(resources.query("delete_session_interventions"), params)
        if projection.interventions:
            await cur.executemany(resources.query("insert_intervention"), [
                {**vars(i), "session_id": session_id} for i in projection.interventions])


def ensure_database(admin_dsn: str, name: str) -> bool:
    """Create database `name` through a superuser connection if it does not exist yet;
    whether it was created now."""
    try:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            if conn.execute(resources.query("database_exists"), {"name": name}).fetchone() is not None:
                return False
            conn.execute(sql.SQL(resources.query("create_database")).format(database=sql.Identifier(name)))
            return True
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
            with self._conn.transaction(), self._conn.cursor(name=f"stream_{name}") as cur:
                cur.itersize = STREAM_BATCH_ROWS
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


# --------------------------------------------------------------------------- maintenance
# Backups, restores, retention and `doctor` run these synchronously in a worker thread
# (or in the CLI), each on a connection of its own, never on the ingest writer's.


class LockBusy(StoreError):
    """A lock could not be taken within lock_timeout (another session holds the table)."""


MAINTENANCE_APPLICATION_NAME = "ralph-monitor maintenance"


def _maintenance_conninfo(settings: Settings, dsn: str) -> str:
    return psycopg.conninfo.make_conninfo(conninfo(settings, dsn=dsn), application_name=MAINTENANCE_APPLICATION_NAME)


def _plain_conninfo(dsn: str, timeout_s: float) -> str:
    return psycopg.conninfo.make_conninfo(
        dsn, connect_timeout=max(1, round(timeout_s)), application_name=MAINTENANCE_APPLICATION_NAME)


def tool_conninfo(settings: Settings, dsn: str, *, configured: bool = True) -> tuple[str, dict[str, str]]:
    """A connection string for pg_dump/pg_restore without any password in it (command lines
    are visible to every local user), and the environment that carries the password instead.

    `configured`: `dsn` is the configured database, so [database] password_file applies."""
    text = conninfo(settings, dsn=dsn) if configured else _plain_conninfo(dsn, settings.database_connect_timeout_s)
    params = psycopg.conninfo.conninfo_to_dict(text)
    password = params.pop("password", None)
    env = {"PGPASSWORD": str(password)} if password else {}
    return psycopg.conninfo.make_conninfo("", **params), env


def describe_dsn(dsn: str) -> str:
    """`dbname on host` for messages and events: never the password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable DSN)"
    where = params.get("host") or "the default socket"
    user = f" as {params['user']}" if params.get("user") else ""
    return f"database {params.get('dbname', '(default)')} on {where}{user}"


def dsn_uses_tcp(dsn: str) -> bool:
    """Whether libpq would reach this DSN over TCP (a host name or address, not a socket directory)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return False
    if params.get("hostaddr"):
        return True
    hosts = str(params.get("host") or "").split(",")
    return any(h and not h.startswith(("/", "@")) for h in hosts)


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
        conn = psycopg.connect(_maintenance_conninfo(settings, dsn))
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {_describe(exc)}") from exc
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            snapshot = conn.execute(resources.query("export_snapshot")).fetchone()[0]  # type: ignore[index]
            version, database = conn.execute(resources.query("server_identity")).fetchone()  # type: ignore[misc]
            counts = _count_user_tables(conn)
        except psycopg.Error as exc:
            raise StoreError(f"cannot take a snapshot for the backup: {_describe(exc)}") from exc
        yield DumpSnapshot(snapshot, counts, int(version), database)
    finally:
        conn.close()


def _connect_plain(dsn: str, settings: Settings, *, configured: bool) -> psycopg.Connection[Any]:
    text = (_maintenance_conninfo(settings, dsn) if configured
            else _plain_conninfo(dsn, settings.database_connect_timeout_s))
    try:
        return psycopg.connect(text, autocommit=True)
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot connect to {describe_dsn(dsn)}: {_describe(exc)}") from exc


def database_objects(settings: Settings, dsn: str, *, configured: bool = False, limit: int = 10) -> list[str]:
    """Up to `limit` tables, views and sequences in the database (empty list: an empty database)."""
    with _connect_plain(dsn, settings, configured=configured) as conn:
        try:
            rows = conn.execute(resources.query("database_objects"), {"limit": limit}).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"cannot list objects in {describe_dsn(dsn)}: {_describe(exc)}") from exc
    return [f"{schema}.{name}" for schema, name in rows]


def table_counts(settings: Settings, dsn: str, *, configured: bool = False) -> dict[str, int]:
    """Row count of every table (a partitioned table counts all its partitions)."""
    with _connect_plain(dsn, settings, configured=configured) as conn:
        try:
            return _count_user_tables(conn)
        except psycopg.Error as exc:
            raise StoreError(f"cannot count rows in {describe_dsn(dsn)}: {_describe(exc)}") from exc


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
            raise LockBusy(_describe(exc)) from exc
        except psycopg.Error as exc:
            raise StoreError(f"retention query failed: {_describe(exc)}") from exc

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
            raise LockBusy(_describe(exc)) from exc
        except psycopg.Error as exc:
            raise StoreError(f"retention failed: {_describe(exc)}") from exc

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
            raise StoreError(f"cannot read {table} for the archive: {_describe(exc)}") from exc

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
                raise LockBusy(_describe(exc)) from exc
            except psycopg.Error as exc:
                raise StoreError(f"retention query {name} failed: {_describe(exc)}") from exc
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
                raise StoreError(f"pruning event_ids failed: {_describe(exc)}") from exc
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
                        if on_rows is not None:
                            on_rows(rows)
            except psycopg.Error as exc:
                raise StoreError(f"pruning sessions failed: {_describe(exc)}") from exc
            for kind, lines in rows.items():
                totals[kind] += len(lines)
            if len(ids) < batch:
                return totals


@contextmanager
def open_maintenance(settings: Settings, dsn: str) -> Iterator[MaintenanceSession]:
    """A MaintenanceSession on the configured database."""
    conn = _connect_plain(dsn, settings, configured=True)
    with conn:
        yield MaintenanceSession(conn)


@dataclass(frozen=True)
class DatabaseFacts:
    """What `ralph-monitor doctor` learns from the database."""

    user: str
    superuser: bool
    database: str
    server_version: str
    server_version_num: int
    applied_migrations: list[int]
    events_table: bool
    can_insert_events: bool
    reader_roles: list[str]
    latest: dict[str, tuple[datetime, dict[str, Any]] | None]
    """Newest backup_completed / backup_failed / prune_completed / prune_failed event."""
    spool_backlog: dict[str, int]
    """Per daemon host, as last reported."""
    projection_failures: list[dict[str, Any]] = field(default_factory=list)
    """The oldest sessions whose projection fails (projection_failures)."""
    projection_failures_total: int = 0


def database_facts(settings: Settings, dsn: str) -> DatabaseFacts:
    """Identity, privileges, migrations and the monitor's own health rows. Raises
    StoreUnavailable when the database cannot be reached."""
    with _connect_plain(dsn, settings, configured=True) as conn:
        conn.row_factory = dict_row  # type: ignore[assignment]
        try:
            ident = conn.execute(resources.query("doctor_identity")).fetchone()
            assert ident is not None
            applied: list[int] = []
            if ident["migrations_table"]:
                applied = [r["version"] for r in conn.execute(resources.query("applied_migrations")).fetchall()]
            readers: list[str] = []
            latest: dict[str, tuple[datetime, dict[str, Any]] | None] = {}
            backlog: dict[str, int] = {}
            if ident["events_table"]:
                readers = [r["rolname"] for r in conn.execute(resources.query("doctor_reader_roles")).fetchall()]
                for kind in ("backup_completed", "backup_failed", "prune_completed", "prune_failed"):
                    row = conn.execute(resources.query("latest_event_of_type"), {"event_type": kind}).fetchone()
                    latest[kind] = (row["occurred_at"], row["data"] if isinstance(row["data"], dict) else {}) \
                        if row else None
                backlog = {r["host"]: r["spool_backlog"] for r in
                           conn.execute(resources.query("monitor_hosts")).fetchall()}
            failures: list[dict[str, Any]] = []
            failing = 0
            if ident["events_table"] and FAILURES_MIGRATION in applied:
                failures = conn.execute(resources.query("projection_failures"), {"limit": 1}).fetchall()
                failing = conn.execute(resources.query("projection_failure_count")).fetchone()["failing"]
        except psycopg.Error as exc:
            raise StoreError(f"cannot inspect {describe_dsn(dsn)}: {_describe(exc)}") from exc
    return DatabaseFacts(
        user=ident["user"], superuser=ident["superuser"], database=ident["database"],
        server_version=ident["server_version"], server_version_num=ident["server_version_num"],
        applied_migrations=applied, events_table=ident["events_table"],
        can_insert_events=bool(ident["can_insert_events"]), reader_roles=readers, latest=latest,
        spool_backlog=backlog, projection_failures=failures, projection_failures_total=failing)
