"""`ralph-query`: answer "what happened?" from the database, for people (tables) and
scripts (`--json`). Reads through the typed functions in `queries`; writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, time, timedelta, timezone
from typing import IO, Any

from ralph_monitor import __version__, changes, queries, timeline
from ralph_monitor.cli_common import add_config_option, parse_since, run_command
from ralph_monitor.cluster import resolve_dsn
from ralph_monitor.config import Settings, report_zone
from ralph_monitor.errors import RalphMonitorError
from ralph_monitor.outcomes import SpecResult, attempt_word
from ralph_monitor.store import ReadSource, ReadStore, open_read_store
from ralph_monitor.textfmt import (duration, json_default, local_time, money, percent, relative_time,
                                   shorten, table, to_json)

EPILOG = """\
Examples:
  ralph-query status                       what runs now, what waits for a human, monitor health
  ralph-query night                        what happened last night
  ralph-query sessions --since 7d
  ralph-query session 6f1c                 one session's timeline (a unique id prefix is enough)
  ralph-query spec CR-103                  every run of one spec (CR-103: one that `ralph-monitor demo` records)
  ralph-query failures --top 10 --since 7d
  ralph-query diff                         the latest session that has a previous run of its name, against it
  ralph-query diff 6f1c 93ab               two sessions (the earlier one is the baseline)
  ralph-query cost --month
  ralph-query compare                      this week against last week
  ralph-query events --since 8h --type spec_failed
  ralph-query alerts                       who was woken, for what, and whether it arrived
  ralph-query export --format csv --table spec_runs --since 30d -o runs.csv
Add --json to any command for machine-readable output.
"""


class QueryFailed(RalphMonitorError):
    """A query could not be answered (unknown id, bad window)."""


@contextmanager
def _store(settings: Settings) -> Iterator[ReadStore]:
    with open_read_store(settings, dsn=resolve_dsn(settings)) as store:
        yield store


def _zone(settings: Settings) -> Any:
    return report_zone(settings.reports_timezone)


def _emit_json(value: Any) -> None:
    print(to_json(value))


def _answered_plainly(args: argparse.Namespace, rows: list[Any], empty: str) -> bool:
    """Handle `--json` (one object per line) and the empty case; False when a table is due."""
    if args.json:
        for row in rows:
            _emit_json(row)
        return True
    if not rows:
        print(empty)
        return True
    return False


def _session_rows(sessions: list[queries.SessionSummary], now: datetime) -> list[list[str]]:
    rows = []
    for s in sessions:
        specs = f"{s.specs_completed}/{s.total_specs}" if s.total_specs else str(s.specs_completed)
        counts = s.counts
        rows.append([str(s.id)[:8], shorten(s.name, 28) or "-", s.execution_state,
                     relative_time(s.start_time, now), specs, str(counts.failed), str(counts.timed_out),
                     money(s.cost_usd), relative_time(s.last_event_at, now)])
    return rows


SESSION_HEADERS = ["id", "name", "state", "started", "done", "failed", "timed out", "cost", "last event"]


def reads_line(reads: ReadSource, now: datetime) -> str:
    """Where `status` was read: the replica and its lag, or the warning that it was not."""
    if reads.fallback:
        return f"! {reads.fallback}"
    if not reads.in_recovery:
        return f"reads from {reads.database}, which is not a standby (check [database] read_dsn)"
    replayed = relative_time(reads.last_replay_at, now) if reads.last_replay_at else "never"
    return (f"reads from the replica ({reads.database}): lag {reads.lag_s or 0:.1f} s, "
            f"last transaction replayed {replayed}")


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    now = datetime.now(timezone.utc)
    with _store(settings) as store:
        status = queries.status(store, now)
    if args.json:
        _emit_json(status)
        return 0
    if status.active:
        print(f"Running now ({len(status.active)}):")
        rows = _session_rows(status.active, now)
        for row, s in zip(rows, status.active):
            row.insert(3, s.current_spec or "-")
        print(table([*SESSION_HEADERS[:3], "on spec", *SESSION_HEADERS[3:]], rows))
    else:
        print("No session is running.")
    stalled = [s for s in status.active if s.execution_state == "stalled"]
    for s in stalled:
        print(f"! stalled: {s.label} — no event since {relative_time(s.last_event_at, now)}")
    for s in status.active:
        if s.execution_state == "waiting_for_human" and s.waiting_since is not None:
            print(f"! waiting for a human: {s.label} — since {relative_time(s.waiting_since, now)}")
        for finding in s.loop_findings:
            print(f"! stuck ({str(finding.get('rule')).replace('_', ' ')}): {s.label} — {shorten(finding.get('summary'), 90)} "
                  f"(first {finding.get('first_at')}, last {finding.get('last_at')})")
        if s.execution_state == "paused_for_usage_limit":
            print(f"~ paused for the usage limit: {s.label} — until {local_time(s.paused_until, _zone(settings))} "
                  f"({relative_time(s.paused_until, now)})")
    if status.usage is not None:
        print(f"Usage windows (reported {relative_time(status.usage.reported_at, now)} from {status.usage.host}): "
              + "; ".join(f"{w.label} {w.used_percentage:g}% used, resets "
                          + (f"{local_time(w.resets_at, _zone(settings))} ({relative_time(w.resets_at, now)})"
                             if w.resets_at else "-") for w in status.usage.windows))
    print()
    if status.pending_interventions:
        print(f"Waiting for a human ({len(status.pending_interventions)}):")
        print(table(["asked", "session", "spec", "message"], [
            [relative_time(i.requested_at, now), shorten(i.session_name or str(i.session_id)[:8], 24),
             i.spec_id or "-", shorten(i.message, 70)] for i in status.pending_interventions]))
    else:
        print("No request is waiting for a human.")
    print()
    print("Monitor:")
    for h in status.hosts:
        print(f"  {h.host}: last seen {relative_time(h.last_seen, now)}, {h.ingest_rate_per_s:.1f} events/s, "
              f"spool backlog {h.spool_backlog}, {h.events_total} events since {local_time(h.started_at, _zone(settings))}"
              + (f", {h.connections_refused} connections refused, {h.connections_evicted} idle ones closed to make room"
                 if h.connections_refused or h.connections_evicted else ""))
        if h.disks:
            print("    disk free: " + ", ".join(
                f"{label} {d['free_bytes'] / 2**20:,.0f} MiB ({d['free_bytes'] / (d['total_bytes'] or 1):.0%})"
                for label, d in sorted(h.disks.items())))
    print(f"  last backup: {relative_time(status.last_backup.occurred_at, now) if status.last_backup else 'never'}")
    print(f"  last prune: {relative_time(status.last_prune.occurred_at, now) if status.last_prune else 'never'}")
    print(f"  rejected lines in the last 24 h: {status.rejects_last_24h}")
    if status.reads is not None and (status.reads.replica_configured or status.reads.in_recovery):
        print("  " + reads_line(status.reads, now))
    if status.projection_failures_total:
        print(f"! aggregates NOT updated for {status.projection_failures_total} session(s): their projection "
              "fails (other sessions are fine)")
        for f in status.projection_failures:
            print(f"  {shorten(f.session_name, 24) or str(f.session_id)[:8]}: {shorten(f.error, 90)} "
                  f"(since {relative_time(f.first_failed_at, now)}, {f.attempts} tries)")
        print("  fix the cause, then run `ralph-monitor rebuild-aggregates`")
    return 0


def cmd_night(args: argparse.Namespace, settings: Settings) -> int:
    zone = _zone(settings)
    now = datetime.now(timezone.utc)
    window = queries.night_window(now, zone, start=time.fromisoformat(settings.reports_night_start),
                                  end=time.fromisoformat(settings.reports_night_end))
    with _store(settings) as store:
        night = queries.night_summary(store, window)
    if args.json:
        _emit_json({"window": night.window, "sessions": night.sessions, "outcomes": night.outcomes.as_json(),
                    "still_failing": night.still_failing, "fixed_on_retry": night.fixed_on_retry,
                    "retrying": night.retrying, "git": night.git, "changes": night.changes})
        return 0
    o = night.outcomes
    print(f"Night of {local_time(window.since, zone)} to {local_time(window.until, zone)} ({zone}):")
    print(f"  {len(night.sessions)} session{'' if len(night.sessions) == 1 else 's'}; {o.counts.decided} specs decided: {o.counts.sentence()} "
          f"({percent(o.counts.success_rate)} success); {o.runs} spec runs, cost {money(o.cost_usd)}, "
          f"{o.tokens_used:,} tokens")
    if night.sessions:
        print()
        print(table(SESSION_HEADERS, _session_rows(night.sessions, now)))
    for title, results in (("Still failing", night.still_failing), ("Fixed on retry", night.fixed_on_retry),
                           ("Failed, being retried now", night.retrying)):
        if results:
            print()
            print(f"{title} ({len(results)}):")
            print(_results_table(results, zone))
    if night.changes:
        print()
        print(f"What the spec runs changed: {night.git.text}")
        for r in night.changes:
            print(f"  {r.spec_id}: {r.changes}" + (f", {money(r.cost_usd)}" if r.cost_usd is not None else "")
                  + (f" ({shorten(r.session_name, 20)})" if r.session_name else ""))
    return 0


def _results_table(results: list[SpecResult], zone: Any) -> str:
    return table(["ended", "spec", "outcome", "tries", "session", "error"], [
        [local_time(r.ended_at, zone) if r.ended_at else "-", r.spec_id, r.word, str(r.attempts),
         shorten(r.session_name, 20) or str(r.session_id)[:8], shorten(r.error, 70)] for r in results])


def cmd_sessions(args: argparse.Namespace, settings: Settings) -> int:
    now = datetime.now(timezone.utc)
    with _store(settings) as store:
        sessions = queries.sessions_since(store, args.since, limit=args.limit)
    if _answered_plainly(args, sessions, "no sessions in that window"):
        return 0
    print(table(SESSION_HEADERS, _session_rows(sessions, now)))
    return 0


def _at_least(minimum: int) -> Callable[[str], int]:
    """argparse type for --limit and --top: a whole number, `minimum` or more."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small; give {minimum} or more")
        return value
    return parse


def cmd_session(args: argparse.Namespace, settings: Settings) -> int:
    zone = _zone(settings)
    with _store(settings) as store:
        try:
            session_id = queries.resolve_session(store, args.id)
            detail = queries.session_detail(store, session_id, timeline_limit=args.limit or None)
        except queries.UnknownSession as exc:
            raise QueryFailed(str(exc)) from None
    if args.json:
        _emit_json(detail)
        return 0
    s = detail.session
    print(f"Session {s.id}  {s.name or ''}".rstrip())
    paused = f" until {local_time(s.paused_until, zone)}" if s.paused_until else ""
    print(f"  state {s.execution_state}{paused}; host {s.host or '-'}; started {local_time(s.start_time, zone)}; "
          f"ended {local_time(s.end_time, zone)}; last event {local_time(s.last_event_at, zone)}")
    print(f"  specs{f' (of {s.total_specs})' if s.total_specs else ''}: {s.counts.sentence()}; "
          f"{s.tokens_used:,} tokens; {money(s.cost_usd)}; {s.event_count} events")
    git = queries.GitTotals.of(detail.spec_runs)
    if git.runs:
        print(f"  changed: {git.text} ({git.runs} spec run{'' if git.runs == 1 else 's'} recorded it)")
    for problem in s.value_problems:
        print(f"  ! not counted: {problem}")
    if s.waiting_since is not None:
        print(f"  ! waiting for a human since {local_time(s.waiting_since, zone)}")
    for finding in s.loop_findings:
        print(f"  ! stuck ({str(finding.get('rule')).replace('_', ' ')}): {shorten(finding.get('summary'), 100)}")
    if detail.spec_runs:
        print()
        print(table(["spec", "try", "outcome", "started", "took", "tokens", "cost", "changed", "error"], [
            [r.spec_id, str(r.attempt), attempt_word(r.status, r.outcome), local_time(r.start_time, zone),
             duration(r.duration_seconds),
             f"{r.tokens_used:,}" if r.tokens_used is not None else "-", money(r.cost_usd),
             shorten(r.changes, 48) or "-", shorten(r.error_message, 60)] for r in detail.spec_runs]))
    if detail.interventions:
        print()
        print(table(["asked", "spec", "message", "answered"], [
            [local_time(i.requested_at, zone), i.spec_id or "-", shorten(i.message, 60),
             local_time(i.answered_at, zone) if i.answered_at else "NOT ANSWERED"] for i in detail.interventions]))
    print()
    if len(detail.timeline) < s.event_count:
        print(f"Timeline: the newest {len(detail.timeline)} of {s.event_count} events (--limit N, or --limit 0 for all)")
    rows = list(reversed(detail.timeline)) if args.verbose else timeline.group(list(reversed(detail.timeline)))
    print(table(["time", "type", "spec", "data"], [_timeline_row(row, zone) for row in reversed(rows)]))
    if not args.verbose and len(rows) < len(detail.timeline):
        print("(tool calls are grouped per spec run and turn; --verbose shows every event)")
    return 0


def _timeline_row(row: Any, zone: Any) -> list[str]:
    if isinstance(row, timeline.ToolGroup):
        return [row.first_at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"), "tool calls", row.spec_id or "",
                shorten(row.summary(), 70)]
    return [row.occurred_at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"), row.event_type, row.spec_id or "",
            shorten(json.dumps(row.data, ensure_ascii=False, default=json_default) if row.data else "", 70)]


def cmd_spec(args: argparse.Namespace, settings: Settings) -> int:
    zone = _zone(settings)
    with _store(settings) as store:
        runs = queries.spec_history(store, args.spec_id, limit=args.limit)
    if not runs and not args.json:
        raise QueryFailed(f"no runs of spec {args.spec_id!r}")
    if _answered_plainly(args, runs, ""):
        return 0
    print(table(["started", "session", "try", "outcome", "took", "cost", "changed", "error"], [
        [local_time(r.start_time or r.end_time, zone), shorten(r.session_name, 20) or str(r.session_id)[:8],
         str(r.attempt), attempt_word(r.status, r.outcome), duration(r.duration_seconds), money(r.cost_usd),
         shorten(r.changes, 48) or "-", shorten(r.error_message, 60)]
        for r in runs]))
    return 0


def cmd_failures(args: argparse.Namespace, settings: Settings) -> int:
    now = datetime.now(timezone.utc)
    with _store(settings) as store:
        failing = queries.top_failing_specs(store, args.since, limit=args.top)
    if _answered_plainly(args, failing, "no failed spec runs in that window"):
        return 0
    print(table(["spec", "failed runs", "runs", "still failing", "fixed on retry", "last failed", "last error"], [
        [f.spec_id, str(f.failures), str(f.runs), str(f.counts.still_failing), str(f.counts.fixed_on_retry),
         relative_time(f.last_failed_at, now), shorten(f.last_error, 60)]
        for f in failing]))
    return 0


def cmd_cost(args: argparse.Namespace, settings: Settings) -> int:
    zone = _zone(settings)
    now = datetime.now(timezone.utc)
    with _store(settings) as store:
        spend = queries.spend(store, now, zone)
    if args.json:
        _emit_json({"today": spend.today.as_json(), "week": spend.week.as_json(), "month": spend.month.as_json(),
                    "per_day": spend.per_day})
        return 0
    periods = {"day": ("today", spend.today), "week": ("this week", spend.week), "month": ("this month", spend.month)}
    chosen = [periods[args.period]] if args.period else list(periods.values())
    print(table(["period", "cost", "tokens", "runs"], [
        [label, money(o.cost_usd), f"{o.tokens_used:,}", str(o.runs)] for label, o in chosen]))
    if args.period in (None, "month"):
        print()
        print(table(["day", "cost", "tokens", "runs", "completed", "failed", "timed out"], [
            [d.day.isoformat(), money(d.cost_usd), f"{d.tokens_used:,}", str(d.runs), str(d.counts.completed),
             str(d.counts.failed), str(d.counts.timed_out)] for d in spend.per_day]))
    return 0


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    zone = _zone(settings)
    with _store(settings) as store:
        comparison = queries.compare_weeks(store, datetime.now(timezone.utc), zone)
    if args.json:
        _emit_json({"this_week": comparison.this_week, "last_week": comparison.last_week,
                    "current": comparison.current.as_json(), "previous": comparison.previous.as_json()})
        return 0
    cur, prev = comparison.current, comparison.previous
    print(table(["", "this week", "last week"], [
        ["from", local_time(comparison.this_week.since, zone), local_time(comparison.last_week.since, zone)],
        ["specs decided", str(cur.counts.decided), str(prev.counts.decided)],
        ["completed", str(cur.counts.completed), str(prev.counts.completed)],
        ["  fixed on retry", str(cur.counts.fixed_on_retry), str(prev.counts.fixed_on_retry)],
        ["failed", str(cur.counts.failed), str(prev.counts.failed)],
        ["timed out", str(cur.counts.timed_out), str(prev.counts.timed_out)],
        ["success rate", percent(cur.counts.success_rate), percent(prev.counts.success_rate)],
        ["spec runs", str(cur.runs), str(prev.runs)],
        ["avg duration", duration(cur.avg_duration_seconds), duration(prev.avg_duration_seconds)],
        ["cost", money(cur.cost_usd), money(prev.cost_usd)],
        ["tokens", f"{cur.tokens_used:,}", f"{prev.tokens_used:,}"],
    ]))
    return 0


def _session_id(store: ReadStore, prefix: str | None) -> Any:
    try:
        return queries.resolve_session(store, prefix) if prefix else None
    except queries.UnknownSession as exc:
        raise QueryFailed(str(exc)) from None


def _change_rows(items: list[changes.SpecChange]) -> list[list[str]]:
    rows = []
    for c in items:
        old = c.before
        rows.append([c.spec_id, old.word if old else "not run", c.now.word,
                     f"{duration(old.duration_seconds) if old else '-'} -> {duration(c.now.duration_seconds)}",
                     f"{money(old.cost_usd) if old else '-'} -> {money(c.now.cost_usd)}", shorten(c.now.error, 60)])
    return rows


def cmd_diff(args: argparse.Namespace, settings: Settings) -> int:
    zone = _zone(settings)
    with _store(settings) as store:
        first, second = _session_id(store, args.a), _session_id(store, args.b)
        try:
            diff = queries.session_diff(store, first, second, threshold_percent=args.threshold)
        except queries.UnknownSession as exc:
            raise QueryFailed(str(exc)) from None
    if args.json:
        c = diff.changes
        _emit_json({"baseline": diff.baseline, "session": diff.session, "threshold_percent": c.threshold_percent,
                    "before": c.before.as_json(), "now": c.now.as_json(),
                    **{name: getattr(c, name) for name in CHANGE_KINDS}, "new_errors": c.new_errors,
                    "not_run": c.not_run})
        return 0
    b, s, c = diff.baseline, diff.session, diff.changes
    print(f"{s.label} ({str(s.id)[:8]}, started {local_time(s.start_time, zone)}) against "
          f"{b.label} ({str(b.id)[:8]}, started {local_time(b.start_time, zone)}):")
    print(f"  before: {c.before.sentence()} ({percent(c.before.success_rate)}), {money(b.cost_usd)}")
    print(f"  now:    {c.now.sentence()} ({percent(c.now.success_rate)}), {money(s.cost_usd)}")
    print(f"  {c.headline()}")
    for name in CHANGE_KINDS:
        items = getattr(c, name)
        if items:
            print()
            print(f"{CHANGE_TITLES[name]} ({len(items)}):")
            print(table(["spec", "before", "now", "took", "cost", "error now"], _change_rows(items)))
    if c.new_errors:
        print()
        print(f"New errors ({len(c.new_errors)}):")
        print(table(["specs", "error"], [[shorten(", ".join(e.spec_ids), 30), shorten(e.error, 100)]
                                         for e in c.new_errors]))
    if c.not_run:
        print()
        print(f"Not run (yet) this time ({len(c.not_run)}): {shorten(', '.join(c.not_run), 200)}")
    return 0


CHANGE_KINDS = ("newly_failing", "fixed", "still_failing", "flaky", "slower", "costlier")
CHANGE_TITLES = {"newly_failing": "Newly failing", "fixed": "Fixed", "still_failing": "Still failing",
                 "flaky": "Flaky (failed, then passed on a retry)", "slower": "Slower", "costlier": "Costlier"}


def cmd_events(args: argparse.Namespace, settings: Settings) -> int:
    now = datetime.now(timezone.utc)
    with _store(settings) as store:
        rows = queries.recent_events(store, since=args.since, event_type=args.type,
                                     session_id=_session_id(store, args.session), spec_id=args.spec, limit=args.limit)
    if _answered_plainly(args, rows, "no events match"):
        return 0
    print(table(["when", "type", "session", "spec", "host", "data"], [
        [relative_time(r.occurred_at, now), r.event_type, str(r.session_id or "-")[:8], r.spec_id or "-",
         r.host, shorten(json.dumps(r.data, ensure_ascii=False), 60) if r.data else ""] for r in rows]))
    return 0


def cmd_rejects(args: argparse.Namespace, settings: Settings) -> int:
    now = datetime.now(timezone.utc)
    with _store(settings) as store:
        rows = queries.recent_rejects(store, limit=args.limit)
    if _answered_plainly(args, rows, "no rejected lines"):
        return 0
    print(table(["when", "reason", "pid", "bytes", "line"], [
        [relative_time(r.received_at, now), shorten(f"{r.reason}: {r.detail}" if r.detail else r.reason, 80),
         str(r.writer_pid or "-"), str(r.line_bytes), shorten(r.excerpt, 60)] for r in rows]))
    return 0


def cmd_alerts(args: argparse.Namespace, settings: Settings) -> int:
    now = datetime.now(timezone.utc)
    since = args.since or now - timedelta(days=7)
    with _store(settings) as store:
        rows = queries.recent_alerts(store, since=since, limit=args.limit)
    if _answered_plainly(args, rows, f"no alert since {local_time(since, _zone(settings))}"):
        return 0
    print(table(["fired", "state", "alert", "delivery"], [
        [relative_time(a.fired_at, now), a.state,
         shorten(a.title, 60), shorten(a.delivery, 50)] for a in rows]))
    failed = [(a, m) for a in rows for m in a.messages if m["last_error"] and not m["sent_at"]]
    for alert, message in failed[:10]:
        print(f"! {shorten(alert.title, 40)} to {message['destination']}: {shorten(message['last_error'], 100)}")
    return 0


def _csv_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=json_default)
    if isinstance(value, datetime):
        return value.isoformat()
    return "" if value is None else value


def write_export(rows: Iterator[dict[str, Any]], out: IO[str], fmt: str) -> int:
    """Stream rows as CSV (header first) or JSON Lines; the number of rows written."""
    count = 0
    writer = None
    for row in rows:
        if fmt == "jsonl":
            out.write(json.dumps(row, default=json_default, ensure_ascii=False) + "\n")
        else:
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(row))
                writer.writeheader()
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        count += 1
    return count


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    window = queries.Window(args.since or datetime(1970, 1, 1, tzinfo=timezone.utc),
                            args.until or datetime.now(timezone.utc))
    if window.since >= window.until:
        raise QueryFailed("--since must be before --until")
    with _store(settings) as store:
        rows = queries.export_rows(store, args.table, window)
        if args.output in (None, "-"):
            count = write_export(rows, sys.stdout, args.format)
        else:
            opener = gzip.open if args.output.endswith(".gz") else open
            with opener(args.output, "wt", encoding="utf-8", newline="") as out:  # type: ignore[operator]
                count = write_export(rows, out, args.format)
    print(f"exported {count} {args.table} rows", file=sys.stderr)
    return 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable JSON (one object per line)")


def query_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ralph-query", description="Answer questions about agent runs from the ralph-monitor database.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".")
        _add_common(p)
        p.set_defaults(func=func)
        return p

    command("status", cmd_status, "running and stalled sessions, requests waiting for a human, monitor health")
    command("night", cmd_night, "what happened in the last overnight window ([reports] night_start/night_end)")
    p = command("sessions", cmd_sessions, "sessions started in a window, newest first")
    p.add_argument("--since", type=parse_since, default=parse_since("7d"), metavar="WHEN",
                   help="2h, 7d, 2w or an ISO timestamp (default 7d)")
    p.add_argument("--limit", type=_at_least(1), default=100, help="at most this many (default 100)")
    p = command("session", cmd_session, "one session: spec runs, interventions and its event timeline")
    p.add_argument("id", help="session id or a unique prefix of it")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="every event of the timeline (by default a run of tool calls is one line)")
    p.add_argument("--limit", type=_at_least(0), default=queries.SESSION_TIMELINE_EVENTS, metavar="N",
                   help=f"show the newest N events of the timeline (default {queries.SESSION_TIMELINE_EVENTS}; "
                        "0 shows them all)")
    p = command("spec", cmd_spec, "every run of one spec across sessions, newest first")
    p.add_argument("spec_id")
    p.add_argument("--limit", type=_at_least(1), default=50, help="at most this many (default 50)")
    p = command("failures", cmd_failures, "specs that failed most often")
    p.add_argument("--top", type=_at_least(1), default=10, help="how many specs (default 10)")
    p.add_argument("--since", type=parse_since, default=parse_since("7d"), metavar="WHEN", help="default 7d")
    p = command("diff", cmd_diff, "what changed between two sessions: newly failing, fixed, still failing, flaky, "
                                  "slower, costlier specs and new errors")
    p.add_argument("a", nargs="?", metavar="A", help="a session id or unique prefix (default: the latest session that has a previous run of its name)")
    p.add_argument("b", nargs="?", metavar="B", help="another one (default: the session of A's name that ran "
                                                     "before A); the earlier of the two is the baseline")
    p.add_argument("--threshold", type=float, default=changes.THRESHOLD_PERCENT, metavar="PERCENT",
                   help=f"slower / costlier means this much more (default {changes.THRESHOLD_PERCENT:g}%%, and at "
                        f"least {changes.MIN_SLOWER_S:g} s / ${changes.MIN_COSTLIER_USD} more)")
    p = command("cost", cmd_cost, "spend and tokens today, this week, this month, and per day")
    group = p.add_mutually_exclusive_group()
    for period in ("day", "week", "month"):
        group.add_argument(f"--{period}", dest="period", action="store_const", const=period,
                           help=f"only this {period}")
    command("compare", cmd_compare, "this week so far against the whole previous week")
    p = command("events", cmd_events, "events, newest first, filtered")
    p.add_argument("--since", type=parse_since, metavar="WHEN", help="2h, 30m, 1d or an ISO timestamp")
    p.add_argument("--type", help="only this event type")
    p.add_argument("--session", metavar="ID", help="only this session (id or unique prefix)")
    p.add_argument("--spec", help="only this spec id")
    p.add_argument("--limit", type=_at_least(1), default=50, help="at most this many (default 50)")
    p = command("rejects", cmd_rejects, "lines the daemon refused, newest first")
    p.add_argument("--limit", type=_at_least(1), default=50, help="at most this many (default 50)")
    p = command("alerts", cmd_alerts, "alerts fired (a human needed, a stall, a budget...) and their delivery")
    p.add_argument("--since", type=parse_since, metavar="WHEN", help="start (default: 7 days ago)")
    p.add_argument("--limit", type=_at_least(1), default=100, help="at most this many (default 100)")
    p = command("export", cmd_export, "stream rows as CSV or JSON Lines (constant memory)")
    p.add_argument("--format", choices=("csv", "jsonl"), default="jsonl")
    p.add_argument("--table", choices=queries.EXPORT_TABLES, default="events")
    p.add_argument("--since", type=parse_since, metavar="WHEN", help="start (default: everything)")
    p.add_argument("--until", type=parse_since, metavar="WHEN", help="end (default: now)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout (.gz compresses)")
    return parser


def query_main(argv: list[str] | None = None) -> int:
    return run_command(query_parser(), argv)

