"""Send events to the daemon over its Unix socket and read the acknowledgements."""

from __future__ import annotations

import json
import socket
from typing import Any

from ralph_monitor.errors import ClientError

DEFAULT_TIMEOUT_S = 5.0
MAX_REPLY_BYTES = 65_536


def build_event(event_type: str, *, session_id: str | None = None, spec_id: str | None = None,
                data: dict[str, Any] | None = None, ts: str | None = None,
                event_id: str | None = None) -> dict[str, Any]:
    """An event object in the wire format, leaving out fields that are not set."""
    event: dict[str, Any] = {"type": event_type}
    for key, value in (("session_id", session_id), ("spec_id", spec_id), ("ts", ts),
                       ("event_id", event_id), ("data", data)):
        if value is not None:
            event[key] = value
    return event


def send_event(socket_path: str, event: dict[str, Any], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Send one event and return the daemon's reply. Raises ClientError on any failure."""
    line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(socket_path)
            sock.sendall(line)
            reply = bytearray()
            while not reply.endswith(b"\n") and len(reply) < MAX_REPLY_BYTES:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except FileNotFoundError:
        raise ClientError(f"no daemon socket at {socket_path}; is ralph-monitor running? "
                          "(start it with: ralph-monitor run)") from None
    except PermissionError:
        raise ClientError(f"permission denied on {socket_path}; add this user to the socket's group "
                          "([socket] group, default 'ralph')") from None
    except TimeoutError:
        raise ClientError(f"the daemon at {socket_path} did not answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise ClientError(f"cannot talk to the daemon at {socket_path}: {exc.strerror or exc}") from None
    if not reply.endswith(b"\n"):
        raise ClientError(f"the daemon at {socket_path} closed the connection without a reply")
    return json.loads(reply)
