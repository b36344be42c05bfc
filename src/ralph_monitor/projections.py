"""Aggregates computed from a session's events: the session row, its spec runs and its
intervention requests.

`project_session` is a pure function of the events (sorted by the agent's time, ties
broken by type and id), so the result is the same whatever order the events arrived in,
whichever daemon computed it, and whether it ran live or in a rebuild.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from ralph_monitor import outcomes, values

SESSION_TYPES = (
    "session_started", "session_ended", "session_heartbeat", "session_stalled",
    "spec_started", "spec_completed", "spec_failed", "timeout_triggered",
    "intervention_request", "user_feedback",
)
"""The event types the projection reads; other types only count as signs of life."""

SPEC_TERMINAL = {"spec_completed": "completed", "spec_failed": "failed", "timeout_triggered": "timeout"}
SESSION_END_STATES = ("completed", "failed", "interrupted", "budget_exceeded")
_RANK = {"session_started": 0, "spec_started": 1, "session_heartbeat": 2, "intervention_request": 2,
         "user_feedback": 3, "spec_completed": 4, "spec_failed": 4, "timeout_triggered": 4,
         "session_stalled": 5, "session_ended": 6}
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


@dataclass(frozen=True)
class SessionProjection(SessionTotals):
    """The session row with its spec runs and requests, as one projection pass writes them."""

    spec_runs: list[SpecRun] = field(default_factory=list)
    interventions: list[Intervention] = field(default_factory=list)


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
    run.duration_seconds = _duration(run, read.number(data, "duration_s"))


def _total(field: str, total: Any, problems: list[str]) -> Any:
    """The session's total, or 0 with a reason if it does not fit the sessions column."""
    if total > values.MAX_TOTAL[field]:
        problems.append(f"{field} total {total:.6g} not kept: over what the sessions table holds")
        return type(total)(0)
    return total


def project_session(session_id: uuid.UUID, events: list[SessionEvent], *, event_count: int,
                    last_event_at: datetime) -> SessionProjection:
    """The aggregates of one session. `events` are its events of SESSION_TYPES (any order);
    `event_count` and `last_event_at` cover all its events (tool events included)."""
    ordered = sorted(events, key=lambda e: e.sort_key)
    runs: list[SpecRun] = []
    open_runs: dict[str, SpecRun] = {}
    last_run: dict[str, SpecRun] = {}
    attempts: dict[str, int] = {}
    interventions: list[Intervention] = []
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
                previous.status, previous.end_time = "interrupted", event.occurred_at
                previous.duration_seconds = _duration(previous)
            attempts[event.spec_id] = attempts.get(event.spec_id, 0) + 1
            run = SpecRun(event.spec_id, attempts[event.spec_id], event.occurred_at)
            runs.append(run)
            open_runs[event.spec_id] = last_run[event.spec_id] = run
        elif kind in SPEC_TERMINAL and event.spec_id:
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
        elif kind == "intervention_request":
            interventions.append(Intervention(
                event.event_id, event.spec_id, event.occurred_at,
                read.text(event.data, "message", "question", "reason")))
        elif kind == "user_feedback":
            _answer(interventions, event, read)

    if ended is not None:
        for run in open_runs.values():
            run.status, run.end_time = "interrupted", ended.occurred_at
            run.duration_seconds = _duration(run)
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
    if ended is not None:
        state = end_data.get("status") if end_data.get("status") in SESSION_END_STATES else "completed"
    elif stalled_at is not None and stalled_at >= last_event_at:
        state = "stalled"
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
        spec_runs=runs,
        interventions=interventions,
    )


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
