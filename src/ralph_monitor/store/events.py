"""The write path: the daemon's writer connection (EventStore).

Writes use group commit: a whole batch of events goes in with one COPY and one COMMIT.
A batch that COPY cannot take as a whole (a duplicate `event_id`, a value PostgreSQL
refuses) is retried row by row inside savepoints, so one bad row never sinks the rest.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from ralph_monitor import resources
from ralph_monitor.config import Settings
from ralph_monitor.errors import InvalidEvent, StoreError, StoreUnavailable
from ralph_monitor.protocol import Event, Origin, Reject, make_reject
from ralph_monitor.store.connect import apply_migrations, conninfo, describe_error

log = logging.getLogger(__name__)
T = TypeVar("T")

PARTITION_DAYS_BEHIND = 1
PARTITION_DAYS_AHEAD = 2
"""Daily `events` partitions kept ready around today (UTC); checked whenever the date changes.
No event is filed more than a day ahead (values.MAX_TS_AHEAD_S), and every empty partition
costs each query on `events` its share of planning (~0.25 ms of ~10 at 40 partitions)."""

BUCKET_S = 300
"""metric_buckets width; date_bin's origin (2000-01-01) is a multiple of it since the epoch."""

SMALL_BATCH_EVENTS = 64
"""Batches up to this size are one autocommit statement (one round trip) instead of BEGIN,
COPY, marks and COMMIT: what keeps a lone event's ack latency near a bare INSERT's."""

STORED = "stored"
DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Refused:
    """An event PostgreSQL itself refused; it is recorded as a reject instead."""

    reject: Reject


Outcome = str | Refused
"""Per event: STORED, DUPLICATE, or Refused."""


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
    error = InvalidEvent("refused_by_database", f"PostgreSQL refused the event: {describe_error(exc)}")
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
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {describe_error(exc)}") from exc
        try:
            applied = await apply_migrations(conn)
        except psycopg.OperationalError as exc:
            await conn.close()
            raise StoreUnavailable(f"lost PostgreSQL while migrating: {describe_error(exc)}") from exc
        except psycopg.Error as exc:
            await conn.close()
            raise StoreError(f"migration failed: {describe_error(exc)}") from exc
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
            raise StoreUnavailable(f"cannot create event partitions: {describe_error(exc)}") from exc
        self._partitions_day = today

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def write_batch(self, events: Sequence[Event], rejects: Sequence[Reject], *,
                          excerpt_bytes: int) -> list[Outcome]:
        """Commit events and rejects in one transaction; one outcome per event.

        Raises StoreUnavailable when the database cannot be reached or the commit's fate is
        unknown; the caller then spools the batch (replay is idempotent by event_id). A
        connection that was open before this call may have died while idle (PostgreSQL
        restarted): that one failure is answered by one new connection and one more attempt.
        """
        return await self._on_live_connection(
            lambda: self._write_batch(events, rejects, excerpt_bytes=excerpt_bytes))

    async def _on_live_connection(self, work: Callable[[], Awaitable[T]]) -> T:
        """`work()`; if it failed on a connection that was open before (it may have died while
        idle: PostgreSQL restarted), once more on a new one. Raises StoreUnavailable."""
        reused = self.connected
        try:
            return await work()
        except StoreUnavailable as exc:
            if not reused:
                raise
            log.info("%s; trying once more on a new connection", exc)
            return await work()

    async def _write_batch(self, events: Sequence[Event], rejects: Sequence[Reject], *,
                           excerpt_bytes: int) -> list[Outcome]:
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
                log.debug("COPY of %d events refused (%s); retrying row by row", len(events), describe_error(exc))
                return await self._write_rows(events, rejects, excerpt_bytes=excerpt_bytes)
        except psycopg.Error as exc:
            await self._drop_connection()
            raise StoreUnavailable(f"PostgreSQL write failed: {describe_error(exc)}") from exc

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
        """Upsert this daemon's health row (spool backlog, counters). A failure makes the writer
        spool for a while, so a connection that died while idle gets a second chance first."""
        await self._on_live_connection(lambda: self._record_host(values))

    async def _record_host(self, values: dict[str, Any]) -> None:
        await self.connect()
        assert self._conn is not None
        try:
            async with self._conn.transaction():
                await self._conn.execute(resources.query("upsert_monitor_host"),
                                         {**values, "disks": Jsonb(values.get("disks") or {})})
        except psycopg.Error as exc:
            await self._drop_connection()
            raise StoreUnavailable(f"PostgreSQL write failed: {describe_error(exc)}") from exc

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
