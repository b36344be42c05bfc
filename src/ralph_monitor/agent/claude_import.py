"""`ralph-monitor import claude-code`: record the Claude Code sessions already on disk.

Claude Code keeps every session as a JSON Lines transcript under `~/.claude/projects/<project>/`
(`$CLAUDE_CONFIG_DIR/projects` when that is set; subagents in `<session>/subagents/*.jsonl`),
the files ccusage reads too. Each session becomes what the hook and the loop would have
recorded live:

- `session_started` (with the hook's own event id) and `session_ended` (one per state of the
  transcript: a session that grew since the last import ends again, later), named
  `claude <project>`, with its tokens and cost per model;
- one spec run per turn (`turn-1`, `turn-2`, ...: a prompt and everything up to the next),
  `spec_started` with the prompt, `spec_completed` (or `spec_failed` when the turn ended in an
  API error) with the turn's tokens, cost and last reply;
- one `cc.PostToolUse` / `cc.PostToolUseFailure` per tool call, with its input and output.

Tokens: each API request once, by `message.id` and `requestId` (a streamed reply is written as
several lines repeating its usage, and a resumed session copies earlier lines into its new
file), counted for the day of its first line, per model. Cost: what the transcript says where
it says it (a `costUSD` on the line, or the CLI's own `cost-state` total of the session, split
over its turns in proportion to their estimated cost), labelled `cost_source: api`; otherwise
estimated from the price table (`agent.prices`), labelled `estimate`.

Idempotent and resumable: event ids derive from the transcript's own ids (uuid5), and a state
file next to the client spool remembers which files were imported as they were (size and
modification time), so a second run sends only what is new or has grown, and an interrupted
run picks up where it stopped. Sessions that the hook recorded live (their transcript shows
`ralph-monitor hook` among the hooks that ran) are skipped. Text is redacted (`agent.redact`).

Standard library only (see `ralph_monitor.agent`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

from ralph_monitor.agent.client import Connection, encode_event
from ralph_monitor.agent.hook import HOOK_NAMESPACE, shrink
from ralph_monitor.agent.prices import PRICES_DATE, PriceTable
from ralph_monitor.agent.redact import Redactor
from ralph_monitor.agent.spool import spool_dir_for
from ralph_monitor.agent.transcript import SYNTHETIC_MODEL, USAGE_FIELDS, reply_text
from ralph_monitor.errors import ClientError, ConfigError

IMPORT_NAMESPACE = uuid.UUID("3b0d7c52-6a1e-4f4e-9d55-0c6e8a2f7b31")
"""uuid5 namespace of the ids of imported turn and tool events."""
HOOK_SESSION_NAMESPACE = uuid.UUID(bytes=HOOK_NAMESPACE)
STATE_FILE = "import-claude-code.json"
STATE_VERSION = 1
BATCH_EVENTS = 500
FIELD_CHARS = 4096
SUMMARY_CHARS = 2000
HOOK_COMMAND = "ralph-monitor"
_SINCE = re.compile(r"^(\d+)\s*([dhw])$")


def projects_dir(explicit: str | None = None) -> Path:
    """--projects, else $CLAUDE_CONFIG_DIR/projects, else ~/.claude/projects."""
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("CLAUDE_CONFIG_DIR")
    return Path(config).expanduser() / "projects" if config else Path.home() / ".claude" / "projects"


def parse_since(text: str, now: datetime | None = None) -> datetime | None:
    """`30d`, `12h`, `2w`, a date (`2026-10-01`) or `all` (None: no limit)."""
    now = now or datetime.now(timezone.utc)
    value = text.strip().lower()
    if value == "all":
        return None
    match = _SINCE.match(value)
    if match:
        amount, unit = int(match.group(1)), {"d": "days", "h": "hours", "w": "weeks"}[match.group(2)]
        return now - timedelta(**{unit: amount})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--since {text!r}: use a duration (30d, 12h, 2w), a date (2026-10-01) or all") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# reading transcripts


@dataclass
class Request:
    """One API request: counted once, for the day of its first line."""

    key: str
    model: str
    day: str
    usage: dict[str, Any]
    counts: dict[str, int]
    cost: float | None = None
    """What the transcript says it cost (`costUSD`), if it does."""


@dataclass
class Turn:
    index: int
    started: str
    ended: str
    prompt: str = ""
    prompt_uuid: str = ""
    requests: list[Request] = field(default_factory=list)
    tool_events: list[dict[str, Any]] = field(default_factory=list)
    last_reply: str = ""
    error: str | None = None
    copied: bool = False
    """Its replies were counted for an earlier session: a resumed session's copy of its history."""


@dataclass
class Session:
    """One Claude Code session: its main transcript and any subagent transcripts."""

    session_id: str
    files: list[Path]
    cwd: str = ""
    git_branch: str = ""
    version: str = ""
    first_ts: str = ""
    last_ts: str = ""
    turns: list[Turn] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    """Every request counted for this session (subagents' included)."""
    by_key: dict[str, Request] = field(default_factory=dict)
    subagent_requests: list[tuple[str, Request]] = field(default_factory=list)
    """(time, request) of the subagent transcripts, given to their turns once all are read."""
    cost_state: dict[str, Any] | None = None
    recorded_by_hook: bool = False
    copied_requests: int = 0
    """Requests already counted for an earlier session (a resumed session's copied history)."""


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as transcript:
        for raw in transcript:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry


def _first_facts(path: Path) -> tuple[str | None, str | None]:
    """(sessionId, first timestamp) of a transcript, from its first lines."""
    session = first = None
    for number, entry in enumerate(_lines(path)):
        session = session or (entry.get("sessionId") if isinstance(entry.get("sessionId"), str) else None)
        first = first or (entry.get("timestamp") if isinstance(entry.get("timestamp"), str) else None)
        if (session and first) or number > 200:
            break
    return session, first


def _day(ts: str) -> str:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(timezone.utc).date().isoformat()
    except ValueError:
        return ts[:10]


def _request_key(entry: dict[str, Any], message: dict[str, Any], fallback: str) -> str:
    message_id, request_id = message.get("id"), entry.get("requestId")
    if message_id and request_id:
        return f"{message_id}:{request_id}"
    return str(message_id or request_id or fallback)


def _is_prompt(entry: dict[str, Any]) -> bool:
    if entry.get("type") != "user" or entry.get("isMeta") or entry.get("isCompactSummary"):
        return False
    message = entry.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return bool(content.strip())
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "text" for b in content) \
        and not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def _hooked_by_us(entry: dict[str, Any]) -> bool:
    """A line showing that `ralph-monitor hook` ran in this session."""
    infos = entry.get("hookInfos") if entry.get("type") == "system" else None
    commands = [i.get("command") for i in infos if isinstance(i, dict)] if isinstance(infos, list) else []
    attachment = entry.get("attachment")
    if isinstance(attachment, dict):
        commands.append(attachment.get("command"))
    return any(isinstance(c, str) and HOOK_COMMAND in c and " hook" in c for c in commands)


class SessionReader:
    """Builds Sessions from transcripts; `seen` maps each request key counted so far to the
    session that counted it (kept across runs in the state file)."""

    def __init__(self, seen: dict[str, str]) -> None:
        self.seen = seen

    def read(self, session_id: str, files: Sequence[Path]) -> Session:
        session = Session(session_id, list(files))
        for path in files:
            self._read_file(session, path)
        for ts, request in session.subagent_requests:  # to the turn that was under way then
            turn = next((t for t in reversed(session.turns) if t.started <= ts), None) or (
                session.turns[0] if session.turns else None)
            if turn is not None:
                turn.requests.append(request)
        return session

    def _count(self, session: Session, entry: dict[str, Any], message: dict[str, Any], number: int,
               path: Path) -> Request | None:
        usage = message.get("usage")
        model = message.get("model") if isinstance(message.get("model"), str) else "unknown"
        if not isinstance(usage, dict) or model == SYNTHETIC_MODEL:
            return None
        key = _request_key(entry, message, f"{path}:{number}")
        digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
        owner = self.seen.setdefault(digest, session.session_id)
        counts = {f: usage[f] for f in USAGE_FIELDS if isinstance(usage.get(f), int)}
        known = session.by_key.get(key)
        if known is not None:  # a later line of the same streamed reply
            for name in USAGE_FIELDS:
                known.counts[name] = max(known.counts.get(name, 0), counts.get(name, 0))
            return None
        if owner != session.session_id:
            session.copied_requests += 1
            if session.turns:
                session.turns[-1].copied = True
            return None
        cost = entry.get("costUSD")
        request = Request(key, model, _day(str(entry.get("timestamp") or session.last_ts)), usage, counts,
                          float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None)
        session.requests.append(request)
        session.by_key[key] = request
        return request

    def _read_file(self, session: Session, path: Path) -> None:
        main = "subagents" not in path.parts
        turn: Turn | None = None
        pending: dict[str, tuple[dict[str, Any], str]] = {}
        for number, entry in enumerate(_lines(path)):
            ts = entry.get("timestamp") if isinstance(entry.get("timestamp"), str) else ""
            if ts:
                session.first_ts = min(session.first_ts or ts, ts)
                session.last_ts = max(session.last_ts, ts)
            kind = entry.get("type")
            if main and not session.cwd and isinstance(entry.get("cwd"), str):
                session.cwd = entry["cwd"]
                session.git_branch = str(entry.get("gitBranch") or "")
                session.version = str(entry.get("version") or "")
            if _hooked_by_us(entry):
                session.recorded_by_hook = True
            if kind == "cost-state" and main:
                session.cost_state = entry
                continue
            side = not main or bool(entry.get("isSidechain"))
            if kind == "assistant" and isinstance(entry.get("message"), dict):
                message = entry["message"]
                request = self._count(session, entry, message, number, path)
                if side:
                    if request is not None and not main:
                        session.subagent_requests.append((ts, request))
                    elif request is not None and session.turns:
                        session.turns[-1].requests.append(request)
                    continue
                if turn is None:
                    turn = self._new_turn(session, ts)
                if request is not None:
                    turn.requests.append(request)
                turn.ended = ts or turn.ended
                text = reply_text(message)
                if text.strip():
                    turn.last_reply = text
                if entry.get("isApiErrorMessage") or message.get("model") == SYNTHETIC_MODEL:
                    turn.error = text.strip() or "API error"
                for block in message.get("content") or []:
                    if isinstance(block, dict) and block.get("type") == "tool_use" and isinstance(block.get("id"), str):
                        pending[block["id"]] = (block, ts)
            elif kind == "user" and not side:
                if _is_prompt(entry):
                    turn = self._new_turn(session, ts)
                    turn.prompt = reply_text(entry.get("message"))
                    turn.prompt_uuid = str(entry.get("uuid") or "")
                    continue
                if turn is None:
                    continue
                turn.ended = ts or turn.ended
                for block in (entry.get("message") or {}).get("content") or []:
                    if isinstance(block, dict) and block.get("type") == "tool_result":
                        call = pending.pop(str(block.get("tool_use_id")), None)
                        turn.tool_events.append(_tool_event(block, call, entry, ts))
        if turn is not None:
            for block, ts in pending.values():  # called, never answered (interrupted)
                turn.tool_events.append(_tool_event(None, (block, ts), {}, ts))
        if main:  # the history a resumed session copied belongs to the session it came from
            session.turns = [t for t in session.turns if not (t.copied and not t.requests)]
            for index, kept in enumerate(session.turns, start=1):
                kept.index = index

    @staticmethod
    def _new_turn(session: Session, ts: str) -> Turn:
        turn = Turn(len(session.turns) + 1, ts, ts)
        session.turns.append(turn)
        return turn


def _tool_event(result: dict[str, Any] | None, call: tuple[dict[str, Any], str] | None, entry: dict[str, Any],
                ts: str) -> dict[str, Any]:
    """The data of one tool call's event (redacted and cut when the event is built)."""
    block = call[0] if call else {}
    data: dict[str, Any] = {"tool_name": block.get("name"), "tool_use_id": block.get("id") or (result or {}).get(
        "tool_use_id"), "tool_input": block.get("input")}
    if result is None:
        data["error"] = "no result in the transcript (interrupted)"
        kind = "cc.PostToolUseFailure"
    else:
        response = entry.get("toolUseResult")
        data["tool_response"] = response if response is not None else result.get("content")
        kind = "cc.PostToolUseFailure" if result.get("is_error") else "cc.PostToolUse"
        if result.get("is_error"):
            data["error"] = reply_text({"content": result.get("content")}) or str(result.get("content"))
    return {"type": kind, "ts": ts or (call[1] if call else ""), "data": data}


# events


@dataclass
class Costs:
    """A session's cost per request, and where it comes from."""

    per_request: dict[str, float]
    source: str  # api, estimate
    total: float
    unpriced_models: set[str]


def session_costs(session: Session, prices: PriceTable) -> Costs:
    estimates: dict[str, float] = {}
    unpriced: set[str] = set()
    exact = bool(session.requests) and all(r.cost is not None for r in session.requests)
    for request in session.requests:
        estimate = prices.estimate(request.model, {**request.usage, **request.counts})
        if estimate is None:
            unpriced.add(request.model)
        estimates[request.key] = request.cost if exact and request.cost is not None else (estimate or 0.0)
    if exact:
        return Costs(estimates, "api", sum(estimates.values()), unpriced)
    state_total = (session.cost_state or {}).get("totalCostUSD")
    if isinstance(state_total, (int, float)) and not isinstance(state_total, bool) and not session.copied_requests:
        estimated = sum(estimates.values())
        if estimated > 0:
            scale = state_total / estimated
            return Costs({k: v * scale for k, v in estimates.items()}, "api", float(state_total), unpriced)
        if state_total == 0 or not estimates:
            return Costs(estimates, "api", float(state_total), unpriced)
    return Costs(estimates, "estimate", sum(estimates.values()), unpriced)


def _by_model(requests: Sequence[Request], costs: Costs | None = None) -> dict[str, dict[str, Any]]:
    totals: dict[str, dict[str, Any]] = {}
    for request in requests:
        model = totals.setdefault(request.model, {f: 0 for f in USAGE_FIELDS} | {"requests": 0})
        for name in USAGE_FIELDS:
            model[name] += request.counts.get(name, 0)
        model["requests"] += 1
        if costs is not None:
            model["cost_usd"] = round(model.get("cost_usd", 0.0) + costs.per_request.get(request.key, 0.0), 8)
    return totals


def _tokens(requests: Sequence[Request]) -> int:
    return sum(r.counts.get(f, 0) for r in requests for f in USAGE_FIELDS)


def _id(namespace: uuid.UUID, name: str) -> str:
    return str(uuid.uuid5(namespace, name))


def session_events(session: Session, costs: Costs, redactor: Redactor) -> list[dict[str, Any]]:
    """The events that record one session, in the order they happened."""
    sid = session.session_id
    project = os.path.basename(session.cwd.rstrip("/")) or session.cwd
    metadata = {"source": "claude-code", "imported": True, "cwd": session.cwd[:1000],
                "git_branch": session.git_branch[:200], "claude_code_version": session.version[:50],
                "transcript": str(session.files[0])[:1000]}
    events = [_event("session_started", sid, None, session.first_ts, _id(HOOK_SESSION_NAMESPACE, f"{sid}/session_started"),
                     {"name": f"claude {project}".strip()[:200], "metadata": metadata})]
    for turn in session.turns:
        spec = f"turn-{turn.index}"
        anchor = turn.prompt_uuid or str(turn.index)
        redactor.count = 0
        start: dict[str, Any] = {"prompt": shrink(turn.prompt, SUMMARY_CHARS, redactor), "imported": True}
        if redactor.count:
            start["redactions"] = redactor.count
        events.append(_event("spec_started", sid, spec, turn.started, _id(IMPORT_NAMESPACE, f"{sid}/{anchor}/started"),
                             start))
        failures = 0
        for tool in turn.tool_events:
            redactor.count = 0
            data = {k: shrink(v, FIELD_CHARS, redactor, k) for k, v in tool["data"].items() if v is not None}
            data["imported"] = True
            if redactor.count:
                data["redactions"] = redactor.count
            failures += tool["type"] == "cc.PostToolUseFailure"
            tool_id = str(tool["data"].get("tool_use_id") or len(events))
            events.append(_event(tool["type"], sid, spec, tool["ts"] or turn.ended,
                                 _id(IMPORT_NAMESPACE, f"{sid}/tool/{tool_id}"), data))
        redactor.count = 0
        end: dict[str, Any] = {
            "tokens_used": _tokens(turn.requests),
            "cost_usd": round(sum(costs.per_request.get(r.key, 0.0) for r in turn.requests), 8),
            "cost_source": costs.source, "usage": {"by_model": _by_model(turn.requests, costs)},
            "tool_calls": len(turn.tool_events), "tool_failures": failures, "imported": True,
            "duration_s": _seconds_between(turn.started, turn.ended)}
        if turn.last_reply:
            end["output_summary"] = shrink(turn.last_reply, SUMMARY_CHARS, redactor)
        if turn.error:
            end["error"] = shrink(turn.error, SUMMARY_CHARS, redactor)
        if redactor.count:
            end["redactions"] = redactor.count
        events.append(_event("spec_failed" if turn.error else "spec_completed", sid, spec, turn.ended or turn.started,
                             _id(IMPORT_NAMESPACE, f"{sid}/{anchor}/ended"), end))
    ended = {"status": "completed", "imported": True, "tokens_used": _tokens(session.requests),
             "cost_usd": round(costs.total, 8), "cost_source": costs.source,
             "models": sorted({r.model for r in session.requests}),
             "usage": {"by_model": _by_model(session.requests, costs)}}
    if costs.unpriced_models:
        ended["unpriced_models"] = sorted(costs.unpriced_models)
    events.append(_event("session_ended", sid, None, session.last_ts,
                         _id(IMPORT_NAMESPACE, f"{sid}/ended/{session.last_ts}"), ended))
    return events


def _event(kind: str, session_id: str, spec_id: str | None, ts: str, event_id: str,
           data: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = {"type": kind, "session_id": session_id, "event_id": event_id, "data": data}
    if spec_id is not None:
        event["spec_id"] = spec_id
    if ts:
        event["ts"] = ts
    return event


def _seconds_between(start: str, end: str) -> float | None:
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round(max((b - a).total_seconds(), 0.0), 3)


# the run


@dataclass
class Summary:
    """What an import found and did; `daily` is tokens per day and model, as ccusage counts them."""

    files: int = 0
    sessions: int = 0
    turns: int = 0
    tool_calls: int = 0
    events_sent: int = 0
    events_stored: int = 0
    rejected: int = 0
    unchanged: int = 0
    recorded_by_hook: int = 0
    tokens_used: int = 0
    cost_api_usd: float = 0.0
    cost_estimate_usd: float = 0.0
    redactions: int = 0
    unpriced_models: set[str] = field(default_factory=set)
    daily: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    first_rejection: str | None = None

    def add_daily(self, requests: Sequence[Request]) -> None:
        for request in requests:
            model = self.daily.setdefault(request.day, {}).setdefault(
                request.model, {f: 0 for f in USAGE_FIELDS})
            for name in USAGE_FIELDS:
                model[name] += request.counts.get(name, 0)

    def as_json(self) -> dict[str, Any]:
        return {"files": self.files, "sessions": self.sessions, "turns": self.turns, "tool_calls": self.tool_calls,
                "events_sent": self.events_sent, "events_stored": self.events_stored, "rejected": self.rejected,
                "first_rejection": self.first_rejection, "unchanged_sessions": self.unchanged,
                "recorded_by_hook": self.recorded_by_hook, "tokens_used": self.tokens_used,
                "cost_usd": {"api": round(self.cost_api_usd, 6), "estimate": round(self.cost_estimate_usd, 6)},
                "price_table": PRICES_DATE, "unpriced_models": sorted(self.unpriced_models),
                "redactions": self.redactions, "daily": self.daily}


class Progress:
    """A progress bar on a terminal (stderr), nothing elsewhere."""

    def __init__(self, total: int, stream: TextIO | None) -> None:
        self.total = total
        self.stream = stream if stream is not None and stream.isatty() else None
        self.last = 0.0

    def show(self, done: int, summary: Summary, *, final: bool = False) -> None:
        if self.stream is None or (not final and time.monotonic() - self.last < 0.1):
            return
        self.last = time.monotonic()
        width = 30
        filled = width * done // max(self.total, 1)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} sessions, "
                          f"{summary.events_sent} events" + ("\n" if final else ""))
        self.stream.flush()


class Importer:
    """Finds, reads and sends; `run()` returns the Summary. `send` None: read only (--dry-run)."""

    def __init__(self, projects: Path, *, since: datetime | None, redactor: Redactor, prices: PriceTable,
                 state_path: Path | None, send: Callable[[Sequence[bytes]], list[dict[str, Any]]] | None,
                 progress: TextIO | None = None) -> None:
        self.projects = projects
        self.since = since
        self.redactor = redactor
        self.prices = prices
        self.state_path = state_path
        self.send = send
        self.progress_stream = progress
        self.state = self._load_state()

    def _load_state(self) -> dict[str, Any]:
        empty: dict[str, Any] = {"version": STATE_VERSION, "files": {}, "seen": {}}
        if self.state_path is None or not self.state_path.exists():
            return empty
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return empty
        ok = isinstance(state, dict) and state.get("version") == STATE_VERSION
        return state if ok and isinstance(state.get("files"), dict) and isinstance(state.get("seen"), dict) else empty

    def _save_state(self) -> None:
        if self.state_path is None or self.send is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.state_path.with_name(self.state_path.name + ".tmp")
        temporary.write_text(json.dumps(self.state, separators=(",", ":")))
        os.replace(temporary, self.state_path)

    def sessions(self) -> list[tuple[str, list[Path]]]:
        """(session id, its files) of every transcript touched since `since`, oldest first."""
        if not self.projects.is_dir():
            raise ConfigError(f"no Claude Code transcripts in {self.projects} (use --projects DIR)")
        groups: dict[str, list[Path]] = {}
        order: dict[str, tuple[str, int]] = {}
        for path in sorted(self.projects.rglob("*.jsonl")):
            try:
                modified = path.stat().st_mtime_ns
            except OSError:
                continue
            if self.since is not None and modified < self.since.timestamp() * 1e9:
                continue
            session, first = _first_facts(path)
            session = session or path.stem
            groups.setdefault(session, []).append(path)
            # By first line, then by age: a resumed session's file starts with a copy of the
            # original's first lines, and the original must count them.
            order[session] = min(order.get(session, (first or "~", modified)), (first or "~", modified))
        for files in groups.values():
            files.sort(key=lambda p: ("subagents" in p.parts, str(p)))
        return sorted(groups.items(), key=lambda item: (order[item[0]], item[0]))

    def run(self) -> Summary:
        summary = Summary()
        groups = self.sessions()
        progress = Progress(len(groups), self.progress_stream)
        reader = SessionReader(self.state["seen"])
        for done, (session_id, files) in enumerate(groups, start=1):
            summary.files += len(files)
            marks = {str(p): _mark(p) for p in files}
            if self.send is not None and all(self.state["files"].get(p) == m for p, m in marks.items()):
                summary.unchanged += 1
                progress.show(done, summary)
                continue
            session = reader.read(session_id, files)
            if session.recorded_by_hook:
                summary.recorded_by_hook += 1
            elif session.requests or session.turns:
                self._record(session, summary)
            self.state["files"].update(marks)
            self._save_state()
            progress.show(done, summary)
        progress.show(len(groups), summary, final=True)
        return summary

    def _record(self, session: Session, summary: Summary) -> None:
        costs = session_costs(session, self.prices)
        self.redactor.count = 0
        events = session_events(session, costs, self.redactor)
        summary.sessions += 1
        summary.turns += len(session.turns)
        summary.tool_calls += sum(len(t.tool_events) for t in session.turns)
        summary.tokens_used += _tokens(session.requests)
        summary.redactions += sum(int(e["data"].get("redactions", 0)) for e in events)
        summary.unpriced_models |= costs.unpriced_models
        if costs.source == "api":
            summary.cost_api_usd += costs.total
        else:
            summary.cost_estimate_usd += costs.total
        summary.add_daily(session.requests)
        if self.send is None:
            return
        lines = [encode_event(e) for e in events]
        for start in range(0, len(lines), BATCH_EVENTS):
            batch = lines[start:start + BATCH_EVENTS]
            replies = self.send(batch)
            summary.events_sent += len(batch)
            for reply in replies:
                if reply.get("ok"):
                    summary.events_stored += not reply.get("duplicate")
                else:
                    summary.rejected += 1
                    summary.first_rejection = summary.first_rejection or str(reply.get("error"))[:500]


def _mark(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def state_path_for(socket_path: str) -> Path:
    """Next to the client spool of that daemon (an import is per daemon)."""
    return spool_dir_for(socket_path) / STATE_FILE


def run_import(socket_path: str, *, projects: str | None, since: str, redactor: Redactor, prices: PriceTable,
               dry_run: bool = False, progress: TextIO | None = sys.stderr) -> Summary:
    """The command: read the transcripts, send their events on one connection."""
    directory = projects_dir(projects)
    if dry_run:
        return Importer(directory, since=parse_since(since), redactor=redactor, prices=prices, state_path=None,
                        send=None, progress=progress).run()
    with Connection(socket_path, timeout_s=30.0) as connection:
        try:
            connection.open()
        except ClientError as exc:
            raise ClientError(f"{exc}; nothing was imported") from None
        importer = Importer(directory, since=parse_since(since), redactor=redactor, prices=prices,
                            state_path=state_path_for(socket_path), send=connection.exchange, progress=progress)
        return importer.run()
