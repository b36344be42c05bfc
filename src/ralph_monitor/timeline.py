"""A session's timeline as a person reads it: the tool calls of a spec run (or of a Claude Code
turn) grouped into one line, "Bash ×30, Edit ×12, 2 failed", the other events as they are.

A session with 120 `cc.PreToolUse` lines is a wall; the events that say what happened
(spec_started, spec_failed, an intervention request, Stop) stand out once the tool calls
between them are folded. Consecutive tool events of the same spec and turn (`data.prompt_id`,
when Claude Code gave one) make one group; `ralph-query session --verbose` shows every event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

TOOL_EVENTS = frozenset({"cc.PreToolUse", "cc.PostToolUse", "cc.PostToolUseFailure", "cc.PostToolBatch",
                         "cc.PermissionRequest", "cc.PermissionDenied"})


class Event(Protocol):
    event_type: str
    spec_id: str | None
    occurred_at: datetime
    data: Any


@dataclass
class ToolGroup:
    """The tool events of one spec run or turn, in a row."""

    spec_id: str | None
    turn: str | None
    first_at: datetime
    last_at: datetime
    events: list[Any] = field(default_factory=list)

    def summary(self) -> str:
        """`Bash ×30, Edit ×12; 2 failed, 1 refused (85 events)`"""
        calls: dict[str, str] = {}
        failed: set[str] = set()
        refused = 0
        for n, event in enumerate(self.events):
            data = event.data if isinstance(event.data, dict) else {}
            if event.event_type == "cc.PostToolBatch":
                continue
            call = str(data.get("tool_use_id") or f"#{n}")
            if event.event_type in ("cc.PreToolUse", "cc.PostToolUse", "cc.PostToolUseFailure"):
                calls.setdefault(call, str(data.get("tool_name") or "?"))
            if event.event_type == "cc.PostToolUseFailure":
                failed.add(call)
            elif event.event_type == "cc.PermissionDenied":
                refused += 1
        counts = Counter(calls.values())
        text = ", ".join(f"{name} ×{count}" for name, count in counts.most_common()) or "no tool calls"
        notes = [f"{len(failed)} failed"] if failed else []
        if refused:
            notes.append(f"{refused} refused")
        count = len(self.events)
        return text + (f"; {', '.join(notes)}" if notes else "") + f" ({count} event{'s' if count != 1 else ''})"


def group(events: Sequence[Any]) -> list[Any]:
    """`events` (oldest first) with each run of tool events of one spec and turn folded into a
    ToolGroup; other events are returned as they are."""
    rows: list[Any] = []
    current: ToolGroup | None = None
    for event in events:
        if event.event_type not in TOOL_EVENTS:
            current = None
            rows.append(event)
            continue
        data = event.data if isinstance(event.data, dict) else {}
        turn = data.get("prompt_id") if isinstance(data.get("prompt_id"), str) else None
        if current is None or current.spec_id != event.spec_id or (turn and current.turn and turn != current.turn):
            current = ToolGroup(event.spec_id, turn, event.occurred_at, event.occurred_at)
            rows.append(current)
        current.turn = current.turn or turn
        current.last_at = event.occurred_at
        current.events.append(event)
    return rows
