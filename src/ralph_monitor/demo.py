"""`ralph-monitor demo`: feed the daemon a realistic overnight run so a newcomer sees
populated output at once.

Four sessions, timed by the agent's clock (`ts`) inside the configured night window:

- a nightly run over 8 specs: passes, a test failure that passes on retry, a failure with
  the agent's error text, a spec stopped by a timeout, and an API error (max turns);
- a docs run whose agent asks a human a question, answered before it goes on;
- a refactor whose agent went silent mid-spec long enough ago to be marked stalled at once;
- a run going on right now, waiting for an answer to an intervention request.

Each spec run carries Claude Code tool events (`cc.PreToolUse` / `cc.PostToolUse`, `cc.Stop`)
as the hook would forward them, with tokens and cost on the spec's closing event.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from typing import Any

from ralph_monitor.agent.client import Connection, encode_event
from ralph_monitor.errors import ClientError

BATCH = 100
TOOLS = (
    ("Read", {"file_path": "src/{module}/models.py"}, {"type": "text", "file": {"numLines": 212}}),
    ("Grep", {"pattern": "def checkout", "path": "src"}, {"numFiles": 3, "filenames": ["src/shop/cart.py"]}),
    ("Edit", {"file_path": "src/{module}/service.py", "old_string": "return total", "new_string": "return round(total, 2)"},
     {"filePath": "src/{module}/service.py", "success": True}),
    ("Bash", {"command": "pytest -q tests/{module}", "description": "Run the module's tests"},
     {"stdout": "........ 8 passed in 2.41s", "stderr": "", "interrupted": False}),
    ("Write", {"file_path": "docs/{module}.md", "content": "# {module}\n\nUsage notes..."},
     {"filePath": "docs/{module}.md", "success": True}),
)


@dataclass
class _Session:
    """Builds one session's events on the agent's clock."""

    name: str
    host_note: str
    clock: datetime
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    events: list[dict[str, Any]] = field(default_factory=list)
    head: str = field(default_factory=lambda: uuid.uuid4().hex + uuid.uuid4().hex[:8])
    """The repository's HEAD, as the loop wrapper would record it (agent.gitstate)."""

    def add(self, kind: str, spec: str | None = None, after_s: float = 0.0, **data: Any) -> None:
        self.clock += timedelta(seconds=after_s)
        event: dict[str, Any] = {"type": kind, "session_id": self.session_id, "event_id": str(uuid.uuid4()),
                                 "ts": self.clock.isoformat()}
        if spec:
            event["spec_id"] = spec
        if data:
            event["data"] = data
        self.events.append(event)

    def shift_to_end_at(self, latest: datetime, *, exactly: bool = False) -> None:
        """Move the whole session earlier if its last event would come after `latest`
        (`exactly`: also later, so that it ends at `latest`)."""
        late = self.clock - latest
        if late > timedelta(0) or exactly:
            for event in self.events:
                event["ts"] = (datetime.fromisoformat(event["ts"]) - late).isoformat()
            self.clock -= late

    def tools(self, rng: random.Random, spec: str, module: str, count: int, *, fail_last: str | None = None) -> None:
        for i in range(count):
            name, tool_input, response = TOOLS[rng.randrange(len(TOOLS))]
            if i == count - 1 and fail_last:
                name, tool_input = "Bash", {"command": f"pytest -q tests/{module}", "description": "Run the tests"}
            tool_input = _fill(tool_input, module)
            use_id = f"toolu_{uuid.uuid4().hex[:24]}"
            common = {"cc_session_id": self.session_id, "cwd": f"/srv/agents/{self.host_note}",
                      "permission_mode": "bypassPermissions", "tool_name": name, "tool_input": tool_input,
                      "tool_use_id": use_id}
            self.add("cc.PreToolUse", spec, rng.uniform(20, 90), **common)
            if i == count - 1 and fail_last:
                self.add("cc.PostToolUseFailure", spec, rng.uniform(3, 30), **common, error=fail_last)
            else:
                self.add("cc.PostToolUse", spec, rng.uniform(1, 40), **common, tool_response=_fill(response, module))

    def spec_run(self, rng: random.Random, spec: str, module: str, outcome: str = "completed", *,
                 error: str | None = None, tools: int = 4) -> None:
        self.add("spec_started", spec, rng.uniform(5, 40), command=f"claude -p --output-format json 'Implement {spec}'")
        started = self.clock
        self.tools(rng, spec, module, tools, fail_last=error if outcome == "failed" else None)
        tokens = rng.randrange(20_000, 180_000)
        cost = round(tokens * rng.uniform(4.0, 9.0) / 1_000_000, 4)
        usage = {"input_tokens": rng.randrange(20, 400), "output_tokens": tokens // 12,
                 "cache_read_input_tokens": tokens - tokens // 12 - tokens // 10,
                 "cache_creation_input_tokens": tokens // 10}
        self.add("cc.Stop", spec, rng.uniform(5, 30), cc_session_id=self.session_id, stop_hook_active=False,
                 usage={"tokens_used": sum(usage.values()), "requests": tools + 1,
                        "by_model": {"claude-sonnet-4-6": {**usage, "requests": tools + 1}}})
        end = {"exit_code": 0 if outcome == "completed" else 1, "tokens_used": sum(usage.values()),
               "cost_usd": cost, "num_turns": tools + 1, "usage": usage,
               "duration_s": round((self.clock - started).total_seconds() + 2, 1),
               "git": self.git_changes(rng, spec, module, outcome)}
        if outcome == "completed":
            end.update(is_error=False, subtype="success", output_summary=f"{spec}: implemented and tests pass.")
            self.add("spec_completed", spec, 2, **end)
        elif outcome == "timeout":
            self.add("session_heartbeat", spec, 600, spec_id=spec, elapsed_s=round((self.clock - started).total_seconds()))
            self.clock = started + timedelta(seconds=3600)
            end.update(exit_code=-15, signal="SIGTERM", timeout_s=3600, duration_s=3600.0,
                       error=error or "timed out after 3600 s (stopped, exit code -15)")
            self.add("timeout_triggered", spec, 0, **end)
        else:
            end.update(is_error=True, subtype="error_during_execution", error=error)
            self.add("spec_failed", spec, 2, **end)


    def git_changes(self, rng: random.Random, spec: str, module: str, outcome: str) -> dict[str, Any]:
        """A spec run's `data.git`: a passing run commits, a failing one leaves its work uncommitted."""
        before = self.head
        count = rng.randrange(1, 4) if outcome == "completed" else 0
        commits = []
        for n in range(count):
            self.head = uuid.uuid4().hex + uuid.uuid4().hex[:8]
            commits.insert(0, {"hash": self.head, "subject": f"{spec}: {module} step {n + 1}"})
        files = rng.randrange(1, 8) if count else 0
        return {"repo": f"/srv/agents/{self.host_note}", "head_before": before, "head_after": self.head,
                "commits": commits, "commit_count": count, "files_changed": files,
                "insertions": files * rng.randrange(5, 40), "deletions": files * rng.randrange(0, 15),
                "dirty": outcome != "completed"}


def _fill(value: Any, module: str) -> Any:
    if isinstance(value, str):
        return value.replace("{module}", module)
    if isinstance(value, dict):
        return {k: _fill(v, module) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, module) for v in value]
    return value


def demo_events(now: datetime, *, night_since: datetime, night_until: datetime, stall_after_s: float,
                seed: int = 7) -> list[dict[str, Any]]:
    """All the demo's events. Finished sessions lie inside [night_since, night_until]; the
    stalled one fell silent 2 x stall_after_s (at least 30 min) before `now`."""
    rng = random.Random(seed)
    length = night_until - night_since
    meta = {"demo": True, "repo": None}

    nightly = _Session("nightly: shop-backend", "shop", night_since + length * 0.08)
    nightly.add("session_started", name=nightly.name, total_specs=8,
                metadata={**meta, "repo": "git@example.com:acme/shop.git", "branch": "ralph/nightly"})
    plan = [("CR-101", "cart", "completed", None), ("CR-102", "cart", "completed", None),
            ("CR-103", "checkout", "failed",
             "FAILED tests/checkout/test_totals.py::test_vat_rounding - AssertionError: 19.99 != 20.0"),
            ("CR-103", "checkout", "completed", None), ("CR-104", "inventory", "completed", None),
            ("CR-105", "payments", "timeout", None), ("CR-106", "search", "completed", None),
            ("CR-107", "search", "failed", "error_max_turns: reached the maximum of 40 turns without "
             "making tests/search/test_ranking.py pass"),
            ("CR-108", "emails", "completed", None)]
    for spec, module, outcome, error in plan:
        nightly.spec_run(rng, spec, module, outcome, error=error, tools=rng.randrange(3, 7))
        if spec in ("CR-102", "CR-106"):
            nightly.add("session_heartbeat", after_s=30)
    nightly.add("session_ended", after_s=20, status="completed", specs_completed=6, specs_failed=2)
    nightly.shift_to_end_at(night_until - timedelta(minutes=5))

    docs = _Session("nightly: docs-site", "docs", night_since + length * 0.30)
    docs.add("session_started", name=docs.name, total_specs=4, metadata={**meta, "repo": "acme/docs"})
    docs.spec_run(rng, "DOC-1", "guides", tools=3)
    docs.spec_run(rng, "DOC-2", "api", tools=3)
    docs.add("intervention_request", "DOC-3", 60, message="The API reference and the guide disagree on the "
             "rate limit (100/min vs 60/min). Which one is right?", source="claude-code")
    request_id = docs.events[-1]["event_id"]
    docs.add("user_feedback", "DOC-3", 1500, request_id=request_id, message="60/min; fix the reference.")
    docs.spec_run(rng, "DOC-3", "reference", tools=4)
    docs.spec_run(rng, "DOC-4", "changelog", tools=2)
    docs.add("session_ended", after_s=15, status="completed", specs_completed=4, specs_failed=0)
    docs.shift_to_end_at(night_until - timedelta(minutes=2))

    silent_at = now - timedelta(seconds=max(2 * stall_after_s, 1800))
    stalled = _Session("refactor: payments", "payments", silent_at - timedelta(minutes=30))
    stalled.add("session_started", name=stalled.name, total_specs=5, metadata={**meta, "repo": "acme/payments"})
    stalled.spec_run(rng, "PAY-1", "payments", tools=3)
    stalled.spec_run(rng, "PAY-2", "payments", tools=3)
    stalled.add("spec_started", "PAY-3", 30, command="claude -p --output-format json 'Implement PAY-3'")
    stalled.tools(rng, "PAY-3", "payments", 2)
    stalled.add("session_heartbeat", "PAY-3", 10, spec_id="PAY-3")
    stalled.shift_to_end_at(silent_at, exactly=True)

    live = _Session("live: api-migration", "api", now - timedelta(hours=1))
    live.add("session_started", name=live.name, total_specs=6, metadata={**meta, "repo": "acme/api"})
    live.spec_run(rng, "API-1", "migrations", tools=3)
    live.spec_run(rng, "API-2", "migrations", tools=3)
    live.add("spec_started", "API-3", 20, command="claude -p --output-format json 'Implement API-3'")
    live.tools(rng, "API-3", "migrations", 2)
    resets = live.clock + timedelta(hours=2, minutes=10)
    live.add("rate_limits", "API-3", 2, cc_session_id=live.session_id, model="claude-sonnet-4-6",
             five_hour={"used_percentage": 64, "resets_at": int(resets.timestamp())},
             seven_day={"used_percentage": 31, "resets_at": int((resets + timedelta(days=4)).timestamp())})
    live.add("intervention_request", "API-3", 5, source="claude-code", notification_type="permission_prompt",
             message="Migration 0042 drops the column orders.legacy_id on staging. Proceed?")
    live.shift_to_end_at(now - timedelta(minutes=5), exactly=True)
    beat = live.clock + timedelta(minutes=1)
    while beat <= now:
        live.clock = beat
        live.add("session_heartbeat", "API-3", 0, spec_id="API-3")
        beat += timedelta(minutes=1)

    return [e for s in (nightly, docs, stalled, live) for e in s.events]


def night_window(now: datetime, zone: Any, start: str, end: str) -> tuple[datetime, datetime]:
    """The overnight window `ralph-query night` shows (see queries.night_window)."""
    local = now.astimezone(zone)
    night_end = datetime.combine(local.date(), time.fromisoformat(end), tzinfo=zone)
    start_t = time.fromisoformat(start)
    start_day = night_end.date() - timedelta(days=1) if start_t > time.fromisoformat(end) else night_end.date()
    since = datetime.combine(start_day, start_t, tzinfo=zone)
    until = min(night_end, now)
    if until - since < timedelta(hours=2):  # a window just begun: use the previous night
        since -= timedelta(days=1)
        until = night_end - timedelta(days=1) if night_end > now else night_end
    return since, until


def send_all(socket_path: str, events: list[dict[str, Any]], *, timeout_s: float = 10.0) -> Iterator[dict[str, Any]]:
    """Send events pipelined in batches on one connection; yields the replies."""
    with Connection(socket_path, timeout_s=timeout_s) as conn:
        for i in range(0, len(events), BATCH):
            yield from conn.exchange([encode_event(e) for e in events[i:i + BATCH]])


def run_demo(socket_path: str, *, zone: Any, night_start: str, night_end: str, stall_after_s: float,
             seed: int = 7, now: datetime | None = None) -> dict[str, Any]:
    """Send the demo; returns counts and the session ids. Raises ClientError."""
    now = now or datetime.now(timezone.utc)
    since, until = night_window(now, zone, night_start, night_end)
    events = demo_events(now, night_since=since, night_until=until, stall_after_s=stall_after_s, seed=seed)
    rejected = [r for r in send_all(socket_path, events) if not r.get("ok")]
    if rejected:
        raise ClientError(f"the daemon refused {len(rejected)} demo events, e.g.: {rejected[0].get('error')}")
    sessions: dict[str, str] = {}
    for event in events:
        if event["type"] == "session_started":
            sessions[event["data"]["name"]] = event["session_id"]
    return {"events": len(events), "sessions": sessions, "night": (since, until)}
