"""One definition of what happened to a spec, and of the counts every view shows.

`ralph-query night / failures / session / diff`, the dashboard's cards and pages and the morning
report all count with this module; nothing else decides what "failed" means.

A spec's outcome in a session is decided by its last attempt:

    passed          the last attempt completed, and no earlier one failed or timed out
    fixed_on_retry  the last attempt completed after an earlier one failed or timed out
    failed          the last attempt failed
    timed_out       the last attempt timed out
    running         the last attempt is still going
    interrupted     the last attempt was cut short (the session ended, or the spec restarted)

Completed = passed + fixed on retry; still failing = failed + timed out; the success rate is
completed / (completed + still failing). Every attempt (spec run) has an outcome too, which the
projection stores in `spec_runs.outcome`: the last attempt has its spec's; an earlier one is
`later_passed` when the spec passed in the end (a failure that later passed, and every view
says so) and `retried` otherwise. A window (a night, a day, a week) counts the specs whose last
attempt ended in it: each spec of a session is counted once, where it was decided.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from typing import NamedTuple, Protocol

PASSED = "passed"
FIXED_ON_RETRY = "fixed_on_retry"
FAILED = "failed"
TIMED_OUT = "timed_out"
RUNNING = "running"
INTERRUPTED = "interrupted"
LATER_PASSED = "later_passed"
RETRIED = "retried"

SPEC_OUTCOMES = (PASSED, FIXED_ON_RETRY, FAILED, TIMED_OUT, RUNNING, INTERRUPTED)
"""Outcomes of a spec (and of its last attempt)."""
FAILING_STATUSES = ("failed", "timeout")
"""Statuses of an attempt that is a failure."""
STILL_FAILING = (FAILED, TIMED_OUT)

WORDS = {PASSED: "passed", FIXED_ON_RETRY: "fixed on retry", FAILED: "failed", TIMED_OUT: "timed out",
         RUNNING: "running", INTERRUPTED: "interrupted", LATER_PASSED: "fixed on retry", RETRIED: "retried"}
"""How each outcome is written. A failed attempt that a later one fixed reads "fixed on retry",
like its spec."""


STATUS_WORDS = {"completed": "completed", "failed": "failed", "timeout": "timed out", "running": "running",
                "interrupted": "interrupted", "budget_exceeded": "over budget", "stuck": "stuck",
                "waiting_for_human": "waiting for a human"}
"""How each status of an attempt is written."""


def attempt_word(status: str, outcome: str) -> str:
    """An attempt as every view words it: its status, and for a failure what came of it
    ("failed, fixed on retry", "timed out, retried")."""
    word = STATUS_WORDS.get(status, status)
    if status in FAILING_STATUSES and outcome in (LATER_PASSED, RETRIED):
        return f"{word}, {WORDS[outcome]}"
    return word


def spec_outcome(statuses: Sequence[str]) -> str:
    """A spec's outcome from the statuses of its attempts, oldest first."""
    last = statuses[-1]
    if last == "completed":
        return FIXED_ON_RETRY if any(s in FAILING_STATUSES for s in statuses[:-1]) else PASSED
    return {"failed": FAILED, "timeout": TIMED_OUT, "running": RUNNING}.get(last, INTERRUPTED)


def attempt_outcomes(statuses: Sequence[str]) -> list[str]:
    """The outcome of each attempt of one spec (statuses oldest first), as spec_runs.outcome keeps it."""
    final = spec_outcome(statuses)
    earlier = LATER_PASSED if final in (PASSED, FIXED_ON_RETRY) else RETRIED
    return [earlier] * (len(statuses) - 1) + [final]


def fixed_later(status: str, outcome: str) -> bool:
    """Whether an attempt is a failure that a later attempt of its spec fixed."""
    return status in FAILING_STATUSES and outcome == LATER_PASSED


@dataclass(frozen=True)
class Counts:
    """Specs by outcome: one field per SPEC_OUTCOMES name, in its order (read by name, without
    dataclasses.fields, which a render would call thousands of times)."""

    passed: int = 0
    fixed_on_retry: int = 0
    failed: int = 0
    timed_out: int = 0
    running: int = 0
    interrupted: int = 0

    @classmethod
    def tally(cls, outcomes: Iterable[str]) -> Counts:
        """Count spec outcomes; attempt-only outcomes (later_passed, retried) are not specs."""
        seen = dict.fromkeys(SPEC_OUTCOMES, 0)
        for outcome in outcomes:
            if outcome in seen:
                seen[outcome] += 1
        return cls(**seen)

    @classmethod
    def of(cls, row: Mapping[str, int]) -> Counts:
        """From a row holding a count per outcome (missing ones are 0)."""
        return cls.summed((row,))

    @classmethod
    def summed(cls, rows: Iterable[Mapping[str, int]]) -> Counts:
        """The counts of several such rows together (one object, not one per row; missing
        ones are 0)."""
        total = dict.fromkeys(SPEC_OUTCOMES, 0)
        for row in rows:
            for name in SPEC_OUTCOMES:
                total[name] += int(row.get(name) or 0)
        return cls(**total)

    def __add__(self, other: Counts) -> Counts:
        return Counts(**{name: getattr(self, name) + getattr(other, name) for name in SPEC_OUTCOMES})

    @property
    def completed(self) -> int:
        return self.passed + self.fixed_on_retry

    @property
    def still_failing(self) -> int:
        return self.failed + self.timed_out

    @property
    def decided(self) -> int:
        """Specs whose last attempt completed, failed or timed out."""
        return self.completed + self.still_failing

    @property
    def success_rate(self) -> float | None:
        """Completed / decided, or None when no spec was decided."""
        return self.completed / self.decided if self.decided else None

    def sentence(self) -> str:
        """The counts as every view words them: "4 completed (1 fixed on retry), 0 failed, 1 timed out"."""
        fixed = f" ({self.fixed_on_retry} fixed on retry)" if self.fixed_on_retry else ""
        return f"{self.completed} completed{fixed}, {self.failed} failed, {self.timed_out} timed out"

    def as_json(self) -> dict[str, int | float | None]:
        """Every count, the derived ones and the success rate (the JSON snapshots' shape)."""
        return {**{name: getattr(self, name) for name in SPEC_OUTCOMES}, "completed": self.completed,
                "still_failing": self.still_failing, "decided": self.decided, "success_rate": self.success_rate}


class RunLike(Protocol):
    """What a spec result needs of a spec run (an Attempt, or a queries.SpecRunRow)."""

    @property
    def session_id(self) -> uuid.UUID: ...
    @property
    def spec_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def end_time(self) -> datetime | None: ...
    @property
    def duration_seconds(self) -> float | None: ...
    @property
    def tokens_used(self) -> int | None: ...
    @property
    def cost_usd(self) -> Decimal | None: ...
    @property
    def error_message(self) -> str | None: ...


class Attempt(NamedTuple):
    """A spec run with only what spec results need (cheap to read by the hundred)."""

    session_id: uuid.UUID
    spec_id: str
    attempt: int
    status: str
    outcome: str
    end_time: datetime | None
    duration_seconds: float | None
    tokens_used: int | None
    cost_usd: Decimal | None
    error_message: str | None


@dataclass
class SpecResult:
    """One spec in one session: its outcome, its attempts, what they took and cost together.
    (Not frozen: a full dashboard rebuild makes one per spec run, and frozen ones cost 3x.)"""

    session_id: uuid.UUID
    spec_id: str
    outcome: str
    attempts: int
    ended_at: datetime | None
    """When its last attempt ended (None while it runs): a window counts the spec if this is in it."""
    duration_seconds: float | None
    tokens_used: int
    cost_usd: Decimal
    error: str | None
    """The last failure's error: why it still fails, or what the retry fixed."""
    errors: tuple[str, ...]
    """Every attempt's error, oldest first (without repeats)."""
    session_name: str | None = None

    @property
    def word(self) -> str:
        return WORDS[self.outcome]


def spec_results(runs: Iterable[RunLike], names: Mapping[uuid.UUID, str | None] | None = None) -> list[SpecResult]:
    """Per (session, spec): its result, from all of its attempts (`runs` holds every attempt of
    the sessions it covers), in the order specs first appear; `names` gives session names.
    (One pass over each spec's attempts: the night's summary runs this on a few hundred.)"""
    by_spec: dict[tuple[uuid.UUID, str], list[RunLike]] = {}
    for run in runs:
        by_spec.setdefault((run.session_id, run.spec_id), []).append(run)
    names = names or {}
    results = []
    for (session_id, spec_id), attempts in by_spec.items():
        if len(attempts) > 1:
            attempts.sort(key=attrgetter("attempt"))
        duration: float | None = None
        tokens, cost, error, errors = 0, Decimal(0), None, {}
        for r in attempts:
            if r.duration_seconds is not None:
                duration = (duration or 0.0) + r.duration_seconds
            tokens += r.tokens_used or 0
            if r.cost_usd is not None:
                cost += r.cost_usd
            if r.error_message:
                errors[r.error_message] = None
                if r.status in FAILING_STATUSES:
                    error = r.error_message
        last = attempts[-1]
        results.append(SpecResult(session_id, spec_id, last.outcome, len(attempts), last.end_time, duration, tokens,
                                  cost, error, tuple(errors), names.get(session_id)))
    return results
