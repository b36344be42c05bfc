"""The projector's own connection (ProjectionStore): recomputes dirty sessions and buckets,
each session in its own short transaction, and quarantines a session whose projection fails
in projection_failures until its retry."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg.rows import args_row, dict_row
from psycopg.types.json import Jsonb

from ralph_monitor import loop_health, resources
from ralph_monitor.config import Settings
from ralph_monitor.errors import StoreError, StoreUnavailable
from ralph_monitor.projections import ACTIVITY_TYPES, NOT_ACTIVITY, SESSION_TYPES, SessionEvent, SessionProjection
from ralph_monitor.store.connect import conninfo, describe_error

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_FAILURE_CHARS = 2000
"""Characters of a projection error kept in projection_failures."""
ACTIVITY_WINDOW = timedelta(days=1)
ACTIVITY_LIMIT = 100
"""The recent hook events a projection reads (loop-health rules, waiting state): at most this many,
of the last day before the session's last event."""
Due = Callable[[uuid.UUID, SessionProjection], None]


class ProjectionStore:
    """The projector's own connection: recomputes dirty sessions and buckets."""

    def __init__(self, settings: Settings, *, dsn: str | None = None) -> None:
        self._settings = settings
        self._limits = loop_health.thresholds(settings)
        """The loop-health rules' settings, read once (the time zone lookup alone takes 0.4 ms)."""
        self._dsn = dsn
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = await psycopg.AsyncConnection.connect(
                    conninfo(self._settings, dsn=self._dsn), row_factory=dict_row)
            except psycopg.Error as exc:
                raise StoreUnavailable(f"cannot connect to PostgreSQL: {describe_error(exc)}") from exc
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
            raise StoreUnavailable(f"projector lost PostgreSQL: {describe_error(exc)}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"projection failed: {describe_error(exc)}") from exc

    async def project_sessions(self, compute: Callable[..., SessionProjection], *, limit: int,
                               projected: Due | None = None) -> int:
        """Recompute up to `limit` dirty sessions, each in its own short transaction; how many
        were recomputed (sessions another projector is working on are skipped, and a session
        whose projection fails is recorded in projection_failures and skipped until its retry).
        `projected` is told of each projection once committed (the projector records its
        loop-health events)."""
        batch = await self._run(lambda conn: _fetch(conn, "dirty_sessions_batch", {"limit": limit}))
        done = 0
        for row in batch:
            done += await self._project(row["session_id"], row["version"], compute, projected)
        return done

    async def _project(self, session_id: uuid.UUID, version: int,
                       compute: Callable[..., SessionProjection], projected: Due | None) -> bool:
        """One session in its own transaction. The database being away stops the pass (the
        caller retries); any other error is this session's alone: recorded, and the pass goes on."""

        result: list[SessionProjection] = []

        async def work(conn: psycopg.AsyncConnection[Any]) -> bool:
            if not await _try_lock(conn, f"session:{session_id}"):
                return False
            projection = await project_one(conn, session_id, compute, self._limits)
            if projection is not None:
                result.append(projection)
            params = {"session_id": session_id, "version": version}
            await conn.execute(resources.query("delete_dirty_session_version"), params)
            await conn.execute(resources.query("clear_projection_failure"), params)
            return True

        try:
            done = await self._run(work)
            if projected is not None and result:
                projected(session_id, result[0])
            return done
        except StoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of one session must not stop the others
            if self._conn is None or self._conn.closed:
                self._conn = None
                raise StoreUnavailable(f"projector lost PostgreSQL: {exc}") from exc
            cause = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ is not None else exc
            error = (describe_error(cause) if isinstance(cause, psycopg.Error)
                     else f"{type(cause).__name__}: {cause}")[:MAX_FAILURE_CHARS]
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
        """Running (or waiting) sessions with no sign of life for longer than `stall_after_s`."""

        async def work(conn: psycopg.AsyncConnection[Any]) -> list[tuple[uuid.UUID, datetime]]:
            cur = await conn.execute(resources.query("stalled_candidates"), {"stall_after_s": stall_after_s})
            return [(r["id"], r["last_event_at"]) for r in await cur.fetchall()]

        return await self._run(work)

    async def flagged_sessions(self) -> list[dict[str, Any]]:
        """Sessions with open loop-health episodes, or ended as stuck (rows of flagged_sessions)."""
        return await self._run(lambda conn: _fetch(conn, "flagged_sessions", {}))

    async def usage_resets_due(self) -> list[tuple[uuid.UUID, datetime]]:
        """Sessions paused for their usage limit whose window has reset by now."""

        async def work(conn: psycopg.AsyncConnection[Any]) -> list[tuple[uuid.UUID, datetime]]:
            cur = await conn.execute(resources.query("usage_resets_due"))
            return [(r["id"], r["paused_until"]) for r in await cur.fetchall()]

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


async def project_one(conn: psycopg.AsyncConnection[Any], session_id: uuid.UUID,
                      compute: Callable[..., SessionProjection],
                      limits: loop_health.Thresholds) -> SessionProjection | None:
    """Read one session's events, `compute` its aggregates and write them (in the caller's
    transaction); None when all its events were pruned. Public for bench/queries.py, which checks
    its generated rows against this very step."""
    params = {"session_id": session_id}
    activity = await (await conn.execute(resources.query("session_activity"),
                                         {**params, "not_activity": list(NOT_ACTIVITY)})).fetchone()
    if activity is None or activity["event_count"] == 0:
        # All its events were pruned: the aggregate goes with them.
        await conn.execute(resources.query("delete_session_aggregate"), params)
        return None
    rows = await (await conn.execute(resources.query("session_events"),
                                     {**params, "types": list(SESSION_TYPES)})).fetchall()
    events = [SessionEvent(r["event_id"], r["event_type"], r["spec_id"], r["occurred_at"], r["host"],
                           r["data"] if isinstance(r["data"], dict) else {}) for r in rows]
    last_event_at = activity["last_event_at"] or activity["last_any_at"]
    hooks: list[loop_health.Activity] = []
    if not any(e.event_type == "session_ended" for e in events):  # an ended session is neither waiting nor checked
        async with conn.cursor(row_factory=args_row(loop_health.Activity)) as cur:  # its columns, in its order
            await cur.execute(resources.query("session_recent_activity"), {
                **params, "types": list(ACTIVITY_TYPES), "since": max(last_event_at - ACTIVITY_WINDOW, activity["first_at"]),
                "until": last_event_at, "limit": ACTIVITY_LIMIT})
            hooks = (await cur.fetchall())[::-1]
    projection = compute(session_id, events, event_count=activity["event_count"], last_event_at=last_event_at,
                         last_active_at=activity["last_active_at"], first_event_at=activity["first_at"],
                         activity=hooks, limits=limits)
    values = {k: v for k, v in vars(projection).items() if k not in ("spec_runs", "interventions", "loop_due")}
    values["final_result"] = Jsonb(values["final_result"]) if values["final_result"] is not None else None
    values["metadata"] = Jsonb(values["metadata"] or {})
    values["loop_findings"] = Jsonb(values["loop_findings"])
    await conn.execute(resources.query("upsert_session"), values)
    await conn.execute(resources.query("delete_session_spec_runs"), params)
    async with conn.cursor() as cur:
        if projection.spec_runs:
            async with cur.copy(resources.query("copy_spec_runs")) as copy:
                for run in projection.spec_runs:
                    await copy.write_row((
                        session_id, run.spec_id, run.attempt, run.start_time, run.end_time, run.duration_seconds,
                        run.status, run.outcome, run.tokens_used, run.cost_usd, run.error_message,
                        Jsonb(run.output_summary) if run.output_summary is not None else None,
                        run.value_problems, Jsonb(run.git) if run.git is not None else None))
        await cur.execute(resources.query("delete_session_interventions"), params)
        if projection.interventions:
            await cur.executemany(resources.query("insert_intervention"), [
                {**vars(i), "session_id": session_id} for i in projection.interventions])
    return projection
