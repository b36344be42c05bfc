"""The session timeline's grouping of tool calls (ralph_monitor.timeline)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from ralph_monitor.timeline import ToolGroup, group

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=timezone.utc)


@dataclass
class Ev:
    event_type: str
    spec_id: str | None
    occurred_at: datetime
    data: Any


def test_a_wall_of_tool_events_becomes_one_line_per_spec_and_turn() -> None:
    events = [Ev("spec_started", "CR-1", T0, {})]
    clock = iter(T0 + timedelta(seconds=n) for n in range(1, 1000))
    for n in range(30):
        tool = "Bash" if n < 20 else "Edit"
        data = {"tool_name": tool, "tool_use_id": f"t{n}", "prompt_id": "p1"}
        events.append(Ev("cc.PreToolUse", "CR-1", next(clock), data))
        events.append(Ev("cc.PostToolUseFailure" if n in (3, 7) else "cc.PostToolUse", "CR-1", next(clock), data))
    events.append(Ev("cc.PermissionDenied", "CR-1", next(clock), {"tool_name": "Write", "tool_use_id": "t99",
                                                                   "prompt_id": "p1"}))
    events.append(Ev("cc.Stop", "CR-1", next(clock), {}))
    events.append(Ev("cc.PreToolUse", "CR-1", next(clock), {"tool_name": "Read", "tool_use_id": "t100",
                                                             "prompt_id": "p2"}))
    events.append(Ev("cc.PreToolUse", "CR-1", next(clock), {"tool_name": "Read", "tool_use_id": "t101",
                                                             "prompt_id": "p3"}))
    events.append(Ev("spec_completed", "CR-1", next(clock), {}))
    rows = group(events)
    kinds = [r.event_type if not isinstance(r, ToolGroup) else "group" for r in rows]
    assert kinds == ["spec_started", "group", "cc.Stop", "group", "group", "spec_completed"]
    assert rows[1].summary() == "Bash ×20, Edit ×10; 2 failed, 1 refused (61 events)"
    assert rows[3].summary() == "Read ×1 (1 event)" and rows[3].turn == "p2" and rows[4].turn == "p3"
    assert rows[1].first_at < rows[1].last_at
