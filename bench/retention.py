#!/usr/bin/env python3
"""Retention benchmark: the time to prune one day of events when the table holds 1 M and
10 M rows, and the ack latency of a concurrent writer during the prune against without.

    python bench/retention.py [--sizes 1000000,10000000] [--day-rows 100000] [--days R]

For each size N, on a fresh database of a private cluster: N events in daily partitions of
--day-rows events each (every event also with a client event_id, the worst case for the
event_ids table, which is pruned by a batched DELETE), all older than the retention window.
The real daemon (`python -m ralph_monitor run`) runs on it with one writer that sends an
event and waits for its ack, again and again. All sizes run side by side (their daemons and
writers together; prunes alternate between them), so other load on the machine weighs on
each alike. The script first measures the writers without prunes (baseline), then calls
`retention.prune` R times per size with a `now` that moves one day each time, so each call
removes exactly one day (detach + drop of its partition, DELETE of its event ids), and
measures each writer's acks sent while a prune ran on its database.

Prints per size: prune wall time per day (median, max) with its parts (detach, count, drop,
event_ids), and the writer's ack latency p50/p99/max without and during prunes. Targets
(PRODUCT.md "Performance targets"): the same time at 1 M and 10 M rows, well under a second;
ingestion never blocked.

The script is standalone: it creates a cluster under /tmp (as root it runs as `postgres`)
and removes it at the end (--keep keeps it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))   # for tests.daemon_proc

import psycopg  # noqa: E402  (the benchmark drives the database directly to load it)

from ralph_monitor import retention  # noqa: E402
from ralph_monitor.cluster import Cluster  # noqa: E402
from ralph_monitor.config import Settings  # noqa: E402
from ralph_monitor.store import migrate  # noqa: E402
from tests.daemon_proc import DaemonNotReady, start_daemon  # noqa: E402

UTC = timezone.utc
READY_TIMEOUT_S = 60.0
BASELINE_S = 8.0

LOAD_DAY = """
WITH rows AS (
    INSERT INTO events (event_id, event_type, session_id, spec_id, occurred_at, received_at, host, payload)
    SELECT gen_random_uuid(), 'cc.PostToolUse', %(session)s::uuid, 'SPEC-' || (g %% 40),
           %(start)s::timestamptz + (g::float8 * %(step)s) * interval '1 microsecond',
           %(start)s::timestamptz + (g::float8 * %(step)s) * interval '1 microsecond', 'bench',
           jsonb_build_object('type', 'cc.PostToolUse', 'session_id', %(session)s::uuid::text,
                              'data', jsonb_build_object('tool_name', 'Bash', 'n', g,
                                                         'tool_input', repeat('x', 160)))
    FROM generate_series(0, %(n)s - 1) g
    RETURNING event_id, occurred_at)
INSERT INTO event_ids (event_id, occurred_at) SELECT event_id, occurred_at FROM rows
"""


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


@dataclass
class Writer:
    """One connection: send an event, wait for its ack, record (sent_at, latency)."""

    socket_path: str
    samples: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket_path)
        reader = sock.makefile("rb")
        n = 0
        while not self._stop.is_set():
            n += 1  # no session: the projector's work stays constant during the run
            line = json.dumps({"type": "cc.PostToolUse", "event_id": str(uuid.uuid4()),
                               "data": {"tool_name": "Bash", "n": n}}).encode() + b"\n"
            sent = time.monotonic()
            sock.sendall(line)
            reply = json.loads(reader.readline())
            self.samples.append((sent, time.monotonic() - sent))
            if not reply.get("ok") or reply.get("spooled"):
                self.errors.append(str(reply))
            time.sleep(0.001)
        sock.close()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)

    def between(self, start: float, end: float) -> list[float]:
        return [lat for sent, lat in self.samples if start <= sent <= end]


def launch_daemon(root: Path, dsn: str) -> tuple[subprocess.Popen[bytes], str]:
    sock = str(root / "events.sock")
    config = root / "config.toml"
    config.write_text(
        f'[socket]\npath = "{sock}"\ngroup = ""\n[database]\ndsn = "{dsn}"\n'
        f'[paths]\nstate_dir = "{root / "state"}"\n[schedule]\nbackup_time = ""\nprune_time = ""\n'
        '[monitor]\nlog_level = "warning"\n')
    try:
        proc = start_daemon(config, log_path=root / "daemon.log", notify_path=root / "notify.sock",
                            env={"PYTHONPATH": str(ROOT / "src")}, timeout_s=READY_TIMEOUT_S)
    except DaemonNotReady as exc:
        raise SystemExit(str(exc)) from None
    return proc, sock


def load(dsn: str, days: int, day_rows: int, first_day: datetime) -> None:
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SELECT ensure_event_partitions(%s, %s)",
                     (first_day.date(), (first_day + timedelta(days=days - 1)).date()))
        for i in range(days):
            start = first_day + timedelta(days=i)
            conn.execute(LOAD_DAY, {"start": start, "step": 86_400_000_000 // day_rows, "n": day_rows,
                                    "session": str(uuid.UUID(int=i + 1))})
            if (i + 1) % 10 == 0 or i + 1 == days:
                print(f"  loaded {i + 1}/{days} days ({(i + 1) * day_rows:,} rows, "
                      f"{time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        conn.execute("VACUUM ANALYZE events")
        conn.execute("VACUUM ANALYZE event_ids")
        conn.execute("CHECKPOINT")


@dataclass
class SizeResult:
    rows: int
    prune_s: list[float]
    parts: dict[str, list[float]]
    baseline: list[float]
    during: list[float]
    errors: list[str]


class Target:
    """One database of `rows` events, its daemon and its writer."""

    def __init__(self, cluster: Cluster, root: Path, rows: int, day_rows: int) -> None:
        self.rows, self.day_rows = rows, day_rows
        name = f"retention_{rows}"
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
        self.dsn = cluster.dsn(name)
        asyncio.run(migrate(self.dsn))
        days = rows // day_rows
        # Every loaded day lies before the retention window; day 0 is the oldest.
        self.first_day = datetime.combine(datetime.now(UTC).date() - timedelta(days=days + 60),
                                          datetime.min.time(), tzinfo=UTC)
        print(f"{rows:,} rows: loading {days} days of {day_rows:,}", file=sys.stderr, flush=True)
        load(self.dsn, days, day_rows, self.first_day)
        droot = root / name
        droot.mkdir()
        self.settings = Settings(database_dsn=self.dsn, paths_state_dir=str(droot / "state"))
        self.daemon, sock = launch_daemon(droot, self.dsn)
        self.writer = Writer(sock)
        self.writer.start()
        self.result = SizeResult(rows, [], {}, [], [], [])

    def prune_one(self, k: int) -> None:
        # cutoff = 00:00 of (now - events_days): exactly day k-1 is older than it.
        now = self.first_day + timedelta(days=k + self.settings.retention_events_days, hours=12)
        started = time.monotonic()
        report = retention.prune(self.settings, self.dsn, now=now)
        ended = time.monotonic()
        r = self.result
        r.errors.extend(report.errors)
        assert [n for n, _ in report.partitions] == [f"events_{self.first_day + timedelta(days=k - 1):%Y%m%d}"], \
            report.partitions
        assert report.removed["events"] == self.day_rows == report.removed["event_ids"], report.removed
        r.prune_s.append(ended - started)
        for step, seconds in report.timings.items():
            r.parts.setdefault(step, []).append(seconds)
        r.during.extend(self.writer.between(started, ended))

    def stop(self) -> None:
        self.writer.stop()
        self.result.errors.extend(self.writer.errors)
        self.daemon.terminate()
        self.daemon.wait(60)


def run_bench(cluster: Cluster, root: Path, sizes: list[int], day_rows: int, prunes: int) -> list[SizeResult]:
    """All sizes side by side: their daemons and writers run together, the baseline is taken
    at the same time for all, and the prunes alternate between them, so whatever else runs
    on the machine weighs on every size alike."""
    targets: list[Target] = []
    try:
        for rows in sizes:
            targets.append(Target(cluster, root, rows, day_rows))
        time.sleep(1.0)
        base_start = time.monotonic()
        time.sleep(BASELINE_S)
        for t in targets:
            t.result.baseline = t.writer.between(base_start, time.monotonic())
        for k in range(1, prunes + 1):
            for t in targets if k % 2 else reversed(targets):
                t.prune_one(k)
                time.sleep(0.5)
    finally:
        for t in targets:
            t.stop()
    return [t.result for t in targets]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000", help="total rows per run, comma-separated")
    parser.add_argument("--day-rows", type=int, default=100_000, help="events per daily partition")
    parser.add_argument("--days", type=int, default=5, help="prunes (one day each) per size")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the cluster directory")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    root = Path(tempfile.mkdtemp(prefix="rm-bench-ret-", dir="/tmp"))
    root.chmod(0o755)
    cluster = Cluster(root / "cluster")
    cluster.initialise()
    with open(cluster.data_dir / "postgresql.conf", "a", encoding="utf-8") as f:
        f.write("max_wal_size = 8GB\ncheckpoint_timeout = 30min\n")
    cluster.start()
    try:
        results = run_bench(cluster, root, sizes, args.day_rows, args.days)
    finally:
        cluster.stop(mode="fast")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    ms = lambda v: f"{v * 1000:7.1f}"  # noqa: E731
    print(f"\nprune one day ({args.day_rows:,} events, each with a client event id), {args.days} runs per size")
    print(f"{'rows':>12} {'prune med':>10} {'max':>8} | {'detach':>7} {'count':>7} {'drop':>7} {'evt_ids':>7}"
          f" | ack p50/p99/max ms without prune   | during prune (n)")
    for r in results:
        med = {k: statistics.median(v) for k, v in r.parts.items()}
        print(f"{r.rows:>12,} {ms(statistics.median(r.prune_s)):>10} {ms(max(r.prune_s)):>8} | "
              f"{ms(med.get('detach', 0))} {ms(med.get('count', 0))} {ms(med.get('drop', 0))} "
              f"{ms(med.get('event_ids', 0))} | "
              f"{ms(percentile(r.baseline, 50))} {ms(percentile(r.baseline, 99))} {ms(max(r.baseline))}"
              f" (n={len(r.baseline)}) | {ms(percentile(r.during, 50))} {ms(percentile(r.during, 99))} "
              f"{ms(max(r.during) if r.during else float('nan'))} (n={len(r.during)})")
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(f"\nratio prune time {b.rows:,} / {a.rows:,} rows: "
              f"{statistics.median(b.prune_s) / statistics.median(a.prune_s):.2f}  (target: ~1, well under 1 s)")
        for r in results:
            print(f"{r.rows:,} rows: writer p99 during prune / without: "
                  f"{percentile(r.during, 99) / percentile(r.baseline, 99):.2f}")
    errors = [e for r in results for e in r.errors]
    if errors:
        print(f"\nERRORS: {errors[:5]}")
    if args.json:
        Path(args.json).write_text(json.dumps([vars(r) for r in results], indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
