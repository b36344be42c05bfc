"""Loop health: is a session stuck or running away? Pure rules over one session's events.

The projection (projections.py) calls `findings` with the session's closing events and its
recent tool events each time it recomputes the session, and `episodes_due` to compare them
with the `loop_stuck` / `loop_recovered` events already stored. "Now" is the session's last
event (its heartbeats keep it current), so the result depends on the events alone, whichever
daemon computes it. Each rule has a setting in `[loop_health]` (0 turns it off):

- repeated_error: the same error (numbers, paths, ids, hex, timestamps masked, then hashed)
  ends N spec runs in a row, in the session or for one spec;
- repeated_tool_call: the same tool call (name + masked input) N times in a row within a window;
- no_change: N spec runs in a row that left the working tree as it was (data.git: same HEAD
  before and after, not dirty); silent when the runs carry no git data;
- no_progress: alive (events keep coming) but no spec ended and no tool call succeeded for N minutes;
- burn_rate: spec runs or spend in the last hour far above the session's own rate before it;
- projected_budget: the session's spend, at its last hour's rate, passes [budget] session_usd
  or night_usd before [reports] night_end.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any

from ralph_monitor.config import Settings, report_zone

EPISODE_NAMESPACE = uuid.UUID("0c7b6a2e-4f1d-4e8a-9b3c-5d2e1f0a9c47")
MAX_EVIDENCE_CHARS = 300
BURN_WINDOW = timedelta(hours=1)
BURN_BASELINE = timedelta(hours=3)
"""The session's own recent rate: the three hours before the last one."""
BURN_MIN_RUNS = 6
BURN_MIN_USD = Decimal("1")
"""A spike must also be worth waking someone: at least this many runs, or this much spend, in the hour."""
BURN_MIN_HISTORY = timedelta(minutes=90)
"""No baseline before the session has run this long (every start would look like a spike)."""
PROJECTION_MIN_HISTORY = timedelta(minutes=30)
"""No projected spend before the session has run this long (its first run's cost is no rate)."""

_MASKS = (
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?"), "<ts>"),
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(\.\d+)?\b"), "<ts>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b"), "<id>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{7,}\b"), "<hex>"),
    (re.compile(r"(?:[A-Za-z]:)?(?:[~.]{0,2}/|\\)[^\s'\":,;()\[\]{}]+"), "<path>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
)
"""What changes between two runs of one failure, masked in this order (a timestamp before its numbers)."""
FINGERPRINT_CHARS = 400
"""Characters of an error or a tool input that are compared: enough to tell two failures or two
calls apart, and it bounds the masking's cost."""
FINGERPRINTS_CACHED = 4096
"""Texts whose fingerprint is kept: each pass re-reads a session's recent events, so only the
new ones are masked again."""
MAX_STREAK = 50
"""Repeats counted back from the latest (a streak this long is an episode long open)."""


def normalise(text: str) -> str:
    """The text with what changes between two runs of one failure masked."""
    for pattern, mask in _MASKS:
        text = pattern.sub(mask, text)
    return text.strip()


@functools.lru_cache(maxsize=FINGERPRINTS_CACHED)
def fingerprint(text: str) -> str:
    return hashlib.sha256(normalise(text[:FINGERPRINT_CHARS]).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Thresholds:
    """[loop_health] and the budget settings the rules read (0 turns a rule off): `thresholds`."""

    repeated_error: int
    repeated_tool_call: int
    tool_window: timedelta
    no_change: int
    no_progress: timedelta
    burn_factor: float
    session_usd: Decimal
    night_usd: Decimal
    night_end: time
    zone: tzinfo | None


@dataclass(frozen=True)
class Closing:
    """A spec run's end: spec_completed, spec_failed or timeout_triggered."""

    event_id: uuid.UUID
    spec_id: str
    at: datetime
    failed: bool
    error: str | None
    cost_usd: Decimal | None
    git: dict[str, Any] | None


@dataclass(frozen=True)
class Activity:
    """A recent tool event of the session (cc.PreToolUse, cc.PostToolUse, ...)."""

    event_id: uuid.UUID
    event_type: str
    at: datetime
    tool_name: str | None = None
    tool_input: str | None = None
    notification_type: str | None = None


@dataclass(frozen=True)
class Finding:
    """A rule that holds now: `key` names the episode (its first occurrence), so the episode's
    loop_stuck event gets the same id whoever computes it."""

    rule: str
    summary: str
    key: str
    first_at: datetime
    last_at: datetime
    count: int
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_data(self) -> dict[str, Any]:
        return {"rule": self.rule, "summary": self.summary, "first_at": self.first_at.isoformat(),
                "last_at": self.last_at.isoformat(), "count": self.count, "evidence": self.evidence}


def episode_id(session_id: uuid.UUID, finding: Finding) -> uuid.UUID:
    return uuid.uuid5(EPISODE_NAMESPACE, f"{session_id}/{finding.rule}/{finding.key}")


def recovery_id(stuck_event_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(EPISODE_NAMESPACE, f"{stuck_event_id}/recovered")


def findings(closings: list[Closing], activity: list[Activity], *, now: datetime, started: datetime,
             limits: Thresholds, waiting: bool = False) -> list[Finding]:
    """The rules that hold at `now` (the session's last event). `closings` and `activity` are in
    time order. A session `waiting` for a human is not "making no progress": it is waiting."""
    found = [f for f in (_repeated_error(closings, limits.repeated_error),
                         _repeated_tool_call(activity, limits, now),
                         _no_change(closings, limits.no_change),
                         None if waiting else _no_progress(closings, activity, limits.no_progress, now, started),
                         _burn_rate(closings, limits.burn_factor, now, started),
                         _projected_budget(closings, limits, now, started)) if f is not None]
    return [f for group in found for f in (group if isinstance(group, list) else [group])]


def _streak(items: list[Any], same: Any) -> list[Any]:
    """The longest tail of `items` (at most MAX_STREAK) whose elements all give the last one's `same` value."""
    if not items:
        return []
    last = same(items[-1])
    if last is None:
        return []
    n = 0
    for item in reversed(items[-MAX_STREAK:]):
        if same(item) != last:
            break
        n += 1
    return items[-n:]


def _error_key(c: Closing) -> str | None:
    return fingerprint(c.error) if c.failed and c.error else None


def _repeated_error(closings: list[Closing], n: int) -> list[Finding] | None:
    if n <= 0 or not closings:
        return None
    streaks = [("session", _streak(closings, _error_key))]
    last_spec = closings[-1].spec_id
    streaks.append((last_spec, _streak([c for c in closings if c.spec_id == last_spec], _error_key)))
    for scope, streak in streaks:
        if len(streak) >= n:
            first, last = streak[0], streak[-1]
            specs = sorted({c.spec_id for c in streak})
            where = f"spec {last_spec}" if scope != "session" or len(specs) == 1 else f"{len(specs)} specs"
            return [Finding("repeated_error", f"the same error {len(streak)} times in a row ({where}): "
                            f"{(last.error or '')[:120]}", f"{first.event_id}", first.at, last.at, len(streak),
                            {"error": (last.error or "")[:MAX_EVIDENCE_CHARS], "fingerprint": _error_key(last),
                             "specs": specs[:10]})]
    return None


def _call_key(a: Activity) -> str | None:
    if a.event_type != "cc.PreToolUse" or not a.tool_name:
        return None
    return f"{a.tool_name}:{fingerprint(a.tool_input or '')}"


def _repeated_tool_call(activity: list[Activity], limits: Thresholds, now: datetime) -> Finding | None:
    n = limits.repeated_tool_call
    calls = [a for a in activity if a.event_type == "cc.PreToolUse" and a.at >= now - limits.tool_window]
    streak = _streak(calls, _call_key)
    if n <= 0 or len(streak) < n:
        return None
    first, last = streak[0], streak[-1]
    shown = normalise((last.tool_input or "")[:FINGERPRINT_CHARS])[:120]
    return Finding("repeated_tool_call", f"the same {last.tool_name} call {len(streak)} times in a row: {shown}",
                   str(first.event_id), first.at, last.at, len(streak),
                   {"tool_name": last.tool_name, "input": (last.tool_input or "")[:MAX_EVIDENCE_CHARS]})


def _unchanged(c: Closing) -> bool | None:
    git = c.git
    if not isinstance(git, dict) or not git.get("head_before") or not git.get("head_after"):
        return None
    return git["head_before"] == git["head_after"] and not git.get("dirty")


def _no_change(closings: list[Closing], n: int) -> Finding | None:
    streak = _streak(closings, lambda c: True if _unchanged(c) else None)
    if n <= 0 or len(streak) < n:
        return None
    first, last = streak[0], streak[-1]
    return Finding("no_change", f"{len(streak)} spec runs in a row changed nothing in the working tree "
                   f"(HEAD still {str(last.git and last.git.get('head_after'))[:12]})",
                   str(first.event_id), first.at, last.at, len(streak),
                   {"specs": sorted({c.spec_id for c in streak})[:10]})


def _no_progress(closings: list[Closing], activity: list[Activity], window: timedelta, now: datetime,
                 started: datetime) -> Finding | None:
    if window <= timedelta(0):
        return None
    progress = [c.at for c in closings] + [a.at for a in activity if a.event_type == "cc.PostToolUse"]
    since = max(progress, default=started)
    if now - since < window:
        return None
    minutes = int((now - since).total_seconds() // 60)
    return Finding("no_progress", f"alive but no progress for {minutes} min (no spec ended, no tool call "
                   "succeeded)", since.isoformat(), since, now, 1, {"last_progress_at": since.isoformat()})


def _burn_rate(closings: list[Closing], factor: float, now: datetime, started: datetime) -> Finding | None:
    if factor <= 0 or now - started < BURN_MIN_HISTORY:
        return None
    hour_start = now - BURN_WINDOW
    base_start = max(started, hour_start - BURN_BASELINE)
    base_hours = (hour_start - base_start).total_seconds() / 3600
    recent = [c for c in closings if c.at > hour_start]
    before = [c for c in closings if base_start <= c.at <= hour_start]
    runs_rate = len(before) / base_hours
    spend = sum((c.cost_usd or Decimal(0) for c in recent), Decimal(0))
    spend_rate = sum((c.cost_usd or Decimal(0) for c in before), Decimal(0)) / Decimal(str(base_hours))
    why = None
    if len(recent) >= BURN_MIN_RUNS and len(recent) > factor * max(runs_rate, 1.0):
        why = f"{len(recent)} spec runs in the last hour, {runs_rate:.1f}/h before"
    elif spend >= BURN_MIN_USD and spend > Decimal(str(factor)) * max(spend_rate, Decimal("0.01")):
        why = f"${spend:.2f} in the last hour, ${spend_rate:.2f}/h before"
    if why is None:
        return None
    hour = now.replace(minute=0, second=0, microsecond=0)
    return Finding("burn_rate", f"burn rate spike: {why}", hour.isoformat(), recent[0].at, recent[-1].at,
                   len(recent), {"runs_last_hour": len(recent), "runs_per_hour_before": round(runs_rate, 2),
                                 "usd_last_hour": str(spend), "usd_per_hour_before": str(round(spend_rate, 4))})


def night_end_after(now: datetime, end: time, zone: tzinfo | None) -> datetime:
    local = now.astimezone(zone)
    at = datetime.combine(local.date(), end, tzinfo=local.tzinfo)
    return at if at > local else at + timedelta(days=1)


def _projected_budget(closings: list[Closing], limits: Thresholds, now: datetime,
                      started: datetime) -> Finding | None:
    budgets = [(name, usd) for name, usd in (("session_usd", limits.session_usd), ("night_usd", limits.night_usd))
               if usd > 0]
    if not budgets or now - started < PROJECTION_MIN_HISTORY:
        return None
    spent = sum((c.cost_usd or Decimal(0) for c in closings), Decimal(0))
    window_start = max(started, now - BURN_WINDOW)
    hours = Decimal(str(max((now - window_start).total_seconds(), 60) / 3600))
    rate = sum((c.cost_usd or Decimal(0) for c in closings if c.at > window_start), Decimal(0)) / hours
    end = night_end_after(now, limits.night_end, limits.zone)
    projected = spent + rate * Decimal(str((end - now).total_seconds() / 3600))
    for name, usd in budgets:
        if spent <= usd < projected:
            night = end.date().isoformat()
            return Finding("projected_budget", f"at ${rate:.2f}/h this session will have spent ${projected:.2f} by "
                           f"{end:%H:%M}, over [budget] {name} ${usd:.2f} (${spent:.2f} so far)",
                           f"{name}/{night}", now, now, 1,
                           {"spent_usd": str(round(spent, 4)), "usd_per_hour": str(round(rate, 4)),
                            "projected_usd": str(round(projected, 2)), "budget": name, "budget_usd": str(usd),
                            "until": end.isoformat()})
    return None


@dataclass(frozen=True)
class Episode:
    """A loop_stuck event stored for the session, and whether a loop_recovered closed it."""

    event_id: uuid.UUID
    rule: str
    data: dict[str, Any]
    at: datetime
    recovered_at: datetime | None = None


def episodes_due(session_id: uuid.UUID, current: list[Finding], episodes: list[Episode], *,
                 now: datetime) -> list[tuple[str, uuid.UUID, datetime, dict[str, Any]]]:
    """The loop_stuck / loop_recovered events to write so the stored episodes match `current`
    (at `now`): (event type, event id, time, data). A rule with an open episode stays in it
    while it holds, so an episode is written once, and resolved once."""
    open_by_rule = {e.rule: e for e in episodes if e.recovered_at is None}
    stored = {e.event_id for e in episodes}
    due = []
    holding = {f.rule for f in current}
    for f in current:
        event_id = episode_id(session_id, f)
        if f.rule not in open_by_rule and event_id not in stored:
            due.append(("loop_stuck", event_id, f.last_at, f.as_data()))
    for rule, episode in open_by_rule.items():
        if rule not in holding:
            due.append(("loop_recovered", recovery_id(episode.event_id), max(now, episode.at),
                        {"rule": rule, "stuck_event_id": str(episode.event_id)}))
    return due



def thresholds(settings: Settings) -> Thresholds:
    """The rules' thresholds from [loop_health], [budget] and [reports]."""
    return Thresholds(
        repeated_error=settings.loop_health_repeated_error_runs,
        repeated_tool_call=settings.loop_health_repeated_tool_calls,
        tool_window=timedelta(minutes=settings.loop_health_tool_window_min),
        no_change=settings.loop_health_no_change_runs,
        no_progress=timedelta(minutes=settings.loop_health_no_progress_min),
        burn_factor=settings.loop_health_burn_rate_factor,
        session_usd=Decimal(str(settings.budget_session_usd)) if settings.loop_health_projected_budget else Decimal(0),
        night_usd=Decimal(str(settings.budget_night_usd)) if settings.loop_health_projected_budget else Decimal(0),
        night_end=time.fromisoformat(settings.reports_night_end),
        zone=report_zone(settings.reports_timezone))
