"""A scripted overnight run: three sessions with passes, failures, a retry, a timeout,
interventions (one answered, one not), a stall and a session still running.

Timestamps are relative to `now`, so the run always lies in "today" of the zone
`scenario_zone(now)` (where it is around noon) and in this week.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

A = "a0000000-0000-4000-8000-00000000000a"
B = "b0000000-0000-4000-8000-00000000000b"
C = "c0000000-0000-4000-8000-00000000000c"


def scenario_zone(now: datetime) -> str:
    """An Etc/GMT zone in which `now` is between 11:00 and 13:00 local time."""
    offset = 12 - now.hour
    offset = (offset + 12) % 24 - 12  # -12..11
    return "Etc/GMT" + (f"+{-offset}" if offset <= 0 else f"-{offset}") if offset else "Etc/GMT"


def overnight_events(now: datetime) -> list[dict[str, Any]]:
    def at(minutes_ago: float) -> str:
        return (now - timedelta(minutes=minutes_ago)).isoformat()

    def ev(kind: str, minutes_ago: float, session: str, spec: str | None = None, **data: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"type": kind, "session_id": session, "ts": at(minutes_ago),
                                 "event_id": str(uuid.uuid4())}
        if spec:
            event["spec_id"] = spec
        if data:
            event["data"] = data
        return event

    return [
        ev("session_started", 90, A, name="nightly-batch", total_specs=4, metadata={"repo": "shop"}),
        ev("spec_started", 89, A, "CR-01"),
        ev("spec_completed", 80, A, "CR-01", tokens_used=1000, cost_usd=0.10),
        ev("spec_started", 79, A, "CR-02"),
        ev("spec_failed", 70, A, "CR-02", tokens_used=500, cost_usd=0.05, error="TypeError: cart is undefined"),
        ev("spec_started", 69, A, "CR-02"),
        ev("spec_completed", 60, A, "CR-02", tokens_used=700, cost_usd=0.07),
        ev("spec_started", 59, A, "CR-03"),
        ev("timeout_triggered", 40, A, "CR-03", tokens_used=300, cost_usd=0.03, error="no progress for 19 min"),
        ev("spec_failed", 39.9, A, "CR-03", error="killed after timeout"),
        ev("intervention_request", 35, A, "CR-04", message="Need the staging API key"),
        ev("user_feedback", 30, A, message="use the sandbox key"),
        ev("spec_started", 29, A, "CR-04"),
        ev("spec_completed", 20, A, "CR-04", tokens_used=200, cost_usd=0.02),
        ev("session_ended", 19, A, status="completed"),
        ev("session_started", 50, B, name="docs-run", total_specs=2),
        ev("spec_started", 49, B, "CR-10"),
        ev("spec_completed", 45, B, "CR-10", tokens_used=400, cost_usd=0.04),
        ev("spec_started", 44, B, "CR-11"),
        ev("session_heartbeat", 42, B),
        ev("intervention_request", 41, B, "CR-11", message="Which branch should I rebase on?"),
        ev("session_heartbeat", 40, B),
        ev("session_started", 5, C, name="live-run", total_specs=1),
        ev("spec_started", 4, C, "CR-20"),
        ev("session_heartbeat", 0, C),
    ]


def shuffled(events: list[dict[str, Any]], seed: int = 7) -> list[dict[str, Any]]:
    """The same events in a different arrival order (spool replay, several hosts)."""
    copy = list(events)
    random.Random(seed).shuffle(copy)
    return copy


EXPECTED_A = {
    "name": "nightly-batch", "execution_state": "completed", "total_specs": 4,
    "specs_completed": 3, "specs_failed": 1, "specs_timed_out": 1,
    "tokens_used": 2700, "cost_usd": Decimal("0.27"), "interventions_pending": 0,
}
EXPECTED_RUNS_A = [  # (spec, attempt, status, tokens, error)
    ("CR-01", 1, "completed", 1000, None),
    ("CR-02", 1, "failed", 500, "TypeError: cart is undefined"),
    ("CR-02", 2, "completed", 700, None),
    ("CR-03", 1, "timeout", 300, "no progress for 19 min"),
    ("CR-04", 1, "completed", 200, None),
]
