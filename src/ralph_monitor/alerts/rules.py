"""Alert rules: from facts read in the database to the conditions that are true now.

Each rule gives the set of conditions (rule, subject) that hold, with the message a person
reads. The evaluator (store side) compares them with the open alerts: a new condition
fires once, a condition that no longer holds is resolved once. Rules are pure functions of
their facts, so a test can check each without a database, and every daemon evaluating at
once would agree (they take turns under a lock anyway).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

from ralph_monitor.config import Settings, report_zone
from ralph_monitor.disk import CRITICAL, OK, DiskUsage

HOST_SILENT_S = 300
"""A daemon whose health row is older than this is not reporting (it refreshes it every 10 s)."""
ONE_SHOT = frozenset({"session_failed", "budget_session", "budget_night"})
"""Rules about something that happened (it cannot un-happen): they fire once and close at
once, with no "resolved" message."""
MAX_LISTED = 5
"""Items named in one message (specs that failed, ...) before "and N more"."""


@dataclass(frozen=True)
class Condition:
    """Something a person should know about, now."""

    rule: str
    subject: str
    title: str
    body: str
    session_id: uuid.UUID | None = None
    path: str | None = None
    """Dashboard page (and anchor) that shows it, relative to the site root."""


def _label(name: str | None, session_id: Any) -> str:
    return name or str(session_id)[:8]


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def session_path(session_id: Any, anchor: str = "") -> str:
    return f"sessions/{session_id}.html" + (f"#{anchor}" if anchor else "")


def waiting_requests(rows: list[dict[str, Any]], now: datetime) -> list[Condition]:
    """Requests for a human unanswered past [alerts] intervention_after_min (rows of
    alert_waiting_requests)."""
    found = []
    for r in rows:
        minutes = int((now - r["requested_at"]).total_seconds() // 60)
        where = f" on {r['spec_id']}" if r["spec_id"] else ""
        found.append(Condition(
            "intervention_waiting", f"request:{r['event_id']}",
            f"Agent needs you: {_label(r['session_name'], r['session_id'])}{where}",
            f"{(r['message'] or 'A request for a human (no message).')[:500]}\n"
            f"Waiting for {minutes} min; answer with a user_feedback event.",
            r["session_id"], session_path(r["session_id"], f"request-{r['event_id']}")))
    return found


def stalled_sessions(rows: list[dict[str, Any]]) -> list[Condition]:
    return [Condition(
        "session_stalled", f"session:{r['id']}", f"Session stalled: {_label(r['name'], r['id'])}",
        f"No sign of life since {r['last_event_at']:%Y-%m-%d %H:%M} UTC"
        + (f", last on spec {r['current_spec']}" if r.get("current_spec") else "") + ".",
        r["id"], session_path(r["id"])) for r in rows]


def stuck_sessions(rows: list[dict[str, Any]]) -> list[Condition]:
    """Open loop-health episodes (rows of alert_stuck_sessions): one alert per session and rule,
    resolved when the rule no longer holds (loop_recovered) or the session ends."""
    found = []
    for r in rows:
        for finding in r["loop_findings"] if isinstance(r["loop_findings"], list) else []:
            if not isinstance(finding, dict):
                continue
            rule = str(finding.get("rule"))
            found.append(Condition(
                "loop_stuck", f"session:{r['id']}:{rule}",
                f"Loop stuck ({rule.replace('_', ' ')}): {_label(r['name'], r['id'])}",
                f"{str(finding.get('summary'))[:500]}\nFirst seen {finding.get('first_at')}, last {finding.get('last_at')}. "
                "Stop it with `ralph-monitor loop --stop-on stuck`, `ralph-monitor guard` or the hook's --guard.",
                r["id"], session_path(r["id"], "loop-health")))
    return found


def failed_sessions(rows: list[dict[str, Any]]) -> list[Condition]:
    return [Condition(
        "session_failed", f"session:{r['id']}",
        f"Session ended with {r['specs_failed']} failed spec{'s' if r['specs_failed'] != 1 else ''}: "
        f"{_label(r['name'], r['id'])}",
        f"{r['specs_completed']} completed, {r['specs_failed']} failed"
        + (f" ({r['specs_timed_out']} timed out)" if r["specs_timed_out"] else "")
        + (f": {_listed(list(r['failed_specs']))}" if r.get("failed_specs") else "") + ".",
        r["id"], session_path(r["id"])) for r in rows]


def over_budget_sessions(rows: list[dict[str, Any]], settings: Settings) -> list[Condition]:
    found = []
    for r in rows:
        over = []
        if settings.budget_session_usd and r["cost_usd"] > Decimal(str(settings.budget_session_usd)):
            over.append(f"${r['cost_usd']:.2f} of ${settings.budget_session_usd:.2f}")
        if settings.budget_session_tokens and r["tokens_used"] > settings.budget_session_tokens:
            over.append(f"{r['tokens_used']:,} of {settings.budget_session_tokens:,} tokens")
        if over:
            found.append(Condition(
                "budget_session", f"session:{r['id']}", f"Session over budget: {_label(r['name'], r['id'])}",
                f"Spent {' and '.join(over)} ([budget] session_usd / session_tokens).",
                r["id"], session_path(r["id"])))
    return found


def over_budget_night(night_start: datetime, cost: Decimal, tokens: int, settings: Settings) -> list[Condition]:
    over = []
    if settings.budget_night_usd and cost > Decimal(str(settings.budget_night_usd)):
        over.append(f"${cost:.2f} of ${settings.budget_night_usd:.2f}")
    if settings.budget_night_tokens and tokens > settings.budget_night_tokens:
        over.append(f"{tokens:,} of {settings.budget_night_tokens:,} tokens")
    if not over:
        return []
    return [Condition("budget_night", f"night:{night_start.date().isoformat()}", "Tonight is over budget",
                      f"All sessions since {night_start:%H:%M} spent {' and '.join(over)} "
                      "([budget] night_usd / night_tokens).", None, "index.html")]


def monitor_health(hosts: list[dict[str, Any]], *, latest_backup: str | None, failing_projections: int,
                   now: datetime, settings: Settings, starting_host: str | None = None) -> list[Condition]:
    """The monitor itself: spool backlog not draining, last backup failed, aggregates not
    updated, a disk low, a daemon not reporting. `starting_host`: the host whose daemon runs
    this pass and has just started: its health row is as old as its downtime until it writes
    the next (every 10 s), which is no reason to page anyone on every restart."""
    found = []
    backlog_age_s = settings.alerts_spool_backlog_after_min * 60
    for h in hosts:
        since = h["last_replayed_at"] or h["started_at"]
        if h["spool_backlog"] and (now - since).total_seconds() >= backlog_age_s:
            found.append(Condition(
                "monitor_unhealthy", f"spool:{h['host']}", f"ralph-monitor on {h['host']}: events waiting in the spool",
                f"{h['spool_backlog']:,} events are spooled locally and not yet in PostgreSQL (since "
                f"{since:%H:%M} UTC). Is the database reachable? See `ralph-monitor doctor`.", None, "index.html#health"))
        if (now - h["last_seen"]).total_seconds() >= HOST_SILENT_S and h["host"] != starting_host:
            found.append(Condition(
                "monitor_unhealthy", f"silent:{h['host']}", f"ralph-monitor on {h['host']} is not reporting",
                f"Its last health report was at {h['last_seen']:%Y-%m-%d %H:%M} UTC. Is the daemon running "
                "(systemctl status ralph-monitor)?", None, "index.html#health"))
        for label, figures in sorted((h.get("disks") or {}).items()):
            usage = DiskUsage(**figures)
            level = usage.level(settings.monitor_disk_warn_free_percent)
            if level != OK:
                found.append(Condition(
                    "monitor_unhealthy", f"disk:{h['host']}:{label}",
                    f"ralph-monitor on {h['host']}: {label} disk {'critically ' if level == CRITICAL else ''}low",
                    f"{usage.describe()}. Free some space (README: Full disks).", None, "index.html#health"))
    if latest_backup == "backup_failed":
        found.append(Condition("monitor_unhealthy", "backup", "ralph-monitor: the last backup failed",
                               "See `ralph-query status` and the daemon's log; `ralph-monitor backup` retries now.",
                               None, "index.html#health"))
    if failing_projections:
        found.append(Condition(
            "monitor_unhealthy", "aggregates", "ralph-monitor: aggregates not updated",
            f"The projection of {failing_projections} session(s) fails, so their totals are stale. "
            "See `ralph-query status`; fix the cause, then `ralph-monitor rebuild-aggregates`.",
            None, "index.html#health"))
    return found


def night_bounds(now: datetime, settings: Settings) -> tuple[datetime, datetime]:
    """The night a budget counts: from the latest [reports] night_start (in the report time
    zone) up to now. At 02:00 that is since yesterday evening; at 20:00, since this evening."""
    zone = report_zone(settings.reports_timezone)
    local = now.astimezone(zone)
    start = datetime.combine(local.date(), time.fromisoformat(settings.reports_night_start), tzinfo=zone)
    if start > local:
        start -= timedelta(days=1)
    return start, now
