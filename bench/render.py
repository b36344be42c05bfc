#!/usr/bin/env python3
"""Dashboard benchmark: a full rebuild and incremental regenerations of the static site at 10x
the design note's volume, and the weight of the overview page.

    python bench/render.py [--scale 10] [--fulls 3] [--rounds 5] [--nice -10] [--keep | --reuse DIR]

--scale: a multiple of the design note's volume, as in bench/queries.py (10, the default, is
10x; 100 is 100x: ~36,500 sessions, ~1.8 M spec runs, 15 M events).

Data: the query benchmark's generator (bench/queries.py: ~3,650 sessions over a year, ~180,000
spec runs, 1.5 M events over 30 days, 5-minute buckets), on a private cluster under /tmp.
`--reuse DIR` also takes a cluster kept by `bench/queries.py --keep`.

Measured, in this process, through the daemon's own code (SiteRenderer, the same class
the daemon's render process runs, with the garbage collector run between renders as there):
  full rebuild     every session page (of the sessions within the events retention window,
                   30 days), spec, month and events page plus the overview and the JSON
                   snapshots, written into a new release and published; --fulls times, the
                   first into an empty site dir, the others next to the published release (whose
                   unchanged session and spec pages they link instead of rendering again, as the
                   daemon's periodic and daily full rebuilds do); median (target < 5 s at 10x,
                   < 30 s at 100x), and the first on its own. A site this big
                   spreads its session pages over helper processes (one per CPU, at most 4).
  incremental      after "a minute of typical events" for the running sessions, written with
                   the daemon's writer (EventStore: COPY + dirty queues) and projected with the
                   daemon's projector code; only what changed is rendered (target < 150 ms).
                   --rounds times; median and max. The minute: for each live session (running,
                   stalled or waiting for a human), tool-level hook events (cc.PreToolUse /
                   cc.PostToolUse with 200-600 byte payloads) at the data's rate, heartbeats,
                   and one spec ending and the next starting; one session also gets a failure
                   and a request for a human. At the end these events are taken back and what
                   they changed is projected again, so a kept cluster gives the same data to
                   the next run (--reuse runs compare).
  page weight      index.html uncompressed and gzip -6, api/status.json (target < 150 KB)

The figures are CPU-bound: on a shared machine other processes' load shows up in them (the
run prints the load average). --nice -10 (as root) raises the benchmark's and its cluster's
priority, as bench/ingest.py does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gzip
import importlib.util
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from ralph_monitor import resources  # noqa: E402
from ralph_monitor.cluster import Cluster  # noqa: E402
from ralph_monitor.config import Settings  # noqa: E402
from ralph_monitor.dashboard import worker  # noqa: E402
from ralph_monitor.dashboard.publish import RenderResult  # noqa: E402
from ralph_monitor.dashboard.render import SiteRenderer  # noqa: E402
from ralph_monitor.projections import project_session  # noqa: E402
from ralph_monitor.protocol import Origin, parse_line  # noqa: E402
from ralph_monitor.store import EventStore, ProjectionStore, ensure_database, migrate  # noqa: E402
from ralph_monitor.store.events import BUCKET_S  # noqa: E402

DBNAME = "bench"
FULL_TARGET_S = {10: 5.0, 100: 30.0}
"""Issue 17: a full rebuild under 5 s at 10x, under 30 s at 100x (the larger scale's for any other)."""
INCREMENTAL_TARGET_S = 0.150
SITE_TARGET_BYTES = 60e6
"""At 10x: session pages only within the events window, so the site follows it, not a year of sessions."""
PAGE_TARGET_BYTES = 150 * 1024
PROFILE_ROWS = 30
"""Functions --profile prints (the whole profile is in its file)."""
ORIGIN = Origin("bench-host", 1000, 4242)


def load_generator() -> Any:
    """bench/queries.py's data generator (build, counts)."""
    path = ROOT / "bench" / "queries.py"
    if not path.exists():
        sys.exit("bench/render.py needs bench/queries.py (the query benchmark's data generator)")
    spec = importlib.util.spec_from_file_location("bench_queries", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def minute_of_events(dsn: str, now: datetime, rng_seed: int) -> list[bytes]:
    """JSON lines for one busy minute of the running sessions, as agents would send them."""
    import random

    rnd = random.Random(rng_seed)
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        running = conn.execute("""
            SELECT s.id, (SELECT r.spec_id FROM spec_runs r WHERE r.session_id = s.id AND r.status = 'running'
                          ORDER BY r.start_time DESC LIMIT 1) AS spec_id,
                   (SELECT count(*) FROM spec_runs r WHERE r.session_id = s.id) AS runs
            FROM sessions s WHERE s.execution_state IN ('running', 'stalled', 'waiting_for_human')
            ORDER BY s.start_time DESC""").fetchall()
    lines = []

    def add(kind: str, session: uuid.UUID, seconds: float, spec: str | None = None, **data: Any) -> None:
        event: dict[str, Any] = {"type": kind, "session_id": str(session), "event_id": str(uuid.uuid4()),
                                 "ts": (now + timedelta(seconds=seconds)).isoformat()}
        if spec:
            event["spec_id"] = spec
        if data:
            event["data"] = data
        lines.append(json.dumps(event).encode())

    for i, s in enumerate(running):
        spec = s["spec_id"] or f"CR-{rnd.randint(1, 400):03d}"
        for k in range(12):  # tool calls: a Pre and a Post each
            t = k * 5 + rnd.random()
            tool = rnd.choice(["Bash", "Edit", "Read", "Grep"])
            add("cc.PreToolUse", s["id"], t, spec, tool_name=tool,
                tool_input={"command": "cd /home/ralph/work && " + "x" * rnd.randint(60, 360)})
            add("cc.PostToolUse", s["id"], t + 2, spec, tool_name=tool, duration_ms=rnd.randint(10, 30000),
                tool_response={"exit_code": 0, "stdout": "ok " * rnd.randint(10, 100)})
        for t in (15, 45):
            add("session_heartbeat", s["id"], t, rss_mb=300, load=1.5)
        next_spec = f"CR-{rnd.randint(1, 400):03d}"
        if i == 0:
            add("spec_failed", s["id"], 50, spec, tokens_used=40000, cost_usd=0.6,
                error="pytest: 2 failed in tests/test_cart.py: AssertionError: expected 3 got 4", duration_s=600)
            add("intervention_request", s["id"], 52, next_spec, message="May I change the public API of cart?")
        else:
            add("spec_completed", s["id"], 50, spec, tokens_used=30000, cost_usd=0.45, duration_s=500)
        add("spec_started", s["id"], 55, next_spec, attempt=1, title=f"Implement {next_spec}")
    return lines


async def project_pending(projection: ProjectionStore) -> None:
    """Bring the aggregates up to date with the dirty queues, as the daemon's projector does."""
    while await projection.project_sessions(project_session, limit=50):
        pass
    while await projection.project_buckets(limit=500):
        pass


async def ingest_and_project(settings: Settings, dsn: str, lines: list[bytes]) -> float:
    """Write `lines` the way the daemon does, then bring the aggregates up to date."""
    store = EventStore(settings, dsn=dsn)
    projection = ProjectionStore(settings, dsn=dsn)
    started = time.monotonic()
    try:
        received = datetime.now(timezone.utc)
        events = [parse_line(line, received_at=received, origin=ORIGIN) for line in lines]
        await store.write_batch(events, [], excerpt_bytes=4096)
        await project_pending(projection)
    finally:
        await store.close()
        await projection.close()
    return time.monotonic() - started


TAKE_BACK = """
WITH gone AS (
    DELETE FROM events WHERE host = %(host)s RETURNING event_id, session_id, occurred_at
), ids AS (
    DELETE FROM event_ids i USING gone g WHERE i.event_id = g.event_id AND i.occurred_at = g.occurred_at
)
SELECT session_id, occurred_at FROM gone
"""
"""Remove the events the incremental rounds wrote (their host is ORIGIN's) and their ids."""


async def take_back(settings: Settings, dsn: str) -> int:
    """Undo the incremental rounds: their events go, and the sessions, spec runs, requests and
    5-minute counts they changed are projected again from what is left. A kept cluster is then
    the generated data again, so runs on it can be compared (each run used to add five minutes
    of events and a request for a human to the same sessions)."""
    with psycopg.connect(dsn) as conn:
        gone = conn.execute(TAKE_BACK, {"host": ORIGIN.host}).fetchall()
        conn.execute("DELETE FROM monitor_hosts WHERE host = %s", (ORIGIN.host,))
        # Queued for the projector as the daemon's write path queues them (store/events.py).
        buckets = sorted({int(at.timestamp()) // BUCKET_S for _, at in gone})
        conn.execute(resources.query("mark_dirty"), {
            "session_ids": sorted({session for session, _ in gone if session is not None}),
            "buckets": [datetime.fromtimestamp(b * BUCKET_S, timezone.utc) for b in buckets]})
    projection = ProjectionStore(settings, dsn=dsn)
    try:
        await project_pending(projection)
    finally:
        await projection.close()
    return len(gone)


def render(renderer: SiteRenderer, *, full: bool = False, now: datetime) -> RenderResult:
    """One render as the daemon's render process runs it: the garbage collector paused during
    the render and run after it, untimed (worker.pause_collector)."""
    worker.pause_collector()
    try:
        return renderer.render(full=full, now=now)
    finally:
        worker.collect_between_renders(full=full)


def weight(site_dir: Path) -> dict[str, int]:
    current = site_dir / "current"
    index = (current / "index.html").read_bytes()
    status = (current / "api" / "status.json").read_bytes()
    files = [p for p in current.rglob("*") if p.is_file()]
    return {"index_bytes": len(index), "index_gzip_bytes": len(gzip.compress(index, 6)),
            "status_json_bytes": len(status), "status_json_gzip_bytes": len(gzip.compress(status, 6)),
            "files": len(files), "site_bytes": sum(p.stat().st_size for p in files)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=10.0,
                        help="data volume as a multiple of the design note's: 10 (default) = 10x, 100 = 100x")
    parser.add_argument("--fulls", type=int, default=3, help="full rebuilds; default 3")
    parser.add_argument("--rounds", type=int, default=5, help="incremental regenerations; default 5")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness increment for the benchmark and its cluster (e.g. -10 as root); default 0")
    parser.add_argument("--keep", action="store_true", help="keep the cluster (see --reuse)")
    parser.add_argument("--reuse", metavar="DIR", help="a cluster kept by this script or bench/queries.py --keep")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--profile", metavar="FILE",
                        help="profile the incremental renders (cProfile, this process) into FILE and print the top")
    args = parser.parse_args()

    generator = load_generator()
    if args.nice:
        os.nice(args.nice)  # inherited by the render helper processes
    root = Path(args.reuse) if args.reuse else Path(tempfile.mkdtemp(prefix="rm-rbench-", dir="/tmp"))
    root.chmod(0o755)
    cluster = Cluster(root / "pg")
    site_root = Path(tempfile.mkdtemp(prefix="rm-rbench-site-", dir="/tmp"))
    started = time.monotonic()
    try:
        cluster.start()
        dsn = cluster.dsn(DBNAME)
        exists = not ensure_database(cluster.dsn("postgres"), DBNAME)
        asyncio.run(migrate(dsn))
        if args.nice:  # runuser's PAM session resets the niceness: renice the server and its children
            postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
            children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
            for pid in [postmaster, *map(int, children)]:
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0))
        if not exists:
            data_now = datetime.now(timezone.utc).replace(microsecond=0)
            print(f"building scale {args.scale:g} in {root} ...", flush=True)
            built = generator.build(dsn, args.scale, data_now, 0.42)
            print("built in " + ", ".join(f"{k} {v:.1f} s" for k, v in built["timings"].items()), flush=True)
        with psycopg.connect(dsn) as conn:
            data_now = conn.execute("SELECT now FROM bench_meta").fetchone()[0]
        n = generator.counts(dsn)
        scale = round(n["sessions"] / generator.SESSIONS_PER_YEAR, 1)  # what the data is, whatever --scale said
        full_target = FULL_TARGET_S[10] if scale <= 10 else FULL_TARGET_S[100]
        print(f"scale {scale:g}x; {os.cpu_count()} cores; " + ", ".join(f"{k} {v:,}" for k, v in n.items())
              + f"; data now = {data_now:%Y-%m-%d %H:%M} UTC; setup {time.monotonic() - started:.0f} s", flush=True)

        settings = Settings(reports_timezone="UTC")
        renderer = SiteRenderer(settings, dsn=dsn, site_dir=site_root / "site")
        try:
            print(f"\nload average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
            fulls = []
            for i in range(args.fulls):
                full = render(renderer, full=True, now=data_now)
                fulls.append(full.seconds)
                print(f"  full rebuild {i + 1}: {full.seconds:.2f} s — {full.sessions:,} sessions, {full.specs:,} specs, "
                      f"{full.pages:,} pages, {full.written:,} files", flush=True)
            full_median = statistics.median(fulls)
            print(f"full rebuild: median {full_median:.2f} s, first (into an empty site) {fulls[0]:.2f} s, "
                  f"best {min(fulls):.2f} s  "
                  f"[{'PASS' if full_median < full_target else 'FAIL'}: target at {scale:g}x < {full_target:g} s]",
                  flush=True)
            quiet = render(renderer, now=data_now)
            print(f"incremental, nothing changed: {quiet.seconds * 1000:.0f} ms "
                  f"({quiet.pages} pages rendered, {quiet.written} files changed)")
            rounds = []
            clock = data_now
            profiler = cProfile.Profile() if args.profile else None
            for i in range(args.rounds):
                clock += timedelta(minutes=1)
                lines = minute_of_events(dsn, clock - timedelta(minutes=1), i)
                ingest_s = asyncio.run(ingest_and_project(settings, dsn, lines))
                if profiler is not None:
                    profiler.enable()
                result = render(renderer, now=clock)
                if profiler is not None:
                    profiler.disable()
                rounds.append((len(lines), ingest_s, result))
                print(f"  minute {i + 1}: {len(lines)} events (written + projected in {ingest_s:.2f} s) -> "
                      f"render {result.seconds * 1000:.0f} ms: {result.sessions} sessions, {result.specs} specs, "
                      f"{result.pages} pages rendered, {result.written} files changed", flush=True)
            if profiler is not None:
                profiler.dump_stats(args.profile)
                print(f"profile of the incremental renders (this process only) in {args.profile}; top by own time:")
                pstats.Stats(profiler).sort_stats("tottime").print_stats(PROFILE_ROWS)
            times = [r.seconds for _, _, r in rounds]
            median = statistics.median(times)
            print(f"incremental after a minute of events: median {median * 1000:.0f} ms, max {max(times) * 1000:.0f} ms  "
                  f"[{'PASS' if median < INCREMENTAL_TARGET_S else 'FAIL'}: target < {INCREMENTAL_TARGET_S * 1000:.0f} ms]")
            w = weight(site_root / "site")
            print(f"overview page: {w['index_bytes'] / 1024:.1f} KB uncompressed, {w['index_gzip_bytes'] / 1024:.1f} KB "
                  f"gzipped  [{'PASS' if w['index_bytes'] < PAGE_TARGET_BYTES else 'FAIL'}: target < 150 KB]; "
                  f"api/status.json {w['status_json_bytes'] / 1024:.1f} KB ({w['status_json_gzip_bytes'] / 1024:.1f} KB "
                  f"gzipped); whole site {w['files']:,} files, {w['site_bytes'] / 1e6:.1f} MB"
                  + (f"  [{'PASS' if w['site_bytes'] < SITE_TARGET_BYTES else 'FAIL'}: target at 10x < 60 MB]"
                     if scale <= 10 else ""))
        finally:
            renderer.close()
            print(f"took back the {asyncio.run(take_back(settings, dsn)):,} events the rounds wrote", flush=True)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        ok = (full_median < full_target and median < INCREMENTAL_TARGET_S and w["index_bytes"] < PAGE_TARGET_BYTES
              and (scale > 10 or w["site_bytes"] < SITE_TARGET_BYTES))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "counts": n, "full_s": fulls, "full_median_s": full_median, "full_pages": full.pages,
                "incremental_s": times, "incremental_median_s": median,
                "incremental_events": [e for e, _, _ in rounds], "weight": w}, indent=1))
        return 0 if ok else 1
    finally:
        shutil.rmtree(site_root, ignore_errors=True)
        cluster.stop(mode="fast")
        if args.keep or args.reuse:
            print(f"kept {root} (rerun with --reuse {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
