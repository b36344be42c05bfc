"""`ralph-monitor hook --guard` in the hook's parent process, before Claude Code may go on:
ask the daemon whether the session is flagged stuck with nothing but built-in modules.

Claude Code waits for the guard on every tool call (PreToolUse) and prompt. The full guard
(agent/guard.py) parses the hook input with `json`, reads the config with `tomllib` and talks
through `socket`; on Debian's Python those imports (`re`, `enum`, `typing`, ...) take ~40 ms, twice
the rest of the call. So the usual case is answered here, with `posix` and `_socket` (both built
in or a small C module):

- the socket is `--socket` (as `ralph-monitor claude-settings` writes it) or
  $RALPH_MONITOR_SOCKET (set by `ralph-monitor loop`), without `--config`;
- the session is $RALPH_SESSION_ID, or the `session_id` at the top of the hook input (Claude
  Code writes it first), found without a JSON parser;
- the daemon's reply says `"flagged": false`.

Anything else (a config file to read, an input this cannot be sure of, a session that IS
flagged, whose reason the stop message quotes) returns ASK_AGAIN, and the caller runs the full
guard. Like it, this never stops an agent by mistake: no daemon, no answer in time or a reply
it cannot read mean "not flagged".
"""

import _socket
import posix

from ralph_monitor.agent.hook_start import ACK_TIMEOUT_S, Options, canonical_uuid


class AskAgain:
    """The type of ASK_AGAIN."""


ASK_AGAIN = AskAgain()
"""quick_verdict's answer when the full guard (agent/guard.py) must decide."""
MAX_REPLY_BYTES = 64 << 10
SOCKET_ENV = b"RALPH_MONITOR_SOCKET"
SESSION_ENV = b"RALPH_SESSION_ID"
SESSION_KEY = b'"session_id"'


def quick_verdict(argv: list[str], raw: bytes) -> AskAgain | None:
    """None when the session is not flagged (or the daemon cannot say), ASK_AGAIN when the
    full guard must decide (see the module doc)."""
    options = Options(argv)
    socket_path = options.socket
    if socket_path is None and not options.config:
        env_socket = posix.environ.get(SOCKET_ENV)
        socket_path = env_socket.decode(errors="surrogateescape") if env_socket else None
    if socket_path is None:
        return ASK_AGAIN  # the socket is in the config file
    loop_session = posix.environ.get(SESSION_ENV)
    session_id = canonical_uuid(loop_session.decode(errors="replace")) if loop_session else None
    if session_id is None:  # not under a loop: Claude Code's own session
        found = top_session_id(raw)
        if isinstance(found, AskAgain):
            return ASK_AGAIN
        session_id = found
    if session_id is None:
        return None  # no session to guard: the full guard stops nothing either
    reply = ask(socket_path, session_id)
    if reply is None:
        return None
    compact = reply.replace(b" ", b"")
    if b'"ok":true' not in compact:
        return None
    return None if b'"flagged":false' in compact else ASK_AGAIN


def top_session_id(raw: bytes) -> str | AskAgain | None:
    """The hook input's `session_id` when it comes before any nested object or list, as Claude
    Code writes it; None when the input has none at all; ASK_AGAIN when it cannot be sure."""
    at = raw.find(SESSION_KEY)
    if at < 0:
        return None
    before = raw[:at]
    if before.count(b"{") != 1 or b"[" in before or b"\\" in before or not before.lstrip().startswith(b"{"):
        return ASK_AGAIN  # the key may sit in a nested object, or a string may hold braces
    rest = raw[at + len(SESSION_KEY):].lstrip()
    if not rest.startswith(b":"):
        return ASK_AGAIN
    rest = rest[1:].lstrip()
    if not rest.startswith(b'"'):
        return None  # not a string: not a session id (the full guard says the same)
    end = rest.find(b'"', 1)
    if end < 0 or b"\\" in rest[1:end]:
        return ASK_AGAIN
    return canonical_uuid(rest[1:end].decode(errors="replace"))


def ask(socket_path: str, session_id: str) -> bytes | None:
    """The daemon's reply line to session_flags, or None when it cannot be asked in time."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(ACK_TIMEOUT_S)  # session_flags is answered from memory
        sock.connect(socket_path)
        sock.sendall(b'{"query": "session_flags", "session_id": "' + session_id.encode() + b'"}\n')
        reply = b""
        while b"\n" not in reply and len(reply) < MAX_REPLY_BYTES:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply if b"\n" in reply else None
    except OSError:
        return None
    finally:
        sock.close()
