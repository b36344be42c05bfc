"""`ralph-monitor statusline`: a Claude Code status-line command that prints a short line
and forwards the subscription's usage windows to the monitor as a `rate_limits` event.

Claude Code runs the status-line command with a JSON on stdin every time the status line
refreshes (often: after each message) and shows what it prints. For subscribers that JSON
holds `rate_limits`: `five_hour` and `seven_day`, each `{"used_percentage": 0-100,
"resets_at": <Unix seconds>}` (absent for API-key users and before the first reply). So this
prints at once, from the input alone, and only then, in a detached child, sends the event:
the status line never waits for the monitor. The event goes out when the windows changed
(whole percents, reset times) or `--every` seconds (60) passed, not on every refresh; when the
daemon is away it goes to the client spool, and anything else that goes wrong drops it.
The event belongs to the loop's session (RALPH_SESSION_ID), else to Claude Code's, as the hook's
events do; `--no-session` records the windows alone (without the hook, Claude Code's sessions
would otherwise appear with nothing but these reports).

    "statusLine": {"type": "command", "command": "ralph-monitor statusline"}
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ralph_monitor.agent.hook_start import detach

MAX_STDIN_BYTES = 1 << 20
WINDOWS = (("five_hour", "5h"), ("seven_day", "7d"))
EVERY_S = 60.0
"""Forward unchanged windows at most this often."""
SEND_TIMEOUT_S = 2.0
"""The detached child's whole budget for connecting, sending and the ack."""


def main(argv: Sequence[str]) -> int:
    """Print the status line for the JSON on stdin and forward its rate limits; always 0."""
    options = _options(argv)
    try:
        raw = sys.stdin.buffer.read(MAX_STDIN_BYTES) if sys.stdin is not None and not sys.stdin.isatty() else b""
        payload = json.loads(raw)
    except (OSError, ValueError):
        payload = None
    if not isinstance(payload, dict):
        payload = None
    try:
        sys.stdout.write(status_text(payload) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    windows = rate_limits(payload)
    if payload is not None and windows and _due(payload, windows, options) and not detach():
        _forward(payload, windows, options)  # the detached child (or this process if fork failed)
        os._exit(0)
    return 0


def _options(argv: Sequence[str]) -> dict[str, str]:
    """--socket, --config, --every (NAME VALUE or NAME=VALUE), --no-session; anything else is ignored."""
    options: dict[str, str] = {}
    args = list(argv)
    while args:
        name, eq, value = args.pop(0).partition("=")
        if name == "--no-session":
            options[name] = "1"
        elif name in ("--socket", "--config", "--every"):
            if not eq and args:
                value = args.pop(0)
            options[name] = value
    return options


def rate_limits(payload: dict[str, Any] | None) -> dict[str, Any]:
    """The usage windows of the status-line input, as given ({} when there are none)."""
    limits = payload.get("rate_limits") if payload else None
    if not isinstance(limits, dict):
        return {}
    return {name: limits[name] for name, _ in WINDOWS if isinstance(limits.get(name), dict)}


def status_text(payload: dict[str, Any] | None) -> str:
    """`[Opus 4.6] 5h 42% ↻14:05 · 7d 36% ↻Thu 09:00 · $1.37`: model, windows, session cost."""
    if payload is None:
        return "ralph-monitor: no status input"
    parts = []
    model = payload.get("model")
    name = model.get("display_name") or model.get("id") if isinstance(model, dict) else None
    if isinstance(name, str) and name:
        parts.append(f"[{name[:40]}]")
    windows = rate_limits(payload)
    for key, short in WINDOWS:
        window = windows.get(key)
        used = window.get("used_percentage") if window else None
        if isinstance(used, (int, float)) and not isinstance(used, bool):
            text = f"{short} {used:.0f}%"
            resets = window.get("resets_at") if window else None
            if isinstance(resets, (int, float)) and not isinstance(resets, bool) and 0 < resets < 4e9:
                local = datetime.fromtimestamp(resets)
                text += local.strftime(" ↻%H:%M" if resets - time.time() < 86400 else " ↻%a %H:%M")
            parts.append(text)
    cost = payload.get("cost")
    total = cost.get("total_cost_usd") if isinstance(cost, dict) else None
    if isinstance(total, (int, float)) and not isinstance(total, bool):
        parts.append(f"${total:.2f}")
    return " · ".join(parts) if parts else "ralph-monitor"


def _state_file(payload: dict[str, Any]) -> str:
    from ralph_monitor.agent.spool import default_base_dir

    key = str(payload.get("session_id") or "none")
    safe = "".join(c for c in key if c.isalnum() or c == "-")[:64] or "none"
    return os.path.join(default_base_dir(), "statusline", safe)


def _due(payload: dict[str, Any], windows: dict[str, Any], options: dict[str, str]) -> bool:
    """Whether to send now: the windows changed since the last send, or `--every` passed. Notes
    this send (a file per Claude session), so refreshes in between send nothing."""
    digest = json.dumps({k: [round(float(w.get("used_percentage") or 0)), w.get("resets_at")]
                         for k, w in windows.items()}, sort_keys=True, default=str)
    try:
        every = float(options.get("--every", EVERY_S))
    except ValueError:
        every = EVERY_S
    path = _state_file(payload)
    try:
        with open(path, encoding="utf-8") as state:
            last_digest, _, last_at = state.read().partition("\n")
        if last_digest == digest and time.time() - float(last_at) < every:
            return False
    except (OSError, ValueError):
        pass
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as state:
            state.write(f"{digest}\n{time.time()}")
        os.replace(path + ".tmp", path)
    except OSError:
        pass
    return True


def _forward(payload: dict[str, Any], windows: dict[str, Any], options: dict[str, str]) -> None:
    """Send the `rate_limits` event (spooled when the daemon is away; dropped on anything else)."""
    import signal

    signal.signal(signal.SIGALRM, lambda signum, frame: os._exit(0))
    signal.setitimer(signal.ITIMER_REAL, SEND_TIMEOUT_S + 1.0)
    try:
        from ralph_monitor.agent.client import deliver, encode_event, new_event
        from ralph_monitor.agent.hook import Options, read_config, session_ids, socket_path_for
        from ralph_monitor.agent.spool import ClientSpool

        hook_options = Options([f"{k}={v}" for k, v in options.items() if k in ("--socket", "--config")])
        session_id, spec_id, _ = (None, None, False) if "--no-session" in options else session_ids(payload, os.environ)
        data: dict[str, Any] = dict(windows)
        for key, value in (("cc_session_id", payload.get("session_id")),
                           ("model", (payload.get("model") or {}).get("id") if isinstance(payload.get("model"), dict)
                            else None)):
            if isinstance(value, str):
                data[key] = value[:200]
        socket_path = socket_path_for(hook_options, read_config(hook_options))
        deliver(encode_event(new_event("rate_limits", session_id=session_id, spec_id=spec_id, data=data)),
                socket_path, ClientSpool.for_socket(socket_path), timeout_s=SEND_TIMEOUT_S,
                deadline=time.monotonic() + SEND_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - the status line must never fail; the event is dropped
        pass
