#!/usr/bin/env python3
"""Import benchmark: `ralph-monitor import claude-code` on a generated month of a heavy user's
Claude Code transcripts (tests/transcripts.py: the line shapes of the CLI 2.1.328), into a real
daemon on a private PostgreSQL cluster.

    python bench/import.py [--days 30] [--sessions-per-day 12] [--turns 15] [--padding 1500]
                           [--ccusage PATH] [--json FILE]

Phases:
  dry-run    read and sum up every transcript, send nothing (the reading cost alone)
  import     the first import: read, redact, send, store
  again      the same command again: nothing changed, nothing sent

For each: wall time, transcripts (files) and sessions per second, MB read per second, and the
importer's peak memory (max RSS of its process). Then checks that the database holds every
token the generator wrote, once. With --ccusage (a ccusage binary; the test tier caches one in
~/.cache/ralph-monitor-tests), compares ccusage's tokens per day and model with the import's
on the same files, and its cost (ccusage's price list) with the import's estimate (the shipped
price table). Standalone: creates a private cluster under /tmp and removes everything at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # for tests.*
sys.path.insert(0, str(ROOT / "src"))
from tests.daemon_proc import DaemonNotReady, start_daemon  # noqa: E402
from tests.transcripts import USAGE_FIELDS, TranscriptWriter  # noqa: E402

BIN = Path(sys.executable).parent
CCUSAGE_NAMES = {"inputTokens": "input_tokens", "outputTokens": "output_tokens",
                 "cacheCreationTokens": "cache_creation_input_tokens", "cacheReadTokens": "cache_read_input_tokens"}


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[float, int, bytes]:
    """(wall seconds, the command's own peak RSS in kB, its stdout)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    chunks: list[bytes] = []
    assert process.stdout is not None and process.stderr is not None
    while True:
        data = process.stdout.read(65536)
        if not data:
            break
        chunks.append(data)
    err = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[1:4])} failed: {err.decode(errors='replace')[-2000:]}")
    return elapsed, usage.ru_maxrss, b"".join(chunks)


def ccusage_daily(binary: str, home: Path) -> tuple[dict[str, Any], float, dict[str, float]]:
    """ccusage's tokens per day and model, its total cost and its cost per model."""
    out = subprocess.run([binary, "daily", "--json", "--offline", "--timezone", "UTC"], capture_output=True, check=True,
                         env={"HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude"), "PATH": "/usr/bin:/bin"},
                         cwd=home, timeout=600).stdout
    report = json.loads(out)
    daily: dict[str, Any] = {}
    per_model: dict[str, float] = {}
    for day in report["daily"]:
        for model in day["modelBreakdowns"]:
            daily.setdefault(day["period"], {})[model["modelName"]] = {
                ours: model[theirs] for theirs, ours in CCUSAGE_NAMES.items()}
            per_model[model["modelName"]] = per_model.get(model["modelName"], 0.0) + model["cost"]
    return daily, report["totals"]["totalCost"], per_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--sessions-per-day", type=int, default=12)
    parser.add_argument("--turns", type=int, default=15, help="turns per session (default 15)")
    parser.add_argument("--padding", type=int, default=1500,
                        help="average characters of text per reply and tool output (default 1500)")
    parser.add_argument("--ccusage", metavar="PATH", help="a ccusage binary to compare with")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()

    import psycopg

    from ralph_monitor.cluster import Cluster
    from ralph_monitor.store import ensure_database, prepare_database

    root = Path(tempfile.mkdtemp(prefix="rm-bench-import-", dir="/tmp"))
    root.chmod(0o755)
    cluster = Cluster(root / "pg")
    daemon: subprocess.Popen[bytes] | None = None
    try:
        home = root / "home"
        projects = home / ".claude" / "projects"
        started = time.perf_counter()
        writer = TranscriptWriter(projects, padding=args.padding)
        truth = writer.month(datetime.now(timezone.utc), days=args.days, sessions_per_day=args.sessions_per_day,
                             turns=args.turns, cost_styles=("none",))
        files = list(projects.rglob("*.jsonl"))
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; generated {len(files)} transcript files, "
              f"{megabytes:.0f} MB, {truth.sessions} sessions, {truth.turns} turns, {truth.tool_calls} tool calls, "
              f"{truth.total():,} tokens in {time.perf_counter() - started:.1f} s\n")

        cluster.start()
        ensure_database(cluster.dsn("postgres"), "bench")
        dsn = cluster.dsn("bench")
        asyncio.run(prepare_database(dsn))
        socket_path = str(root / "events.sock")
        config = root / "config.toml"
        config.write_text(f'[socket]\npath = "{socket_path}"\ngroup = ""\n[database]\ndsn = "{dsn}"\n'
                          f'[paths]\nstate_dir = "{root / "state"}"\n[monitor]\nlog_level = "warning"\n')
        try:
            daemon = start_daemon(config, log_path=root / "daemon.log", notify_path=root / "notify.sock")
        except DaemonNotReady as exc:
            raise SystemExit(str(exc)) from None

        env = {**os.environ, "RALPH_MONITOR_CLIENT_SPOOL": str(root / "spool")}
        command = [str(BIN / "ralph-monitor"), "import", "claude-code", "--config", str(config),
                   "--projects", str(projects), "--since", "all", "--json"]
        rows = []
        print(f"{'phase':<9} {'seconds':>8} {'files/s':>8} {'sessions/s':>11} {'MB/s':>7} {'peak MB':>8} {'events':>8}")
        summaries = {}
        for name, extra in (("dry-run", ["--dry-run"]), ("import", []), ("again", [])):
            seconds, rss_kb, out = run_measured(command + extra, env)
            summary = json.loads(out)
            summaries[name] = summary
            row = {"phase": name, "seconds": round(seconds, 2), "files_per_s": round(len(files) / seconds, 1),
                   "sessions_per_s": round(truth.sessions / seconds, 1), "mb_per_s": round(megabytes / seconds, 1),
                   "peak_rss_mb": round(rss_kb / 1024, 1), "events_sent": summary["events_sent"]}
            rows.append(row)
            print(f"{name:<9} {row['seconds']:>8.2f} {row['files_per_s']:>8.1f} {row['sessions_per_s']:>11.1f} "
                  f"{row['mb_per_s']:>7.1f} {row['peak_rss_mb']:>8.1f} {row['events_sent']:>8}", flush=True)

        with psycopg.connect(dsn) as conn:
            deadline = time.monotonic() + 60
            while conn.execute("SELECT count(*) FROM dirty_sessions").fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.2)
            stored_tokens = conn.execute("SELECT coalesce(sum(tokens_used), 0) FROM sessions").fetchone()[0]
            events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        exact = summaries["import"]["daily"] == truth.tokens and stored_tokens == truth.total()
        print(f"\n{events:,} events stored; tokens in the sessions table {stored_tokens:,} of {truth.total():,} "
              f"generated: {'exact' if exact else 'MISMATCH'}")
        result: dict[str, Any] = {"files": len(files), "megabytes": round(megabytes, 1), "sessions": truth.sessions,
                                  "phases": rows, "exact": exact}

        if args.ccusage:
            started = time.perf_counter()
            daily, cost, per_model = ccusage_daily(args.ccusage, home)
            seconds = time.perf_counter() - started
            same = daily == summaries["import"]["daily"]
            estimate = summaries["import"]["cost_usd"]["estimate"]
            ours_per_model: dict[str, float] = {}
            from ralph_monitor.agent.prices import PriceTable

            table = PriceTable()
            for day in truth.tokens.values():
                for model, usage in day.items():
                    ours_per_model[model] = ours_per_model.get(model, 0.0) + (table.estimate(model, usage) or 0.0)
            print(f"ccusage ({seconds:.1f} s) on the same files: tokens per day and model "
                  f"{'identical' if same else 'DIFFERENT'} ({sum(len(m) for m in daily.values())} day-model rows, "
                  f"{sum(u[f] for m in daily.values() for u in m.values() for f in USAGE_FIELDS):,} tokens)")
            print(f"cost: ccusage ${cost:,.2f}, import's estimate ${estimate:,.2f} "
                  f"({(estimate - cost) / cost * 100 if cost else 0:+.2f}%)")
            for model in sorted(per_model):
                print(f"  {model:<30} ccusage ${per_model[model]:>10,.2f}   price table ${ours_per_model.get(model, 0):>10,.2f}")
            result["ccusage"] = {"tokens_identical": same, "seconds": round(seconds, 2), "cost_ccusage": cost,
                                 "cost_estimate": estimate, "per_model": {
                                     m: {"ccusage": per_model[m], "price_table": ours_per_model.get(m, 0.0)}
                                     for m in per_model}}
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0 if exact else 1
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        cluster.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
