#!/usr/bin/env python3
"""Several hosts into one PostgreSQL: 3 daemons (processes, each its own host name, socket and
spool) each serving `--connections` (300) agents that send like real ones, into one cluster;
then the same total from one daemon.

An agent is one connection: a session_started, then tool events at `--rate` events/s on
average (exponential gaps), and at each spec end (every ~`--spec-events` events) a burst
pipelined at once (spec_completed with tokens and cost, cc.Stop, spec_started, a few tool
events). Every event waits for its ack. Agents start spread over the first seconds.

Reported per phase: acknowledged events/s in all, ack p50/p99 per host (per daemon; for the
single daemon, per load generator), the projector's lag (seconds after the load until the
dirty queues are empty), and the CPU of PostgreSQL, of the daemons and of the load
generators (% of one core; the machine's total is 100 x cores), and of everything else on
the machine ("other": where it is large, the run is noise).

    .venv/bin/python bench/fleet.py                  # 2 phases of 30 s, ~2 min
    .venv/bin/python bench/fleet.py --seconds 60 --json /tmp/fleet.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from ingest import DaemonProcess, aggregates_lag, children_cpu, percentile, proc_cpu, system_busy  # noqa: E402

HOSTS = 3
TOOLS = ("Bash", "Edit", "Read", "Write", "Grep")


# ---------------------------------------------------------------------------- load generator

def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


async def _agent(socket_path: str, seed: int, rate: float, spec_events: int, start_delay: float,
                 deadline: float, out: dict[str, Any]) -> None:
    rng = random.Random(seed)
    await asyncio.sleep(start_delay)
    try:
        reader, writer = await asyncio.open_unix_connection(socket_path, limit=1 << 20)
    except OSError as exc:
        out["errors"].append(f"connect: {exc}")
        return
    session = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    spec_n, in_spec = 1, 0

    def event(kind: str, spec: str | None, **data: Any) -> bytes:
        e: dict[str, Any] = {"type": kind, "session_id": session, "data": data}
        if spec:
            e["spec_id"] = spec
        return _line(e)

    async def exchange(lines: list[bytes]) -> None:
        sent = time.monotonic()
        writer.write(b"".join(lines))
        await writer.drain()
        for _ in lines:
            reply = await reader.readline()
            if not reply or not json.loads(reply).get("ok"):
                out["errors"].append(reply.decode(errors="replace")[:200] or "closed")
                return
            out["latencies"].append(time.monotonic() - sent)
        out["acked"] += len(lines)

    try:
        await exchange([event("session_started", None, name=f"fleet-{seed}", total_specs=100),
                        event("spec_started", f"CR-{spec_n:03d}", attempt=1)])
        while time.monotonic() < deadline and not out["errors"]:
            await asyncio.sleep(rng.expovariate(rate))
            spec = f"CR-{spec_n:03d}"
            in_spec += 1
            if in_spec >= spec_events:      # a spec ends: its closing events come at once
                spec_n, in_spec = spec_n + 1, 0
                nxt = f"CR-{spec_n:03d}"
                await exchange([
                    event("cc.Stop", spec, stop_hook_active=False),
                    event("spec_completed", spec, tokens_used=rng.randrange(20_000, 180_000),
                          cost_usd=round(rng.random() * 2, 4), duration_s=round(rng.random() * 900, 1)),
                    event("spec_started", nxt, attempt=1),
                    *[event("cc.PreToolUse", nxt, tool=rng.choice(TOOLS), input={"file_path": "src/a.py"})
                      for _ in range(5)]])
            else:
                tool = rng.choice(TOOLS)
                await exchange([event("cc.PostToolUse", spec, tool=tool, duration_ms=rng.randrange(5, 60_000),
                                      summary=f"{tool}: src/module_{rng.randrange(50)}.py")])
    except (OSError, ValueError) as exc:
        out["errors"].append(repr(exc))
    finally:
        writer.close()


async def _loadgen(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"acked": 0, "latencies": [], "errors": []}
    start = time.monotonic()
    deadline = start + args.seconds
    await asyncio.gather(*(_agent(args.socket, args.seed * 100_000 + i, args.rate, args.spec_events,
                                  args.ramp * i / args.connections, deadline, out)
                           for i in range(args.connections)))
    lat = [(v, 1) for v in out["latencies"]] or [(0.0, 1)]
    return {"acked": out["acked"], "seconds": time.monotonic() - start,
            "p50_ms": 1000 * percentile(lat, 0.50), "p99_ms": 1000 * percentile(lat, 0.99),
            "errors": out["errors"][:5], "error_count": len(out["errors"]),
            "cpu_s": time.process_time()}


def loadgen_main(args: argparse.Namespace) -> int:
    result = asyncio.run(_loadgen(args))
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------- phases

def run_phase(name: str, daemons: list[DaemonProcess], sockets: list[str], args: argparse.Namespace,
              postmaster: int, dsn: str) -> dict[str, Any]:
    """Load generators (one per socket in `sockets`) for args.seconds; the phase's figures."""
    pg0, busy0 = children_cpu(postmaster), system_busy()
    d0 = [proc_cpu(d.pid) + children_cpu(d.pid) for d in daemons]
    t0 = time.monotonic()
    gens = [subprocess.Popen([sys.executable, __file__, "--loadgen", "--socket", s, "--seed", str(n),
                              "--connections", str(args.connections), "--rate", str(args.rate),
                              "--spec-events", str(args.spec_events), "--seconds", str(args.seconds),
                              "--ramp", str(args.ramp)], stdout=subprocess.PIPE, text=True)
            for n, s in enumerate(sockets, 1)]
    outs = [json.loads(g.communicate(timeout=args.seconds + 120)[0]) for g in gens]
    wall = time.monotonic() - t0
    busy = 100 * (system_busy() - busy0) / wall
    pg_cpu = 100 * (children_cpu(postmaster) - pg0) / wall
    daemon_cpu = [100 * (proc_cpu(d.pid) + children_cpu(d.pid) - c) / wall for d, c in zip(daemons, d0)]
    lag = aggregates_lag(dsn, 120)
    acked = sum(o["acked"] for o in outs)
    ours = pg_cpu + sum(daemon_cpu) + sum(100 * o["cpu_s"] / wall for o in outs)
    return {"phase": name, "daemons": len(daemons), "connections": args.connections * len(sockets),
            "events": acked, "events_per_s": acked / wall, "wall_s": wall,
            "p50_ms": [round(o["p50_ms"], 1) for o in outs], "p99_ms": [round(o["p99_ms"], 1) for o in outs],
            "errors": sum(o["error_count"] for o in outs), "error_samples": [e for o in outs for e in o["errors"]][:3],
            "projector_lag_s": lag, "postgres_cpu_pct": pg_cpu, "daemon_cpu_pct": daemon_cpu,
            "loadgen_cpu_pct": [100 * o["cpu_s"] / wall for o in outs],
            "other_cpu_pct": max(0.0, busy - ours)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=300, help="agents per host; default 300")
    parser.add_argument("--rate", type=float, default=2.0, help="events/s of one agent between bursts; default 2")
    parser.add_argument("--spec-events", type=int, default=40, help="tool events per spec; default 40")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase; default 30")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which agents connect; default 5")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        return loadgen_main(args)

    from ralph_monitor.cluster import Cluster
    from ralph_monitor.store import ensure_database

    root = Path(tempfile.mkdtemp(prefix="rm-fleet-", dir="/tmp"))
    root.chmod(0o755)
    cluster = Cluster(root / "pg")
    results = []
    try:
        cluster.start()
        ensure_database(cluster.dsn("postgres"), "fleet")
        dsn = cluster.dsn("fleet")
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        for name, count in (("3 daemons", HOSTS), ("1 daemon", 1)):
            daemons = []
            try:
                for n in range(count):
                    d = DaemonProcess(root / f"{name[0]}-{n}", dsn, "warning",
                                      extra={"monitor": {"host": f"fleet-{n + 1}"}})
                    d.root.mkdir()
                    d.start()
                    daemons.append(d)
                sockets = [d.socket_path for d in daemons] if count == HOSTS else [daemons[0].socket_path] * HOSTS
                result = run_phase(name, daemons, sockets, args, postmaster, dsn)
            finally:
                for d in daemons:
                    d.stop()
            results.append(result)
            print(f"{name}: {result['connections']} connections, {result['events_per_s']:.0f} events/s acked, "
                  f"ack p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms (per load generator), "
                  f"projector lag {result['projector_lag_s'] or 0:.1f} s, PostgreSQL CPU {result['postgres_cpu_pct']:.0f}%, "
                  f"daemons CPU {[round(c) for c in result['daemon_cpu_pct']]}%, "
                  f"load generators CPU {[round(c) for c in result['loadgen_cpu_pct']]}%, "
                  f"other processes {result['other_cpu_pct']:.0f}% (noise if large), errors {result['errors']}",
                  flush=True)
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
