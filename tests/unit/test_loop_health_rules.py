"""The loop-health rules (loop_health.py) and the waiting state, through the projection: what a
session's events make of it, without a database."""

from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

from dataclasses import replace

from ralph_monitor import loop_health
from ralph_monitor.config import Settings
from ralph_monitor.loop_health import Activity, Thresholds, fingerprint
from ralph_monitor.projections import SessionEvent, SessionProjection, project_session

T0 = datetime(2026, 11, 28, 22, 0, tzinfo=timezone.utc)
SID = uuid.UUID("6f1c2b4e-1111-4000-8000-000000000001")
DEFAULTS = loop_health.thresholds(Settings())


def ev(kind: str, minutes: float, spec: str | None = None, **data: Any) -> SessionEvent:
    return SessionEvent(uuid.uuid4(), kind, spec, T0 + timedelta(minutes=minutes), "h", data)


def project(events: list[SessionEvent], activity: list[Activity] | None = None,
            limits: Thresholds | None = None) -> SessionProjection:
    everything = [e.occurred_at for e in events] + [a.at for a in activity or []]
    return project_session(SID, events, event_count=len(events), last_event_at=max(everything),
                           activity=activity or [], limits=limits or DEFAULTS)


def rules(p: SessionProjection) -> list[str]:
    return [data["rule"] for kind, _, _, data in p.loop_due if kind == "loop_stuck"]


def test_errors_that_differ_only_in_numbers_paths_ids_and_times_are_the_same_error() -> None:
    a = 'File "/tmp/tmpa8f3k2/test_api.py", line 41: expected 200 (req 0b6c1e2a-1111-4000-8000-000000000001 at 2026-11-28T03:12:00Z, 0x7f3a)'
    b = 'File "/tmp/tmpq01zz9/test_api.py", line 57: expected 200 (req 9d2f0e1b-2222-4000-8000-000000000002 at 2026-11-29T01:00:59Z, 0x1b2c)'
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(a.replace("expected", "unexpected"))


def test_three_failures_alike_fire_and_a_retry_that_passes_does_not() -> None:
    events = [ev("session_started", 0)]
    for n in range(2):
        events += [ev("spec_started", 10 * n, "CR-1"), ev("spec_failed", 10 * n + 5, "CR-1", error=f"line {n}: boom")]
    assert rules(project(events + [ev("spec_started", 30, "CR-1"), ev("spec_completed", 35, "CR-1")])) == []
    stuck = project(events + [ev("spec_started", 30, "CR-1"), ev("spec_failed", 35, "CR-1", error="line 99: boom")])
    assert rules(stuck) == ["repeated_error"]
    _, event_id, at, data = stuck.loop_due[0]
    assert data["count"] == 3 and at == T0 + timedelta(minutes=35)
    # Recorded: nothing more is due while it holds; once a run passes, its recovery is.
    recorded = [*events, ev("spec_started", 30, "CR-1"), ev("spec_failed", 35, "CR-1", error="line 99: boom")]
    recorded.append(SessionEvent(event_id, "loop_stuck", None, at, "h", data))
    assert project(recorded).loop_due == []
    assert project(recorded).loop_findings[0]["rule"] == "repeated_error"
    recovered = project([*recorded, ev("spec_started", 40, "CR-1"), ev("spec_completed", 45, "CR-1")])
    assert [(kind, d["rule"]) for kind, _, _, d in recovered.loop_due] == [("loop_recovered", "repeated_error")]


def test_tool_calls_no_change_and_no_progress() -> None:
    calls = [Activity(uuid.uuid4(), "cc.PreToolUse", T0 + timedelta(minutes=m), "Bash", f'{{"command": "make -j{m}"}}')
             for m in range(5)]
    assert rules(project([ev("session_started", 0)], calls)) == ["repeated_tool_call"]
    assert rules(project([ev("session_started", 0)], calls[:4])) == []
    same = {"head_before": "abc1234", "head_after": "abc1234", "dirty": False}
    runs = [e for n in range(3) for e in (ev("spec_started", n, f"i-{n}"), ev("spec_completed", n + 0.5, f"i-{n}", git=same))]
    assert rules(project([ev("session_started", 0), *runs])) == ["no_change"]
    dirty = [e for n in range(3) for e in (ev("spec_started", n, f"i-{n}"),
                                           ev("spec_completed", n + 0.5, f"i-{n}", git={**same, "dirty": True}))]
    assert rules(project([ev("session_started", 0), *dirty])) == []
    no_git = [e for n in range(3) for e in (ev("spec_started", n, f"i-{n}"), ev("spec_completed", n + 0.5, f"i-{n}"))]
    assert rules(project([ev("session_started", 0), *no_git])) == []
    beats = [ev("session_heartbeat", m) for m in range(0, 41, 10)]
    assert rules(project([ev("session_started", 0), *beats])) == ["no_progress"]
    done = Activity(uuid.uuid4(), "cc.PostToolUse", T0 + timedelta(minutes=20), "Bash")
    assert rules(project([ev("session_started", 0), *beats], [done])) == []
    asking = ev("intervention_request", 5, None, message="which schema?")
    assert rules(project([ev("session_started", 0), asking, *beats])) == []   # waiting, not stuck


def test_burn_rate_and_projected_budget() -> None:
    events = [ev("session_started", 0)]
    events += [e for n in range(6) for e in (ev("spec_started", 30 * n, f"B-{n}"),
                                             ev("spec_completed", 30 * n + 1, f"B-{n}", cost_usd=0.1))]
    spike = [e for n in range(10) for e in (ev("spec_started", 200 + 2 * n, f"S-{n}"),
                                            ev("spec_completed", 201 + 2 * n, f"S-{n}", cost_usd=0.1))]
    assert rules(project(events)) == []
    assert rules(project(events + spike)) == ["burn_rate"]
    costly = [ev("session_started", 0)] + [e for n in range(4) for e in (
        ev("spec_started", 15 * n, f"C-{n}"), ev("spec_completed", 15 * n + 10, f"C-{n}", cost_usd=1.0))]
    limits = replace(DEFAULTS, burn_factor=0, session_usd=Decimal(10), night_end=time(9, 0), zone=timezone.utc)
    p = project(costly, limits=limits)
    assert rules(p) == ["projected_budget"]
    assert "over [budget] session_usd $10.00 ($4.00 so far)" in p.loop_due[0][3]["summary"]
    assert rules(project(costly, limits=replace(DEFAULTS, burn_factor=0))) == []


def test_waiting_for_human_until_the_agent_goes_on() -> None:
    start = [ev("session_started", 0), ev("spec_started", 1, "CR-1")]
    prompt = Activity(uuid.uuid4(), "cc.Notification", T0 + timedelta(minutes=2), notification_type="permission_prompt")
    idle = Activity(uuid.uuid4(), "cc.Notification", T0 + timedelta(minutes=3), notification_type="idle_prompt")
    waiting = project([*start, ev("session_heartbeat", 9)], [prompt, idle], limits=None)
    assert (waiting.execution_state, waiting.waiting_since) == ("waiting_for_human", prompt.at)
    went_on = Activity(uuid.uuid4(), "cc.PostToolUse", T0 + timedelta(minutes=4), "Bash")
    assert project(start, [prompt, went_on]).execution_state == "running"
    ask = Activity(uuid.uuid4(), "cc.PreToolUse", T0 + timedelta(minutes=2), "AskUserQuestion")
    assert project(start, [ask]).execution_state == "waiting_for_human"
    request = ev("intervention_request", 5, "CR-1", message="which schema?")
    assert project([*start, request]).waiting_since == request.occurred_at
    assert project([*start, request, ev("user_feedback", 6, answer="v2")]).execution_state == "running"
    assert project([*start, request, ev("session_ended", 7)]).execution_state == "completed"


def test_the_rules_read_their_thresholds_from_the_settings() -> None:
    limits = loop_health.thresholds(Settings(loop_health_repeated_error_runs=5, budget_session_usd=2.5,
                                             loop_health_projected_budget=False))
    assert limits.repeated_error == 5 and limits.session_usd == 0
