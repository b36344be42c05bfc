"""The projector: keeps sessions, spec runs, interventions and metric buckets in step with
events, marks sessions whose heartbeats stopped as stalled, records the loop-health episodes
the projection finds (`loop_stuck` / `loop_recovered`, loop_health.py) and keeps the flagged
sessions at hand for the server's `session_flags` question.

It works from the durable dirty queues the writer fills in the same transaction as the
events, so a crash never loses pending work, and several daemons share the queue safely
(rows are claimed with SKIP LOCKED; the result of a recomputation does not depend on who
did it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

from ralph_monitor.config import Settings
from ralph_monitor.errors import StoreError
from ralph_monitor.projections import SessionProjection, project_session
from ralph_monitor.protocol import Event, Origin, internal_event
from ralph_monitor.store import ProjectionStore, conninfo, migrate

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0
"""Look at the dirty queues at least this often (other daemons may have written)."""
DEBOUNCE_S = 0.5
"""After a wake-up, wait this long so one recomputation covers a burst of events."""
PACE_FACTOR = 3.0
"""And wait at least this many times as long as the last step took: under a heavy load the
same sessions change again at once, and recomputing them back to back would take the CPU
ingestion needs. The projector then works at most a quarter of the time."""
BUCKET_INTERVAL_S = 5.0
"""Recompute metric buckets at most this often while sessions keep changing: under load the
current bucket changes all the time, and the charts are per 5 minutes anyway. A step with no
session to recompute (the burst is over) recomputes them at once."""
SESSIONS_PER_PASS = 50
BUCKETS_PER_TRANSACTION = 500
STALL_CHECK_INTERVAL_S = 15.0
"""At most this long between stall checks (shorter when [aggregates] stall_after_s is small)."""
OVERDUE_STALL_CHECK_S = 1.0
"""How soon a stall check follows the projection of a session already silent for longer than
stall_after_s (old events replayed from a spool, a session that went quiet while the daemon
was down): its state is right within a second, not at the next interval."""
STALLING_STATES = ("running", "waiting_for_human")
"""The states a stall check can end (queries.sql: stalled_candidates)."""
FAILURE_CHECK_INTERVAL_S = 10.0
"""How often the projector counts sessions whose projection fails (for STATUS= and the log)."""
FAILURE_LOG_INTERVAL_S = 300.0
"""While any session's projection fails, say so in the log this often (not once, then silence)."""
STALL_NAMESPACE = uuid.UUID("5a1f3c2e-7d0b-4c59-9e1a-2b8f6d4c3a10")
FLAGS_INTERVAL_S = 1.0
"""How often the flagged sessions are read again (other daemons may have flagged some)."""
RECENTLY_EMITTED_S = 60.0
"""A loop-health event sent this recently is not sent again while the projection does not show
it yet (the same episode, seen from a later event, could get a second id)."""
USAGE_RESET_NAMESPACE = uuid.UUID("3c9e1d47-52a8-4f0b-b6e1-0d7a4e2c9b16")


def stall_event(session_id: uuid.UUID, last_seen: datetime, *, stall_after_s: float, origin: Origin) -> Event:
    """The `session_stalled` event for a session silent since `last_seen`. Its id is derived
    from the session and last_seen, so every daemon (and every check) records it once."""
    return internal_event(
        "session_stalled", origin=origin, session_id=session_id,
        event_id=uuid.uuid5(STALL_NAMESPACE, f"{session_id}/{last_seen.isoformat()}"),
        data={"last_seen": last_seen.isoformat(), "stalled_after_s": stall_after_s,
              "silent_for_s": round((datetime.now(timezone.utc) - last_seen).total_seconds(), 1)})


def usage_reset_event(session_id: uuid.UUID, paused_until: datetime, *, origin: Origin) -> Event:
    """The `usage_limit_reset` event that ends a usage-limit pause once its window has reset;
    its id comes from the session and the reset time, so it is recorded once."""
    return internal_event(
        "usage_limit_reset", origin=origin, session_id=session_id,
        event_id=uuid.uuid5(USAGE_RESET_NAMESPACE, f"{session_id}/{paused_until.isoformat()}"),
        data={"resets_at": paused_until.isoformat()})


class Projector:
    """Runs in the daemon's event loop beside the writer."""

    def __init__(self, settings: Settings, store: ProjectionStore, *, host: str,
                 emit: Callable[[Event], None]) -> None:
        self._settings = settings
        self._store = store
        self._emit = emit
        self._origin = Origin(host=host, uid=os.getuid(), pid=os.getpid())
        self._wakeup = asyncio.Event()
        self._stall_due = 0.0
        self._buckets_due = 0.0
        self._failing = False
        self._failures_due = 0.0
        self._failure_logged_at = -FAILURE_LOG_INTERVAL_S
        self.failing_sessions = 0
        """Sessions whose projection failed and waits for a retry (projection_failures)."""
        self.listeners: list[Callable[[], None]] = []
        """Called after aggregates changed (e.g. the dashboard's debounced refresh)."""
        self.flags: dict[str, dict[str, object]] = {}
        """Flagged sessions (flagged_sessions), by id: what `session_flags` answers."""
        self._flags_due = 0.0
        self._emitted: dict[tuple[uuid.UUID, str, str], float] = {}

    def wake(self) -> None:
        """New events were committed."""
        self._wakeup.set()

    async def run(self) -> None:
        last_step_s = 0.0
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), IDLE_POLL_S)
                await asyncio.sleep(max(DEBOUNCE_S, PACE_FACTOR * last_step_s))
            except TimeoutError:
                pass
            self._wakeup.clear()
            started = time.monotonic()
            await self.step()
            last_step_s = time.monotonic() - started

    async def step(self) -> None:
        """Drain the dirty queues and check for stalls; log (once) and go on if the DB is away."""
        try:
            await self.catch_up()
            if time.monotonic() >= self._stall_due:
                self._stall_due = time.monotonic() + min(
                    STALL_CHECK_INTERVAL_S, self._settings.aggregates_stall_after_s / 10)
                await self._check_stalls()
                await self._check_usage_resets()
            if time.monotonic() >= self._flags_due:
                self._flags_due = time.monotonic() + FLAGS_INTERVAL_S
                self.flags = {str(r["id"]): _flag(r) for r in await self._store.flagged_sessions()}
            if time.monotonic() >= self._failures_due:
                self._failures_due = time.monotonic() + FAILURE_CHECK_INTERVAL_S
                await self._check_failures()
        except StoreError as exc:
            if not self._failing:
                log.warning("aggregates not updated: %s; retrying", exc)
                self._failing = True
            return
        if self._failing:
            log.info("aggregates are being updated again")
            self._failing = False

    async def catch_up(self) -> None:
        """Recompute dirty sessions (and, if due, buckets); tell the listeners if anything changed.

        Passes continue only while full batches come back (a backlog); sessions that keep
        changing under load are picked up again at the next step."""
        changed = 0
        while (done := await self._store.project_sessions(project_session, limit=SESSIONS_PER_PASS,
                                                          projected=self._projected)) > 0:
            changed += done
            if done < SESSIONS_PER_PASS:
                break
        if not changed or time.monotonic() >= self._buckets_due:
            self._buckets_due = time.monotonic() + BUCKET_INTERVAL_S
            while (done := await self._store.project_buckets(limit=BUCKETS_PER_TRANSACTION)) > 0:
                changed += done
                if done < BUCKETS_PER_TRANSACTION:
                    break
        if changed:
            for listener in self.listeners:
                listener()

    def _projected(self, session_id: uuid.UUID, projection: SessionProjection) -> None:
        """After each session's projection: its loop-health events, and a prompt stall check if
        it is silent past stall_after_s already."""
        self._record_loop_health(session_id, projection)
        silent_s = (datetime.now(timezone.utc) - projection.last_event_at).total_seconds()
        if projection.execution_state in STALLING_STATES and silent_s > self._settings.aggregates_stall_after_s:
            self._stall_due = min(self._stall_due, time.monotonic() + OVERDUE_STALL_CHECK_S)

    def _record_loop_health(self, session_id: uuid.UUID, projection: SessionProjection) -> None:
        """Send the loop_stuck / loop_recovered events the projection found due (their ids are
        derived from the episode, so a second daemon's copy is stored once)."""
        now = time.monotonic()
        self._emitted = {k: t for k, t in self._emitted.items() if now - t < RECENTLY_EMITTED_S}
        for kind, event_id, at, data in projection.loop_due:
            key = (session_id, kind, str(data.get("rule")))
            if key in self._emitted:
                continue
            self._emitted[key] = now
            if kind == "loop_stuck":
                log.warning("session %s: loop %s: %s", session_id, data.get("rule"), data.get("summary"))
            self._emit(internal_event(kind, origin=self._origin, session_id=session_id, event_id=event_id,
                                      ts=at, data=data))
        if projection.loop_due:
            self._flags_due = 0.0

    async def _check_failures(self) -> None:
        """Count failing sessions; while there are any, log it every FAILURE_LOG_INTERVAL_S."""
        count, oldest = await self._store.failing_sessions(limit=1)
        self.failing_sessions = count
        if count and time.monotonic() - self._failure_logged_at >= FAILURE_LOG_INTERVAL_S:
            self._failure_logged_at = time.monotonic()
            first = oldest[0] if oldest else None
            log.warning("aggregates of %d session(s) not updated (projection failing)%s; see "
                        "`ralph-query status`, then `ralph-monitor rebuild-aggregates` once fixed", count,
                        f", oldest {first['session_id']} since {first['first_failed_at']:%Y-%m-%d %H:%M:%S}: "
                        f"{first['error']}" if first else "")
        elif not count:
            self._failure_logged_at = -FAILURE_LOG_INTERVAL_S

    async def _check_stalls(self) -> None:
        stall_after_s = self._settings.aggregates_stall_after_s
        for session_id, last_seen in await self._store.stalled_candidates(stall_after_s):
            log.warning("session %s stalled: no event since %s", session_id, last_seen.isoformat())
            self._emit(stall_event(session_id, last_seen, stall_after_s=stall_after_s, origin=self._origin))

    async def _check_usage_resets(self) -> None:
        for session_id, paused_until in await self._store.usage_resets_due():
            log.info("session %s: its usage window reset at %s; running again", session_id, paused_until.isoformat())
            self._emit(usage_reset_event(session_id, paused_until, origin=self._origin))


def _flag(row: dict[str, object]) -> dict[str, object]:
    """A flagged session as `session_flags` reports it."""
    findings = row["loop_findings"] if isinstance(row["loop_findings"], list) else []
    reason = row["reason"] or "; ".join(str(f.get("summary")) for f in findings if isinstance(f, dict))
    return {"state": row["execution_state"], "reason": reason,
            "rules": sorted({str(f.get("rule")) for f in findings if isinstance(f, dict)})}


def rebuild_aggregates(settings: Settings, *, dsn: str) -> tuple[int, int]:
    """Recompute every aggregate from events; (sessions, buckets) recomputed."""

    async def run() -> tuple[int, int]:
        await migrate(conninfo(settings, dsn=dsn))
        store = ProjectionStore(settings, dsn=dsn)
        try:
            await store.mark_all_dirty()
            sessions = buckets = 0
            while done := await store.project_sessions(project_session, limit=SESSIONS_PER_PASS):
                sessions += done
            while done := await store.project_buckets(limit=BUCKETS_PER_TRANSACTION):
                buckets += done
            return sessions, buckets
        finally:
            await store.close()

    return asyncio.run(run())
