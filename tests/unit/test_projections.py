"""The projection of a session is a pure function of its events, whatever their order."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ralph_monitor.projections import SESSION_TYPES, SessionEvent, project_session

SID = uuid.UUID("a0000000-0000-4000-8000-00000000000a")
T0 = datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc)


def ev(kind: str, minute: float, spec: str | None = None, **data: object) -> SessionEvent:
    return SessionEvent(uuid.uuid4(), kind, spec, T0 + timedelta(minutes=minute), "host", dict(data))


def project(events: list[SessionEvent]):
    return project_session(SID, events, event_count=len(events), last_event_at=max(e.occurred_at for e in events))


def test_retry_is_a_second_run_and_the_final_status_counts() -> None:
    p = project([
        ev("session_started", 0, total_specs=2, name="n"),
        ev("spec_started", 1, "S1"), ev("spec_failed", 2, "S1", error="boom", tokens_used=10, cost_usd=0.5),
        ev("spec_started", 3, "S1"), ev("spec_completed", 4, "S1", tokens_used=5, cost_usd=0.25),
        ev("spec_started", 5, "S2"),
    ])
    assert [(r.spec_id, r.attempt, r.status) for r in p.spec_runs] == [
        ("S1", 1, "failed"), ("S1", 2, "completed"), ("S2", 1, "running")]
    assert (p.specs_completed, p.specs_failed) == (1, 0)
    assert (p.tokens_used, p.cost_usd) == (15, Decimal("0.75"))
    assert p.spec_runs[0].error_message == "boom"
    assert p.spec_runs[0].duration_seconds == 60.0
    assert p.execution_state == "running"


def test_timeout_then_failure_report_is_one_run() -> None:
    p = project([ev("spec_started", 0, "S"), ev("timeout_triggered", 30, "S"), ev("spec_failed", 30.1, "S", error="killed")])
    assert [(r.status, r.error_message) for r in p.spec_runs] == [("timeout", "killed")]
    assert (p.specs_failed, p.specs_timed_out) == (1, 1)


def test_session_end_closes_open_runs_and_requests() -> None:
    p = project([ev("spec_started", 0, "S"), ev("intervention_request", 1, "S", message="help?"),
                 ev("session_ended", 2, status="interrupted")])
    assert p.execution_state == "interrupted"
    assert p.spec_runs[0].status == "interrupted"
    assert p.interventions_pending == 0


def test_a_run_cut_short_by_the_usage_limit_ends_at_the_limit_not_failed() -> None:
    limit = dict(resets_at=int((T0 + timedelta(hours=3)).timestamp()), message="Claude AI usage limit reached|1",
                 tokens_used=7, cost_usd=0.01, duration_s=60)
    p = project([ev("session_started", 0), ev("spec_started", 1, "S"), ev("usage_limit", 2, "S", **limit),
                 ev("session_heartbeat", 90, "S"), ev("spec_started", 182, "S"), ev("spec_completed", 190, "S")])
    assert [(r.attempt, r.status, r.outcome, r.duration_seconds, r.error_message) for r in p.spec_runs] == [
        (1, "interrupted", "later_passed", 60.0, limit["message"]), (2, "completed", "passed", 480.0, None)]
    assert (p.specs_completed, p.specs_failed, p.tokens_used, p.execution_state) == (1, 0, 7, "running")
    waiting = project([ev("session_started", 0), ev("spec_started", 1, "S"), ev("usage_limit", 2, "S", **limit),
                       ev("session_heartbeat", 90, "S")])
    assert (waiting.execution_state, waiting.spec_runs[0].status) == ("paused_for_usage_limit", "running")
    stopped = project([ev("spec_started", 1, "S"), ev("usage_limit", 2, "S", **limit),
                       ev("session_ended", 3, status="interrupted")])
    assert [(r.status, r.end_time) for r in stopped.spec_runs] == [("interrupted", T0 + timedelta(minutes=2))]
    went_on = project([ev("spec_started", 1, "S"), ev("usage_limit", 2, "S", **limit), ev("spec_completed", 9, "S")])
    assert [(r.status, r.duration_seconds) for r in went_on.spec_runs] == [("completed", 480.0)]


def test_feedback_answers_the_named_request() -> None:
    first, second = ev("intervention_request", 1, message="a?"), ev("intervention_request", 2, message="b?")
    p = project([first, second, ev("user_feedback", 3, request_id=str(second.event_id), message="b!")])
    assert [(i.message, i.answer) for i in p.interventions] == [("a?", None), ("b?", "b!")]
    assert p.interventions_pending == 1


def test_stalled_until_a_new_event() -> None:
    base = [ev("session_started", 0), ev("session_heartbeat", 1)]
    stalled = ev("session_stalled", 20)
    assert project_session(SID, [*base, stalled], event_count=3, last_event_at=base[1].occurred_at).execution_state == "stalled"
    later = ev("session_heartbeat", 25)
    assert project_session(SID, [*base, stalled, later], event_count=4,
                           last_event_at=later.occurred_at).execution_state == "running"


def test_garbage_data_values_do_not_break_the_projection() -> None:
    p = project([ev("session_started", 0, total_specs="many", metadata=[1]),
                 ev("spec_completed", 1, "S", tokens_used="NaN", cost_usd={"x": 1}, duration_s=True)])
    assert p.total_specs is None and p.metadata == {}
    assert (p.tokens_used, p.cost_usd) == (0, Decimal(0))


kinds = st.sampled_from([t for t in SESSION_TYPES if t != "session_stalled"])
specs = st.sampled_from([None, "S1", "S2", "S3"])
events_strategy = st.lists(
    st.builds(lambda kind, minute, spec, tokens: ev(kind, minute, spec, tokens_used=tokens, cost_usd=tokens / 100),
              kinds, st.integers(0, 30), specs, st.integers(0, 1000)),
    min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(events_strategy, st.randoms())
def test_any_arrival_order_gives_the_same_projection(events: list[SessionEvent], rnd) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert project(shuffled) == project(events)
