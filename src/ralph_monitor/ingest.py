"""Group commit: each writer lane takes everything queued on it since its last commit,
stores it, and only then acknowledges each event.

When PostgreSQL is unreachable the batch is fsync'd to the spool and acknowledged as
spooled; while the spool holds anything, it is replayed (in order) before any newer batch
is committed, so per-connection order is kept across an outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from ralph_monitor import __version__
from ralph_monitor.config import Settings
from ralph_monitor.disk import DiskUsage
from ralph_monitor.errors import SpoolError, StoreError
from ralph_monitor.logs import Throttle
from ralph_monitor.protocol import Event, Reject, error_reply, ok_reply
from ralph_monitor.spool import Spool
from ralph_monitor.store import DUPLICATE, STORED, EventStore, Refused

log = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0
SPOOL_FAILURE_LOG_INTERVAL_S = 30.0
"""A spool that cannot be written or read is logged at most this often (with a count)."""
HEALTH_INTERVAL_S = 10.0
"""How often the writer refreshes this host's row in monitor_hosts."""


class Slot:
    """A reply position in a connection's ordered reply queue; filled once the fate is known."""

    __slots__ = ("reply",)

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply


class ReplySink(Protocol):
    """A connection that wants to know when some of its slots were filled."""

    def flush_replies(self) -> None: ...


@dataclass
class Stats:
    """Counters for STATUS=, logs and the monitor_hosts row."""

    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    events_total: int = 0
    rejects_total: int = 0
    spooled_total: int = 0
    last_spooled_at: datetime | None = None
    last_replayed_at: datetime | None = None
    connections_refused: int = 0
    connections_evicted: int = 0
    """Connections refused at a limit, and idle ones closed to make room (server.py)."""
    _window: list[tuple[float, int]] = field(default_factory=list)

    def count(self, n: int) -> None:
        now = time.monotonic()
        self.events_total += n
        self._window.append((now, n))
        while self._window and self._window[0][0] < now - RATE_WINDOW_S:
            self._window.pop(0)

    def rate(self) -> float:
        now = time.monotonic()
        return sum(n for t, n in self._window if t >= now - RATE_WINDOW_S) / RATE_WINDOW_S


Item = tuple[Event | Reject, Slot | None, ReplySink | None]


class Lane:
    """One writer: a queue and the database connection that commits it, batch after batch.
    A client connection always uses the same lane, which keeps its events in order."""

    def __init__(self, number: int, store: EventStore) -> None:
        self.number = number
        self.store = store
        self.pending: list[Item] = []
        self.wakeup = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()


class Ingestor:
    """Queues + writer lanes. `submit` is called from the event loop by connections.

    While one lane waits for PostgreSQL to take a batch, another can send it the next one,
    so the database is not idle while the daemon parses and acknowledges. The spool is shared:
    a lane that finds it non-empty replays it (under a lock) before committing anything newer.
    """

    def __init__(self, settings: Settings, stores: Sequence[EventStore], spool: Spool, *, host: str) -> None:
        if not stores:
            raise ValueError("the ingestor needs at least one store")
        self._settings = settings
        self._lanes = [Lane(number, store) for number, store in enumerate(stores)]
        self._next_lane = 0
        self._spool = spool
        self._spool_lock = asyncio.Lock()
        self._spool_failures = Throttle(SPOOL_FAILURE_LOG_INTERVAL_S)
        self.disks: dict[str, DiskUsage] = {}
        """The latest free-space sample (the daemon's status loop takes it), for monitor_hosts."""
        self._host = host
        self.on_queue_change: Callable[[int], None] = lambda pending: None
        """Called with the queue length whenever it changes (the server's backpressure)."""
        self.on_commit: Callable[[], None] = lambda: None
        """Called after events were committed (wakes the projector)."""
        self._health_due = 0.0
        self._pending_total = 0
        self._stopping = False
        self._retry_at = 0.0
        self._down = False
        self.stats = Stats()

    @property
    def pending(self) -> int:
        return self._pending_total

    @property
    def spool_backlog(self) -> int:
        return self._spool.backlog

    @property
    def database_up(self) -> bool:
        """A lane is connected and no write failed since the last success (an idle lane may
        stay disconnected after a database restart until it has something to write)."""
        return any(lane.store.connected for lane in self._lanes) and not self._down

    def assign_lane(self) -> int:
        """The lane for a new client connection (round robin)."""
        number = self._next_lane
        self._next_lane = (number + 1) % len(self._lanes)
        return number

    def submit(self, record: Event | Reject, slot: Slot | None, sink: ReplySink | None, *, lane: int = 0) -> None:
        """Queue a record on `lane`; its slot gets the reply once it is committed or spooled."""
        target = self._lanes[lane]
        target.pending.append((record, slot, sink))
        target.idle.clear()
        target.wakeup.set()
        self._pending_total += 1
        self.on_queue_change(self._pending_total)

    async def drain(self) -> None:
        """Wait until everything submitted so far is committed or spooled, and acknowledged."""
        while not all(lane.idle.is_set() for lane in self._lanes):
            for lane in self._lanes:
                await lane.idle.wait()

    async def stop(self) -> None:
        """Finish what is queued, then make `run` return."""
        self._stopping = True
        for lane in self._lanes:
            lane.wakeup.set()
        await self.drain()

    async def run(self) -> None:
        """The writer lanes, until `stop`; then this host's final counters."""
        await asyncio.gather(*(self._run_lane(lane) for lane in self._lanes))
        if not self._spool.backlog and not self._down:
            await self._record_health(self._lanes[0].store)

    async def _run_lane(self, lane: Lane) -> None:
        while True:
            timeout = min(self._settings.database_retry_interval_s, HEALTH_INTERVAL_S)
            try:
                await asyncio.wait_for(lane.wakeup.wait(), timeout)
            except TimeoutError:
                pass
            batch = lane.pending[: self._settings.limits_max_batch_events]
            del lane.pending[: len(batch)]
            if not lane.pending:
                lane.wakeup.clear()
            self._pending_total -= len(batch)
            self.on_queue_change(self._pending_total)
            if self._spool.backlog:
                await self._replay(lane.store)
            if batch:
                await self._write(lane.store, batch)
            if (lane.number == 0 and time.monotonic() >= self._health_due and not self._spool.backlog
                    and not self._down):
                await self._record_health(lane.store)
            if not lane.pending:
                lane.idle.set()
                if self._stopping:
                    return

    async def _write(self, store: EventStore, batch: list[Item]) -> None:
        events = [record for record, _, _ in batch if isinstance(record, Event)]
        rejects = [record for record, _, _ in batch if isinstance(record, Reject)]
        if not self._spool.backlog and time.monotonic() >= self._retry_at:
            try:
                outcomes = await store.write_batch(
                    events, rejects, excerpt_bytes=self._settings.limits_reject_excerpt_bytes)
            except StoreError as exc:
                self._database_down(exc)
            else:
                self._database_up()
                self._acknowledge(batch, outcomes)
                self.on_commit()
                return
        await self._spool_batch(batch, events, rejects)

    def _acknowledge(self, batch: list[Item], outcomes: list[object]) -> None:
        sinks: set[ReplySink] = set()
        results = iter(outcomes)
        stored = refused = 0
        for record, slot, sink in batch:
            if not isinstance(record, Event):
                continue
            outcome = next(results)
            if outcome == STORED:
                stored += 1
            elif isinstance(outcome, Refused):
                refused += 1
            if slot is None:
                continue
            if isinstance(outcome, Refused):
                slot.reply = error_reply(outcome.reject.code, outcome.reject.detail)
            else:
                slot.reply = ok_reply(record, duplicate=outcome == DUPLICATE)
            if sink is not None:
                sinks.add(sink)
        self.stats.count(stored)
        # Lines refused on arrival, and events PostgreSQL refused: both are rows in `rejects`.
        self.stats.rejects_total += len(batch) - len(outcomes) + refused
        for sink in sinks:
            sink.flush_replies()

    async def _spool_batch(self, batch: list[Item], events: list[Event], rejects: list[Reject]) -> None:
        sinks: set[ReplySink] = set()
        try:
            async with self._spool_lock:
                await asyncio.to_thread(self._spool.append, [*events, *rejects])
        except SpoolError as exc:
            if (suppressed := self._spool_failures.ready()) is not None:
                log.critical("%s; events are NOT acknowledged (clients are told not_stored)%s", exc,
                             f"; {suppressed} more such batches since the last message" if suppressed else "")
            for record, slot, sink in batch:
                if slot is not None:
                    slot.reply = error_reply(
                        "not_stored", f"PostgreSQL did not take the event and the local spool cannot be written "
                        f"({exc.__cause__.strerror if isinstance(exc.__cause__, OSError) else exc}); "
                        "it is NOT stored: resend later")
                    if sink is not None:
                        sinks.add(sink)
        else:
            self.stats.spooled_total += len(batch)
            self.stats.last_spooled_at = datetime.now(timezone.utc)
            for record, slot, sink in batch:
                if slot is not None and isinstance(record, Event):
                    slot.reply = ok_reply(record, spooled=True)
                    if sink is not None:
                        sinks.add(sink)
        for sink in sinks:
            sink.flush_replies()

    async def _record_health(self, store: EventStore) -> None:
        self._health_due = time.monotonic() + HEALTH_INTERVAL_S
        stats = self.stats
        try:
            await store.record_host({
                "host": self._host, "version": __version__, "started_at": stats.started_at,
                "events_total": stats.events_total, "rejects_total": stats.rejects_total,
                "spool_backlog": self._spool.backlog, "spooled_total": stats.spooled_total,
                "last_spooled_at": stats.last_spooled_at, "last_replayed_at": stats.last_replayed_at,
                "ingest_rate_per_s": stats.rate(), "connections_refused": stats.connections_refused,
                "connections_evicted": stats.connections_evicted,
                "disks": {label: asdict(d) for label, d in self.disks.items()}})
        except StoreError as exc:
            self._database_down(exc)

    def _database_down(self, exc: StoreError) -> None:
        if not self._down:
            log.warning("%s; spooling events to %s until it is back", exc, self._spool.path)
            self._down = True
        self._retry_at = time.monotonic() + self._settings.database_retry_interval_s

    def _database_up(self) -> None:
        if self._down:
            log.info("PostgreSQL is reachable again")
            self._down = False
        self._retry_at = 0.0

    async def _replay(self, store: EventStore) -> None:
        """Commit the spool, oldest first, chunk by chunk; stop at the first failure."""
        async with self._spool_lock:
            await self._replay_locked(store)

    async def _replay_locked(self, store: EventStore) -> None:
        if time.monotonic() < self._retry_at:
            return
        total = 0
        while self._spool.backlog:
            try:
                records, offset = await asyncio.to_thread(
                    self._spool.read_chunk, self._settings.limits_max_batch_events)
            except SpoolError as exc:
                if self._spool_failures.ready() is not None:
                    log.error("%s; replay retried in %g s", exc, self._settings.database_retry_interval_s)
                self._retry_at = time.monotonic() + self._settings.database_retry_interval_s
                return
            if not records:
                await asyncio.to_thread(self._spool.mark_replayed, offset, 0)
                break
            events = [r for r in records if isinstance(r, Event)]
            rejects = [r for r in records if isinstance(r, Reject)]
            try:
                outcomes = await store.write_batch(
                    events, rejects, excerpt_bytes=self._settings.limits_reject_excerpt_bytes)
            except StoreError as exc:
                self._database_down(exc)
                return
            await asyncio.to_thread(self._spool.mark_replayed, offset, len(records))
            self.on_commit()
            self.stats.count(sum(1 for o in outcomes if o == STORED))
            total += len(records)
        self._database_up()
        if total:
            self.stats.last_replayed_at = datetime.now(timezone.utc)
            log.info("replayed %d spooled records into PostgreSQL; spool is empty", total)
