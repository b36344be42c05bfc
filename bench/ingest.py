#!/usr/bin/env python3
"""Ingest benchmark: the daemon's durable, acknowledged events/s and ack latency next to
baselines measured in the same run on the same private PostgreSQL cluster.

    python bench/ingest.py [--events N] [--repeats R] [--serial-events M] [--py-spy OUT]

Phases (every repeat; `events` is truncated and checkpointed before each phase):
  insert      bare INSERT + COMMIT per event, 1 connection (psycopg sync; BEGIN, INSERT, COMMIT)
  insert-ac   the same INSERT in autocommit mode (one round trip; for information)
  copy-rows   COPY with write_row() (psycopg adapts the values), 1,000 events per transaction
  copy-text   COPY of pre-formatted text (the received JSON as is), 1,000 per transaction
  daemon-1    `ralph-monitor run`, 1 writer: send one event, wait for its ack, repeat
  daemon-16   --writers connections in a separate load-generator process, each pipelining
              up to --window unacknowledged events; durable acknowledged events/s (spooled
              acks do not count) and ack latency; the row count must equal the acks.
INSERT/daemon-1 use --serial-events events, COPY/daemon-16 use --events events.

Targets (PRODUCT.md "Performance targets"), from the medians over --repeats:
  daemon-16 rate / best COPY rate >= 0.70;  daemon-1 p99 / insert p99 <= 2.0.

Diagnostic columns: CPU used during the phase by the benchmark client (load generator
included), the daemon, all PostgreSQL processes, and everything else on the machine
("other": other users of the CPUs, which make a run noisy), each in % of one core;
CPU microseconds per event of the daemon and of PostgreSQL (less sensitive to other load
than the rates); write transactions in the phase (xacts), events per transaction, WAL bytes
per event; and, after a daemon phase, how long the projector took to empty its dirty queues.

The script is standalone: it creates a cluster under /tmp (as root the cluster runs as
`postgres`), starts the daemon with `python -m ralph_monitor run --config ...` and removes
everything at the end (--keep keeps the directories).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # for tests.daemon_proc
from tests.daemon_proc import DaemonNotReady, start_daemon  # noqa: E402

COPY_BATCH = 1_000
PHASES = ("insert", "insert-ac", "copy-rows", "copy-text", "daemon-1", "daemon-n")
READY_TIMEOUT_S = 60.0
TOOLS = ("Bash", "Edit", "Read", "Write", "Grep", "Glob", "WebFetch")
INSERT_SQL = (
    "INSERT INTO events (event_id, event_type, session_id, spec_id, occurred_at, received_at, "
    "host, writer_uid, writer_pid, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
COPY_SQL = ("COPY events (event_id, event_type, session_id, spec_id, occurred_at, received_at, "
            "host, writer_uid, writer_pid, payload) FROM STDIN")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- workload

def make_lines(count: int, seed: int) -> list[bytes]:
    """`count` event lines (newline included) of one agent session, as a Ralph loop sends
    them: session_started, then specs of ~100 tool-level events each (Claude Code hook
    events, stored as unknown types) between spec_started and spec_completed/spec_failed,
    a heartbeat every 50 events. Tool events are ~300 bytes. Timestamps start now, 10 ms
    apart, so the session looks alive (no stall detection) and lands in today's partition."""
    rng = random.Random(seed)
    session = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    start = datetime.now(timezone.utc)
    lines = []
    spec_n = 0
    spec = None
    in_spec = 0

    def emit(event_type: str, i: int, data: dict[str, Any], spec_id: str | None) -> None:
        event: dict[str, Any] = {"type": event_type, "session_id": session}
        if spec_id is not None:
            event["spec_id"] = spec_id
        event["ts"] = (start + timedelta(milliseconds=10 * i)).isoformat().replace("+00:00", "Z")
        event["data"] = data
        lines.append(json.dumps(event, separators=(",", ":")).encode() + b"\n")

    for i in range(count):
        if i == 0:
            emit("session_started", i, {"name": f"night-{seed}", "total_specs": 60,
                                        "metadata": {"branch": "main", "model": "claude"}}, None)
        elif spec is None:
            spec_n += 1
            spec = f"CR-{spec_n:03d}"
            in_spec = 0
            emit("spec_started", i, {"attempt": 1}, spec)
        elif in_spec >= 100:
            failed = rng.random() < 0.1
            emit("spec_failed" if failed else "spec_completed", i, {
                "tokens_used": rng.randrange(1_000, 200_000), "cost_usd": round(rng.random() * 3, 4),
                "duration_s": round(rng.random() * 900, 1),
                **({"error": "tests failed: 3 of 128"} if failed else {})}, spec)
            spec = None
        elif i % 50 == 0:
            emit("session_heartbeat", i, {"pid": 4242, "rss_mb": rng.randrange(200, 900)}, None)
        else:
            in_spec += 1
            tool = TOOLS[rng.randrange(len(TOOLS))]
            emit("cc.PostToolUse" if in_spec % 2 else "cc.PreToolUse", i, {
                "tool": tool, "duration_ms": rng.randrange(5, 60_000), "exit_code": rng.choice((0, 0, 0, 1)),
                "tokens_used": rng.randrange(100, 20_000), "cost_usd": round(rng.random() / 10, 5),
                "summary": f"{tool}: src/module_{rng.randrange(50)}.py, {rng.randrange(300)} tests passed",
            }, spec)
    return lines


def rows_for(lines: list[bytes], host: str) -> list[tuple[Any, ...]]:
    """The row the daemon would store for each line (parsed outside any timed section)."""
    uid, pid = os.getuid(), os.getpid()
    rows = []
    for line in lines:
        text = line[:-1].decode()
        obj = json.loads(text)
        now = datetime.now(timezone.utc)
        rows.append((uuid.uuid4(), obj["type"], uuid.UUID(obj["session_id"]), obj.get("spec_id"),
                     datetime.fromisoformat(obj["ts"]), now, host, uid, pid, text))
    return rows


def _copy_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def copy_text_line(row: tuple[Any, ...]) -> bytes:
    """One COPY text-format line for a row (the payload is the received JSON as is)."""
    fields = []
    for value in row:
        if value is None:
            fields.append("\\N")
        elif isinstance(value, datetime):
            fields.append(value.isoformat())
        else:
            fields.append(_copy_escape(str(value)))
    return ("\t".join(fields) + "\n").encode()


# ---------------------------------------------------------------------------- measuring

def percentile(samples: list[tuple[float, int]], q: float) -> float:
    """q-quantile of weighted samples [(value, weight)] (nearest rank)."""
    ordered = sorted(samples)
    total = sum(w for _, w in ordered)
    rank = max(1, int(-(-q * total // 1)))
    seen = 0
    for value, weight in ordered:
        seen += weight
        if seen >= rank:
            return value
    return ordered[-1][0]


def system_busy() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def wait_quiet(max_wait_s: float, threshold: float = 25.0) -> float:
    """Wait (at most max_wait_s) until the machine's CPUs are nearly idle — other users'
    load makes a phase's figures noise. Returns the busy % of one core seen last."""
    deadline = time.monotonic() + max_wait_s
    while True:
        t0, b0 = time.monotonic(), system_busy()
        time.sleep(0.5)
        busy = 100 * (system_busy() - b0) / (time.monotonic() - t0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process, 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def resident_mb(pid: int) -> float | None:
    """VmRSS of a process in MB (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child_pids(parent: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == parent:
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def children_cpu(parent: int) -> float:
    """CPU seconds of `parent` and its direct children (the postmaster and its backends)."""
    total = proc_cpu(parent)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


@dataclass
class CpuMeter:
    """CPU used by bench client, daemon and PostgreSQL between start() and stop(), and the
    WAL written and transactions committed meanwhile."""

    postmaster: int
    dsn: str
    daemon: int | None = None
    quiet_wait_s: float = 0.0
    _wal: tuple[int, int] = (0, 0)
    wal: dict[str, int] = field(default_factory=dict)
    _start: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)
    result: dict[str, float] = field(default_factory=dict)

    def _sample(self) -> tuple[float, ...]:
        return (time.monotonic(), time.process_time(),
                proc_cpu(self.daemon) if self.daemon else 0.0, children_cpu(self.postmaster),
                system_busy())

    def start(self) -> None:
        if self.quiet_wait_s:
            wait_quiet(self.quiet_wait_s)
        self._wal = wal_position(self.dsn)
        self._start = self._sample()

    def stop(self, extra_client_cpu: float = 0.0) -> dict[str, float]:
        end = self._sample()
        wal = wal_position(self.dsn)
        self.wal = {"bytes": wal[0] - self._wal[0], "xacts": wal[1] - self._wal[1] - 1}
        wall = end[0] - self._start[0]
        self.result = {
            "client": 100 * (end[1] - self._start[1] + extra_client_cpu) / wall,
            "daemon": 100 * (end[2] - self._start[2]) / wall,
            "postgres": 100 * (end[3] - self._start[3]) / wall,
        }
        busy = 100 * (end[4] - self._start[4]) / wall
        self.result["other"] = max(0.0, busy - sum(self.result.values()))
        return self.result


@dataclass
class Result:
    phase: str
    events: int
    seconds: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    note: str = ""
    wal: dict[str, int] = field(default_factory=dict)
    agg_lag: float | None = None
    """Seconds after the phase until the projector's dirty queues were empty."""
    rss_mb: float | None = None
    """The daemon's resident memory after the phase (flat across repeats: queues are bounded)."""

    @property
    def rate(self) -> float:
        return self.events / self.seconds


# ---------------------------------------------------------------------------- database

def reset_table(dsn: str) -> None:
    """Empty every table but the migration record and the daemon's host row (events, event
    ids, rejects, aggregates and their dirty queues), then checkpoint, so each phase starts
    alike."""
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT quote_ident(c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "AND c.relname NOT IN ('schema_migrations', 'monitor_hosts')")]
        conn.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
        conn.execute("CHECKPOINT")


def aggregates_lag(dsn: str, timeout_s: float) -> float | None:
    """Seconds until the projector's dirty queues are empty (None: the schema has none;
    inf: not empty within timeout_s)."""
    import psycopg
    begin = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('dirty_sessions') IS NULL").fetchone()[0]:
            return None
        while True:
            pending = conn.execute("SELECT (SELECT count(*) FROM dirty_sessions) "
                                   "+ (SELECT count(*) FROM dirty_buckets)").fetchone()[0]
            elapsed = time.monotonic() - begin
            if not pending:
                return elapsed
            if elapsed > timeout_s:
                return float("inf")
            time.sleep(0.05)


def wal_position(dsn: str) -> tuple[int, int]:
    """(WAL bytes so far, next transaction id). Over a phase their differences give WAL bytes
    per event and the number of write transactions (the daemon's group-commit batches);
    each call itself uses one transaction id."""
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as conn:
        lsn, xid = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, txid_current()").fetchone()
        return int(lsn), int(xid)


def count_events(dsn: str) -> int:
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM events").fetchone()[0]


def bench_insert(dsn: str, rows: list[tuple[Any, ...]], meter: CpuMeter, *, autocommit: bool = False) -> Result:
    """One INSERT per event: with BEGIN and COMMIT around it, or in autocommit mode (the statement
    is its own transaction: one round trip)."""
    import psycopg
    latencies = []
    with psycopg.connect(dsn, autocommit=autocommit) as conn:
        cur = conn.cursor()
        for row in rows[:20]:          # warm up: connection, prepared statement
            cur.execute(INSERT_SQL, (uuid.uuid4(), *row[1:]))
            if not autocommit:
                conn.commit()
        meter.start()
        clock = time.perf_counter
        begin = clock()
        for row in rows:
            t0 = clock()
            cur.execute(INSERT_SQL, row)
            if not autocommit:
                conn.commit()
            latencies.append((clock() - t0, 1))
        elapsed = clock() - begin
        cpu = meter.stop()
    return Result("insert-ac" if autocommit else "insert", len(rows), elapsed, 1000 * percentile(latencies, 0.50),
                  1000 * percentile(latencies, 0.99), cpu, "info: autocommit, 1 round trip" if autocommit else "")


def bench_copy_rows(dsn: str, rows: list[tuple[Any, ...]], meter: CpuMeter) -> Result:
    import psycopg
    with psycopg.connect(dsn) as conn:
        cur = conn.cursor()
        meter.start()
        begin = time.perf_counter()
        for start in range(0, len(rows), COPY_BATCH):
            with cur.copy(COPY_SQL) as copy:
                for row in rows[start:start + COPY_BATCH]:
                    copy.write_row(row)
            conn.commit()
        elapsed = time.perf_counter() - begin
        cpu = meter.stop()
    return Result("copy-rows", len(rows), elapsed, cpu=cpu)


def bench_copy_text(dsn: str, text_lines: list[bytes], meter: CpuMeter) -> Result:
    import psycopg
    with psycopg.connect(dsn) as conn:
        cur = conn.cursor()
        meter.start()
        begin = time.perf_counter()
        for start in range(0, len(text_lines), COPY_BATCH):
            with cur.copy(COPY_SQL) as copy:
                copy.write(b"".join(text_lines[start:start + COPY_BATCH]))
            conn.commit()
        elapsed = time.perf_counter() - begin
        cpu = meter.stop()
    return Result("copy-text", len(text_lines), elapsed, cpu=cpu)


# ---------------------------------------------------------------------------- daemon

class DaemonProcess:
    """`python -m ralph_monitor run` with its own config, socket and state dir."""

    def __init__(self, root: Path, dsn: str, log_level: str, pythonpath: str | None = None,
                 extra: dict[str, dict[str, Any]] | None = None) -> None:
        self.pythonpath = pythonpath
        self.extra = extra or {}
        self.root = root
        self.dsn = dsn
        self.socket_path = str(root / "events.sock")
        self.config_path = root / "config.toml"
        self.log_path = root / "daemon.log"
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        sections = {
            "socket": {"path": self.socket_path, "group": ""},
            "database": {"dsn": self.dsn},
            "paths": {"state_dir": str(self.root / "state")},
            "monitor": {"log_level": self.log_level},
        }
        for section, values in self.extra.items():
            sections.setdefault(section, {}).update(values)
        text = ""
        for name, values in sections.items():
            text += f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
        self.config_path.write_text(text)
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [self.pythonpath, os.environ.get("PYTHONPATH")]))
               } if self.pythonpath else {}
        try:
            self.process = start_daemon(self.config_path, log_path=self.log_path,
                                        notify_path=self.root / "notify.sock", env=env, timeout_s=READY_TIMEOUT_S)
        except DaemonNotReady as exc:
            raise SystemExit(str(exc)) from None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_py_spy(pid: int, out: str | None, extra: list[str]) -> subprocess.Popen[bytes] | None:
    """py-spy recording `pid` into `out` (.svg flamegraph, .json speedscope, else collapsed
    stacks), without pausing it; None when no output was asked for."""
    if not out:
        return None
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(Path(out).suffix, "raw")
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
                            "--rate", "200", "--format", fmt, "-o", out, "--nonblocking", *extra],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    return spy


def stop_py_spy(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is None:
        return
    spy.send_signal(signal.SIGINT)
    _, err = spy.communicate(timeout=60)
    if spy.returncode not in (0, -signal.SIGINT):
        print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)


def bench_daemon_serial(daemon: DaemonProcess, lines: list[bytes], meter: CpuMeter,
                        py_spy: str | None = None, py_spy_args: list[str] | None = None) -> Result:
    """One writer: send an event, wait for its ack, repeat."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(daemon.socket_path)
    latencies = []
    ok = 0
    clock = time.perf_counter

    def one(line: bytes) -> bytes:
        sock.sendall(line)
        reply = sock.recv(4096)
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise SystemExit("daemon closed the connection")
            reply += chunk
        return reply

    for line in make_lines(20, seed=999):   # warm up
        one(line)
    reset_table(daemon.dsn)
    spy = start_py_spy(daemon.pid, py_spy, py_spy_args or [])
    meter.start()
    begin = clock()
    for line in lines:
        t0 = clock()
        reply = one(line)
        latencies.append((clock() - t0, 1))
        ok += reply.startswith(b'{"ok": true') and b'"spooled"' not in reply
    elapsed = clock() - begin
    cpu = meter.stop()
    stop_py_spy(spy)
    sock.close()
    rows = count_events(daemon.dsn)
    note = "" if rows == ok == len(lines) else f"MISMATCH acks={ok} rows={rows} sent={len(lines)}"
    return Result("daemon-1", ok, elapsed, 1000 * percentile(latencies, 0.50),
                  1000 * percentile(latencies, 0.99), cpu, note)


@dataclass
class _Writer:
    sock: socket.socket
    data: bytes
    ends: list[int]                 # byte offset just past each line
    window: int
    sent_bytes: int = 0
    sent: int = 0                   # lines completely written to the socket
    acked: int = 0
    ok: int = 0
    spooled: int = 0
    lat_from: int = 0               # first acked line whose latency is not recorded yet
    marks: deque[tuple[int, float]] = field(default_factory=deque)
    tail: bytes = b""
    want_write: bool = True

    @property
    def done(self) -> bool:
        return self.acked >= len(self.ends)


def loadgen_main(args: argparse.Namespace) -> int:
    """The load-generator process: `--writers` connections multiplexed with one selector.

    Each writer keeps at most `--window` events unacknowledged. A line's latency runs from
    the moment its last byte was handed to the kernel to the moment its ack was read; lines
    sent in one send() and acked in one recv() share a timestamp (so bookkeeping stays O(1)
    per system call and the generator stays cheap)."""
    per_writer = args.events // args.writers
    writers = []
    for i in range(args.writers):
        lines = make_lines(per_writer, seed=args.seed + i)
        ends, offset = [], 0
        for line in lines:
            offset += len(line)
            ends.append(offset)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(args.socket)
        sock.setblocking(False)
        writers.append(_Writer(sock, b"".join(lines), ends, args.window))
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    sel = selectors.DefaultSelector()
    for w in writers:
        sel.register(w.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, w)
    latencies: list[tuple[float, int]] = []
    remaining = len(writers)
    clock = time.monotonic
    cpu0 = time.process_time()
    begin = clock()
    while remaining:
        for key, mask in sel.select(timeout=30):
            w: _Writer = key.data
            if mask & selectors.EVENT_READ:
                chunk = w.sock.recv(262_144)
                if not chunk:
                    raise SystemExit(f"daemon closed a connection after {w.acked} acks")
                now = clock()
                if w.tail:
                    chunk = w.tail + chunk
                last = chunk.rfind(b"\n")
                w.tail = chunk[last + 1:]
                n = chunk.count(b"\n", 0, last + 1)
                if n:
                    w.ok += chunk.count(b'{"ok": true', 0, last + 1)
                    w.spooled += chunk.count(b'"spooled"', 0, last + 1)
                    w.acked += n
                    while w.marks and w.lat_from < w.acked:
                        end, t_sent = w.marks[0]
                        upto = min(end, w.acked)
                        latencies.append((now - t_sent, upto - w.lat_from))
                        w.lat_from = upto
                        if upto == end:
                            w.marks.popleft()
                    if w.done:
                        remaining -= 1
                        sel.unregister(w.sock)
                        continue
            if mask & selectors.EVENT_WRITE or not w.want_write:
                limit = min(len(w.ends), w.acked + w.window)
                if w.sent < limit:
                    stop = w.ends[limit - 1]
                    try:
                        n = w.sock.send(memoryview(w.data)[w.sent_bytes:stop])
                    except BlockingIOError:
                        n = 0
                    if n:
                        w.sent_bytes += n
                        sent = bisect.bisect_right(w.ends, w.sent_bytes, lo=w.sent)
                        if sent > w.sent:
                            w.sent = sent
                            w.marks.append((sent, clock()))
                want = w.sent < limit or w.sent_bytes < w.ends[limit - 1]
                if want != w.want_write:
                    w.want_write = want
                    sel.modify(w.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0), w)
    elapsed = clock() - begin
    cpu = time.process_time() - cpu0
    for w in writers:
        w.sock.close()
    print(json.dumps({
        "acked": sum(w.acked for w in writers), "ok": sum(w.ok for w in writers),
        "spooled": sum(w.spooled for w in writers), "sent": per_writer * len(writers),
        "seconds": elapsed, "cpu": cpu, "begin": begin,
        "p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99),
    }), flush=True)
    return 0


def bench_daemon_concurrent(daemon: DaemonProcess, events: int, writers: int, window: int,
                            procs: int, meter: CpuMeter, seed: int, py_spy: str | None,
                            py_spy_args: list[str]) -> Result:
    """`writers` concurrent writers spread over `procs` load-generator processes."""
    children = []
    per_proc = [writers // procs + (1 if i < writers % procs else 0) for i in range(procs)]
    for i, count in enumerate(per_proc):
        children.append(subprocess.Popen(
            [sys.executable, __file__, "--loadgen", "--socket", daemon.socket_path,
             "--writers", str(count), "--events", str(events // writers * count),
             "--window", str(window), "--seed", str(seed + 1000 * i)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for child in children:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "READY":
            raise SystemExit("load generator failed to start")
    reset_table(daemon.dsn)
    spy = start_py_spy(daemon.pid, py_spy, py_spy_args)
    meter.start()
    for child in children:
        assert child.stdin is not None
        child.stdin.write("GO\n")
        child.stdin.flush()
    reports = []
    for child in children:
        assert child.stdout is not None
        line = child.stdout.readline()
        child.wait(60)
        if not line:
            raise SystemExit("load generator died")
        reports.append(json.loads(line))
    end = time.monotonic()
    cpu = meter.stop(extra_client_cpu=sum(r["cpu"] for r in reports))
    stop_py_spy(spy)
    begin = min(r["begin"] for r in reports)
    ok = sum(r["ok"] for r in reports) - sum(r["spooled"] for r in reports)
    sent = sum(r["sent"] for r in reports)
    rows = count_events(daemon.dsn)
    note = "" if rows == ok == sent else f"MISMATCH acks={ok} rows={rows} sent={sent}"
    # Latencies: the worst process's percentile (processes each see a share of the writers).
    return Result(f"daemon-{writers}", ok, end - begin if procs > 1 else reports[0]["seconds"],
                  1000 * max(r["p50"] for r in reports), 1000 * max(r["p99"] for r in reports),
                  cpu, note)


# ---------------------------------------------------------------------------- driver

def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(runs: list[list[Result]]) -> dict[str, dict[str, float | None]]:
    phases = [r.phase for r in runs[0]]
    header = (f"{'phase':<11} {'run':>6} {'events':>8} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'cpu% client':>11} {'daemon':>7} {'postgres':>8} {'other':>6} {'us/ev d':>7} {'pg':>5} "
              f"{'xacts':>6} {'ev/xact':>7} "
              f"{'WAL B/ev':>8} {'agg lag s':>9} {'RSS MB':>6}  note")
    print(header)
    print("-" * len(header))
    medians: dict[str, dict[str, float | None]] = {}
    for phase in phases:
        results = [run[i] for run in runs for i, r in enumerate(run) if r.phase == phase]
        for n, r in enumerate(results, 1):
            print(f"{phase:<11} {n:>6} {r.events:>8} {r.rate:>10,.0f} {fmt(r.p50_ms):>8} "
                  f"{fmt(r.p99_ms):>8} {r.cpu.get('client', 0):>11.0f} {r.cpu.get('daemon', 0):>7.0f} "
                  f"{r.cpu.get('postgres', 0):>8.0f} {r.cpu.get('other', 0):>6.0f} "
                  f"{r.cpu.get('daemon', 0) * 1e4 / r.rate:>7.1f} {r.cpu.get('postgres', 0) * 1e4 / r.rate:>5.1f} "
                  f"{r.wal.get('xacts', 0):>6} "
                  f"{r.events / max(1, r.wal.get('xacts', 0)):>7.0f} {r.wal.get('bytes', 0) / r.events:>8.0f} "
                  f"{fmt(r.agg_lag, 1):>9} {fmt(r.rss_mb, 0):>6}  {r.note}")

        def med(values: list[float | None]) -> float | None:
            present = [v for v in values if v is not None]
            return statistics.median(present) if present else None
        m = {"rate": med([r.rate for r in results]), "p50": med([r.p50_ms for r in results]),
             "p99": med([r.p99_ms for r in results])}
        medians[phase] = m
        cpu = {k: statistics.median(r.cpu.get(k, 0) for r in results)
               for k in ("client", "daemon", "postgres", "other")}
        print(f"{phase:<11} {'median':>6} {'':>8} {m['rate']:>10,.0f} {fmt(m['p50']):>8} "
              f"{fmt(m['p99']):>8} {cpu['client']:>11.0f} {cpu['daemon']:>7.0f} {cpu['postgres']:>8.0f} "
              f"{cpu['other']:>6.0f}")
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000,
                        help="events per throughput phase (COPY, 16 writers); default 100000")
    parser.add_argument("--serial-events", type=int, default=5_000,
                        help="events per one-at-a-time phase (INSERT+COMMIT, 1 writer); default 5000")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every phase; default 3")
    parser.add_argument("--writers", type=int, default=16, help="concurrent writers; default 16")
    parser.add_argument("--window", type=int, default=500,
                        help="unacknowledged events each concurrent writer keeps in flight; default 500")
    parser.add_argument("--writer-procs", type=int, default=1,
                        help="load-generator processes the writers are spread over; default 1")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)}; default all")
    parser.add_argument("--agg-timeout", type=float, default=30.0,
                        help="after a daemon phase, wait at most this long for the aggregates "
                             "to catch up (the 'agg lag' column); default 30")
    parser.add_argument("--quiet-wait", type=float, default=3.0,
                        help="before each phase, wait up to this many seconds for the CPUs to be "
                             "nearly idle (other users make figures noise); default 3, 0 disables")
    parser.add_argument("--nice", type=int, default=0,
                        help="change the priority of the benchmark, daemon and cluster by this "
                             "niceness increment (e.g. -10 as root on a shared machine); default 0")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a daemon config setting, e.g. limits.max_batch_events=1000 (repeatable)")
    parser.add_argument("--log-level", default="warning", help="daemon log level; default warning")
    parser.add_argument("--daemon-pythonpath", metavar="DIR",
                        help="run the daemon from another source tree (its src/, with sql/ beside "
                             "it), to compare a change against this checkout")
    parser.add_argument("--py-spy", metavar="OUT",
                        help="record the daemon with py-spy during the last concurrent-writer phase "
                             "(.svg flamegraph, .json speedscope, else collapsed stacks)")
    parser.add_argument("--py-spy-serial", metavar="OUT",
                        help="the same for the last 1-writer phase")
    parser.add_argument("--py-spy-args", default="",
                        help="extra py-spy record arguments, e.g. '--idle --native'")
    parser.add_argument("--keep", action="store_true", help="keep the cluster directory")
    parser.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    # load-generator child mode (internal)
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        return loadgen_main(args)
    phases = set(args.phases.split(","))
    if not phases <= set(PHASES):
        parser.error(f"--phases: unknown {', '.join(sorted(phases - set(PHASES)))}")

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    # Clean up (daemon, cluster, directories) on SIGTERM too, and on SIGINT even when it was
    # inherited as ignored (started in the background by a shell).
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    if args.nice:
        os.nice(args.nice)   # inherited by the daemon, the load generator and PostgreSQL
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    import psycopg

    from ralph_monitor.cluster import Cluster
    from ralph_monitor.store import ensure_database, prepare_database

    root = Path(tempfile.mkdtemp(prefix="rm-bench-", dir="/tmp"))
    root.chmod(0o755)
    cluster = Cluster(root / "pg")
    daemon: DaemonProcess | None = None
    started = time.monotonic()
    try:
        cluster.start()
        ensure_database(cluster.dsn("postgres"), "bench")
        dsn = cluster.dsn("bench")
        asyncio.run(prepare_database(dsn))
        with psycopg.connect(dsn, autocommit=True) as conn:
            server_version = conn.execute("SHOW server_version").fetchone()[0]
            fsync = conn.execute("SHOW fsync").fetchone()[0]
            sync_commit = conn.execute("SHOW synchronous_commit").fetchone()[0]
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        if args.nice:
            # runuser's PAM session resets the niceness: renice the server; backends forked
            # later inherit it from the postmaster.
            for pid in [postmaster, *child_pids(postmaster)]:
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0))

        daemon_root = Path(tempfile.mkdtemp(prefix="rmd-", dir="/tmp"))
        daemon_root.chmod(0o755)
        extra: dict[str, dict[str, Any]] = {}
        for item in args.set:
            key, _, value = item.partition("=")
            section, _, name = key.partition(".")
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
            extra.setdefault(section, {})[name] = parsed
        daemon = DaemonProcess(daemon_root, dsn, args.log_level, args.daemon_pythonpath, extra)
        daemon.start()
        meter = CpuMeter(postmaster, dsn, daemon.pid, args.quiet_wait)
        print(f"PostgreSQL {server_version} (fsync={fsync}, synchronous_commit={sync_commit}), "
              f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; "
              f"events={args.events} serial-events={args.serial_events} repeats={args.repeats} "
              f"writers={args.writers} window={args.window}", flush=True)

        host = socket.gethostname()
        runs: list[list[Result]] = []
        # The baselines' rows are made once (tables are emptied between phases, so they can
        # be inserted again); the daemon phases get fresh sessions each repeat.
        serial_lines = make_lines(args.serial_events, 100)
        bulk_rows = rows_for(make_lines(args.events, 101), host) if "copy-rows" in phases else []
        text_lines = ([copy_text_line(r) for r in rows_for(make_lines(args.events, 102), host)]
                      if "copy-text" in phases else [])
        for repeat in range(args.repeats):
            seed = 100 * (repeat + 1)
            run: list[Result] = []

            def record(result: Result) -> None:
                result.wal = dict(meter.wal)
                if result.phase.startswith("daemon"):
                    result.agg_lag = aggregates_lag(dsn, args.agg_timeout)
                    result.rss_mb = resident_mb(daemon.pid)
                run.append(result)
            if "insert" in phases:
                reset_table(dsn)
                record(bench_insert(dsn, rows_for(serial_lines, host), meter))
            if "insert-ac" in phases:
                reset_table(dsn)
                record(bench_insert(dsn, rows_for(serial_lines, host), meter, autocommit=True))
            if "copy-rows" in phases:
                reset_table(dsn)
                record(bench_copy_rows(dsn, bulk_rows, meter))
            if "copy-text" in phases:
                reset_table(dsn)
                record(bench_copy_text(dsn, text_lines, meter))
            if "daemon-1" in phases:
                reset_table(dsn)
                record(bench_daemon_serial(daemon, make_lines(args.serial_events, seed + 3), meter,
                                           args.py_spy_serial if repeat == args.repeats - 1 else None,
                                           args.py_spy_args.split()))
            if "daemon-n" in phases:
                last = repeat == args.repeats - 1
                record(bench_daemon_concurrent(daemon, args.events, args.writers, args.window,
                                                   args.writer_procs, meter, seed + 4,
                                                   args.py_spy if last else None,
                                                   args.py_spy_args.split()))
            runs.append(run)
            print(f"repeat {repeat + 1}: " + ", ".join(f"{r.phase} {r.rate:,.0f}/s" for r in run)
                  + f"  ({time.monotonic() - started:.0f} s)", flush=True)
            if daemon.process is not None and daemon.process.poll() is not None:
                raise SystemExit(f"daemon died:\n{daemon.log()}")

        print()
        medians = print_table(runs)
        print()

        def rate(phase: str) -> float | None:
            return medians[phase]["rate"] if phase in medians else None

        def p99(phase: str) -> float | None:
            return medians[phase]["p99"] if phase in medians else None
        copies = [r for r in (rate("copy-rows"), rate("copy-text")) if r]
        ratio_rate = ratio_p99 = None
        concurrent = f"daemon-{args.writers}"
        if copies and rate(concurrent):
            ratio_rate = rate(concurrent) / max(copies)
            print(f"{args.writers}-writer rate / best COPY rate     = {ratio_rate:.2f}  (target >= 0.70) "
                  f"{'PASS' if ratio_rate >= 0.70 else 'FAIL'}")
        if p99("daemon-1") and p99("insert"):
            ratio_p99 = p99("daemon-1") / p99("insert")
            print(f"1-writer p99 / INSERT+COMMIT p99   = {ratio_p99:.2f}  (target <= 2.00) "
                  f"{'PASS' if ratio_p99 <= 2.0 else 'FAIL'}")
        if p99("daemon-1") and p99("insert-ac"):
            print(f"1-writer p99 / autocommit INSERT p99 = {p99('daemon-1') / p99('insert-ac'):.2f}  (info)")
        print(f"total {time.monotonic() - started:.0f} s")
        mismatches = [r for run in runs for r in run if r.note.startswith("MISMATCH")]
        if args.json:
            Path(args.json).write_text(json.dumps({
                "runs": [[{**r.__dict__, "rate": r.rate} for r in run] for run in runs],
                "medians": medians, "ratio_rate": ratio_rate, "ratio_p99": ratio_p99}, indent=1))
        return 1 if mismatches else 0
    finally:
        if daemon is not None:
            daemon.stop()
            if not args.keep:
                shutil.rmtree(daemon.root, ignore_errors=True)
        try:
            cluster.stop(mode="fast")
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
