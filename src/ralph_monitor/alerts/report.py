"""The morning report: last night in a few lines, sent at [reports] night_end through the same
destinations as the alerts (Markdown: e-mail gets HTML, chat services their own format).

Sessions, success rate, cost, the failures with their errors, what still waits for a human,
and a link to the dashboard.
"""

from __future__ import annotations

from datetime import datetime, time, tzinfo

from ralph_monitor import queries
from ralph_monitor.config import Settings
from ralph_monitor.store import ReadStore
from ralph_monitor.textfmt import money, percent, shorten

MAX_FAILURES = 10
MAX_REQUESTS = 5


def night_of(now: datetime, settings: Settings, zone: tzinfo) -> queries.Window:
    return queries.night_window(now, zone, start=time.fromisoformat(settings.reports_night_start),
                                end=time.fromisoformat(settings.reports_night_end))


def morning_report(store: ReadStore, settings: Settings, *, now: datetime, zone: tzinfo) -> tuple[str, str, str]:
    """(subject, title, Markdown body) of the report on the last night."""
    window = night_of(now, settings, zone)
    night = queries.night_summary(store, window)
    waiting = queries.pending_interventions(store)
    o = night.outcomes
    day = window.until.astimezone(zone).date()
    title = (f"Night of {day:%a %d %b}: {o.completed} done, {o.failed} failed, {o.timed_out} timed out, "
             f"{money(o.cost_usd)}" + (f"; {len(waiting)} waiting for you" if waiting else ""))
    lines = [f"**{len(night.sessions)} session{'s' if len(night.sessions) != 1 else ''}**, "
             f"{o.finished} spec runs, {percent(o.success_rate)} success, {money(o.cost_usd)}, "
             f"{o.tokens_used:,} tokens "
             f"({window.since.astimezone(zone):%H:%M} to {window.until.astimezone(zone):%H:%M} {zone})."]
    if night.failures:
        lines += ["", "**Failures**"]
        for r in night.failures[:MAX_FAILURES]:
            lines.append(f"- {r.spec_id} ({r.status}, {r.session_name or str(r.session_id)[:8]}): "
                         f"{shorten(r.error_message, 160) or 'no error text'}")
        if len(night.failures) > MAX_FAILURES:
            lines.append(f"- and {len(night.failures) - MAX_FAILURES} more")
    if waiting:
        lines += ["", "**Waiting for a human**"]
        for i in waiting[:MAX_REQUESTS]:
            lines.append(f"- {i.session_name or str(i.session_id)[:8]}"
                         f"{' on ' + i.spec_id if i.spec_id else ''}: {shorten(i.message, 160)}")
    if settings.alerts_dashboard_url:
        lines += ["", f"Dashboard: {settings.alerts_dashboard_url}"]
    return f"night:{day.isoformat()}", title, "\n".join(lines)
