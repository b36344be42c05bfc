"""Send events to the daemon over its Unix socket and read the acknowledgements.

`Client` is what agents use: thread-safe, keeps one connection and reconnects, spools
events locally (see `agent.spool`) when the daemon is away, and has context managers that
report a session and each spec run:

    from ralph_monitor.agent.client import Client

    client = Client()                         # socket from $RALPH_MONITOR_SOCKET or the config
    with client.session("nightly", total_specs=len(specs)):
        for spec in specs:
            with client.spec(spec) as run:    # spec_started ... spec_completed / spec_failed
                result = work_on(spec)
                run.set(tokens_used=result.tokens, cost_usd=result.cost)

This module stays light (no database driver): the Claude Code hook imports it on every call.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ralph_monitor.agent.spool import TRANSIENT_CODES, ClientSpool, FlushResult
from ralph_monitor.errors import ClientError, RalphMonitorError



def _log() -> Any:
    import logging  # not at import time: the hook imports this module on every call

    return logging.getLogger(__name__)


def new_uuid() -> str:
    """A UUIDv7 string (RFC 9562: milliseconds since the epoch, then 74 random bits), without
    importing `uuid` (slow to import). Time-ordered ids go to the right edge of the database's
    unique indexes instead of all over them."""
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

DEFAULT_TIMEOUT_S = 5.0
MAX_REPLY_BYTES = 65_536
SOCKET_ENV = "RALPH_MONITOR_SOCKET"
SESSION_ENV = "RALPH_SESSION_ID"
SPEC_ENV = "RALPH_SPEC_ID"
MAX_ERROR_CHARS = 8_000


class EventRejected(ClientError):
    """The daemon refused the event; `code` is its machine-readable reason."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"rejected: {reply.get('error')}")
        self.code = reply.get("code")
        self.reply = reply


def utc_now() -> str:
    """Now as RFC 3339 in UTC, to the microsecond."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def utc_from_ns(ns: int) -> str:
    """A `time.time_ns()` reading as RFC 3339 in UTC, to the microsecond."""
    moment = datetime.fromtimestamp(ns // 1_000_000_000, timezone.utc).replace(microsecond=ns // 1000 % 1_000_000)
    return moment.isoformat().replace("+00:00", "Z")


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


def new_event(event_type: str, *, session_id: str | None = None, spec_id: str | None = None,
              data: dict[str, Any] | None = None, ts: str | None = None,
              event_id: str | None = None) -> dict[str, Any]:
    """Like `build_event`, but with `event_id` and `ts` fixed now, when the event happens:
    a resend (from the spool, after a timeout) is then the same event, stored once, at its
    original time."""
    return build_event(event_type, session_id=session_id, spec_id=spec_id, data=data,
                       ts=ts or utc_now(), event_id=event_id or new_uuid())


def encode_event(event: dict[str, Any]) -> bytes:
    """One wire line. Characters PostgreSQL cannot store (lone surrogates) become U+FFFD."""
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode("utf-8", "replace") + b"\n"


def resolve_socket_path(config: str | os.PathLike[str] | None = None) -> str:
    """$RALPH_MONITOR_SOCKET, else [socket] path from the config file (or its default)."""
    explicit = os.environ.get(SOCKET_ENV)
    if explicit and config is None:
        return explicit
    from ralph_monitor.config import load_settings

    return load_settings(config).socket_path


def _client_error(exc: OSError, socket_path: str, timeout_s: float) -> ClientError:
    if isinstance(exc, FileNotFoundError):
        return ClientError(f"no daemon socket at {socket_path}; is ralph-monitor running? "
                           "(start it with: ralph-monitor run)")
    if isinstance(exc, PermissionError):
        return ClientError(f"permission denied on {socket_path}; add this user to the socket's group "
                           "([socket] group, default 'ralph')")
    if isinstance(exc, TimeoutError):
        return ClientError(f"the daemon at {socket_path} did not answer within {timeout_s:g} s")
    if isinstance(exc, ConnectionRefusedError):
        return ClientError(f"nothing is listening on {socket_path}; is ralph-monitor running?")
    return ClientError(f"cannot talk to the daemon at {socket_path}: {exc.strerror or exc}")


class Connection:
    """One socket connection: send lines, read one reply line per line, in order."""

    def __init__(self, socket_path: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    def open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise _client_error(exc, self.socket_path, self.timeout_s) from None
        self._sock = sock
        self._buffer.clear()

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def stale(self) -> bool:
        """Has the daemon closed this (idle) connection or said something unasked?"""
        if self._sock is None:
            return True
        if self._buffer:
            return True
        readable, _, _ = select.select([self._sock], [], [], 0)
        return bool(readable)

    def exchange(self, lines: Sequence[bytes]) -> list[dict[str, Any]]:
        """Send the lines (each ending in a newline); return their replies. Raises ClientError."""
        if self._sock is None:
            self.open()
        assert self._sock is not None
        try:
            self._sock.sendall(b"".join(lines))
            return [self._read_reply() for _ in lines]
        except OSError as exc:
            self.close()
            raise _client_error(exc, self.socket_path, self.timeout_s) from None
        except ClientError:
            self.close()
            raise

    def _read_reply(self) -> dict[str, Any]:
        assert self._sock is not None
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                try:
                    reply = json.loads(line)
                except ValueError:
                    raise ClientError(f"the daemon at {self.socket_path} sent an unreadable reply") from None
                if not isinstance(reply, dict):
                    raise ClientError(f"the daemon at {self.socket_path} sent an unreadable reply")
                return reply
            if len(self._buffer) > MAX_REPLY_BYTES:
                raise ClientError(f"the daemon at {self.socket_path} sent an overlong reply")
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ClientError(f"the daemon at {self.socket_path} closed the connection without a reply")
            self._buffer += chunk

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._buffer.clear()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_event(socket_path: str, event: dict[str, Any], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Send one event on a fresh connection and return the daemon's reply (no spool).
    Raises ClientError on any failure."""
    with Connection(socket_path, timeout_s=timeout_s) as conn:
        return conn.exchange([encode_event(event)])[0]


def flush_spool(spool: ClientSpool, socket_path: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                deadline: float | None = None, wait: bool = False) -> FlushResult:
    """Deliver a spool on one connection of its own (connected first: nothing moves in the
    spool while the daemon is away). Raises ClientError if the daemon cannot be reached."""
    with Connection(socket_path, timeout_s=timeout_s) as conn:
        conn.open()
        return spool.flush(conn.exchange, deadline=deadline, wait=wait)


def deliver(line: bytes, socket_path: str, spool: ClientSpool | None, *, timeout_s: float,
            deadline: float | None = None, connection: Connection | None = None) -> dict[str, Any]:
    """Send one encoded event, the spool first; spool it when the daemon is away.

    Returns the daemon's reply, or `{"ok": true, "id": ..., "client_spooled": true, ...}`
    when the event went to the spool. Raises ClientError when it was neither delivered nor
    spooled (no spool, or the spool cannot be written) and EventRejected when the daemon
    refused it."""
    if spool is not None and spool.has_pending():
        try:
            flush_spool(spool, socket_path, timeout_s=timeout_s, deadline=deadline)
        except (ClientError, OSError) as exc:
            _log().debug("spool not delivered: %s", exc)
        if spool.has_pending():  # keep the order: behind what is still waiting
            return _spooled(spool, line)
    conn = connection or Connection(socket_path, timeout_s=timeout_s)
    try:
        reply = _request(conn, line, reused=connection is not None and connection.is_open)
    except ClientError:
        if spool is None:
            raise
        return _spooled(spool, line)
    finally:
        if connection is None:
            conn.close()
    if not reply.get("ok"):
        raise EventRejected(reply)
    return reply


def _request(conn: Connection, line: bytes, *, reused: bool) -> dict[str, Any]:
    if reused and conn.stale():
        conn.close()
        reused = False
    try:
        reply = conn.exchange([line])[0]
    except ClientError:
        if not reused:
            raise
        reply = conn.exchange([line])[0]  # the daemon may have closed an idle connection
    if not reply.get("ok") and reply.get("code") in TRANSIENT_CODES:
        conn.close()
        if reused and reply.get("code") == "idle_timeout":
            return _request(conn, line, reused=False)
        raise ClientError(f"the daemon is busy: {reply.get('error')}")
    return reply


def _spooled(spool: ClientSpool, line: bytes) -> dict[str, Any]:
    spool.append([line])
    try:
        event_id = json.loads(line).get("event_id")
    except ValueError:
        event_id = None
    return {"ok": True, "id": event_id, "client_spooled": True, "spool": str(spool.directory)}


class Client:
    """A thread-safe client for agents. Events get their `event_id` and `ts` when created;
    when the daemon is unreachable they go to the per-user spool (unless `spool=False`)
    and are delivered, in order and once, by the next successful send or `flush()`."""

    def __init__(self, socket_path: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 spool: bool = True, spool_dir: str | os.PathLike[str] | None = None,
                 session_id: str | None = None, config: str | os.PathLike[str] | None = None) -> None:
        self.socket_path = socket_path or resolve_socket_path(config)
        self.timeout_s = timeout_s
        self.spool = ClientSpool.for_socket(self.socket_path, Path(spool_dir) if spool_dir else None) if spool else None
        self.session_id = session_id or os.environ.get(SESSION_ENV) or None
        self._conn = Connection(self.socket_path, timeout_s=timeout_s)
        import threading

        self._lock = threading.RLock()
        self._sessions: dict[str, SessionRun] = {}

    # sending

    def emit(self, event_type: str, *, session_id: str | None = None, spec_id: str | None = None,
             data: dict[str, Any] | None = None, ts: str | None = None, event_id: str | None = None,
             **fields: Any) -> dict[str, Any]:
        """Send one event (extra keyword arguments go into `data`); returns the reply.
        Raises EventRejected if the daemon refuses it, ClientError if it could be neither
        delivered nor spooled."""
        merged = {**(data or {}), **fields}
        event = new_event(event_type, session_id=session_id or self.session_id, spec_id=spec_id,
                          data=merged or None, ts=ts, event_id=event_id)
        return self.send(event)

    def send(self, event: dict[str, Any]) -> dict[str, Any]:
        """Send a ready event object (give it an `event_id` to make resends idempotent)."""
        line = encode_event(event)
        with self._lock:
            return deliver(line, self.socket_path, self.spool, timeout_s=self.timeout_s, connection=self._conn)

    def heartbeat(self, **data: Any) -> dict[str, Any]:
        return self.emit("session_heartbeat", **data)

    def flush(self, *, wait: bool = True) -> FlushResult:
        """Deliver the spool now. Raises ClientError if the daemon cannot be reached."""
        if self.spool is None:
            return FlushResult()
        with self._lock:
            return flush_spool(self.spool, self.socket_path, timeout_s=self.timeout_s, wait=wait)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _quiet_emit(self, event_type: str, **kwargs: Any) -> None:
        """For context managers: monitoring must never break the work it watches."""
        try:
            self.emit(event_type, **kwargs)
        except RalphMonitorError as exc:
            _log().warning("ralph-monitor: %s not recorded: %s", event_type, exc)

    # context managers

    @contextlib.contextmanager
    def session(self, name: str | None = None, *, total_specs: int | None = None,
                metadata: dict[str, Any] | None = None, session_id: str | None = None,
                heartbeat_s: float | None = 60.0) -> Iterator[SessionRun]:
        """Report a session: `session_started`, heartbeats every `heartbeat_s` (None: none),
        then `session_ended` with status completed, failed (an exception) or interrupted
        (KeyboardInterrupt / SystemExit), and the counts of the specs run inside it."""
        run = SessionRun(self, session_id or new_uuid())
        previous = self.session_id
        self.session_id = run.session_id
        self._sessions[run.session_id] = run
        data: dict[str, Any] = {}
        if name is not None:
            data["name"] = name
        if total_specs is not None:
            data["total_specs"] = total_specs
        if metadata is not None:
            data["metadata"] = metadata
        self._quiet_emit("session_started", session_id=run.session_id, data=data)
        import threading

        stop = threading.Event()
        beat = None
        if heartbeat_s:
            beat = threading.Thread(target=self._beat, args=(run.session_id, heartbeat_s, stop),
                                    name="ralph-monitor-heartbeat", daemon=True)
            beat.start()
        status, error = "completed", None
        try:
            yield run
        except Exception as exc:
            status, error = "failed", _error_text(exc)
            raise
        except BaseException as exc:
            status, error = "interrupted", type(exc).__name__
            raise
        finally:
            stop.set()
            if beat is not None:
                beat.join(timeout=self.timeout_s)
            end = run.summary()
            end["status"] = run.status if run.status and status == "completed" else status
            if error:
                end["error"] = error
            self._quiet_emit("session_ended", session_id=run.session_id, data=end)
            self._sessions.pop(run.session_id, None)
            self.session_id = previous

    def _beat(self, session_id: str, every_s: float, stop: Any) -> None:
        while not stop.wait(every_s):
            self._quiet_emit("session_heartbeat", session_id=session_id)

    @contextlib.contextmanager
    def spec(self, spec_id: str, *, session_id: str | None = None, **data: Any) -> Iterator[SpecRun]:
        """Report one spec run: `spec_started`, then `spec_completed` (with `duration_s` and
        what was `set()`), or `spec_failed` with the exception text when the body raises or
        calls `fail()`. The exception is re-raised."""
        sid = session_id or self.session_id
        run = SpecRun(spec_id)
        self._quiet_emit("spec_started", session_id=sid, spec_id=spec_id, data=data or None)
        started = time.monotonic()
        outcome = "completed"
        try:
            yield run
        except Exception as exc:
            outcome = "failed"
            run.error = run.error or _error_text(exc)
            import traceback

            run.data.setdefault("traceback", "".join(traceback.format_exception(exc))[-MAX_ERROR_CHARS:])
            raise
        except BaseException as exc:
            outcome = "interrupted"
            run.error = run.error or f"interrupted ({type(exc).__name__})"
            raise
        finally:
            if run.error is not None and outcome == "completed":
                outcome = "failed"
            end = {**run.data, "duration_s": round(time.monotonic() - started, 3)}
            session = self._sessions.get(sid) if sid else None
            if session is not None:
                session.count(outcome, end)
            if outcome == "interrupted" and session is not None:
                pass  # the session's session_ended (interrupted) closes the run as interrupted
            elif outcome == "completed":
                self._quiet_emit("spec_completed", session_id=sid, spec_id=spec_id, data=end)
            else:
                end["error"] = run.error
                self._quiet_emit("spec_failed", session_id=sid, spec_id=spec_id, data=end)


class SpecRun:
    """What a `Client.spec()` block reports when it ends."""

    def __init__(self, spec_id: str) -> None:
        self.spec_id = spec_id
        self.data: dict[str, Any] = {}
        self.error: str | None = None

    def set(self, **data: Any) -> None:
        """Add fields to the closing event, e.g. tokens_used=..., cost_usd=..., output_summary=..."""
        self.data.update(data)

    def fail(self, error: str) -> None:
        """Report the run as failed (without raising)."""
        self.error = error


class SessionRun:
    """The session of a `Client.session()` block; counts the spec runs inside it."""

    def __init__(self, client: Client, session_id: str) -> None:
        self.client = client
        self.session_id = session_id
        self.status: str | None = None
        self.counts = {"completed": 0, "failed": 0, "interrupted": 0}
        self.tokens_used = 0
        self.cost_usd = 0.0
        import threading

        self._lock = threading.Lock()

    def count(self, outcome: str, data: dict[str, Any]) -> None:
        with self._lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
            tokens, cost = data.get("tokens_used"), data.get("cost_usd")
            if isinstance(tokens, (int, float)) and not isinstance(tokens, bool):
                self.tokens_used += int(tokens)
            if isinstance(cost, (int, float)) and not isinstance(cost, bool):
                self.cost_usd += float(cost)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            summary: dict[str, Any] = {"specs_completed": self.counts["completed"],
                                       "specs_failed": self.counts["failed"]}
            if self.tokens_used:
                summary["tokens_used"] = self.tokens_used
            if self.cost_usd:
                summary["cost_usd"] = round(self.cost_usd, 6)
            return summary

    def emit(self, event_type: str, **kwargs: Any) -> dict[str, Any]:
        """Emit an event in this session (e.g. intervention_request)."""
        return self.client.emit(event_type, session_id=self.session_id, **kwargs)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_CHARS]
