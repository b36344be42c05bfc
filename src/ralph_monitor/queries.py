"""Typed read queries: what the CLI and the dashboard ask of the database.

Each function runs one named query from sql/queries.sql through a ReadStore and returns
plain dataclasses, so callers never see SQL or database rows.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from ralph_monitor import changes, values
from ralph_monitor.errors import UnknownSession
from ralph_monitor.outcomes import (FIXED_ON_RETRY, RUNNING, STILL_FAILING, Attempt, Counts, RunLike, SpecResult,
                                    spec_results)
from ralph_monitor.projections import SessionTotals
from ralph_monitor.store import Plan, ReadSource, ReadStore

P = ParamSpec("P")
T = TypeVar("T")


class Read(Generic[P, T]):
    """A read written as a plan (store.Plan: a generator that yields its round trips' named
    queries). Called with a store, it runs (`status(store, now)`); its `plan`, called with the
    same arguments, joins others in the same round trips (store.gather: the dashboard's
    site-wide pages read a dozen of them in three). The plan gets the store too, but only to
    describe it (ReadStore.source), never to read."""

    def __init__(self, plan: Callable[Concatenate[ReadStore, P], Plan[T]]) -> None:
        self.plan = plan
        functools.update_wrapper(self, plan)

    def __call__(self, store: ReadStore, *args: P.args, **kwargs: P.kwargs) -> T:
        return store.run(self.plan(store, *args, **kwargs))


@dataclass(frozen=True)
class EventRow:
    id: int
    event_id: uuid.UUID
    event_type: str
    session_id: uuid.UUID | None
    spec_id: str | None
    occurred_at: datetime
    created_at: datetime
    host: str
    writer_uid: int | None
    writer_pid: int | None
    payload: dict[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        data = self.payload.get("data")
        return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class RejectRow:
    received_at: datetime
    host: str
    writer_uid: int | None
    writer_pid: int | None
    reason: str
    detail: str
    line_bytes: int
    excerpt: str


@dataclass(frozen=True)
class HostHealth:
    host: str
    version: str
    started_at: datetime
    last_seen: datetime
    events_total: int
    rejects_total: int
    spool_backlog: int
    spooled_total: int
    last_spooled_at: datetime | None
    last_replayed_at: datetime | None
    ingest_rate_per_s: float
    connections_refused: int = 0
    connections_evicted: int = 0
    disks: dict[str, Any] = field(default_factory=dict)
    """Free space per disk the daemon writes to: {"state": {"path", "free_bytes", "total_bytes"}, ...}."""


FLOOR_BUCKET_ROWS = 500
"""Rows of metric_buckets (one per 5 minutes and event type) read, newest first, to find the
floor of recent_events; at 10x volume 100 events fill a few buckets, a rare type's a few dozen."""


@Read
def recent_events(store: ReadStore, *, since: datetime | None = None, event_type: str | None = None,
                  session_id: uuid.UUID | None = None, spec_id: str | None = None,
                  limit: int = 100) -> Plan[list[EventRow]]:
    """Newest first (by the agent's time), filtered by any of the arguments.

    Read from a floor first (recent_events_floor*: where the newest `limit` matching events
    probably start), so that only the partitions from there on are planned and read; when
    the floor holds fewer than `limit`, it was a wrong guess and the events are read again
    without it."""
    name = "recent_events" if session_id is None else "recent_events_of_session"
    params = {"since": since, "event_type": event_type, "session_id": session_id, "spec_id": spec_id,
              "limit": limit}
    (floor_rows,) = yield [_recent_events_floor(event_type=event_type, session_id=session_id, spec_id=spec_id,
                                                limit=limit)]
    floor = floor_rows[0]["floor"]
    if floor is not None and (since is None or floor > since):
        (rows,) = yield [(name, {**params, "since": floor}, EventRow)]
        if len(rows) >= limit:
            return rows
    (rows,) = yield [(name, params, EventRow)]
    return rows


def _recent_events_floor(*, event_type: str | None, session_id: uuid.UUID | None, spec_id: str | None,
                         limit: int) -> tuple[str, dict[str, Any]]:
    """The guess of recent_events (a query whose one row has the `floor`): from the narrowest
    filter's projection (the session's start, the spec's recent runs, the 5-minute counts of the
    type or of all events)."""
    if session_id is not None:
        return "recent_events_floor_of_session", {"session_id": session_id}
    if spec_id is not None:
        return "recent_events_floor_of_spec", {"spec_id": spec_id}
    if event_type is not None:
        return "recent_events_floor_of_type", {"event_type": event_type, "limit": limit, "buckets": FLOOR_BUCKET_ROWS}
    return "recent_events_floor", {"limit": limit, "buckets": FLOOR_BUCKET_ROWS}


@Read
def recent_rejects(store: ReadStore, *, limit: int = 50) -> Plan[list[RejectRow]]:
    """Refused lines, newest first."""
    (rows,) = yield [("recent_rejects", {"limit": limit})]
    return [RejectRow(**row) for row in rows]


def monitor_hosts(store: ReadStore) -> list[HostHealth]:
    """One health row per daemon host writing to this database."""
    return [HostHealth(**row) for row in store.fetch("monitor_hosts")]


# Aggregates ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SessionSummary(SessionTotals):
    """A sessions row as read back: the projection's columns plus the table's own."""

    updated_at: datetime
    current_spec: str | None

    @property
    def label(self) -> str:
        return self.name or str(self.id)[:8]

    @property
    def counts(self) -> Counts:
        """Its specs by outcome (outcomes.py; the projection keeps the totals on the row)."""
        return Counts(passed=self.specs_completed - self.specs_fixed_on_retry, fixed_on_retry=self.specs_fixed_on_retry,
                      failed=self.specs_failed - self.specs_timed_out, timed_out=self.specs_timed_out)


@dataclass(frozen=True)
class SpecRunRow:
    id: int
    session_id: uuid.UUID
    spec_id: str
    attempt: int
    start_time: datetime | None
    end_time: datetime | None
    duration_seconds: float | None
    status: str
    outcome: str
    """outcomes.py: the spec's outcome on its last attempt; later_passed or retried before."""
    tokens_used: int | None
    cost_usd: Decimal | None
    error_message: str | None
    output_summary: Any
    session_name: str | None = None
    value_problems: list[str] = field(default_factory=list)
    git: Any = None
    """What the run changed in its git repository (values.git); the counts below come from it."""
    git_commits: int | None = None
    git_files_changed: int | None = None
    git_insertions: int | None = None
    git_deletions: int | None = None
    git_dirty: bool | None = None

    @property
    def changes(self) -> str:
        """What the run changed, in words ("3 commits, +120 −40 in 6 files"); "" when not recorded."""
        if not isinstance(self.git, dict):
            return ""
        if self.git_commits is not None:
            return GitTotals.of([self]).text
        if self.git.get("repo") is None:
            return f"no repository ({self.git.get('reason') or 'not recorded'})"
        return f"unknown ({self.git['reason']})" if self.git.get("reason") else ""


@dataclass(frozen=True)
class GitTotals:
    """What spec runs changed in their repositories, summed (runs that recorded it)."""

    runs: int = 0
    commits: int = 0
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0
    left_dirty: int = 0
    """Runs that left uncommitted changes behind."""

    @classmethod
    def of(cls, runs: Sequence[SpecRunRow]) -> GitTotals:
        counted = [r for r in runs if r.git_commits is not None]
        return cls(runs=len(counted), commits=sum(r.git_commits or 0 for r in counted),
                   files_changed=sum(r.git_files_changed or 0 for r in counted),
                   insertions=sum(r.git_insertions or 0 for r in counted),
                   deletions=sum(r.git_deletions or 0 for r in counted),
                   left_dirty=sum(1 for r in counted if r.git_dirty))

    @property
    def text(self) -> str:
        """`3 commits, +120 −40 in 6 files` (`, left dirty` when uncommitted changes remained)."""
        commits = f"{self.commits:,} commit{'' if self.commits == 1 else 's'}"
        lines = (f", +{self.insertions:,} \u2212{self.deletions:,} in {self.files_changed:,} "
                 f"file{'' if self.files_changed == 1 else 's'}") if self.files_changed else ""
        dirty = ("" if not self.left_dirty else ", left dirty" if self.runs == 1
                 else f", {self.left_dirty} left dirty")
        return commits + lines + dirty


@dataclass(frozen=True)
class InterventionRow:
    event_id: uuid.UUID
    spec_id: str | None
    requested_at: datetime
    message: str | None
    answered_at: datetime | None = None
    answer: str | None = None
    session_id: uuid.UUID | None = None
    session_name: str | None = None


@dataclass(frozen=True)
class TimelineEvent:
    id: int
    event_id: uuid.UUID
    event_type: str
    spec_id: str | None
    occurred_at: datetime
    host: str
    data: Any


@dataclass(frozen=True)
class FailingSpec:
    """A spec with failed or timed-out runs in a window, and how its sessions decided it."""

    spec_id: str
    failures: int
    """Runs that failed or timed out (retries included)."""
    runs: int
    counts: Counts
    last_failed_at: datetime
    last_error: str | None


@dataclass(frozen=True)
class Outcomes:
    """The specs decided in a window (each counted once, where its last attempt ended) and the
    spec runs that ended in it: every attempt, whose cost counts whatever came of it."""

    counts: Counts
    runs: int
    cost_usd: Decimal
    tokens_used: int
    avg_duration_seconds: float | None

    def as_json(self) -> dict[str, Any]:
        """Flat, with the derived counts (`ralph-query --json`, the dashboard's snapshots)."""
        return {**self.counts.as_json(), "runs": self.runs, "cost_usd": self.cost_usd, "tokens_used": self.tokens_used,
                "avg_duration_seconds": self.avg_duration_seconds}


@dataclass(frozen=True)
class DailyRuns:
    day: date
    counts: Counts
    runs: int
    cost_usd: Decimal
    tokens_used: int


@dataclass(frozen=True)
class SessionMonth:
    month: date
    """The first day of the month (local time)."""
    sessions: int
    specs_completed: int
    specs_failed: int
    cost_usd: Decimal


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime


@dataclass(frozen=True)
class SessionDetail:
    session: SessionSummary
    spec_runs: list[SpecRunRow]
    timeline: list[TimelineEvent]
    interventions: list[InterventionRow]


@dataclass(frozen=True)
class ProjectionFailure:
    """A session whose projection failed: its aggregates show the state from before."""

    session_id: uuid.UUID
    session_name: str | None
    error: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    retry_at: datetime


@dataclass(frozen=True)
class UsageWindow:
    name: str
    """five_hour or seven_day, as Claude Code names them."""
    label: str
    used_percentage: float
    resets_at: datetime | None


@dataclass(frozen=True)
class UsageReport:
    """The subscription's usage windows as a status line last reported them (`rate_limits`)."""

    reported_at: datetime
    host: str
    windows: list[UsageWindow]


USAGE_LABELS = {"five_hour": "5-hour window", "seven_day": "7-day window"}


def _usage(latest: TimelineEvent | None) -> UsageReport | None:
    """The last `rate_limits` event's windows (values.window decides what is usable)."""
    if latest is None or not isinstance(latest.data, dict):
        return None
    windows = []
    for name in values.USAGE_WINDOWS:
        found, _ = values.window(name, latest.data.get(name))
        if found is not None:
            windows.append(UsageWindow(name, USAGE_LABELS[name], float(found[0]), found[1]))
    return UsageReport(latest.occurred_at, latest.host, windows) if windows else None


@dataclass(frozen=True)
class Status:
    active: list[SessionSummary]
    pending_interventions: list[InterventionRow]
    hosts: list[HostHealth]
    last_backup: TimelineEvent | None
    last_prune: TimelineEvent | None
    rejects_last_24h: int
    projection_failures: list[ProjectionFailure] = field(default_factory=list)
    """Sessions whose aggregates are not being updated (the oldest few)."""
    projection_failures_total: int = 0
    reads: ReadSource | None = None
    """Where this was read: the primary or a replica (its lag), or why not the configured replica."""
    usage: UsageReport | None = None
    """The usage windows last reported by a Claude Code status line (`ralph-monitor statusline`),
    within USAGE_REPORT_MAX_AGE."""


@dataclass(frozen=True)
class NightSummary:
    window: Window
    sessions: list[SessionSummary]
    outcomes: Outcomes
    results: list[SpecResult]
    """The specs decided in the window (their last attempt ended in it) that failed, timed out or
    were fixed on retry (NIGHT_LISTED), in the order they were decided. The specs that passed are
    counted in `outcomes`, not listed."""
    retrying: list[SpecResult]
    """Specs of these sessions that failed and are being tried again now (not decided yet)."""
    changes: list[SpecRunRow] = field(default_factory=list)
    """The runs that ended in the window having recorded their git changes (oldest first)."""

    @property
    def git(self) -> GitTotals:
        return GitTotals.of(self.changes)

    @property
    def still_failing(self) -> list[SpecResult]:
        return [r for r in self.results if r.outcome in STILL_FAILING]

    @property
    def fixed_on_retry(self) -> list[SpecResult]:
        return [r for r in self.results if r.outcome == FIXED_ON_RETRY]


@dataclass(frozen=True)
class Comparison:
    this_week: Window
    last_week: Window
    current: Outcomes
    previous: Outcomes


@dataclass(frozen=True)
class Spend:
    today: Outcomes
    week: Outcomes
    month: Outcomes
    per_day: list[DailyRuns]


def _local_midnight(moment: datetime, zone: tzinfo) -> datetime:
    local = moment.astimezone(zone)
    return datetime.combine(local.date(), time(0), tzinfo=zone)


def day_window(now: datetime, zone: tzinfo) -> Window:
    start = _local_midnight(now, zone)
    return Window(start, now)


def week_windows(now: datetime, zone: tzinfo) -> tuple[Window, Window]:
    """This week (since Monday 00:00 local) and the whole previous week."""
    today = _local_midnight(now, zone)
    monday = today - timedelta(days=today.weekday())
    monday = datetime.combine(monday.date(), time(0), tzinfo=zone)
    previous = datetime.combine((monday - timedelta(days=7)).date(), time(0), tzinfo=zone)
    return Window(monday, now), Window(previous, monday)


def month_window(now: datetime, zone: tzinfo) -> Window:
    local = now.astimezone(zone)
    return Window(datetime.combine(local.date().replace(day=1), time(0), tzinfo=zone), now)


def night_window(now: datetime, zone: tzinfo, *, start: time, end: time) -> Window:
    """The last overnight window, from `start` one evening to `end` the next morning.

    At 14:00 or 22:00 that is the night that ended this morning; at 07:00 it is the night
    still going on, up to now."""
    local = now.astimezone(zone)
    night_end = datetime.combine(local.date(), end, tzinfo=zone)
    start_day = night_end.date() - timedelta(days=1) if start > end else night_end.date()
    return Window(datetime.combine(start_day, start, tzinfo=zone), min(night_end, now))


def _session(row: dict[str, Any]) -> SessionSummary:
    return SessionSummary(**row)


def active_sessions(store: ReadStore) -> list[SessionSummary]:
    """Running and stalled sessions, newest first, with the spec each is on."""
    return [_session(r) for r in store.fetch("active_sessions")]


def pending_interventions(store: ReadStore) -> list[InterventionRow]:
    """Requests for a human that nobody answered, in sessions still going."""
    return [InterventionRow(**r) for r in store.fetch("pending_interventions")]


@Read
def sessions_since(store: ReadStore, since: datetime, *, limit: int = 100) -> Plan[list[SessionSummary]]:
    """Sessions that started since `since`, newest first."""
    (rows,) = yield [("sessions_since", {"since": since, "limit": limit})]
    return [_session(r) for r in rows]


def sessions_of_month(store: ReadStore, month: date, zone: tzinfo) -> list[SessionSummary]:
    """Every session that started in the local month of `month`, newest first (grouped as
    session_months groups them)."""
    return [_session(r) for r in store.fetch("sessions_of_month", {"month": month.replace(day=1), "tz": str(zone)})]


def session_months(store: ReadStore, zone: tzinfo) -> list[SessionMonth]:
    """How many sessions started in each local month, and their totals; newest month first."""
    return [SessionMonth(**r) for r in store.fetch("session_months", {"tz": str(zone)})]


def resolve_session(store: ReadStore, prefix: str) -> uuid.UUID:
    """The session whose id starts with `prefix`. Raises UnknownSession if none or several do."""
    cleaned = prefix.strip().lower()
    if not cleaned or any(c not in "0123456789abcdef-" for c in cleaned):
        raise UnknownSession(f"{prefix!r} is not a session id (hex digits and dashes)")
    digits = cleaned.replace("-", "")
    if len(digits) > 32:
        raise UnknownSession(f"no session id starts with {prefix!r}")
    rows = store.fetch("session_ids_by_prefix", {"prefix": cleaned, "low": uuid.UUID(digits.ljust(32, "0")),
                                                 "high": uuid.UUID(digits.ljust(32, "f"))})
    if not rows:
        raise UnknownSession(f"no session id starts with {prefix!r}")
    if len(rows) > 1:
        raise UnknownSession(f"{prefix!r} matches several sessions ({rows[0]['id']}, {rows[1]['id']}, ...); "
                             "give more characters")
    return rows[0]["id"]


SESSION_TIMELINE_EVENTS = 200
"""Events of a session's timeline shown by default: the newest ones. A night's session can
hold ten thousand tool events; decoding them all costs 100 ms and nobody reads them."""


def session_detail(store: ReadStore, session_id: uuid.UUID, *,
                   timeline_limit: int | None = SESSION_TIMELINE_EVENTS) -> SessionDetail:
    """The session, its spec runs and interventions, and the newest `timeline_limit` events
    (None: all) in time order; `session.event_count` says how many there are in all. Two round
    trips: the first three together, then the events from the session's first one on."""
    params = {"session_id": session_id}
    rows, runs, intervention_rows = store.fetch_many([
        ("session", params), ("session_spec_runs", params, SpecRunRow), ("session_interventions", params)])
    if not rows:
        raise UnknownSession(f"no session {session_id}")
    # `since`: only the partitions from the session's first day on are planned.
    newest_first = store.fetch_as("session_timeline", {**params, "limit": timeline_limit,
                                                       "since": rows[0]["first_event_at"]}, TimelineEvent)
    return SessionDetail(
        session=_session(rows[0]),
        spec_runs=runs,
        timeline=newest_first[::-1],
        interventions=[InterventionRow(**r) for r in intervention_rows],
    )


@dataclass(frozen=True)
class SessionDiff:
    """What changed from `baseline` to `session` (a later session, usually the next run of the
    same loop): changes.py."""

    baseline: SessionSummary
    session: SessionSummary
    changes: changes.Changes


def latest_session(store: ReadStore) -> SessionSummary:
    """The session that started last among those with a previous run of their name, else the one
    that started last (`diff` without arguments). Raises UnknownSession when there is none."""
    rows = store.fetch("latest_session")
    if not rows:
        raise UnknownSession("no session recorded yet")
    return _session(rows[0])


def previous_session(store: ReadStore, session: SessionSummary) -> SessionSummary | None:
    """The last session of the same name that started before `session` (None if it has no name)."""
    if session.name is None:
        return None
    rows = store.fetch("previous_session", {"name": session.name, "before": session.start_time})
    return _session(rows[0]) if rows else None


def _attempts(store: ReadStore, ids: list[uuid.UUID]) -> list[Attempt]:
    return store.fetch_as("attempts_of_sessions", {"ids": ids}, Attempt) if ids else []


def _runs_by_session(store: ReadStore, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[RunLike]]:
    runs: dict[uuid.UUID, list[RunLike]] = {i: [] for i in ids}
    for attempt in _attempts(store, ids):
        runs[attempt.session_id].append(attempt)
    return runs


def session_diff(store: ReadStore, first: uuid.UUID | None = None, second: uuid.UUID | None = None, *,
                 threshold_percent: float = changes.THRESHOLD_PERCENT) -> SessionDiff:
    """`ralph-query diff [A] [B]`: two sessions, the one that started earlier as the baseline.
    Without B, A against the previous session of its name; without either, the latest session
    that has a previous one (latest_session).
    Raises UnknownSession when a session, or that previous one, does not exist."""
    picked = []
    for session_id in (first, second):
        if session_id is not None:
            rows = store.fetch("session", {"session_id": session_id})
            if not rows:
                raise UnknownSession(f"no session {session_id}")
            picked.append(_session(rows[0]))
    if not picked:
        picked.append(latest_session(store))
    if len(picked) == 1:
        previous = previous_session(store, picked[0])
        if previous is None:
            raise UnknownSession(f"session {picked[0].label} ({str(picked[0].id)[:8]}) has no earlier session named "
                                 f"{picked[0].name!r}" if picked[0].name else
                                 f"session {str(picked[0].id)[:8]} has no name, so no previous run to compare with")
        picked.insert(0, previous)
    baseline, session = sorted(picked, key=lambda s: s.start_time)
    runs = _runs_by_session(store, [baseline.id, session.id])
    return SessionDiff(baseline, session, changes.compare(spec_results(runs[baseline.id]), spec_results(runs[session.id]),
                                                          threshold_percent=threshold_percent))


def previous_sessions(store: ReadStore, ids: list[uuid.UUID]) -> dict[uuid.UUID, SessionSummary]:
    """For each of these sessions that has one, the previous run of its name."""
    return {r.pop("of_id"): _session(r) for r in store.fetch("previous_sessions_of", {"ids": ids})} if ids else {}


def diffs_against_previous(store: ReadStore, sessions: list[SessionSummary], *,
                           runs_of: Mapping[uuid.UUID, Sequence[RunLike]] | None = None,
                           previous: Mapping[uuid.UUID, SessionSummary] | None = None,
                           threshold_percent: float = changes.THRESHOLD_PERCENT) -> dict[uuid.UUID, SessionDiff]:
    """Each of `sessions` that has a previous run of its name, against that run (what the
    session pages and the morning report lead with). `runs_of`: spec runs already read, by
    session; `previous`: the previous_sessions of these sessions, already read."""
    if previous is None:
        previous = previous_sessions(store, [s.id for s in sessions])
    runs: dict[uuid.UUID, Sequence[RunLike]] = dict(runs_of or {})
    runs.update(_runs_by_session(store, [i for i in {*previous, *(p.id for p in previous.values())} if i not in runs]))
    results: dict[uuid.UUID, list[SpecResult]] = {}  # a session is often one's baseline and another's later run

    def of(session_id: uuid.UUID) -> list[SpecResult]:
        if session_id not in results:
            results[session_id] = spec_results(runs[session_id])
        return results[session_id]

    return {s.id: SessionDiff(previous[s.id], s, changes.compare(of(previous[s.id].id), of(s.id),
                                                                  threshold_percent=threshold_percent))
            for s in sessions if s.id in previous}


def spec_history(store: ReadStore, spec_id: str, *, limit: int = 100) -> list[SpecRunRow]:
    """Runs of one spec across sessions, newest first."""
    return [SpecRunRow(**r) for r in store.fetch("spec_history", {"spec_id": spec_id, "limit": limit})]


@Read
def top_failing_specs(store: ReadStore, since: datetime, *, limit: int = 10) -> Plan[list[FailingSpec]]:
    """Specs with runs that failed or timed out since `since`: those still failing in some session
    first, then the most often failing."""
    (rows,) = yield [("top_failing_specs", {"since": since, "limit": limit})]
    return [FailingSpec(spec_id=r["spec_id"], failures=r["failures"], runs=r["runs"], counts=Counts.of(r),
                        last_failed_at=r["last_failed_at"], last_error=r["last_error"])
            for r in rows]


def _period_request(bounds: list[datetime]) -> tuple[str, dict[str, Any]]:
    """period_runs of the periods between consecutive `bounds` (a row for each that has runs)."""
    return "period_runs", {"bounds": _timestamps(bounds)}


def _outcomes_request(window: Window) -> tuple[str, dict[str, Any]]:
    """period_runs of the window as one period: its row, or none when no run ended in it."""
    return _period_request([window.since, window.until])


def outcomes(store: ReadStore, window: Window) -> Outcomes:
    """The specs decided in the window and the runs that ended in it."""
    return _added_up(store.fetch(*_outcomes_request(window)))


@Read
def compare_weeks(store: ReadStore, now: datetime, zone: tzinfo) -> Plan[Comparison]:
    """Success rate and spend this week (so far) against the whole previous week."""
    this_week, last_week = week_windows(now, zone)
    current, previous = yield [_outcomes_request(w) for w in (this_week, last_week)]
    return Comparison(this_week, last_week, _added_up(current), _added_up(previous))


def _daily_rows(window: Window, zone: tzinfo) -> Plan[list[dict[str, Any]]]:
    """period_runs for each local day of the window, cut to it. A day starts at local midnight
    as _local_midnight has it (where the clocks go back across midnight, the earlier instant),
    so the days add up to what `outcomes` counts over the same windows."""
    since, until = window.since.astimezone(timezone.utc), window.until.astimezone(timezone.utc)
    day, last = since.astimezone(zone).date(), until.astimezone(zone).date()
    days: list[date] = []
    bounds = [since]  # day k runs from bounds[k] to bounds[k + 1]
    while day <= last:
        high = min(datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone).astimezone(timezone.utc), until)
        if bounds[-1] < high:
            days.append(day)
            bounds.append(high)
        day += timedelta(days=1)
    if not days:
        return []
    (rows,) = yield [_period_request(bounds)]
    for row in rows:
        row["day"] = days[row["period"] - 1]
    return rows


def _timestamps(moments: list[datetime]) -> str:
    """A timestamptz[] parameter in its text form. psycopg's list dumper costs ~20 us a value
    on a slow machine (0.7 ms of spend() went into its 93 timestamps); isoformat ~2 us."""
    return "{" + ",".join(m.isoformat() for m in moments) + "}"


def _daily(row: dict[str, Any]) -> DailyRuns:
    return DailyRuns(day=row["day"], counts=Counts.of(row), runs=row["runs"], cost_usd=row["cost_usd"],
                     tokens_used=row["tokens_used"])


def daily_runs(store: ReadStore, window: Window, zone: tzinfo) -> list[DailyRuns]:
    """Per local day: the specs decided that day by outcome, the runs, spend and tokens."""
    return [_daily(r) for r in store.run(_daily_rows(window, zone))]


def _added_up(rows: list[dict[str, Any]]) -> Outcomes:
    """The outcomes of the periods of period_runs `rows` together."""
    durations = sum(r["duration_count"] for r in rows)
    return Outcomes(
        counts=Counts.summed(rows),
        runs=sum(r["runs"] for r in rows),
        cost_usd=sum((r["cost_usd"] for r in rows), Decimal(0)),
        tokens_used=sum(r["tokens_used"] for r in rows),
        avg_duration_seconds=sum(r["duration_sum"] for r in rows if r["duration_count"]) / durations
        if durations else None)


@Read
def spend(store: ReadStore, now: datetime, zone: tzinfo, *, days: int = 30) -> Plan[Spend]:
    """Spend today, this week, this month, and per day over the last `days` days: one pass
    over the days since the earliest of those starts, added up per period (a dashboard metric,
    so it must stay a few milliseconds with a year of runs)."""
    periods = {"series": _local_midnight(now - timedelta(days=days - 1), zone),
               "today": day_window(now, zone).since, "week": week_windows(now, zone)[0].since,
               "month": month_window(now, zone).since}
    rows = yield from _daily_rows(Window(min(periods.values()), now), zone)
    first = {name: start.astimezone(zone).date() for name, start in periods.items()}
    today, week, month = (_added_up([r for r in rows if r["day"] >= first[name]]) for name in ("today", "week", "month"))
    return Spend(today=today, week=week, month=month,
                 per_day=[_daily(r) for r in rows if r["day"] >= first["series"]])


def _in(window: Window, moment: datetime | None) -> bool:
    return moment is not None and window.since <= moment < window.until


NIGHT_LISTED = (*STILL_FAILING, FIXED_ON_RETRY)
"""The outcomes a night summary lists spec by spec (the specs that passed are only counted)."""


@Read
def night_summary(store: ReadStore, window: Window) -> Plan[NightSummary]:
    """Sessions active in the window, what its runs decided and cost (the window's totals, as
    `outcomes` adds them up), the specs it left failing or fixed on retry, and those that failed
    and are being tried again: one round trip, which reads the attempts of the listed specs only."""
    bounds = {"since": window.since, "until": window.until}
    overlapping, totals, git_rows, attempt_rows = yield [
        ("sessions_overlapping", bounds), _outcomes_request(window), ("git_runs_between", bounds),
        ("night_attempts", bounds, Attempt)]
    sessions = [_session(r) for r in overlapping]
    results = spec_results(attempt_rows, {s.id: s.name for s in sessions})
    decided = [r for r in results if r.outcome in NIGHT_LISTED and _in(window, r.ended_at)]
    return NightSummary(
        window=window, sessions=sessions, outcomes=_added_up(totals),
        results=sorted(decided, key=lambda r: r.ended_at or window.until),
        retrying=[r for r in results if r.outcome == RUNNING and r.error is not None],
        changes=[SpecRunRow(**r) for r in git_rows],
    )


def _latest(rows: list[dict[str, Any]], event_type: str) -> TimelineEvent | None:
    """The latest_event_of_type row of `event_type`, if there is one."""
    if not rows:
        return None
    row = rows[0]
    return TimelineEvent(id=0, event_id=uuid.UUID(int=0), event_type=event_type, spec_id=None,
                         occurred_at=row["occurred_at"], host=row["host"], data=row["data"])


FAILURES_SHOWN = 10
"""Failing sessions listed by `status` (the count says how many there are in all)."""


NIGHTLY_LATEST = timedelta(days=2)
"""Where status looks first for the latest backup and pruning (nightly jobs); only when that
finds none does it look at every day kept (one more round trip)."""
USAGE_REPORT_MAX_AGE = timedelta(days=8)
"""The usage windows status shows are the last reported in this time: the longest window is
7 days, so an older report says nothing about now."""


@Read
def status(store: ReadStore, now: datetime) -> Plan[Status]:
    """What is going on now: active sessions, open requests, and the monitor's own health (read
    in one round trip; two when no backup or pruning ran in NIGHTLY_LATEST)."""
    nightly = {"event_type": "backup_completed", "since": now - NIGHTLY_LATEST}, \
        {"event_type": "prune_completed", "since": now - NIGHTLY_LATEST}
    active, pending, hosts, backup, prune, rate_limits, rejects, failures, failing, source = yield [
        ("active_sessions", None), ("pending_interventions", None), ("monitor_hosts", None),
        *[("latest_event_of_type", params) for params in nightly],
        ("latest_event_of_type", {"event_type": "rate_limits", "since": now - USAGE_REPORT_MAX_AGE}),
        ("reject_count_since", {"since": now - timedelta(days=1)}),
        ("projection_failures", {"limit": FAILURES_SHOWN}), ("projection_failure_count", None), ("read_source", None)]
    if not backup or not prune:
        backup, prune = yield [("latest_event_of_type", {**params, "since": None}) for params in nightly]
    return Status(
        active=[_session(r) for r in active],
        pending_interventions=[InterventionRow(**r) for r in pending],
        hosts=[HostHealth(**r) for r in hosts],
        last_backup=_latest(backup, "backup_completed"),
        last_prune=_latest(prune, "prune_completed"),
        rejects_last_24h=rejects[0]["n"],
        projection_failures=[ProjectionFailure(**row) for row in failures],
        projection_failures_total=failing[0]["failing"],
        reads=store.source(source[0]),
        usage=_usage(_latest(rate_limits, "rate_limits")),
    )


@Read
def event_counts(store: ReadStore, since: datetime) -> Plan[list[tuple[datetime, int]]]:
    """Events per 5-minute bucket since `since`."""
    (rows,) = yield [("event_counts_per_bucket", {"since": since})]
    return [(r["bucket_time"], r["count"]) for r in rows]


EXPORT_QUERIES = {"events": "export_events", "sessions": "export_sessions", "spec_runs": "export_spec_runs"}
"""The tables `export_rows` can read, and the named query that reads each."""
EXPORT_TABLES = tuple(EXPORT_QUERIES)


def export_rows(store: ReadStore, table: str, window: Window) -> Iterator[dict[str, Any]]:
    """Rows of `table` in the window, streamed with constant memory."""
    if table not in EXPORT_TABLES:
        raise ValueError(f"cannot export {table!r}; choose one of {', '.join(EXPORT_TABLES)}")
    return store.stream(EXPORT_QUERIES[table], {"since": window.since, "until": window.until})


# Dashboard: batched reads for rendering many pages at once ----------------------------------


@dataclass(frozen=True)
class SpecHistory:
    """One spec's newest runs (newest first) and its totals over every stored run."""

    spec_id: str
    runs: list[SpecRunRow]
    total_runs: int
    total_failures: int
    """Runs that failed or timed out."""
    counts: Counts
    """How the sessions that ran it decided it."""


def database_now(store: ReadStore) -> datetime:
    """The database's clock (what `sessions.updated_at` is measured with)."""
    return store.fetch("database_now")[0]["now"]


def sessions_changed_since(store: ReadStore, since: datetime | None) -> list[SessionSummary]:
    """Sessions whose aggregates were recomputed at or after `since` (all when None), newest first."""
    return [_session(r) for r in store.fetch("sessions_changed_since", {"since": since})]


def sessions_active_since(store: ReadStore, since: datetime) -> list[SessionSummary]:
    """Sessions whose activity (end, or last event while open) is at or after `since`, newest first."""
    return [_session(r) for r in store.fetch("sessions_active_since", {"since": since})]


def session_ids_active_since(store: ReadStore, since: datetime) -> set[uuid.UUID]:
    """The ids of `sessions_active_since`."""
    return {r["id"] for r in store.fetch("session_ids_active_since", {"since": since})}


def session_details(store: ReadStore, sessions: list[SessionSummary], *, whole_timeline_max: int,
                    timeline_limit: int) -> dict[uuid.UUID, SessionDetail]:
    """`session_detail` for many sessions in one round trip. A session with at most
    `whole_timeline_max` events gets every event in its timeline; a bigger one gets its events
    without heartbeats and tool-level hook events (`cc.*`). At most the newest `timeline_limit`."""
    ids = [s.id for s in sessions]
    whole = [s.id for s in sessions if s.event_count <= whole_timeline_max]
    firsts = [s.first_event_at for s in sessions if s.first_event_at is not None]
    since = min(firsts) if firsts and len(firsts) == len(sessions) else None
    run_rows, timeline_rows, intervention_rows = store.fetch_many([
        ("spec_runs_of_sessions", {"ids": ids}, SpecRunRow),
        ("timelines_of_sessions", {"ids": ids, "whole": whole, "limit": timeline_limit, "since": since}, _in_session),
        ("interventions_of_sessions", {"ids": ids})])
    runs: dict[uuid.UUID, list[SpecRunRow]] = {i: [] for i in ids}
    for run in run_rows:
        runs[run.session_id].append(run)
    timelines: dict[uuid.UUID, list[TimelineEvent]] = {i: [] for i in ids}
    for session_id, event in timeline_rows:
        timelines[session_id].append(event)
    interventions: dict[uuid.UUID, list[InterventionRow]] = {i: [] for i in ids}
    for r in intervention_rows:
        interventions[r["session_id"]].append(InterventionRow(**r))
    return {s.id: SessionDetail(session=s, spec_runs=runs[s.id], timeline=timelines[s.id],
                                interventions=interventions[s.id]) for s in sessions}


def _in_session(*columns: Any) -> tuple[uuid.UUID, TimelineEvent]:
    """A timelines_of_sessions row: the event's session, and the event."""
    return columns[-1], TimelineEvent(*columns[:-1])


def spec_ids(store: ReadStore, session_ids: list[uuid.UUID] | None = None) -> list[str]:
    """Specs that ran in these sessions (in any session when None)."""
    if session_ids is None:
        return [r["spec_id"] for r in store.fetch("all_spec_ids")]
    return [r["spec_id"] for r in store.fetch("spec_ids_of_sessions", {"ids": session_ids})]


SPEC_HISTORY_TOTALS = ("total_runs", "total_failures", "passed", "fixed_on_retry", "failed", "timed_out")
"""The columns of spec_histories that are the spec's totals (on its first row), after the run's."""


def spec_histories(store: ReadStore, spec_ids: list[str], *, limit: int = 100, since: datetime | None = None,
                   at_least: int = 0) -> list[SpecHistory]:
    """`spec_history` for many specs at once, with each spec's totals: the runs since `since`
    and at least the newest `at_least`, at most `limit` (no `since`: the newest `limit`)."""
    histories: dict[str, SpecHistory] = {}
    for run, totals in store.fetch_as("spec_histories", {"spec_ids": spec_ids, "limit": limit, "since": since,
                                                         "at_least": at_least}, _run_and_totals):
        history = histories.get(run.spec_id)
        if history is None:  # the spec's first row carries its totals
            total = dict(zip(SPEC_HISTORY_TOTALS, totals))
            history = histories[run.spec_id] = SpecHistory(run.spec_id, [], total["total_runs"],
                                                           total["total_failures"], Counts.of(total))
        history.runs.append(run)
    return list(histories.values())


_RUN_COLUMNS = len(fields(SpecRunRow))


def _run_and_totals(*columns: Any) -> tuple[SpecRunRow, tuple[Any, ...]]:
    """A spec_histories row: the run (its columns in SpecRunRow's order), then the totals."""
    return SpecRunRow(*columns[:_RUN_COLUMNS]), columns[_RUN_COLUMNS:]


@Read
def recent_failed_runs(store: ReadStore, *, limit: int = 20) -> Plan[list[SpecRunRow]]:
    """Spec runs that failed or timed out, newest first."""
    (rows,) = yield [("recent_failed_runs", {"limit": limit})]
    return [SpecRunRow(**r) for r in rows]


@dataclass(frozen=True)
class EventTypeSeen:
    event_type: str
    count: int
    """Events of this type since `since` (by 5-minute bucket)."""
    since_anchor: int
    """Events of this type since `anchor`: it changes when events of the type arrive."""


@Read
def event_types_seen(store: ReadStore, since: datetime, *,
                     anchor: datetime | None = None) -> Plan[list[EventTypeSeen]]:
    """Event types stored since `since` and how many of each, by name (the events pages' menu
    keeps its order while counts change)."""
    (rows,) = yield [("event_types_seen", {"since": since, "anchor": anchor or since}, EventTypeSeen)]
    return rows


@dataclass(frozen=True)
class AlertRow:
    """An alert and what became of its messages (one per destination, firing and resolved)."""

    id: int
    rule: str
    subject: str
    title: str
    body: str
    link: str | None
    session_id: uuid.UUID | None
    fired_at: datetime
    resolved_at: datetime | None
    messages: list[dict[str, Any]]

    @property
    def state(self) -> str:
        """open, resolved, or one-off: an alert about something that happened (a session that
        ended with failures, a budget passed) is closed as it fires (resolved_at = fired_at, one
        transaction); "resolved" would read as if the failure had been fixed."""
        if self.resolved_at is None:
            return "open"
        return "one-off" if self.resolved_at == self.fired_at else "resolved"

    @property
    def delivery(self) -> str:
        """One word per message: sent, retrying (attempts), failed."""
        words = []
        for m in self.messages:
            if m["sent_at"]:
                words.append(f"{m['kind']} sent")
            elif m["gave_up_at"]:
                words.append(f"{m['kind']} FAILED")
            else:
                words.append(f"{m['kind']} retrying ({m['attempts']})")
        return ", ".join(words) or "no destination"


@Read
def recent_alerts(store: ReadStore, *, since: datetime, limit: int = 100) -> Plan[list[AlertRow]]:
    """Alerts fired since `since`, newest first, with their deliveries."""
    (rows,) = yield [("recent_alerts", {"since": since, "limit": limit})]
    return [AlertRow(**row) for row in rows]
