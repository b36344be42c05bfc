"""`ralph-monitor hook`: forward a Claude Code hook call to the daemon.

Claude Code runs the hook command for each hook event with the event's JSON on stdin. This
forwarder turns it into an event of type `cc.<hook_event_name>` and sends it (or spools it,
see `agent.spool`) without ever getting in the agent's way:

- `agent.hook_start` reads the input and leaves the rest of the work to a detached child,
  so Claude Code waits only for Python's start-up (`run` below is that child's part);
- it always exits 0 and writes nothing on stdout (for SessionStart and UserPromptSubmit,
  Claude Code would add stdout to the model's context; other exit codes may block);
- a hard timer ends it after `--timeout` seconds (default 1) whatever it is doing, and
  every network wait is bounded well inside that;
- large fields (tool_input, tool_response, prompts, messages) are cut to `--max-field-bytes`,
  and secret-shaped text in them is redacted first (`agent.redact`, `[redaction]` settings);
- input it cannot read (garbage, empty, truncated) is still recorded as `cc.hook_error`.

Each hook event gets a deliberate treatment (`EVENT_POLICY`): most are forwarded as they are;
`PostToolBatch` is summarised (the tools of the batch, whose inputs and outputs the
PostToolUse events already hold); `MessageDisplay` (called for every streamed chunk of every
reply, which the Stop event's `last_assistant_message` holds whole) is ignored. Event names
Claude Code adds later are forwarded.

Which session the events belong to: `$RALPH_SESSION_ID` / `$RALPH_SPEC_ID` when the agent
runs under `ralph-monitor loop` (or a loop that exports them), else Claude Code's own
session_id, in which case SessionStart / SessionEnd also record `session_started` /
`session_ended` so the session does not look stalled once Claude exits.

On Stop, SubagentStop, StopFailure and SessionEnd the token usage in the transcript JSONL
is summed per model (`agent.transcript`). Claude Code calls the Stop hook before it writes the
turn's last reply to the transcript, so on Stop and SubagentStop the hook waits (within its
time budget) until the transcript holds `last_assistant_message`. On SessionEnd it also
records the CLI's own cost total (`cost-state`), labelled `cost_source: api`.

Imports stay light (see `ralph_monitor.agent`): `python -X importtime -m ralph_monitor hook`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ralph_monitor.agent.client import (
    SESSION_ENV, SOCKET_ENV, SPEC_ENV, Connection, EventRejected, deliver, encode_event, new_event, utc_from_ns,
)
from ralph_monitor.agent.hook_start import (ACK_TIMEOUT_S, DEFAULT_MAX_FIELD_BYTES, FOREGROUND_OPTION, GUARD_OPTION,
                                                HARD_TIMEOUT_S, MAX_STDIN_BYTES, Options, canonical_uuid)
from ralph_monitor.agent.redact import Redactor, redactor_from_config
from ralph_monitor.agent.spool import ClientSpool
from ralph_monitor.agent.transcript import TranscriptTally
from ralph_monitor.errors import RalphMonitorError

if TYPE_CHECKING:
    import argparse

MAX_KEYS = 200
MAX_ITEMS = 100
MAX_DEPTH = 12
SPOOL_RESERVE_S = 0.2
"""Time kept back at the end of the budget to write the spool if the daemon did not answer."""
TRANSCRIPT_BUDGET_S = 0.5
"""Longest the hook spends on the transcript, waiting for the last reply included."""
TRANSCRIPT_POLL_S = 0.01
REDACT_MARGIN = 256
"""Characters past the cut that redaction still looks at, so a secret across the cut goes whole."""
BACKOFF_S = 5.0
"""After the daemon failed to answer in time, later calls spool at once for this long."""
DEFAULT_SOCKET = "/run/ralph-monitor/events.sock"
HOOK_NAMESPACE = bytes.fromhex("8d3f6a520c5e4e0b9a516f1d2c7b9e40")
"""uuid5 namespace of the session_started / session_ended events the hook derives."""
CONFIG_ENV = "RALPH_MONITOR_CONFIG"
DEFAULT_CONFIG = "/etc/ralph-monitor/config.toml"
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,60}")
USAGE_EVENTS = frozenset({"Stop", "SubagentStop", "SessionEnd", "StopFailure"})
REPLY_EVENTS = frozenset({"Stop", "SubagentStop"})
"""Events after which the transcript must hold `last_assistant_message` (see the module doc)."""
EVENT_POLICY = {
    "MessageDisplay": "ignore",
    "PostToolBatch": "summarise",
}
"""What the hook does with each hook event: "forward" (the default: the input, cut to size and
redacted), "summarise" (a digest of it), "ignore" (nothing is sent)."""
HELP_EVENTS = frozenset({"permission_prompt", "elicitation_dialog"})
"""Notification types that mean the agent waits for a human (recorded as intervention_request
when running unattended under a loop)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """For `ralph-monitor hook --help` (the hook itself parses its options with `Options`)."""
    parser.add_argument("--socket", help=f"daemon socket (default: ${SOCKET_ENV}, else [socket] path from the config)")
    parser.add_argument("--config", metavar="FILE", help="config file to read the socket path from")
    parser.add_argument("--max-field-bytes", type=int, default=DEFAULT_MAX_FIELD_BYTES, metavar="N",
                        help=f"cut each string in the hook input to about N bytes (default {DEFAULT_MAX_FIELD_BYTES})")
    parser.add_argument("--timeout", type=float, default=HARD_TIMEOUT_S, metavar="S",
                        help=f"hard limit on the hook's run time in seconds (default {HARD_TIMEOUT_S:g})")
    parser.add_argument(GUARD_OPTION, action="store_true",
                        help="first ask the daemon whether the session is flagged stuck and, if so, print "
                        '{"continue": false, "stopReason": ...} so Claude Code stops (for PreToolUse and '
                        "UserPromptSubmit; see the README)")
    parser.add_argument(FOREGROUND_OPTION, action="store_true",
                        help="do the work before exiting instead of in a detached child (Claude Code then waits)")


def run(argv: Sequence[str], raw: bytes, *, called_ns: int) -> int:
    """Record the hook input `raw` that Claude Code gave at `called_ns` (time.time_ns());
    always returns 0."""
    started = time.monotonic()
    options = Options(argv)
    _arm_hard_timeout(options.timeout)
    _silence_stdout()
    try:
        forward(raw, options, started=started, ts=utc_from_ns(called_ns))
    except BaseException as exc:  # never fail the agent
        _debug(f"ralph-monitor hook: {type(exc).__name__}: {exc}")
    return 0


def _arm_hard_timeout(seconds: float) -> None:
    def expire(signum: int, frame: object) -> None:
        os._exit(0)

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def _debug(message: str) -> None:
    if os.environ.get("RALPH_MONITOR_HOOK_DEBUG"):
        print(message, file=sys.stderr)


def read_config(options: Options) -> dict[str, Any]:
    """The config file (--config, $RALPH_MONITOR_CONFIG, /etc/ralph-monitor/config.toml) as
    parsed TOML, or {} when it is missing or broken: the hook reads the few keys it needs
    itself (the full config module is slow to import, and a broken config must not matter)."""
    path = options.config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    try:
        with open(path, "rb") as config:
            import tomllib

            return tomllib.load(config)
    except FileNotFoundError:
        pass
    except Exception as exc:
        _debug(f"ralph-monitor hook: config {path}: {exc}; using the defaults")
    return {}


def socket_path_for(options: Options, config: dict[str, Any]) -> str:
    """--socket, $RALPH_MONITOR_SOCKET (unless --config is given), else [socket] path of the
    config file, else the default."""
    if options.socket:
        return options.socket
    if os.environ.get(SOCKET_ENV) and not options.config:
        return os.environ[SOCKET_ENV]
    section = config.get("socket")
    configured = section.get("path") if isinstance(section, dict) else None
    return configured if isinstance(configured, str) and configured else DEFAULT_SOCKET


def forward(raw: bytes, options: Options, *, started: float, ts: str | None = None) -> None:
    """Turn one hook input into events (at `ts`) and deliver them within the time budget."""
    deadline = started + options.timeout - SPOOL_RESERVE_S
    config = read_config(options)
    events = events_for(raw, max_field_bytes=options.max_field_bytes, redactor=redactor_from_config(config),
                        transcript_deadline=started + min(TRANSCRIPT_BUDGET_S, options.timeout / 2), ts=ts)
    if not events:
        return
    socket_path = socket_path_for(options, config)
    spool = ClientSpool.for_socket(socket_path)
    conn = Connection(socket_path, timeout_s=ACK_TIMEOUT_S)
    unreachable = spool.backing_off()
    try:
        for event in events:
            line = encode_event(event)
            if unreachable:
                spool.append([line])
                continue
            conn.timeout_s = max(0.02, min(ACK_TIMEOUT_S, deadline - time.monotonic()))
            tried = time.monotonic()
            try:
                reply = deliver(line, socket_path, spool, timeout_s=conn.timeout_s, deadline=deadline, connection=conn)
            except EventRejected as exc:
                reply = _deliver_reduced(event, exc, socket_path, spool, conn, deadline)
            unreachable = bool(reply.get("client_spooled"))
            if unreachable and time.monotonic() - tried >= conn.timeout_s * 0.8:
                spool.back_off(BACKOFF_S)  # it hangs: do not make the next calls wait too
    except RalphMonitorError as exc:
        print(f"ralph-monitor hook: event not recorded: {exc}", file=sys.stderr)
    finally:
        conn.close()


def _deliver_reduced(event: dict[str, Any], rejected: EventRejected, socket_path: str, spool: ClientSpool,
                     conn: Connection, deadline: float) -> dict[str, Any]:
    """The daemon refused the event (e.g. too long): store what identifies it, and why."""
    data = event.get("data") or {}
    keep = {k: data[k] for k in ("cc_session_id", "cwd", "tool_name", "tool_use_id", "agent_id") if k in data}
    keep["rejected"] = {"code": rejected.code, "error": str(rejected.reply.get("error"))[:500]}
    reduced = new_event(event["type"], session_id=event.get("session_id"), spec_id=event.get("spec_id"),
                        data=keep, ts=event.get("ts"), event_id=event.get("event_id"))
    try:
        return deliver(encode_event(reduced), socket_path, spool, timeout_s=conn.timeout_s,
                       deadline=deadline, connection=conn)
    except EventRejected:
        return {"ok": False}


# mapping


def events_for(raw: bytes, *, max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES, redactor: Redactor | None = None,
               transcript_deadline: float | None = None, environ: dict[str, str] | None = None,
               ts: str | None = None) -> list[dict[str, Any]]:
    """The events one hook call records, at `ts` (default: now); pure apart from reading the
    transcript, for which it waits until `transcript_deadline` (see the module doc). Empty for
    an ignored event."""
    env = os.environ if environ is None else environ
    redactor = redactor or Redactor()
    payload, problem = parse_input(raw)
    session_id, spec_id, unattended = session_ids(payload, env)
    if problem is not None:
        excerpt = shrink(raw[:max_field_bytes + REDACT_MARGIN].decode("utf-8", "replace"), max_field_bytes, redactor)
        data: dict[str, Any] = {"error": problem, "input_bytes": len(raw), "excerpt": excerpt}
        if redactor.count:
            data["redactions"] = redactor.count
        return [new_event("cc.hook_error", session_id=session_id, spec_id=spec_id, data=data, ts=ts)]
    assert payload is not None
    name = payload.get("hook_event_name")
    policy = EVENT_POLICY.get(name, "forward") if isinstance(name, str) else "forward"
    if policy == "ignore":
        return []
    if policy == "summarise" and name == "PostToolBatch":
        payload = _batch_summary(payload)
    valid_name = isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None
    data = {}
    for key, value in list(payload.items())[:MAX_KEYS]:
        if key == "hook_event_name" or key == "session_id":
            continue
        data[_clean_str(str(key))[:100]] = shrink(value, max_field_bytes, redactor, key)
    if "session_id" in payload:
        data["cc_session_id"] = shrink(payload["session_id"], 200)
    if not valid_name:
        data["hook_event_name"] = shrink(name, 200)
    if name in USAGE_EVENTS:
        _add_transcript_facts(name, payload, data, transcript_deadline)
    if redactor.count:
        data["redactions"] = redactor.count
    event_type = f"cc.{name}" if valid_name else "cc.unknown"
    event = new_event(event_type, session_id=session_id, spec_id=spec_id, data=data, ts=ts)
    events = [event]
    if unattended and name == "Notification" and payload.get("notification_type") in HELP_EVENTS:
        events.append(new_event("intervention_request", session_id=session_id, spec_id=spec_id, ts=event["ts"], data={
            "message": data.get("message"), "source": "claude-code",
            "notification_type": payload.get("notification_type")}))
    if session_id is not None and not unattended and session_id == payload.get("session_id"):
        events = _own_session_events(name, payload, data, session_id, event) + events
        if name == "SessionEnd":
            events.reverse()  # session_ended after the cc.SessionEnd it sums up
    return events


def _batch_summary(payload: dict[str, Any]) -> dict[str, Any]:
    """PostToolBatch without the inputs and outputs its PostToolUse events already hold."""
    calls = payload.get("tool_calls")
    calls = calls if isinstance(calls, list) else []
    summary = {k: v for k, v in payload.items() if k != "tool_calls"}
    summary["tool_count"] = len(calls)
    summary["tools"] = [{"tool_name": c.get("tool_name"), "tool_use_id": c.get("tool_use_id")}
                        for c in calls[:MAX_ITEMS] if isinstance(c, dict)]
    return summary


def _add_transcript_facts(name: str, payload: dict[str, Any], data: dict[str, Any], deadline: float | None) -> None:
    """data.usage (tokens per model) and, on SessionEnd, data.cost from the transcript. On Stop
    and SubagentStop, first wait until the transcript holds the reply the hook was told about."""
    path = payload.get("agent_transcript_path") if name == "SubagentStop" else payload.get("transcript_path")
    if not isinstance(path, str) or not path:
        return
    tally = TranscriptTally(path)
    tally.read(deadline)
    expected = payload.get("last_assistant_message")
    if name in REPLY_EVENTS and isinstance(expected, str) and expected.strip() and deadline is not None:
        waited_from = time.monotonic()
        while not tally.holds_reply(expected) and tally.error is None and time.monotonic() < deadline:
            time.sleep(TRANSCRIPT_POLL_S)
            tally.read(deadline)
        usage = tally.usage()
        if tally.holds_reply(expected):
            if tally.lines and time.monotonic() - waited_from >= TRANSCRIPT_POLL_S:
                usage["waited_ms"] = round((time.monotonic() - waited_from) * 1000)
        elif tally.error is None:
            usage["last_reply_missing"] = True  # the count may lack the turn's last response
    else:
        usage = tally.usage()
    data["usage"] = usage
    cost = tally.cost() if name == "SessionEnd" else None
    if cost is not None:
        data["cost"] = cost


def _own_session_events(name: Any, payload: dict[str, Any], data: dict[str, Any], session_id: str,
                        event: dict[str, Any]) -> list[dict[str, Any]]:
    """session_started / session_ended for a Claude session not run under a loop. Their
    event_ids derive from the session, so a resumed session does not start twice."""
    if name == "SessionStart" and payload.get("source") in (None, "startup", "resume"):
        cwd = payload.get("cwd") if isinstance(payload.get("cwd"), str) else ""
        return [new_event("session_started", session_id=session_id, ts=event["ts"],
                          event_id=_uuid5(f"{session_id}/session_started"),
                          data={"name": f"claude {os.path.basename(cwd.rstrip('/')) or cwd}".strip()[:200],
                                "metadata": _without_none({
                                    "source": "claude-code", "cwd": cwd[:1000],
                                    "model": shrink(payload.get("model"), 200),
                                    "permission_mode": shrink(payload.get("permission_mode"), 100)})})]
    if name == "SessionEnd":
        end: dict[str, Any] = {"status": "completed", "reason": shrink(payload.get("reason"), 200)}
        usage = data.get("usage")
        if isinstance(usage, dict) and usage.get("tokens_used"):
            end["tokens_used"] = usage["tokens_used"]
            end["models"] = sorted(usage.get("by_model") or {})  # SessionStart has no model under -p
        cost = data.get("cost")
        if isinstance(cost, dict):
            end["cost_usd"], end["cost_source"] = cost["cost_usd"], cost["source"]
        return [new_event("session_ended", session_id=session_id, ts=event["ts"],
                          event_id=_uuid5(f"{session_id}/session_ended"), data=end)]
    return []


def _without_none(mapping: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


def parse_input(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    if len(raw) > MAX_STDIN_BYTES:
        return None, f"hook input longer than {MAX_STDIN_BYTES} bytes"
    if not raw.strip():
        return None, "empty hook input"
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return None, f"hook input is not JSON: {str(exc)[:200]}"
    if not isinstance(payload, dict):
        return None, f"hook input is a JSON {type(payload).__name__}, not an object"
    return payload, None


def session_ids(payload: dict[str, Any] | None, env: Any) -> tuple[str | None, str | None, bool]:
    """(session_id, spec_id, unattended): the loop's session if there is one, else Claude's."""
    loop_session = canonical_uuid(env.get(SESSION_ENV))
    if loop_session is not None:
        spec = env.get(SPEC_ENV) or None
        return loop_session, spec[:200] if spec else None, True
    own = canonical_uuid(payload.get("session_id")) if payload else None
    return own, None, False


def _uuid5(name: str) -> str:
    """uuid.uuid5(HOOK_NAMESPACE, name), as a string."""
    import hashlib

    raw = bytearray(hashlib.sha1(HOOK_NAMESPACE + name.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50
    raw[8] = (raw[8] & 0x3F) | 0x80
    return canonical_uuid(raw.hex()) or ""


def _clean_str(text: str) -> str:
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def shrink(value: Any, limit: int, redactor: Redactor | None = None, key: str = "", depth: int = 0) -> Any:
    """The value with secrets redacted (when a redactor is given) and every string cut to
    `limit` characters, containers to MAX_KEYS / MAX_ITEMS entries and MAX_DEPTH levels; the
    cost follows what is kept, not the input."""
    if isinstance(value, str):
        text = value
        if redactor is not None:
            text = redactor.named(key, redactor.text(value[:limit + REDACT_MARGIN]))
        if len(value) > limit:
            return _clean_str(text[:limit]) + f"… [{len(value)} chars, truncated]"
        return _clean_str(text)
    if value is None or isinstance(value, (bool, int, float)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**300:
            return str(value)[:50]
        return value
    if depth >= MAX_DEPTH:
        return "[nested too deep, dropped]"
    if isinstance(value, dict):
        items = list(value.items())
        shrunk = {}
        for k, v in items[:MAX_KEYS]:
            name = _clean_str(str(k))[:200]
            shrunk[name] = shrink(v, limit, redactor, name, depth + 1)
        if len(items) > MAX_KEYS:
            shrunk["…"] = f"{len(items) - MAX_KEYS} more keys dropped"
        return shrunk
    if isinstance(value, list):
        shrunk_list = [shrink(v, limit, redactor, key, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            shrunk_list.append(f"… {len(value) - MAX_ITEMS} more items dropped")
        return shrunk_list
    return shrink(str(value), limit, redactor, key, depth)


# transcript


def transcript_usage(path: Any, *, deadline: float | None = None) -> dict[str, Any] | None:
    """Token usage summed from a Claude Code transcript, per model (`TranscriptTally.usage`);
    None if there is no path."""
    if not isinstance(path, str) or not path:
        return None
    tally = TranscriptTally(path)
    tally.read(deadline)
    return tally.usage()

