"""Aggregates computed from a session's events: the session row, its spec runs and its
intervention requests.

`project_session` is a pure function of the events (sorted by the agent's time, ties
broken by type and id), so the result is the same whatever order the events arrived in,
whichever daemon computed it, and whether it ran live or in a rebuild.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from ralph_monitor import loop_health, outcomes, values

SESSION_TYPES = (
    "session_started", "session_ended", "session_heartbeat", "session_stalled",
    "spec_started", "spec_completed", "spec_failed", "timeout_triggered",
    "intervention_request", "user_feedback", "loop_stuck", "loop_recovered",
    "rate_limits", "usage_limit", "usage_limit_reset", "cc.StopFailure",
)
"""The event types the projection reads; other types only count as signs of life (and the
recent ones of ACTIVITY_TYPES feed the loop-health rules and the waiting state)."""
ACTIVITY_TYPES = (
    "cc.PreToolUse", "cc.PostToolUse", "cc.PostToolUseFailure", "cc.PermissionRequest", "cc.PermissionDenied",
    "cc.Notification", "cc.UserPromptSubmit", "cc.Stop", "cc.StopFailure", "cc.SessionEnd",
)
"""Claude Code hook events the projection reads the recent ones of (store: session_recent_activity)."""
HELP_NOTIFICATIONS = frozenset({"permission_prompt", "elicitation_dialog"})
ASK_TOOLS = frozenset({"AskUserQuestion"})
WAIT_CLOSERS = frozenset({
    "cc.PostToolUse", "cc.PostToolUseFailure", "cc.PermissionDenied", "cc.UserPromptSubmit", "cc.Stop",
    "cc.StopFailure", "cc.SessionEnd"})
"""Signs that the agent went on after it asked (besides spec and feedback events)."""

PAUSED = "paused_for_usage_limit"
"""The state of a session whose agent hit its usage limit: waiting for the reset, not failed."""
NOT_ACTIVITY = ("session_heartbeat", "session_stalled", "rate_limits", "usage_limit", "usage_limit_reset",
                "loop_stuck", "loop_recovered", "cc.StopFailure", "cc.Stop", "cc.SubagentStop", "cc.Notification")
"""Events that do not end a usage-limit pause: signs of life, limit reports, the monitor's own
findings and the agent stopping. Anything else after the pause (a tool call, a prompt, a spec run) is work again."""
PROGRESS_TYPES = frozenset(SESSION_TYPES) - frozenset(NOT_ACTIVITY) - {"session_ended"}
USAGE_PAUSE_FALLBACK = timedelta(hours=5)
"""How long a usage-limit pause lasts when no reset time is known: the shorter window's length."""

SPEC_TERMINAL = {"spec_completed": "completed", "spec_failed": "failed", "timeout_triggered": "timeout"}
SESSION_END_STATES = ("completed", "failed", "interrupted", "budget_exceeded", "stuck")
_RANK = {"session_started": 0, "spec_started": 1, "session_heartbeat": 2, "intervention_request": 2,
         "user_feedback": 3, "spec_completed": 4, "spec_failed": 4, "timeout_triggered": 4,
         "session_stalled": 5, "loop_stuck": 5, "loop_recovered": 5, "session_ended": 6}
MAX_PROBLEMS = 20
"""Reasons kept per session or spec run for values the aggregates skipped."""


@dataclass(frozen=True)
class SessionEvent:
    """The parts of an event the projection needs."""

    event_id: uuid.UUID
    event_type: str
    spec_id: str | None
    occurred_at: datetime
    host: str
    data: dict[str, Any]

    @property
    def sort_key(self) -> tuple[datetime, int, str]:
        return (self.occurred_at, _RANK.get(self.event_type, 2), str(self.event_id))


@dataclass
class SpecRun:
    spec_id: str
    attempt: int
    start_time: datetime | None
    end_time: datetime | None = None
    duration_seconds: float | None = None
    status: str = "running"
    outcome: str = outcomes.RUNNING
    """outcomes.attempt_outcomes: set once the session's runs are known."""
    tokens_used: int | None = None
    cost_usd: Decimal | None = None
    error_message: str | None = None
    output_summary: Any = None
    value_problems: list[str] = field(default_factory=list)
    git: dict[str, Any] | None = None
    """What the run changed in its git repository (agent.gitstate), as values.git keeps it."""


@dataclass
class Intervention:
    event_id: uuid.UUID
    spec_id: str | None
    requested_at: datetime
    message: str | None
    answered_at: datetime | None = None
    answer: str | None = None


@dataclass(frozen=True)
class SessionTotals:
    """A sessions row as the projection computes it: also what the read side returns
    (queries.SessionSummary adds what only the table knows)."""

    id: uuid.UUID
    name: str | None
    host: str | None
    start_time: datetime
    end_time: datetime | None
    last_event_at: datetime
    total_specs: int | None
    specs_completed: int
    specs_failed: int
    specs_timed_out: int
    specs_fixed_on_retry: int
    execution_state: str
    tokens_used: int
    cost_usd: Decimal
    event_count: int
    interventions_pending: int
    final_result: Any
    metadata: Any
    value_problems: list[str] = field(default_factory=list)
    """Values the aggregates skipped (values.py), e.g. "tokens_used=1e30 ignored: out of range"."""
    waiting_since: datetime | None = None
    """While waiting_for_human: since when (the first request or prompt still open)."""
    loop_findings: list[dict[str, Any]] = field(default_factory=list)
    """Open loop-health episodes (loop_health.py): each loop_stuck's data and event_id."""
    paused_until: datetime | None = None
    """While paused_for_usage_limit: when the usage window resets (the projector then records
    usage_limit_reset, and the session is running again)."""
    first_event_at: datetime | None = None
    """The earliest `ts` of all its events when last projected (a bound for reading them: a
    query on `events` with it is planned for the partitions from there on, not all ~40)."""


@dataclass(frozen=True)
class SessionProjection(SessionTotals):
    """The session row with its spec runs and requests, as one projection pass writes them."""

    spec_runs: list[SpecRun] = field(default_factory=list)
    interventions: list[Intervention] = field(default_factory=list)
    loop_due: list[tuple[str, uuid.UUID, datetime, dict[str, Any]]] = field(default_factory=list)
    """loop_stuck / loop_recovered events to record (loop_health.episodes_due); not a column."""


def _duration(run: SpecRun, reported: Decimal | None = None) -> float | None:
    if run.start_time is not None and run.end_time is not None:
        return (run.end_time - run.start_time).total_seconds()
    return float(reported) if reported is not None else None


class _Reader:
    """Reads data fields through the value policy (values.py), keeping the reasons for what it
    skipped in `problems`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems

    def keep(self, value: Any, problem: str | None) -> Any:
        if problem is not None and len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        return value

    def number(self, data: dict[str, Any], field: str) -> Decimal | None:
        return self.keep(*values.number(field, data.get(field)))

    def count(self, data: dict[str, Any], field: str) -> int | None:
        amount = self.number(data, field)
        return int(amount) if amount is not None else None

    def text(self, data: dict[str, Any], *fields: str) -> str | None:
        """The first of `fields` that is set (a truthy value), as bounded text."""
        for field in fields:
            if data.get(field):
                return self.keep(*values.text(field, data[field]))
        return None


def _close(run: SpecRun, event: SessionEvent, status: str) -> None:
    data = event.data
    read = _Reader(run.value_problems)
    run.end_time = event.occurred_at
    run.status = status
    run.tokens_used = read.count(data, "tokens_used")
    run.cost_usd = read.number(data, "cost_usd")
    run.error_message = read.text(data, "error", "error_message", "reason")
    run.output_summary = data.get("output_summary")
    run.git, problems = values.git(data.get("git"))
    for problem in problems:
        read.keep(None, problem)
    run.duration_seconds = _duration(run, read.number(data, "duration_s"))


def _interrupt(run: SpecRun, at: datetime, limit: SessionEvent | None) -> None:
    """Close a run that was cut short at `at` (its spec started again, or the session ended).
    A run that stopped at the usage limit (`limit`, e.g. `ralph-monitor loop` waiting for the
    reset) ended there: its time, spend and message are the limit event's, not the wait's."""
    if limit is None:
        run.status, run.end_time = "interrupted", at
        run.duration_seconds = _duration(run)
        return
    _close(run, limit, "interrupted")
    run.error_message = run.error_message or _Reader(run.value_problems).text(limit.data, "message")


def _total(field: str, total: Any, problems: list[str]) -> Any:
    """The session's total, or 0 with a reason if it does not fit the sessions column."""
    if total > values.MAX_TOTAL[field]:
        problems.append(f"{field} total {total:.6g} not kept: over what the sessions table holds")
        return type(total)(0)
    return total


def _usage_pause(ordered: list[SessionEvent], read: _Reader) -> tuple[datetime | None, datetime | None]:
    """(since when, until when) the session is paused for its usage limit, or (None, None).

    A `rate_limits` report with a window at 100% pauses it until that window resets (a later
    report below 100% ends the pause); so does a `usage_limit` event (until its `resets_at`) or
    a Claude Code turn that failed with `rate_limit` (until the fullest window's reset last
    reported, else for USAGE_PAUSE_FALLBACK). Work after it (PROGRESS_TYPES) or the projector's
    `usage_limit_reset` once the time has come ends it."""
    paused_at = until = last_reset = None
    for event in ordered:
        kind, at = event.event_type, event.occurred_at
        if kind == "rate_limits":
            windows = []
            for name in values.USAGE_WINDOWS:
                found, problems = values.window(name, event.data.get(name))
                for problem in problems:
                    read.keep(None, problem)
                if found is not None:
                    windows.append(found)
            full = [resets for used, resets in windows if used >= 100 and resets is not None and resets > at]
            fullest = max(windows, default=None, key=lambda w: w[0])
            last_reset = fullest[1] if fullest is not None else None
            if full:
                paused_at, until = paused_at or at, max(full)
            else:
                paused_at = until = None
        elif kind == "usage_limit" or (kind == "cc.StopFailure" and event.data.get("error") == "rate_limit"):
            resets = read.keep(*values.epoch("resets_at", event.data.get("resets_at"))) if kind == "usage_limit" else None
            resets = resets if resets is not None and resets > at else last_reset
            paused_at, until = paused_at or at, resets if resets is not None and resets > at else at + USAGE_PAUSE_FALLBACK
        elif paused_at is not None and ((kind == "usage_limit_reset" and until is not None and at >= until)
                                        or (kind in PROGRESS_TYPES and at > paused_at)):
            paused_at = until = None
    return paused_at, until


def project_session(session_id: uuid.UUID, events: list[SessionEvent], *, event_count: int,
                    last_event_at: datetime, last_active_at: datetime | None = None,
                    first_event_at: datetime | None = None,
                    activity: list[loop_health.Activity] | None = None,
                    limits: loop_health.Thresholds | None = None) -> SessionProjection:
    """The aggregates of one session. `events` are its events of SESSION_TYPES (any order);
    `event_count`, `first_event_at` and `last_event_at` cover all its events (tool events included), and
    `last_active_at` the last of them that is work (not in NOT_ACTIVITY); `activity` its
    recent events of ACTIVITY_TYPES, in time order; `limits` the loop-health thresholds
    (None: no rule is evaluated)."""
    ordered = sorted(events, key=lambda e: e.sort_key)
    runs: list[SpecRun] = []
    open_runs: dict[str, SpecRun] = {}
    last_run: dict[str, SpecRun] = {}
    limited: dict[str, SessionEvent] = {}
    """The `usage_limit` an open run stopped at, by spec: where that run ends if it is cut short."""
    attempts: dict[str, int] = {}
    interventions: list[Intervention] = []
    closings: list[loop_health.Closing] = []
    episodes: dict[uuid.UUID, loop_health.Episode] = {}
    waits: list[tuple[datetime, bool]] = []
    """(when, True: a request opened / False: the agent went on), for waiting_for_human."""
    problems: list[str] = []
    read = _Reader(problems)
    started = ended = stalled_at = None
    for event in ordered:
        kind = event.event_type
        if kind == "session_started" and started is None:
            started = event
        elif kind == "session_ended":
            ended = event
        elif kind == "session_stalled":
            stalled_at = event.occurred_at
        elif kind == "spec_started" and event.spec_id:
            previous = open_runs.pop(event.spec_id, None)
            if previous is not None:
                _interrupt(previous, event.occurred_at, limited.pop(event.spec_id, None))
            attempts[event.spec_id] = attempts.get(event.spec_id, 0) + 1
            run = SpecRun(event.spec_id, attempts[event.spec_id], event.occurred_at)
            runs.append(run)
            open_runs[event.spec_id] = last_run[event.spec_id] = run
        elif kind == "usage_limit" and event.spec_id in open_runs:
            limited[event.spec_id] = event
        elif kind in SPEC_TERMINAL and event.spec_id:
            limited.pop(event.spec_id, None)
            run = open_runs.pop(event.spec_id, None)
            if run is None:
                earlier = last_run.get(event.spec_id)
                if earlier is not None and earlier.status == "timeout" and kind != "timeout_triggered":
                    # The failure report that follows a timeout belongs to the same run.
                    earlier.error_message = earlier.error_message or _Reader(earlier.value_problems).text(
                        event.data, "error")
                    continue
                attempts[event.spec_id] = attempts.get(event.spec_id, 0) + 1
                run = SpecRun(event.spec_id, attempts[event.spec_id], None)
                runs.append(run)
                last_run[event.spec_id] = run
            _close(run, event, SPEC_TERMINAL[kind])
            closings.append(loop_health.Closing(
                event.event_id, event.spec_id, event.occurred_at, run.status != "completed", run.error_message,
                run.cost_usd, event.data.get("git") if isinstance(event.data.get("git"), dict) else None))
        elif kind == "intervention_request":
            interventions.append(Intervention(
                event.event_id, event.spec_id, event.occurred_at,
                read.text(event.data, "message", "question", "reason")))
        elif kind == "user_feedback":
            _answer(interventions, event, read)
        elif kind == "loop_stuck" and isinstance(event.data.get("rule"), str):
            episodes[event.event_id] = loop_health.Episode(
                event.event_id, event.data["rule"], event.data, event.occurred_at)
        elif kind == "loop_recovered":
            stuck = episodes.get(_uuid(event.data.get("stuck_event_id")))
            if stuck is not None and stuck.recovered_at is None:
                episodes[stuck.event_id] = loop_health.Episode(
                    stuck.event_id, stuck.rule, stuck.data, stuck.at, event.occurred_at)
        if kind in ("spec_started", "user_feedback") or kind in SPEC_TERMINAL:
            waits.append((event.occurred_at, False))

    if ended is not None:
        for run in open_runs.values():
            _interrupt(run, ended.occurred_at, limited.get(run.spec_id))
    counts = _settle_outcomes(runs)
    start_data = started.data if started else {}
    end_data = ended.data if ended else {}
    name = read.text(start_data, "name")
    total_specs = read.count(start_data, "total_specs")
    metadata = read.keep(*values.mapping("metadata", start_data.get("metadata")))
    for run in runs:
        problems.extend(f"{run.spec_id} attempt {run.attempt}: {problem}" for problem in run.value_problems)
    tokens = sum(run.tokens_used or 0 for run in runs)
    cost = sum((run.cost_usd or Decimal(0) for run in runs), Decimal(0))
    if not tokens and not cost:
        tokens = read.count(end_data, "tokens_used") or 0
        cost = read.number(end_data, "cost_usd") or Decimal(0)
    tokens = _total("tokens_used", tokens, problems)
    cost = _total("cost_usd", cost, problems)
    paused_at, paused_until = _usage_pause(ordered, read)
    if paused_at is not None and last_active_at is not None and last_active_at > paused_at:
        paused_at = paused_until = None
    waiting_since = None
    loop_due: list[tuple[str, uuid.UUID, datetime, dict[str, Any]]] = []
    if ended is None:
        waiting_since = None if paused_at is not None else _waiting_since(waits, interventions, activity or [])
        if limits is not None:
            current = loop_health.findings(closings, activity or [], now=last_event_at,
                                           started=started.occurred_at if started else last_event_at, limits=limits,
                                           waiting=waiting_since is not None or paused_at is not None)
            loop_due = loop_health.episodes_due(session_id, current, list(episodes.values()), now=last_event_at)
    if ended is not None:
        state = end_data.get("status") if end_data.get("status") in SESSION_END_STATES else "completed"
    elif paused_at is not None:
        state = PAUSED
    elif stalled_at is not None and stalled_at >= last_event_at:
        state, waiting_since = "stalled", None   # silent past stall_after_s, waiting or not
    elif waiting_since is not None:
        state = "waiting_for_human"
    else:
        state = "running"
    first = ordered[0].occurred_at if ordered else last_event_at
    return SessionProjection(
        id=session_id,
        name=name,
        host=started.host if started else (ordered[0].host if ordered else None),
        start_time=started.occurred_at if started else first,
        end_time=ended.occurred_at if ended else None,
        last_event_at=last_event_at,
        total_specs=total_specs,
        specs_completed=counts.completed,
        specs_failed=counts.still_failing,
        specs_timed_out=counts.timed_out,
        specs_fixed_on_retry=counts.fixed_on_retry,
        execution_state=state,
        tokens_used=tokens,
        cost_usd=cost,
        event_count=event_count,
        interventions_pending=0 if ended else sum(1 for i in interventions if i.answered_at is None),
        final_result=end_data or None,
        metadata=metadata or {},
        value_problems=problems[:MAX_PROBLEMS],
        waiting_since=waiting_since,
        loop_findings=[{**e.data, "event_id": str(e.event_id)} for e in episodes.values() if e.recovered_at is None],
        paused_until=paused_until if ended is None else None,
        first_event_at=first_event_at,
        spec_runs=runs,
        interventions=interventions,
        loop_due=loop_due,
    )


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _waiting_since(waits: list[tuple[datetime, bool]], interventions: list[Intervention],
                   activity: list[loop_health.Activity]) -> datetime | None:
    """Since when the session waits for a human: a request unanswered, a permission prompt, an
    AskUserQuestion or a Notification of a help kind, with no sign since that the agent went on."""
    marks = list(waits)
    marks += [(i.requested_at, True) for i in interventions if i.answered_at is None]
    for a in activity:
        if (a.event_type == "cc.PermissionRequest"
                or (a.event_type == "cc.Notification" and a.notification_type in HELP_NOTIFICATIONS)
                or (a.event_type == "cc.PreToolUse" and a.tool_name in ASK_TOOLS)):
            marks.append((a.at, True))
        elif a.event_type in WAIT_CLOSERS or a.event_type == "cc.PreToolUse":
            marks.append((a.at, False))
    since = None
    for at, opens in sorted(marks, key=lambda m: (m[0], m[1])):
        if opens:
            since = since or at
        else:
            since = None
    return since


def _settle_outcomes(runs: list[SpecRun]) -> outcomes.Counts:
    """Set each run's outcome (outcomes.py decides, from its spec's attempts in order); the
    session's counts of its specs."""
    by_spec: dict[str, list[SpecRun]] = {}
    for run in runs:
        by_spec.setdefault(run.spec_id, []).append(run)
    for attempts in by_spec.values():
        attempts.sort(key=lambda r: r.attempt)
        for run, outcome in zip(attempts, outcomes.attempt_outcomes([r.status for r in attempts])):
            run.outcome = outcome
    return outcomes.Counts.tally(attempts[-1].outcome for attempts in by_spec.values())


def _answer(interventions: list[Intervention], feedback: SessionEvent, read: _Reader) -> None:
    """A user_feedback answers the request it names (data.request_id), else the oldest open one."""
    wanted = feedback.data.get("request_id")
    for request in interventions:
        if request.answered_at is not None:
            continue
        if wanted is None or str(request.event_id) == str(wanted):
            request.answered_at = feedback.occurred_at
            request.answer = read.text(feedback.data, "message", "answer")
            return
