#!/usr/bin/env python3
"""Soak benchmark: --minutes of mixed, realistic traffic against the real daemon and a private
PostgreSQL cluster, with poison, idle clients, fire-and-forget clients, a PostgreSQL restart
and a daemon restart inside the run; then checks that nothing acknowledged was lost.

    python bench/soak.py [--minutes 30] [--rate 200] [--sessions 8] [--json FILE]

Traffic (all at once, for the whole run):
  agents      --sessions connections, each a Ralph loop after another: session_started, specs
              (spec_started, ~45 `cc.PostToolUse` tool events, spec_completed or spec_failed with
              tokens_used / cost_usd / duration_s), heartbeats, the odd intervention_request and
              its user_feedback, session_ended; --rate events/s over all of them (exponential
              gaps, so bursts happen). Lines are pipelined and matched to replies in order.
  poison      inside the agents' streams: absurd values (tokens_used 1e30, cost_usd "0.5", ts in
              year 9999, negative counts, 200 kB error strings, objects and arrays where numbers
              go) that must be acknowledged (with warnings), and lines that must be refused with
              ok:false (invalid JSON, non-objects, no type, bad UUID, invalid UTF-8, NUL, a line
              over the 1 MiB limit).
  idle        --idle-clients connections that never write (reconnecting when the daemon closes
              them, e.g. at its idle timeout).
  socat       --socat-rate events/s, each on a new connection that is closed at once, without
              reading the reply (like `echo ... | socat - UNIX-CONNECT:...`).
  markers     the projector-lag probe (below).
Planned outages: PostgreSQL stopped (fast) at 35% of the run, down --pg-down seconds, started
again; the daemon stopped with SIGTERM at 65% and started again. The daemon binds the socket
itself here (no systemd socket activation), so clients are refused until it is back: every
client keeps its unanswered lines and sends them again on a new connection, with the same
event_id, which makes a resend idempotent.

Measured: for every line, whether and when it was answered and how (ok, spooled, duplicate,
warnings, error code); ack latency from the first send to the reply, split into steady state
and the outage windows (from the start of an outage to OUTAGE_SETTLE_S after its end); daemon
RSS every RSS_SAMPLE_INTERVAL_S for each daemon process (start = after RSS_WARMUP_S of its
life, middle, end).

Projector lag: every LAG_SAMPLE_INTERVAL_S a marker session gets spec_started + spec_completed
for a new spec; the lag is the time from the spec_completed's ack to its row in `spec_runs` with
status completed (polled every LAG_POLL_S). The age of the oldest `dirty_sessions` row is not
used: every new event of a session refreshes its marked_at, so under steady traffic that age
stays small even when the projector falls behind.

Invariants (exit 1 if any fails): every acknowledged event is stored (rows in `events` for the
acked event_ids; 0 lost) and no event_id is stored twice; every line is answered (valid events
ok, refused lines ok:false, replies in order); every socat event sent outside the daemon restart
window is stored; every marker is projected; no `projection_failures` rows at the end; a clean
session sent at the end is projected within CLEAN_PROJECTED_WITHIN_S; the daemon exits 0 on
SIGTERM. Reported, not enforced: RSS growth, lag and latency percentiles.

Standalone like bench/ingest.py: the cluster and the daemon live in a directory made with
tempfile (under $TMPDIR, else /tmp), removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402

from ingest import TOOLS, DaemonProcess, percentile, resident_mb  # noqa: E402
from ralph_monitor.cluster import Cluster  # noqa: E402
from ralph_monitor.store import ensure_database, prepare_database  # noqa: E402

DBNAME = "soak"
MINUTES = 30.0
MIN_MINUTES = 1.0
"""Shorter runs cannot fit both planned outages."""
RATE_EVENTS_PER_S = 200.0
SESSIONS = 8
IDLE_CLIENTS = 300
SOCAT_EVENTS_PER_S = 5.0

# The Ralph loops
SPECS_PER_SESSION = 20
TOOL_EVENTS_PER_SPEC = (10, 80)
"""Uniform range of tool events between spec_started and the spec's end."""
HEARTBEAT_EVERY_EVENTS = 50
SPEC_FAILURE_PROBABILITY = 0.1
INTERVENTION_PROBABILITY = 0.03
"""Per spec: an intervention_request, answered by a user_feedback a few events later."""

# Poison
POISON_PROBABILITY = 0.2
"""Per session_started / spec end: an absurd value in its data."""
TS_POISON_PROBABILITY = 0.002
"""Per event: a timestamp far in the past or future."""
INVALID_LINE_PROBABILITY = 0.002
"""Per event: a line the daemon must refuse, sent before it."""
OVERSIZED_LINE_PROBABILITY = 0.0002
OVERSIZED_LINE_BYTES = 1_200_000
"""Over the daemon's default [limits] max_line_bytes (1 MiB)."""
HUGE_ERROR_CHARS = 200_000
DATA_POISONS: tuple[dict[str, Any], ...] = (
    {"tokens_used": 1e30},
    {"tokens_used": -5},
    {"tokens_used": {"input": 5, "output": 7}},
    {"cost_usd": "0.5"},
    {"cost_usd": {"usd": 0.5}},
    {"duration_s": [1, 2]},
    {"error": "E" * HUGE_ERROR_CHARS},
)
START_POISONS: tuple[dict[str, Any], ...] = (
    {"total_specs": -3},
    {"total_specs": "twenty"},
    {"name": "N" * HUGE_ERROR_CHARS},
)
TS_POISONS = ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "1969-07-20T20:17:00Z")
INVALID_LINES: tuple[bytes, ...] = (
    b'{"type": "spec_started", "session_id": "',                      # cut off
    b"{'type': 'spec_started'}",                                       # not JSON
    b"[1, 2, 3]",                                                      # not an object
    b'"spec_completed"',
    b"42",
    b"null",
    b'{"session_id": "6f1c3f0e-6a43-4c7e-9a59-0d2b8f0e4b11"}',         # no type
    b'{"type": "spec_started", "session_id": "not-a-uuid"}',
    b'{"type": "spec_started", "data": {"note": "\xff\xfe"}}',         # invalid UTF-8
    b'{"type": "spec_started", "data": {"note": "a\\u0000b"}}',        # NUL
)
CONNECTION_ERROR_CODES = ("too_many_connections", "too_many_connections_for_uid", "evicted_idle", "idle_timeout")
"""Error lines about the connection itself, not answers to a line."""

# Outages
PG_RESTART_AT = 0.35
DAEMON_RESTART_AT = 0.65
"""When the planned outages start, as fractions of the run."""
PG_DOWN_S = 10.0
OUTAGE_SETTLE_S = 5.0
"""An outage's window for latencies lasts this long after it ended (reconnection, spool replay)."""

# Clients
CONNECT_RETRY_S = 0.05
CONNECT_RETRY_MAX_S = 0.5
REPLY_POLL_S = 1.0
REPLY_TIMEOUT_S = 60.0
"""A connection with lines in flight and no reply for this long is given up (counted) and
its lines are sent again on a new one."""
IDLE_STAGGER_S = 0.02
IDLE_RECONNECT_S = 1.0

# Measuring
LAG_SAMPLE_INTERVAL_S = 2.0
LAG_POLL_S = 0.1
RSS_SAMPLE_INTERVAL_S = 5.0
RSS_WARMUP_S = 10.0
"""A daemon process's "start" RSS is its first sample after this much of its life."""
DB_RETRY_S = 1.0
DB_CONNECT_TIMEOUT_S = 2
FINISH_TIMEOUT_S = 120.0
"""After the run, how long clients may take to get their last replies."""
FINAL_WAIT_S = 30.0
"""After the run, how long to wait for markers to be projected and acked events to be stored
(the spool is replayed asynchronously)."""
CLEAN_PROJECTED_WITHIN_S = 10.0
CLEAN_SPEC = "CLEAN-1"
CLEAN_TOKENS = 42
CLEAN_COST_USD = Decimal("0.25")
ID_CHUNK = 50_000
"""event_ids per storage-check query."""


class SoakError(RuntimeError):
    """The run cannot go on (the daemon died outside a planned restart, a client hung)."""


# ---------------------------------------------------------------------------- lines

EVENT, POISON, INVALID, SOCAT = "event", "poison", "invalid", "socat"


@dataclass(slots=True)
class Line:
    """One line sent, and what became of it."""

    data: bytes | None
    """The bytes to send (dropped once answered)."""
    kind: str
    event_id: str | None = None
    first_sent: float = 0.0
    sends: int = 0
    answered_at: float = 0.0
    ok: bool | None = None
    spooled: bool = False
    duplicate: bool = False
    warned: bool = False
    code: str = ""


@dataclass
class Ledger:
    """Every line sent and what happened to the connections."""

    lines: list[Line] = field(default_factory=list)
    """Lines of the clients that read replies (agents, markers, the clean session)."""
    socat: list[Line] = field(default_factory=list)
    reconnects: int = 0
    refused_connects: Counter[str] = field(default_factory=Counter)
    connection_errors: Counter[str] = field(default_factory=Counter)
    reply_mismatches: int = 0
    reply_timeouts: int = 0
    unexpected_replies: int = 0
    idle_connections: int = 0
    idle_closed: Counter[str] = field(default_factory=Counter)


def now_ts() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def event_line(rng: random.Random, event_type: str, session_id: str, spec_id: str | None = None,
               data: dict[str, Any] | None = None, *, kind: str = EVENT, ts: str | None = None) -> Line:
    """An event line with a fresh event_id, stamped now (the agent's time) unless `ts` is given."""
    event: dict[str, Any] = {"type": event_type, "session_id": session_id}
    if spec_id is not None:
        event["spec_id"] = spec_id
    event["ts"] = ts or now_ts()
    event["event_id"] = new_id(rng)
    event["data"] = data or {}
    return Line(json.dumps(event, separators=(",", ":")).encode() + b"\n", kind, event["event_id"])


def ralph_loop(rng: random.Random, slot: int) -> Iterator[tuple[str, str, str | None, dict[str, Any], bool]]:
    """One agent's events, Ralph loop after Ralph loop: (type, session_id, spec_id, data, poisoned)."""
    number = 0
    while True:
        number += 1
        session = new_id(rng)
        start: dict[str, Any] = {"name": f"soak-{slot}-{number}", "total_specs": SPECS_PER_SESSION,
                                 "metadata": {"branch": "main", "model": "claude", "slot": slot}}
        poisoned = rng.random() < POISON_PROBABILITY
        if poisoned:
            start.update(rng.choice(START_POISONS))
        yield "session_started", session, None, start, poisoned
        since_heartbeat = 0
        failures = 0
        for n in range(1, SPECS_PER_SESSION + 1):
            spec = f"SPEC-{n:03d}"
            yield "spec_started", session, spec, {"attempt": 1}, False
            tools = rng.randint(*TOOL_EVENTS_PER_SPEC)
            ask_at = rng.randrange(tools) if rng.random() < INTERVENTION_PROBABILITY else -1
            for i in range(tools):
                tool = rng.choice(TOOLS)
                yield "cc.PostToolUse", session, spec, {
                    "tool": tool, "duration_ms": rng.randrange(5, 60_000), "exit_code": rng.choice((0, 0, 0, 1)),
                    "summary": f"{tool}: src/module_{rng.randrange(50)}.py, {rng.randrange(300)} tests passed",
                }, False
                since_heartbeat += 1
                if since_heartbeat >= HEARTBEAT_EVERY_EVENTS:
                    since_heartbeat = 0
                    yield "session_heartbeat", session, None, {"pid": 4242, "rss_mb": rng.randrange(200, 900)}, False
                if i == ask_at:
                    yield "intervention_request", session, spec, {"message": "Which migration order is right?"}, False
                if ask_at >= 0 and i == min(ask_at + 3, tools - 1):
                    yield "user_feedback", session, spec, {"answer": "schema first, then data"}, False
            failed = rng.random() < SPEC_FAILURE_PROBABILITY
            failures += failed
            end: dict[str, Any] = {"tokens_used": rng.randrange(1_000, 200_000),
                                   "cost_usd": round(rng.random() * 3, 4), "duration_s": round(rng.random() * 900, 1)}
            if failed:
                end["error"] = "tests failed: 3 of 128"
            poisoned = rng.random() < POISON_PROBABILITY
            if poisoned:
                end.update(rng.choice(DATA_POISONS))
            yield "spec_failed" if failed else "spec_completed", session, spec, end, poisoned
        yield "session_ended", session, None, {"status": "failed" if failures > 3 else "completed"}, False


def invalid_line(rng: random.Random) -> Line:
    if rng.random() < OVERSIZED_LINE_PROBABILITY / INVALID_LINE_PROBABILITY:
        blob = b"A" * OVERSIZED_LINE_BYTES
        return Line(b'{"type":"cc.PostToolUse","data":{"output":"' + blob + b'"}}\n', INVALID)
    return Line(rng.choice(INVALID_LINES) + b"\n", INVALID)


# ---------------------------------------------------------------------------- clients

async def connect(path: str, ledger: Ledger) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the daemon, retrying (with a short backoff) while it refuses."""
    delay = CONNECT_RETRY_S
    while True:
        try:
            return await asyncio.open_unix_connection(path)
        except OSError as exc:   # refused or no socket file: the daemon is restarting
            ledger.refused_connects[type(exc).__name__] += 1
            await asyncio.sleep(delay)
            delay = min(CONNECT_RETRY_MAX_S, delay * 2)


class AckedClient:
    """A client that reads its replies, like ralph_monitor.client: lines are pipelined on one
    connection and matched to the replies in order. When the connection is lost, the lines not
    answered yet are sent again, first, on a new one: same bytes, so the same event_id."""

    def __init__(self, socket_path: str, ledger: Ledger) -> None:
        self._path = socket_path
        self._ledger = ledger
        self._queue: deque[Line] = deque()
        self._inflight: deque[Line] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self.task = asyncio.create_task(self._run())

    def send(self, line: Line) -> None:
        self._ledger.lines.append(line)
        self._queue.append(line)
        self._wake.set()

    def close(self) -> None:
        """No more lines: `task` ends once every line is answered."""
        self._closing = True
        self._wake.set()

    @property
    def _finished(self) -> bool:
        return self._closing and not self._queue and not self._inflight

    async def _run(self) -> None:
        while True:
            reader, writer = await connect(self._path, self._ledger)
            self._queue.extendleft(reversed(self._inflight))
            self._inflight.clear()
            writing = asyncio.create_task(self._write(writer))
            try:
                await self._read(reader)
            finally:
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)
                writer.close()
            if self._finished:
                return
            self._ledger.reconnects += 1

    async def _write(self, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                while self._queue:
                    line = self._queue.popleft()
                    assert line.data is not None
                    writer.write(line.data)
                    if not line.sends:
                        line.first_sent = time.monotonic()
                    line.sends += 1
                    self._inflight.append(line)
                    await writer.drain()
                self._wake.clear()
                await self._wake.wait()
        except OSError:
            return   # the reader sees the end of the connection too

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Match replies to lines until the connection ends, replies stop coming, or every
        line is answered after close()."""
        waiting_since = time.monotonic()
        while not self._finished:
            try:
                raw = await asyncio.wait_for(reader.readline(), REPLY_POLL_S)
            except TimeoutError:
                if self._inflight and time.monotonic() - max(waiting_since, self._inflight[0].first_sent) \
                        > REPLY_TIMEOUT_S:
                    self._ledger.reply_timeouts += 1
                    return
                continue
            except OSError:
                return
            if not raw:
                return
            waiting_since = time.monotonic()
            try:
                reply = json.loads(raw)
            except ValueError:
                raise SoakError(f"the daemon replied with a line that is not JSON: {raw[:200]!r}") from None
            self._answer(reply, waiting_since)

    def _answer(self, reply: dict[str, Any], when: float) -> None:
        if not reply.get("ok") and reply.get("code") in CONNECTION_ERROR_CODES:
            self._ledger.connection_errors[reply["code"]] += 1
            return
        if not self._inflight:
            self._ledger.unexpected_replies += 1
            return
        line = self._inflight.popleft()
        line.answered_at = when
        line.ok = bool(reply.get("ok"))
        line.data = None
        if line.ok:
            if reply.get("id") != line.event_id:
                self._ledger.reply_mismatches += 1
            line.spooled = bool(reply.get("spooled"))
            line.duplicate = bool(reply.get("duplicate"))
            line.warned = bool(reply.get("warnings"))
        else:
            line.code = str(reply.get("code"))


async def run_agent(client: AckedClient, rng: random.Random, slot: int, rate_per_s: float, stop_at: float) -> None:
    """One agent: its Ralph loops at `rate_per_s` (exponential gaps) until `stop_at`, then the
    running session is ended as interrupted."""
    next_at = time.monotonic()
    session, last_type = None, None
    for event_type, session_id, spec_id, data, poisoned in ralph_loop(rng, slot):
        next_at += rng.expovariate(rate_per_s)
        if next_at >= stop_at:
            break
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if rng.random() < INVALID_LINE_PROBABILITY:
            client.send(invalid_line(rng))
        bad_ts = rng.random() < TS_POISON_PROBABILITY
        client.send(event_line(rng, event_type, session_id, spec_id, data,
                               kind=POISON if poisoned or bad_ts else EVENT,
                               ts=rng.choice(TS_POISONS) if bad_ts else None))
        session, last_type = session_id, event_type
    if session is not None and last_type != "session_ended":
        client.send(event_line(rng, "session_ended", session, data={"status": "interrupted"}))
    client.close()


async def run_socat(path: str, ledger: Ledger, rng: random.Random, rate_per_s: float, stop_at: float) -> None:
    """Fire-and-forget clients: each event on a new connection, closed at once, reply unread."""
    session = new_id(rng)

    async def fire(line: Line) -> None:
        _, writer = await connect(path, ledger)
        line.first_sent = time.monotonic()
        line.sends = 1
        assert line.data is not None
        writer.write(line.data)
        line.data = None
        try:
            await writer.drain()
        except OSError:
            pass
        writer.close()

    tasks = set()
    next_at = time.monotonic()
    n = 0
    while True:
        next_at += rng.expovariate(rate_per_s)
        if next_at >= stop_at:
            break
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        n += 1
        line = event_line(rng, "session_heartbeat", session, data={"via": "socat", "n": n}, kind=SOCAT)
        ledger.socat.append(line)
        task = asyncio.create_task(fire(line))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


async def hold_idle(path: str, ledger: Ledger, number: int, stop: asyncio.Event) -> None:
    """An idle client: connects and never writes; reconnects when the daemon closes it."""
    await asyncio.sleep(number * IDLE_STAGGER_S)
    while not stop.is_set():
        reader, writer = await connect(path, ledger)
        ledger.idle_connections += 1
        reading = asyncio.create_task(reader.read())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if reading.done():
            try:
                data = reading.result()
            except OSError as exc:
                ledger.idle_closed[type(exc).__name__] += 1
            else:
                ledger.idle_closed[json.loads(data).get("code", "?") if data.strip() else "closed"] += 1
        reading.cancel()
        stopping.cancel()
        writer.close()
        await asyncio.sleep(IDLE_RECONNECT_S)


# ---------------------------------------------------------------------------- database side

class Db:
    """One connection for the probes, reopened after PostgreSQL went away."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def rows(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=DB_CONNECT_TIMEOUT_S)
            try:
                cur = await self._conn.execute(query, params)
                return await cur.fetchall()
            except psycopg.OperationalError:
                await self._conn.close()
                self._conn = None
                raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


@dataclass
class LagSample:
    spec_id: str
    line: Line
    seen_at: float = 0.0


class LagProbe:
    """Marker specs in a session of their own, and how long each took to reach spec_runs."""

    def __init__(self, client: AckedClient, db: Db, rng: random.Random) -> None:
        self._client = client
        self._db = db
        self._rng = rng
        self.session_id = new_id(rng)
        self.samples: list[LagSample] = []

    async def send(self, stop_at: float) -> None:
        self._client.send(event_line(self._rng, "session_started", self.session_id,
                                     data={"name": "soak-lag-markers", "total_specs": 0}))
        n = 0
        while time.monotonic() + LAG_SAMPLE_INTERVAL_S < stop_at:
            await asyncio.sleep(LAG_SAMPLE_INTERVAL_S)
            n += 1
            spec = f"LAG-{n:05d}"
            self._client.send(event_line(self._rng, "spec_started", self.session_id, spec))
            done = event_line(self._rng, "spec_completed", self.session_id, spec, {"tokens_used": 1, "cost_usd": 0.0})
            self._client.send(done)
            self.samples.append(LagSample(spec, done))
        self._client.send(event_line(self._rng, "session_ended", self.session_id, data={"status": "completed"}))
        self._client.close()

    def _waiting(self) -> list[LagSample]:
        return [s for s in self.samples if not s.seen_at and s.line.ok]

    async def poll(self, stop: asyncio.Event) -> None:
        """Look for acknowledged markers in spec_runs until `stop` and none is left waiting."""
        while not (stop.is_set() and not self._waiting() and self._client.task.done()):
            waiting = self._waiting()
            if waiting:
                try:
                    rows = await self._db.rows(
                        "SELECT spec_id FROM spec_runs WHERE session_id = %s AND status = 'completed' "
                        "AND spec_id = ANY(%s)", (self.session_id, [s.spec_id for s in waiting]))
                except psycopg.Error:
                    await asyncio.sleep(DB_RETRY_S)
                    continue
                seen = {r[0] for r in rows}
                now = time.monotonic()
                for sample in waiting:
                    if sample.spec_id in seen:
                        sample.seen_at = now
            await asyncio.sleep(LAG_POLL_S)


@dataclass
class Outage:
    name: str
    start: float
    end: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DaemonWatch:
    """The daemon's RSS samples (monotonic time, pid, MB) and its processes' start times."""

    daemon: DaemonProcess
    samples: list[tuple[float, int, float]] = field(default_factory=list)
    started: dict[int, float] = field(default_factory=dict)
    restarting: bool = False

    def sample(self) -> None:
        process = self.daemon.process
        if self.restarting:
            return
        if process is None or process.poll() is not None:
            raise SoakError(f"the daemon died outside a planned restart:\n{self.daemon.log()}")
        rss = resident_mb(process.pid)
        if rss is not None:
            self.samples.append((time.monotonic(), process.pid, rss))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(RSS_SAMPLE_INTERVAL_S)


async def run_outages(cluster: Cluster, watch: DaemonWatch, begin: float, seconds: float,
                      pg_down_s: float) -> list[Outage]:
    """PostgreSQL restart, then daemon restart, at their planned times."""
    outages = []
    await asyncio.sleep(max(0.0, begin + PG_RESTART_AT * seconds - time.monotonic()))
    start = time.monotonic()
    await asyncio.to_thread(cluster.stop, "fast")
    stopped = time.monotonic()
    await asyncio.sleep(pg_down_s)
    await asyncio.to_thread(cluster.start)
    end = time.monotonic()
    outages.append(Outage("postgresql restart", start, end, {"stop_took_s": stopped - start, "down_s": end - stopped}))

    await asyncio.sleep(max(0.0, begin + DAEMON_RESTART_AT * seconds - time.monotonic()))
    daemon = watch.daemon
    watch.restarting = True
    old_pid = daemon.pid
    start = time.monotonic()
    await asyncio.to_thread(daemon.stop)
    stopped = time.monotonic()
    assert daemon.process is not None
    exit_code = daemon.process.returncode
    await asyncio.to_thread(daemon.start)
    end = time.monotonic()
    watch.started[daemon.pid] = end
    watch.restarting = False
    outages.append(Outage("daemon restart", start, end, {
        "stop_took_s": stopped - start, "start_took_s": end - stopped, "exit_code": exit_code,
        "old_pid": old_pid, "new_pid": daemon.pid}))
    return outages


async def clean_session(path: str, ledger: Ledger, db: Db, rng: random.Random) -> dict[str, Any]:
    """Send a clean session and wait (bounded) until sessions and spec_runs show it exactly."""
    client = AckedClient(path, ledger)
    sid = new_id(rng)
    lines = [
        event_line(rng, "session_started", sid, data={"name": "soak-clean", "total_specs": 1}),
        event_line(rng, "spec_started", sid, CLEAN_SPEC),
        event_line(rng, "spec_completed", sid, CLEAN_SPEC,
                   {"tokens_used": CLEAN_TOKENS, "cost_usd": float(CLEAN_COST_USD), "duration_s": 1.5}),
        event_line(rng, "session_ended", sid, data={"status": "completed"}),
    ]
    for line in lines:
        client.send(line)
    client.close()
    await asyncio.wait_for(client.task, FINISH_TIMEOUT_S)
    if not all(line.ok for line in lines):
        return {"projected": False, "seconds": None, "last_seen": "not acknowledged"}
    acked_at = max(line.answered_at for line in lines)
    expected = ("completed", 1, CLEAN_TOKENS, CLEAN_COST_USD, "completed")
    seen: tuple[Any, ...] | None = None
    while time.monotonic() < acked_at + CLEAN_PROJECTED_WITHIN_S:
        try:
            rows = await db.rows(
                "SELECT s.execution_state, s.specs_completed, s.tokens_used, s.cost_usd, r.status "
                "FROM sessions s LEFT JOIN spec_runs r ON r.session_id = s.id AND r.spec_id = %s "
                "WHERE s.id = %s", (CLEAN_SPEC, sid))
        except psycopg.Error:
            rows = []
        seen = rows[0] if rows else None
        if seen == expected:
            return {"projected": True, "seconds": time.monotonic() - acked_at}
        await asyncio.sleep(LAG_POLL_S)
    return {"projected": False, "seconds": None, "last_seen": str(seen)}


async def storage(db: Db, ids: list[str], acked: set[str]) -> tuple[set[str], dict[str, int]]:
    """Which of `ids` have rows in `events` (waiting, bounded, for every acked one: the spool is
    replayed asynchronously), and every event_id stored more than once."""
    deadline = time.monotonic() + FINAL_WAIT_S
    while True:
        stored: set[str] = set()
        for start in range(0, len(ids), ID_CHUNK):
            rows = await db.rows("SELECT DISTINCT event_id::text FROM events WHERE event_id = ANY(%s::uuid[])",
                                 (ids[start:start + ID_CHUNK],))
            stored.update(r[0] for r in rows)
        if acked <= stored or time.monotonic() >= deadline:
            break
        await asyncio.sleep(DB_RETRY_S)
    twice = await db.rows("SELECT event_id::text, count(*) FROM events GROUP BY event_id HAVING count(*) > 1")
    return stored, {r[0]: r[1] for r in twice}


# ---------------------------------------------------------------------------- the run

@dataclass
class Run:
    """Everything measured, for the report."""

    args: argparse.Namespace
    begin: float
    traffic_s: float
    ledger: Ledger
    watch: DaemonWatch
    outages: list[Outage]
    lag: LagProbe
    clean: dict[str, Any]
    stored: set[str]
    stored_twice: dict[str, int]
    projection_failures: int
    final_exit_code: int | None = None


async def soak(args: argparse.Namespace, cluster: Cluster, daemon: DaemonProcess, dsn: str) -> Run:
    rng = random.Random(args.seed)
    ledger = Ledger()
    db = Db(dsn)
    path = daemon.socket_path
    seconds = args.minutes * 60
    watch = DaemonWatch(daemon, started={daemon.pid: time.monotonic()})
    begin = time.monotonic()
    stop_at = begin + seconds
    idle_stop = asyncio.Event()
    lag_stop = asyncio.Event()
    try:
        sampler = asyncio.create_task(watch.run())
        outages_task = asyncio.create_task(run_outages(cluster, watch, begin, seconds, args.pg_down))
        idle = [asyncio.create_task(hold_idle(path, ledger, i, idle_stop)) for i in range(args.idle_clients)]
        agents = [AckedClient(path, ledger) for _ in range(args.sessions)]
        lag = LagProbe(AckedClient(path, ledger), db, random.Random(rng.random()))
        traffic = [asyncio.create_task(run_agent(client, random.Random(rng.random()), slot,
                                                 args.rate / args.sessions, stop_at))
                   for slot, client in enumerate(agents)]
        traffic.append(asyncio.create_task(run_socat(path, ledger, random.Random(rng.random()),
                                                     args.socat_rate, stop_at)))
        traffic.append(asyncio.create_task(lag.send(stop_at)))
        poller = asyncio.create_task(lag.poll(lag_stop))
        finishing = asyncio.gather(*traffic, outages_task, *(c.task for c in agents))
        done, _ = await asyncio.wait({finishing, sampler}, timeout=seconds + FINISH_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if sampler in done:
            sampler.result()
        if finishing not in done:
            raise SoakError(f"clients not finished {FINISH_TIMEOUT_S:g} s after the run; "
                            f"{sum(1 for line in ledger.lines if line.ok is None)} lines unanswered")
        finishing.result()
        outages = outages_task.result()
        traffic_s = time.monotonic() - begin
        idle_stop.set()
        await asyncio.gather(*idle)
        clean = await clean_session(path, ledger, db, rng)
        lag_stop.set()
        try:
            await asyncio.wait_for(poller, FINAL_WAIT_S)
        except TimeoutError:
            pass   # markers never projected are counted in the report
        watch.sample()
        sampler.cancel()
        acked = {line.event_id for line in ledger.lines if line.ok and line.event_id}
        ids = sorted(acked | {line.event_id for line in ledger.socat if line.event_id})
        stored, twice = await storage(db, ids, acked)
        failures = (await db.rows("SELECT count(*) FROM projection_failures"))[0][0]
        return Run(args, begin, traffic_s, ledger, watch, outages, lag, clean, stored, twice, failures)
    finally:
        await db.close()


# ---------------------------------------------------------------------------- report

def latency_stats(values_s: list[float]) -> dict[str, Any]:
    """count, p50, p99 and max in milliseconds (None without values)."""
    if not values_s:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    weighted = [(v, 1) for v in values_s]
    return {"count": len(values_s), "p50_ms": 1000 * percentile(weighted, 0.50),
            "p99_ms": 1000 * percentile(weighted, 0.99), "max_ms": 1000 * max(values_s)}


def window_of(start: float, end: float, windows: list[tuple[str, float, float]]) -> str | None:
    """The name of the first window that [start, end] overlaps."""
    for name, w_start, w_end in windows:
        if start <= w_end and end >= w_start:
            return name
    return None


def rss_report(watch: DaemonWatch) -> list[dict[str, Any]]:
    """Per daemon process: RSS (MB) at start (after RSS_WARMUP_S), middle and end, and the max."""
    processes = []
    for pid, started in watch.started.items():
        samples = [(t, rss) for t, p, rss in watch.samples if p == pid]
        if not samples:
            continue
        warm = [s for s in samples if s[0] - started >= RSS_WARMUP_S] or samples
        middle_t = (warm[0][0] + warm[-1][0]) / 2
        middle = min(warm, key=lambda s: abs(s[0] - middle_t))
        processes.append({"pid": pid, "start_mb": warm[0][1], "middle_mb": middle[1], "end_mb": warm[-1][1],
                          "max_mb": max(rss for _, rss in samples), "growth_mb": warm[-1][1] - warm[0][1],
                          "lived_s": warm[-1][0] - started})
    return processes


def log_problems(log_path: Path) -> dict[str, Any]:
    """WARNING / ERROR / CRITICAL lines and tracebacks in the daemon's log."""
    counts: Counter[str] = Counter()
    first_errors = []
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    for line in text.splitlines():
        for level in ("WARNING", "ERROR", "CRITICAL", "Traceback"):
            if level in line:
                counts[level] += 1
                if level != "WARNING" and len(first_errors) < 5:
                    first_errors.append(line[:300])
                break
    return {"counts": dict(counts), "first_errors": first_errors}


def build_report(run: Run) -> dict[str, Any]:
    ledger, args = run.ledger, run.args
    events = [line for line in ledger.lines if line.kind in (EVENT, POISON)]
    poison = [line for line in events if line.kind == POISON]
    invalid = [line for line in ledger.lines if line.kind == INVALID]
    acked = {line.event_id for line in events if line.ok}
    lost = sorted(acked - run.stored)
    windows = [(o.name, o.start, o.end + OUTAGE_SETTLE_S) for o in run.outages]
    steady: list[float] = []
    in_outage: dict[str, list[float]] = {o.name: [] for o in run.outages}
    for line in ledger.lines:
        if not line.ok:
            continue
        window = window_of(line.first_sent, line.answered_at, windows)
        (in_outage[window] if window else steady).append(line.answered_at - line.first_sent)
    restart = next((o for o in run.outages if o.name == "daemon restart"), None)
    socat_lost_in = socat_lost_out = 0
    for line in ledger.socat:
        if line.event_id not in run.stored:
            if restart is not None and restart.start <= line.first_sent <= restart.end:
                socat_lost_in += 1
            else:
                socat_lost_out += 1
    lag_steady, lag_outage = [], []
    for sample in run.lag.samples:
        if sample.seen_at:
            lag = sample.seen_at - sample.line.answered_at
            (lag_outage if window_of(sample.line.answered_at, sample.seen_at, windows) else lag_steady).append(lag)
    lag_unseen = sum(1 for s in run.lag.samples if not s.seen_at)
    rss = rss_report(run.watch)
    exit_codes = [o.details["exit_code"] for o in run.outages if "exit_code" in o.details] + [run.final_exit_code]
    agent_acked = sum(1 for line in events if line.ok)
    invariants = {
        "acked events all stored (0 lost)": not lost,
        "no event_id stored twice": not run.stored_twice,
        "every valid event acknowledged": all(line.ok for line in events),
        "every refused line answered ok:false": all(line.ok is False for line in invalid),
        "replies in order, none missing": not (ledger.reply_mismatches or ledger.reply_timeouts
                                               or ledger.unexpected_replies),
        "socat events stored (outside the daemon restart)": socat_lost_out == 0,
        "every lag marker projected": lag_unseen == 0,
        "0 projection_failures at the end": run.projection_failures == 0,
        f"clean session projected within {CLEAN_PROJECTED_WITHIN_S:g} s": bool(run.clean["projected"]),
        "daemon exits 0 on SIGTERM": all(code == 0 for code in exit_codes),
    }
    return {
        "settings": {"minutes": args.minutes, "rate_events_per_s": args.rate, "sessions": args.sessions,
                     "idle_clients": args.idle_clients, "socat_events_per_s": args.socat_rate,
                     "pg_down_s": args.pg_down, "seed": args.seed},
        "traffic_s": run.traffic_s,
        "measured_events_per_s": (agent_acked + len(ledger.socat)) / run.traffic_s,
        "events": {"sent": len(events), "acked": len(acked), "stored": len(acked & run.stored), "lost": len(lost),
                   "lost_ids": lost[:20], "stored_twice": len(run.stored_twice),
                   "stored_twice_ids": sorted(run.stored_twice)[:20],
                   "unanswered": sum(1 for line in events if line.ok is None),
                   "refused": dict(Counter(line.code for line in events if line.ok is False)),
                   "spooled_acks": sum(1 for line in events if line.spooled),
                   "duplicate_acks": sum(1 for line in events if line.duplicate),
                   "resent": sum(1 for line in events if line.sends > 1),
                   "poison_sent": len(poison), "poison_acked": sum(1 for line in poison if line.ok),
                   "poison_acked_with_warnings": sum(1 for line in poison if line.ok and line.warned)},
        "rejected_lines": {"sent": len(invalid), "answered_ok_false": sum(1 for line in invalid if line.ok is False),
                           "accepted": sum(1 for line in invalid if line.ok),
                           "codes": dict(Counter(line.code for line in invalid if line.ok is False))},
        "socat": {"sent": len(ledger.socat), "stored": sum(1 for line in ledger.socat if line.event_id in run.stored),
                  "lost_in_daemon_restart": socat_lost_in, "lost_outside": socat_lost_out},
        "connections": {"reconnects": ledger.reconnects, "refused_connects": dict(ledger.refused_connects),
                        "connection_errors": dict(ledger.connection_errors),
                        "reply_mismatches": ledger.reply_mismatches, "reply_timeouts": ledger.reply_timeouts,
                        "unexpected_replies": ledger.unexpected_replies,
                        "idle_clients": args.idle_clients, "idle_connections": ledger.idle_connections,
                        "idle_closed_by": dict(ledger.idle_closed)},
        "rss_mb": rss,
        "rss_samples": [(round(t - run.begin, 1), pid, round(mb, 2)) for t, pid, mb in run.watch.samples],
        "projector_lag_s": {
            "method": "marker spec_completed ack -> its spec_runs row (status completed)",
            "samples": len(run.lag.samples), "not_projected": lag_unseen,
            "p50": percentile([(v, 1) for v in lag_steady], 0.50) if lag_steady else None,
            "p99": percentile([(v, 1) for v in lag_steady], 0.99) if lag_steady else None,
            "max": max(lag_steady, default=None), "outage_samples": len(lag_outage),
            "outage_max": max(lag_outage, default=None)},
        "ack_latency": {"steady": latency_stats(steady),
                        "outages": {name: latency_stats(values) for name, values in in_outage.items()}},
        "outages": [{"name": o.name, "start_s": o.start - run.begin, "end_s": o.end - run.begin,
                     "window_end_s": o.end + OUTAGE_SETTLE_S - run.begin, **o.details} for o in run.outages],
        "projection_failures": run.projection_failures,
        "clean_session": run.clean,
        "daemon_exit_codes": exit_codes,
        "daemon_log": log_problems(run.watch.daemon.log_path),
        "invariants": invariants,
        "ok": all(invariants.values()),
    }


def write_lines(path: Path, run: Run) -> None:
    """The record of every line sent (--lines)."""
    with path.open("w") as out:
        for line in [*run.ledger.lines, *run.ledger.socat]:
            out.write(json.dumps({
                "kind": line.kind, "event_id": line.event_id, "sends": line.sends, "ok": line.ok,
                "code": line.code or None, "spooled": line.spooled, "duplicate": line.duplicate,
                "first_sent_s": round(line.first_sent - run.begin, 4),
                "latency_ms": round(1000 * (line.answered_at - line.first_sent), 3) if line.answered_at else None,
            }) + "\n")


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_report(report: dict[str, Any]) -> None:
    s, e, r, c = report["settings"], report["events"], report["rejected_lines"], report["socat"]
    lag, ack, conn = report["projector_lag_s"], report["ack_latency"], report["connections"]
    rows: list[tuple[str, str]] = [
        ("run", f"{report['traffic_s'] / 60:.1f} min, {report['measured_events_per_s']:.0f} events/s "
                f"(target {s['rate_events_per_s']:g} + socat {s['socat_events_per_s']:g}), {s['sessions']} sessions, "
                f"{s['idle_clients']} idle clients"),
        ("events sent / acked / stored", f"{e['sent']:,} / {e['acked']:,} / {e['stored']:,}"),
        ("lost / stored twice / unanswered", f"{e['lost']} / {e['stored_twice']} / {e['unanswered']}"),
        ("spooled acks / resent / duplicate acks", f"{e['spooled_acks']:,} / {e['resent']:,} / {e['duplicate_acks']:,}"),
        ("poison sent / acked (with warnings)",
         f"{e['poison_sent']:,} / {e['poison_acked']:,} ({e['poison_acked_with_warnings']:,})"),
        ("valid events refused", str(e["refused"] or 0)),
        ("rejected lines sent / answered ok:false",
         f"{r['sent']:,} / {r['answered_ok_false']:,}  " + ", ".join(f"{k} {v}" for k, v in sorted(r["codes"].items()))),
        ("socat sent / stored",
         f"{c['sent']:,} / {c['stored']:,} (lost in daemon restart {c['lost_in_daemon_restart']}, "
         f"outside {c['lost_outside']})"),
        ("reconnects / refused connects", f"{conn['reconnects']:,} / {sum(conn['refused_connects'].values()):,}"),
        ("idle connections / closed by daemon",
         f"{conn['idle_connections']:,} / " + (", ".join(f"{k} {v}" for k, v in conn["idle_closed_by"].items()) or "0")),
    ]
    for p in report["rss_mb"]:
        rows.append((f"daemon RSS MB pid {p['pid']} start/mid/end",
                     f"{p['start_mb']:.1f} / {p['middle_mb']:.1f} / {p['end_mb']:.1f} "
                     f"(max {p['max_mb']:.1f}, {p['growth_mb']:+.1f} over {p['lived_s'] / 60:.1f} min)"))
    rows += [
        ("projector lag s p50 / p99 / max",
         f"{fmt(lag['p50'], 2)} / {fmt(lag['p99'], 2)} / {fmt(lag['max'], 2)} ({lag['samples']} markers; in outages "
         f"max {fmt(lag['outage_max'], 1)}; not projected {lag['not_projected']})"),
        ("ack latency ms p50 / p99 / max (steady)",
         f"{fmt(ack['steady']['p50_ms'], 2)} / {fmt(ack['steady']['p99_ms'], 2)} / {fmt(ack['steady']['max_ms'], 0)} "
         f"({ack['steady']['count']:,} lines)"),
    ]
    for outage in report["outages"]:
        stats = ack["outages"][outage["name"]]
        rows.append((f"  {outage['name']} ({outage['start_s']:.0f}-{outage['window_end_s']:.0f} s)",
                     f"{fmt(stats['p50_ms'], 1)} / {fmt(stats['p99_ms'], 1)} / {fmt(stats['max_ms'], 0)} "
                     f"({stats['count']:,} lines)"))
    clean = report["clean_session"]
    log = report["daemon_log"]["counts"]
    rows += [
        ("projection_failures at the end", str(report["projection_failures"])),
        ("clean session projected", f"in {clean['seconds']:.2f} s" if clean["projected"]
         else f"NO (last seen {clean.get('last_seen')})"),
        ("daemon exit codes on SIGTERM", ", ".join(str(code) for code in report["daemon_exit_codes"])),
        ("daemon log", ", ".join(f"{v} {k}" for k, v in sorted(log.items())) or "no warnings"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print()
    for name, passed in report["invariants"].items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")


# ---------------------------------------------------------------------------- driver

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=MINUTES, help=f"length of the run; default {MINUTES:g}")
    parser.add_argument("--rate", type=float, default=RATE_EVENTS_PER_S,
                        help=f"events/s over all agent sessions; default {RATE_EVENTS_PER_S:g}")
    parser.add_argument("--sessions", type=int, default=SESSIONS, help=f"concurrent agents; default {SESSIONS}")
    parser.add_argument("--idle-clients", type=int, default=IDLE_CLIENTS,
                        help=f"connections that never write; default {IDLE_CLIENTS}")
    parser.add_argument("--socat-rate", type=float, default=SOCAT_EVENTS_PER_S,
                        help=f"fire-and-forget events/s, one connection each; default {SOCAT_EVENTS_PER_S:g}")
    parser.add_argument("--pg-down", type=float, default=PG_DOWN_S,
                        help=f"seconds PostgreSQL stays stopped; default {PG_DOWN_S:g}")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the traffic; default 1")
    parser.add_argument("--log-level", default="info", help="daemon log level; default info")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--lines", metavar="FILE",
                        help="also write one JSON line per line sent: kind, event_id, sends, ok, code, "
                             "spooled, duplicate, first send (s into the run) and ack latency (ms)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster and daemon directories")
    args = parser.parse_args()
    if args.minutes < MIN_MINUTES:
        parser.error(f"--minutes must be at least {MIN_MINUTES:g} (room for both planned outages)")
    if args.sessions < 1 or args.rate <= 0 or args.socat_rate <= 0 or args.idle_clients < 0:
        parser.error("--sessions, --rate and --socat-rate must be positive, --idle-clients at least 0")

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)

    root = Path(tempfile.mkdtemp(prefix="rm-soak-"))
    root.chmod(0o755)   # traversable by the `postgres` user that runs the cluster as root
    cluster = Cluster(root / "pg")
    daemon: DaemonProcess | None = None
    try:
        cluster.start()
        ensure_database(cluster.dsn("postgres"), DBNAME)
        dsn = cluster.dsn(DBNAME)
        asyncio.run(prepare_database(dsn))
        daemon_root = root / "d"
        daemon_root.mkdir(mode=0o755)
        daemon = DaemonProcess(daemon_root, dsn, args.log_level)
        daemon.start()
        print(f"soak: {args.minutes:g} min, {args.rate:g} events/s over {args.sessions} sessions, "
              f"{args.idle_clients} idle clients, socat {args.socat_rate:g}/s; PostgreSQL restart at "
              f"{PG_RESTART_AT * args.minutes * 60:.0f} s, daemon restart at {DAEMON_RESTART_AT * args.minutes * 60:.0f} s"
              f"; files in {root}", flush=True)
        try:
            run = asyncio.run(soak(args, cluster, daemon, dsn))
        except SoakError as exc:
            print(f"soak: {exc}", file=sys.stderr)
            return 1
        daemon.stop()
        assert daemon.process is not None
        run.final_exit_code = daemon.process.returncode
        report = build_report(run)
        print()
        print_report(report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        if args.lines:
            write_lines(Path(args.lines), run)
        return 0 if report["ok"] else 1
    finally:
        if daemon is not None:
            daemon.stop()
        try:
            cluster.stop(mode="fast")
        finally:
            if args.keep:
                print(f"kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
