"""The morning report: last night in a few lines, sent at [reports] night_end through the same
destinations as the alerts (Markdown: e-mail gets HTML, chat services their own format).

First what changed since each session's previous run (changes.py), then sessions, success
rate, cost, the specs still failing and those fixed on retry with their errors (counted as
outcomes.py counts them everywhere), what still waits for a human, and a link to the dashboard.
"""

from __future__ import annotations

from datetime import datetime, time, tzinfo

from ralph_monitor import queries
from ralph_monitor.outcomes import SpecResult
from ralph_monitor.config import Settings
from ralph_monitor.store import ReadStore
from ralph_monitor.dashboard.views import run_anchor
from ralph_monitor.textfmt import money, percent, shorten

MAX_FAILURES = 10
MAX_REQUESTS = 5
MAX_DIFFS = 5
"""Sessions whose changes lead the report (the rest: `ralph-query diff`)."""


def _link(settings: Settings, path: str) -> str:
    return f" ([open]({settings.alerts_dashboard_url.rstrip('/')}/{path}))" if settings.alerts_dashboard_url else ""


def _results(title: str, results: list[SpecResult], settings: Settings) -> list[str]:
    if not results:
        return []
    lines = ["", f"**{title} ({len(results)})**"]
    for r in results[:MAX_FAILURES]:
        lines.append(f"- {r.spec_id} ({r.word} after {r.attempts} attempt{'s' if r.attempts != 1 else ''}, "
                     f"{r.session_name or str(r.session_id)[:8]}): {shorten(r.error, 160) or 'no error text'}"
                     + _link(settings, f"sessions/{r.session_id}.html#{run_anchor(r.spec_id, r.attempts)}"))
    if len(results) > MAX_FAILURES:
        lines.append(f"- and {len(results) - MAX_FAILURES} more")
    return lines


def changes_lines(diffs: list[queries.SessionDiff], settings: Settings) -> list[str]:
    """"What changed since the previous run", one line per session (the report's first lines)."""
    if not diffs:
        return []
    lines = ["**What changed since the previous run**"]
    for d in diffs[:MAX_DIFFS]:
        c = d.changes
        named = [f"{word}: {', '.join(x.spec_id for x in items[:5])}{' ...' if len(items) > 5 else ''}"
                 for word, items in (("newly failing", c.newly_failing), ("fixed", c.fixed), ("flaky", c.flaky),
                                     ("slower", c.slower), ("costlier", c.costlier)) if items]
        lines.append(f"- {d.session.label}: {c.headline()}" + (f" ({'; '.join(named)})" if named else "")
                     + _link(settings, f"sessions/{d.session.id}.html#changes"))
    if len(diffs) > MAX_DIFFS:
        lines.append(f"- and {len(diffs) - MAX_DIFFS} more sessions (`ralph-query diff`)")
    return lines + [""]


def night_of(now: datetime, settings: Settings, zone: tzinfo) -> queries.Window:
    return queries.night_window(now, zone, start=time.fromisoformat(settings.reports_night_start),
                                end=time.fromisoformat(settings.reports_night_end))


def _night_days(window: queries.Window, zone: tzinfo) -> str:
    """The night's days as a reader names them: "Sat 28 to Sun 29 Nov" (the evening it began and
    the morning it ended), or one day when the window starts after midnight."""
    first, last = window.since.astimezone(zone).date(), window.until.astimezone(zone).date()
    if first == last:
        return f"{last:%a %d %b}"
    return f"{first:%a %d}{'' if first.month == last.month else f' {first:%b}'} to {last:%a %d %b}"


def morning_report(store: ReadStore, settings: Settings, *, now: datetime, zone: tzinfo) -> tuple[str, str, str]:
    """(subject, title, Markdown body) of the report on the last night."""
    window = night_of(now, settings, zone)
    night = queries.night_summary(store, window)
    waiting = queries.pending_interventions(store)
    diffs = queries.diffs_against_previous(store, night.sessions)
    o, c = night.outcomes, night.outcomes.counts
    day = window.until.astimezone(zone).date()
    title = (f"Night of {_night_days(window, zone)}: {c.completed} completed, {c.failed} failed, "
             f"{c.timed_out} timed out, "
             f"{money(o.cost_usd)}"
             + (f"; {len(waiting)} waiting for you" if waiting else ""))
    lines = changes_lines([diffs[s.id] for s in night.sessions if s.id in diffs], settings)
    lines.append(f"**{len(night.sessions)} session{'s' if len(night.sessions) != 1 else ''}**, "
                 f"{c.decided} specs decided in {o.runs} spec runs ({c.sentence()}), "
                 f"{percent(c.success_rate)} success, {money(o.cost_usd)}, {o.tokens_used:,} tokens "
                 f"({window.since.astimezone(zone):%H:%M} to {window.until.astimezone(zone):%H:%M} {zone}).")
    if night.changes:
        lines.append(f"Changed in git: {night.git.text} ({night.git.runs} spec runs).")
    lines += _results("Still failing", night.still_failing, settings)
    lines += _results("Fixed on retry", night.fixed_on_retry, settings)
    lines += _results("Failed, being retried now", night.retrying, settings)
    if waiting:
        lines += ["", "**Waiting for a human**"]
        for i in waiting[:MAX_REQUESTS]:
            lines.append(f"- {i.session_name or str(i.session_id)[:8]}"
                         f"{' on ' + i.spec_id if i.spec_id else ''}: {shorten(i.message, 160)}")
    if settings.alerts_dashboard_url:
        lines += ["", f"Dashboard: {settings.alerts_dashboard_url}"]
    return f"night:{day.isoformat()}", title, "\n".join(lines)
