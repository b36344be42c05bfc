"""The one definition of the counts (outcomes.py), the projection that applies it, and the
comparison of two runs (changes.py), without a database."""

from __future__ import annotations

import uuid
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ralph_monitor import changes
from ralph_monitor.outcomes import (SPEC_OUTCOMES, Counts, attempt_outcomes, attempt_word, fixed_later, spec_outcome,
                                    spec_results)
from ralph_monitor.projections import SessionEvent, project_session

T0 = datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc)
SID = uuid.UUID("a0000000-0000-4000-8000-00000000000a")


@pytest.mark.parametrize(("statuses", "spec", "attempts"), [
    (["completed"], "passed", ["passed"]),
    (["failed", "completed"], "fixed_on_retry", ["later_passed", "fixed_on_retry"]),
    (["timeout", "failed", "completed"], "fixed_on_retry", ["later_passed", "later_passed", "fixed_on_retry"]),
    (["interrupted", "completed"], "passed", ["later_passed", "passed"]),
    (["failed"], "failed", ["failed"]),
    (["completed", "failed"], "failed", ["retried", "failed"]),
    (["failed", "timeout"], "timed_out", ["retried", "timed_out"]),
    (["failed", "running"], "running", ["retried", "running"]),
    (["running"], "running", ["running"]),
    (["completed", "interrupted"], "interrupted", ["retried", "interrupted"]),
])
def test_the_last_attempt_decides(statuses: list[str], spec: str, attempts: list[str]) -> None:
    assert spec_outcome(statuses) == spec
    assert attempt_outcomes(statuses) == attempts


def test_a_failure_fixed_later_is_worded_so() -> None:
    assert fixed_later("failed", "later_passed") and fixed_later("timeout", "later_passed")
    assert not fixed_later("interrupted", "later_passed") and not fixed_later("failed", "retried")
    assert attempt_word("failed", "later_passed") == "failed, fixed on retry"
    assert attempt_word("timeout", "retried") == "timed out, retried"
    assert attempt_word("timeout", "timed_out") == "timed out"
    assert attempt_word("completed", "fixed_on_retry") == "completed"


def test_counts() -> None:
    c = Counts.tally(["passed", "fixed_on_retry", "failed", "timed_out", "timed_out", "running", "later_passed",
                      "retried"])
    assert (c.completed, c.still_failing, c.decided, c.running) == (2, 3, 5, 1)
    assert c.success_rate == pytest.approx(0.4)
    assert c.sentence() == "2 completed (1 fixed on retry), 1 failed, 2 timed out"
    assert Counts().success_rate is None and Counts().sentence() == "0 completed, 0 failed, 0 timed out"
    assert Counts.of({"passed": 2, "failed": None}) == Counts(passed=2) and c + Counts(passed=1) == Counts.tally(
        ["passed", "passed", "fixed_on_retry", "failed", "timed_out", "timed_out", "running"])
    assert c.as_json()["still_failing"] == 3 and c.as_json()["success_rate"] == c.success_rate
    # Counts is read by SPEC_OUTCOMES' names: every field is one, in that order.
    assert tuple(f.name for f in dataclasses.fields(Counts)) == SPEC_OUTCOMES


def ev(kind: str, minute: float, spec: str | None = None, **data: object) -> SessionEvent:
    return SessionEvent(uuid.uuid4(), kind, spec, T0 + timedelta(minutes=minute), "host", dict(data))


@given(st.lists(st.tuples(st.sampled_from(["S1", "S2", "S3"]),
                          st.sampled_from(["spec_completed", "spec_failed", "timeout_triggered", None])),
                max_size=25))
def test_the_projection_counts_with_the_one_definition(script: list[tuple[str, str | None]]) -> None:
    """Whatever a session did, its stored counts are the tally of its specs' outcomes, and each
    run's outcome is what outcomes.py gives its spec's attempts."""
    events = [ev("session_started", 0, name="n")]
    for i, (spec, end) in enumerate(script):
        events.append(ev("spec_started", 1 + 2 * i, spec))
        if end:
            events.append(ev(end, 2 + 2 * i, spec))
    p = project_session(SID, events, event_count=len(events), last_event_at=events[-1].occurred_at)
    by_spec: dict[str, list[str]] = {}
    for run in sorted(p.spec_runs, key=lambda r: (r.spec_id, r.attempt)):
        by_spec.setdefault(run.spec_id, []).append(run.status)
    for spec, statuses in by_spec.items():
        assert [r.outcome for r in sorted(p.spec_runs, key=lambda r: r.attempt) if r.spec_id == spec] == \
            attempt_outcomes(statuses)
    counts = Counts.tally(spec_outcome(s) for s in by_spec.values())
    assert (p.specs_completed, p.specs_failed, p.specs_timed_out, p.specs_fixed_on_retry) == (
        counts.completed, counts.still_failing, counts.timed_out, counts.fixed_on_retry)


@dataclass(frozen=True)
class Run:
    """A spec run as the query layer returns it (the fields spec_results reads)."""

    spec_id: str
    attempt: int
    status: str
    outcome: str
    duration_seconds: float | None = 300.0
    cost_usd: Decimal | None = Decimal("0.10")
    tokens_used: int | None = 1000
    error_message: str | None = None
    session_id: uuid.UUID = SID
    end_time: datetime | None = T0


def runs(*specs: tuple[str, list[tuple[str, float, str, str | None]]]) -> list[Run]:
    """(spec, [(status, minutes, cost, error), ...]) -> its runs, with outcomes as the projection sets them."""
    out = []
    for spec, attempts in specs:
        for n, ((status, minutes, cost, error), outcome) in enumerate(
                zip(attempts, attempt_outcomes([a[0] for a in attempts])), start=1):
            out.append(Run(spec, n, status, outcome, minutes * 60, Decimal(cost), 1000, error,
                           end_time=None if status == "running" else T0))
    return out


def test_spec_results_add_up_attempts() -> None:
    [result] = spec_results(runs(("S", [("failed", 3, "0.10", "boom"), ("timeout", 4, "0.20", "slow"),
                                        ("completed", 5, "0.30", None)])), {SID: "nightly"})
    assert (result.outcome, result.attempts, result.duration_seconds, result.cost_usd, result.tokens_used) == (
        "fixed_on_retry", 3, 720.0, Decimal("0.60"), 3000)
    assert (result.error, result.errors, result.session_name, result.word) == (
        "slow", ("boom", "slow"), "nightly", "fixed on retry")
    [running] = spec_results(runs(("S", [("failed", 3, "0.10", "boom"), ("running", 1, "0", None)])))
    assert (running.outcome, running.ended_at, running.error) == ("running", None, "boom")


def test_compare_finds_every_kind_of_change() -> None:
    before = spec_results(runs(
        ("same", [("completed", 5, "0.10", None)]),
        ("newly", [("completed", 5, "0.10", None)]),
        ("fixed", [("failed", 5, "0.10", "old error")]),
        ("still", [("failed", 5, "0.10", "KeyError: 'sku'")]),
        ("flaky", [("completed", 5, "0.10", None)]),
        ("slower", [("completed", 5, "0.10", None)]),
        ("costlier", [("completed", 5, "0.10", None)]),
        ("gone", [("completed", 5, "0.10", None)]),
        ("barely", [("completed", 5, "0.10", None)]),
    ))
    after = spec_results(runs(
        ("same", [("completed", 5, "0.10", None)]),
        ("newly", [("failed", 5, "0.10", "AssertionError: totals differ")]),
        ("fixed", [("completed", 5, "0.10", None)]),
        ("still", [("failed", 5, "0.10", "KeyError: 'sku'")]),
        ("flaky", [("failed", 2, "0.05", "flaky fixture"), ("completed", 3, "0.05", None)]),
        ("slower", [("completed", 20, "0.10", None)]),
        ("costlier", [("completed", 5, "0.60", None)]),
        ("barely", [("completed", 5.4, "0.14", None)]),  # +8% time; +40% cost, but $0.04 is under the floor
        ("added", [("timeout", 10, "0.10", "no progress for 10 min")]),
    ))
    c = changes.compare(before, after)
    names = {kind: [x.spec_id for x in getattr(c, kind)] for kind in
             ("newly_failing", "fixed", "still_failing", "flaky", "slower", "costlier")}
    assert names == {"newly_failing": ["newly", "added"], "fixed": ["fixed"], "still_failing": ["still"],
                     "flaky": ["flaky"], "slower": ["slower"], "costlier": ["costlier"]}
    assert [(e.error, e.spec_ids) for e in c.new_errors] == [
        ("AssertionError: totals differ", ("newly",)), ("flaky fixture", ("flaky",)),
        ("no progress for 10 min", ("added",))]
    assert c.not_run == ["gone"]
    assert next(x for x in c.newly_failing if x.spec_id == "added").before is None
    assert (c.before, c.now) == (Counts(passed=7, failed=2), Counts(passed=5, fixed_on_retry=1, failed=2, timed_out=1))
    assert c.headline() == "2 newly failing, 1 fixed, 1 still failing, 1 flaky, 1 slower, 1 costlier, 3 new errors"
    same = changes.compare(before, before)
    assert same.headline() == "2 still failing" and not same.anything
    assert changes.compare(before[:1], before[:1]).headline() == "no change"
    assert [x.spec_id for x in changes.compare(before, after, threshold_percent=10).slower] == ["slower"]
    assert [x.spec_id for x in changes.compare(before, after, threshold_percent=30).costlier] == ["costlier"]

