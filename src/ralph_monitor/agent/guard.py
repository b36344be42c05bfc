"""Stopping a loop the project does not run when its session is flagged stuck (loop health).

Both ask the daemon over its socket (`session_flags`, answered from memory, no database), so
they cost one round trip:

- `ralph-monitor guard --session ID` exits non-zero while the session is flagged, for
  `while ralph-monitor guard --session $ID; do ...; done`;
- `ralph-monitor hook --guard` (on PreToolUse and UserPromptSubmit) prints Claude Code's
  `{"continue": false, "stopReason": ...}` when the session is flagged, which stops the agent.

A daemon that cannot be asked never stops anything: monitoring trouble must not end a night's work.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from ralph_monitor.agent.client import SESSION_ENV, session_flags
from ralph_monitor.agent.hook import ACK_TIMEOUT_S, Options, parse_input, read_config, session_ids, socket_path_for
from ralph_monitor.errors import ClientError


def flag_reason(reply: dict[str, Any]) -> str:
    """Why a session is flagged, from the daemon's `session_flags` reply."""
    state = "ended as stuck" if reply.get("state") == "stuck" else "flagged stuck"
    return f"{state}: {reply.get('reason') or ', '.join(reply.get('rules') or [])}"


def flag_text(session_id: str, reply: dict[str, Any]) -> str:
    """One line saying which session is flagged and why."""
    return f"ralph-monitor: session {session_id} is {flag_reason(reply)}"


def hook_verdict(argv: Sequence[str], raw: bytes, environ: dict[str, str] | None = None) -> bytes | None:
    """The hook output that stops the agent when its session is flagged, else None (also when
    the input, the session or the daemon cannot be read: the hook must never stop an agent by mistake)."""
    env = os.environ if environ is None else environ
    payload, problem = parse_input(raw)
    if problem is not None:
        return None
    session_id, _, _ = session_ids(payload, env)
    if session_id is None:
        return None
    options = Options(argv)
    try:
        reply = session_flags(socket_path_for(options, read_config(options)), session_id, timeout_s=ACK_TIMEOUT_S)
    except (ClientError, OSError):
        return None
    if not reply.get("flagged"):
        return None
    reason = (f"{flag_text(session_id, reply)}. Stopped by `ralph-monitor hook --guard`; see `ralph-query session "
              f"{session_id}`.")
    return json.dumps({"continue": False, "stopReason": reason}).encode() + b"\n"


def guard_session(socket_path: str, session_id: str | None, *, timeout_s: float) -> tuple[bool, str]:
    """(flagged, message) for `ralph-monitor guard`. Raises ClientError when the daemon cannot be asked."""
    session_id = session_id or os.environ.get(SESSION_ENV)
    if not session_id:
        raise ClientError(f"no session to guard: give --session ID (or set ${SESSION_ENV})")
    reply = session_flags(socket_path, session_id, timeout_s=timeout_s)
    if reply.get("flagged"):
        return True, flag_text(reply.get("session_id") or session_id, reply)
    return False, f"session {reply.get('session_id') or session_id}: not flagged"
