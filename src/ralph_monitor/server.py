"""The Unix-socket server: newline-delimited JSON in, one JSON reply line per event out.

Each connection splits its byte stream into lines with bounded memory (an oversized line
is discarded up to its newline, keeping only an excerpt), validates each line, queues
valid events for the group-commit writer and answers in order. Reading pauses while the
writer's queue is full or the client does not read its replies (backpressure).
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import resource
import socket
import struct
import sys
import time
from collections import deque
from datetime import datetime, timezone

from ralph_monitor.config import Settings
from ralph_monitor.errors import ConfigError, InvalidEvent
from ralph_monitor.ingest import Ingestor, Slot, Stats
from ralph_monitor.protocol import Origin, error_reply, make_reject, parse_line

log = logging.getLogger(__name__)

READ_PAUSE_QUEUE = "queue"
READ_PAUSE_WRITES = "writes"
WRITE_BUFFER_HIGH_BYTES = 1 << 20
IDLE_SWEEP_INTERVAL_S = 1.0
LISTEN_BACKLOG = socket.SOMAXCONN
"""Pending connections the kernel queues before connect() fails with EAGAIN."""
FD_RESERVE = 64
"""File descriptors kept for everything but clients (database, spool, logs, backups)."""
_PEERCRED = struct.Struct("3i")
REJECT_WINDOW_S = 60.0
"""The window of [limits] max_rejects_per_minute."""
REFUSAL_LOG_INTERVAL_S = 10.0
"""Refused and evicted connections are logged at most this often (with how many), so a flood
of connections cannot flood the journal, and is never silent either."""


def peer_origin(sock: socket.socket | None, host: str) -> Origin:
    """The writer's pid and uid from SO_PEERCRED (None when unavailable)."""
    if sock is None:
        return Origin(host=host, uid=None, pid=None)
    try:
        pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except OSError:
        return Origin(host=host, uid=None, pid=None)
    return Origin(host=host, uid=uid, pid=pid)


def ensure_fd_limit(max_connections: int) -> None:
    """Raise the soft RLIMIT_NOFILE (systemd's default is 1024) so [limits] max_connections fits;
    otherwise accept() fails with EMFILE and clients over the limit wait instead of being told."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + FD_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
        target = soft
    if target < needed:
        log.warning("[limits] max_connections %d needs %d open files but the limit is %d; raise LimitNOFILE= "
                    "for the service or lower max_connections", max_connections, needed, target)


class RejectBudget:
    """How many more rejected lines each writer uid may have recorded this minute, so a client
    cannot fill the rejects table and the journal by reconnecting for a fresh per-connection
    budget. Lines over budget are still answered."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._used: dict[int | None, tuple[float, int]] = {}

    def take(self, uid: int | None) -> bool:
        """Count one recorded reject for `uid`; False when its budget for this minute is spent."""
        now = time.monotonic()
        started, used = self._used.get(uid, (now, 0))
        if now - started >= REJECT_WINDOW_S:
            started, used = now, 0
            if len(self._used) > 1000:   # forget uids whose window is over
                self._used = {k: v for k, v in self._used.items() if now - v[0] < REJECT_WINDOW_S}
        if used >= self._per_minute:
            return False
        self._used[uid] = (started, used + 1)
        if used + 1 == self._per_minute:
            log.warning("uid %s had %d rejected lines recorded within a minute ([limits] max_rejects_per_minute); "
                        "further ones are answered but not recorded until the minute is over", uid, used + 1)
        return True


class RefusalLog:
    """Counts refused and evicted connections and logs them, at most once per interval."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._pending: dict[str, int] = {}
        self._logged_at = -REFUSAL_LOG_INTERVAL_S

    def count(self, what: str, *, evicted: bool) -> None:
        if evicted:
            self._stats.connections_evicted += 1
        else:
            self._stats.connections_refused += 1
        self._pending[what] = self._pending.get(what, 0) + 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_INTERVAL_S:
            self._logged_at = now
            log.warning("connections in the last %g s: %s", REFUSAL_LOG_INTERVAL_S,
                        "; ".join(f"{n} {reason}" for reason, n in self._pending.items()))
            self._pending.clear()


class Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: EventServer) -> None:
        self._server = server
        self._settings = server.settings
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._discarding = 0
        """Bytes of an oversized line dropped so far (0: not discarding)."""
        self._discarded_head = b""
        self._slots: deque[Slot] = deque()
        self._pauses: set[str] = set()
        self._stalled = False
        """Complete lines wait in the buffer because reading was paused in the middle of them."""
        self._eof = False
        self._closed = False
        self._rejects_recorded = 0
        self._lane = server.ingestor.assign_lane()
        self.origin = Origin(host=server.host, uid=None, pid=None)
        self.last_activity = time.monotonic()

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES)
        self.origin = peer_origin(transport.get_extra_info("socket"), self._server.host)
        refusal = self._server.register(self)
        if refusal is not None:
            transport.write(refusal)
            transport.close()
            self._closed = True
            return
        if self._server.reading_paused:
            self.pause(READ_PAUSE_QUEUE)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self._server.last_activity = time.monotonic()
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                self._discarding += len(data)
                return
            self._finish_oversized(self._discarding + newline)
            data = data[newline + 1:]
        self._buffer += data
        self._take_lines()

    def eof_received(self) -> bool:
        self._eof = True
        if self._discarding:
            self._finish_oversized(self._discarding)
        elif self._buffer.strip():
            line = bytes(self._buffer)
            self._buffer.clear()
            self._handle_line(line, datetime.now(timezone.utc))
        self._buffer.clear()
        self._close_if_done()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.unregister(self)

    def pause_writing(self) -> None:
        self.pause(READ_PAUSE_WRITES)

    def resume_writing(self) -> None:
        self.resume(READ_PAUSE_WRITES)

    # line handling

    def _take_lines(self) -> None:
        buffer = self._buffer
        start = 0
        max_line = self._settings.limits_max_line_bytes
        self._stalled = False
        received_at = datetime.now(timezone.utc)   # one clock read per read, not per line
        while True:
            if self._pauses:
                # Backpressure holds inside one read too: a read of 256 KiB can hold 100,000 lines,
                # whose replies would otherwise all be buffered. The rest waits for resume().
                self._stalled = True
                break
            newline = buffer.find(b"\n", start)
            if newline < 0:
                break
            if newline - start > max_line:
                self._discarded_head = bytes(buffer[start:start + self._settings.limits_reject_excerpt_bytes])
                self._report_oversized(newline - start)
            else:
                self._handle_line(buffer[start:newline], received_at)
            start = newline + 1
        del buffer[:start]
        if not self._stalled and len(buffer) > max_line:
            self._discarded_head = bytes(buffer[: self._settings.limits_reject_excerpt_bytes])
            self._discarding = len(buffer)
            buffer.clear()

    def _finish_oversized(self, size: int) -> None:
        self._discarding = 0
        self._report_oversized(size)

    def _report_oversized(self, size: int) -> None:
        limit = self._settings.limits_max_line_bytes
        self._refuse(self._discarded_head, InvalidEvent(
            "line_too_long", f"line of {size} bytes exceeds the limit of {limit} bytes ([limits] max_line_bytes)"),
            line_bytes=size)
        self._discarded_head = b""

    def _handle_line(self, raw: bytes | bytearray, received_at: datetime) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw or raw.isspace():
            return
        try:
            event = parse_line(raw, received_at=received_at, origin=self.origin)
        except InvalidEvent as exc:
            self._refuse(raw, exc)
            return
        slot = Slot()
        self._slots.append(slot)
        self._server.ingestor.submit(event, slot, self, lane=self._lane)

    def _refuse(self, raw: bytes | bytearray, error: InvalidEvent, *, line_bytes: int | None = None) -> None:
        self._slots.append(Slot(error_reply(error.code, str(error))))
        limit = self._settings.limits_max_rejects_per_connection
        if self._rejects_recorded < limit and self._server.reject_budget.take(self.origin.uid):
            self._rejects_recorded += 1
            reject = make_reject(raw, error, received_at=datetime.now(timezone.utc), origin=self.origin,
                                 excerpt_bytes=self._settings.limits_reject_excerpt_bytes,
                                 line_bytes=line_bytes)
            self._server.ingestor.submit(reject, None, None, lane=self._lane)
            # Logged as bounded as recorded, so a client cannot flood the journal either.
            log.info("rejected a line from pid %s uid %s: %s", self.origin.pid, self.origin.uid, error)
            if self._rejects_recorded == limit:
                log.warning("pid %s uid %s reached %d rejected lines on one connection ([limits] "
                            "max_rejects_per_connection); further ones are answered but not recorded",
                            self.origin.pid, self.origin.uid, limit)
        self.flush_replies()

    # replies and flow control

    def flush_replies(self) -> None:
        """Write every reply whose turn has come (replies keep the order of the lines)."""
        slots = self._slots
        out = []
        while slots and slots[0].reply is not None:
            out.append(slots.popleft().reply)
        if out and not self._closed and self._transport is not None:
            self._transport.write(b"".join(out))  # type: ignore[arg-type]
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._eof and not self._slots and self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()

    @property
    def awaiting_replies(self) -> bool:
        return bool(self._slots)

    def pause(self, reason: str) -> None:
        if not self._pauses and self._transport is not None and not self._closed:
            self._transport.pause_reading()
        self._pauses.add(reason)

    def resume(self, reason: str) -> None:
        self._pauses.discard(reason)
        if self._pauses or self._transport is None or self._closed:
            return
        if self._stalled:
            # Finish the lines already read first, from a callback of its own (not from inside
            # the writer or the server that resumed us).
            asyncio.get_running_loop().call_soon(self._continue_lines)
        else:
            self._transport.resume_reading()

    def _continue_lines(self) -> None:
        if self._pauses or self._transport is None or self._closed:
            return
        self._take_lines()
        if not self._pauses:
            self._transport.resume_reading()

    def close_idle(self) -> None:
        """Cut off a client that sent nothing for too long."""
        self.close_with(error_reply(
            "idle_timeout", f"no data for {self._settings.limits_idle_timeout_s:g} s "
            "([limits] idle_timeout_s); closing"))

    def close_with(self, reply: bytes) -> None:
        """Send one last error line and close."""
        if self._transport is not None and not self._closed:
            self._transport.write(reply)
            self._closed = True
            self._transport.close()

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()


class EventServer:
    """Accepts connections on the listening socket and wires them to the ingestor."""

    def __init__(self, settings: Settings, ingestor: Ingestor, *, host: str) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.host = host
        self.reading_paused = False
        self.reject_budget = RejectBudget(settings.limits_max_rejects_per_minute)
        self._connections: set[Connection] = set()
        self._per_uid: dict[int | None, int] = {}
        self.refusals = RefusalLog(ingestor.stats)
        self.last_activity = time.monotonic()
        """When a client last connected or sent data (for the quiet period before shutdown)."""
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def register(self, conn: Connection) -> bytes | None:
        """Admit a new connection, closing the longest-idle one to make room if a limit is
        reached; None when admitted, else the error line that refuses it."""
        self.last_activity = time.monotonic()
        uid = conn.origin.uid
        limits = self.settings
        if self._per_uid.get(uid, 0) >= limits.limits_max_connections_per_uid and not self._evict(
                uid, f"uid {uid} already has {limits.limits_max_connections_per_uid} connections "
                     "([limits] max_connections_per_uid)"):
            self.refusals.count(f"refused for uid {uid} at [limits] max_connections_per_uid", evicted=False)
            return error_reply(
                "too_many_connections_for_uid",
                f"uid {uid} already has {limits.limits_max_connections_per_uid} connections open "
                "([limits] max_connections_per_uid), none idle; close some or retry shortly")
        if len(self._connections) >= limits.limits_max_connections and not self._evict(
                None, f"the daemon serves {limits.limits_max_connections} connections "
                      "([limits] max_connections)"):
            self.refusals.count("refused at [limits] max_connections", evicted=False)
            return error_reply(
                "too_many_connections",
                f"the daemon already serves {limits.limits_max_connections} connections "
                "([limits] max_connections); retry shortly")
        self._connections.add(conn)
        self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
        return None

    def _evict(self, uid: int | None, why: str) -> bool:
        """Close the longest-idle connection (of `uid`, if given) when it has been silent for
        [limits] evict_idle_after_s; whether one was closed."""
        cutoff = time.monotonic() - self.settings.limits_evict_idle_after_s
        candidates = [c for c in self._connections
                      if c.last_activity <= cutoff and not c.awaiting_replies and (uid is None or c.origin.uid == uid)]
        if not candidates:
            return False
        victim = min(candidates, key=lambda c: c.last_activity)
        idle_s = time.monotonic() - victim.last_activity
        victim.close_with(error_reply(
            "evicted_idle", f"{why}; this connection was the longest idle ({idle_s:.0f} s without data) "
            "and is closed to make room; reconnect when there is something to send"))
        self.unregister(victim)
        self.refusals.count("idle connections closed to make room", evicted=True)
        return True

    def unregister(self, conn: Connection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            left = self._per_uid.get(conn.origin.uid, 1) - 1
            if left > 0:
                self._per_uid[conn.origin.uid] = left
            else:
                self._per_uid.pop(conn.origin.uid, None)

    def on_queue_change(self, pending: int) -> None:
        """Backpressure: stop reading when the writer's queue is full, resume at half."""
        limit = self.settings.limits_max_pending_events
        if not self.reading_paused and pending >= limit:
            self.reading_paused = True
            for conn in self._connections:
                conn.pause(READ_PAUSE_QUEUE)
        elif self.reading_paused and pending <= limit // 2:
            self.reading_paused = False
            for conn in list(self._connections):
                conn.resume(READ_PAUSE_QUEUE)

    async def start(self, sock: socket.socket) -> None:
        ensure_fd_limit(self.settings.limits_max_connections)
        loop = asyncio.get_running_loop()
        # Python 3.13+ would unlink the socket file on close; systemd owns it (socket activation).
        extra = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
        self._server = await loop.create_unix_server(lambda: Connection(self), sock=sock, **extra)
        # asyncio has just called listen(100): its backlog argument is also how many connections
        # it accepts in one go, and a large burst would count clients that already left against
        # [limits] max_connections. Keep its batch of 100 but give the kernel queue room again.
        sock.listen(LISTEN_BACKLOG)
        self._sweeper = asyncio.create_task(self._sweep_idle(), name="idle-sweeper")

    async def _sweep_idle(self) -> None:
        timeout = self.settings.limits_idle_timeout_s
        while True:
            await asyncio.sleep(min(IDLE_SWEEP_INTERVAL_S, timeout / 2))
            cutoff = time.monotonic() - timeout
            for conn in list(self._connections):
                if conn.last_activity < cutoff and not conn.awaiting_replies:
                    conn.close_idle()

    async def quiesce(self, *, quiet_s: float, max_s: float) -> None:
        """Keep serving until clients have been quiet for `quiet_s` (at most `max_s`), so a
        client that wrote and closed just before shutdown (socat) is still read and stored."""
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline and time.monotonic() - self.last_activity < quiet_s:
            await asyncio.sleep(quiet_s / 4)

    async def stop_accepting(self) -> None:
        """Stop accepting connections (the listening socket itself stays open for systemd)."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in self._connections:
            conn.pause("shutdown")

    def close_connections(self) -> None:
        for conn in list(self._connections):
            conn.close()


def bind_socket(settings: Settings) -> socket.socket:
    """Create the listening socket at [socket] path with its mode and group."""
    path = settings.socket_path
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"[socket] path {path}: cannot create {directory}: {exc.strerror}") from None
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    if settings.socket_group:
        try:
            gid = grp.getgrnam(settings.socket_group).gr_gid
        except KeyError:
            log.warning("[socket] group %r does not exist; the socket keeps group %d. "
                        "Create it (groupadd %s) and add agent users to it",
                        settings.socket_group, os.getgid(), settings.socket_group)
        else:
            os.chown(path, -1, gid)
    os.chmod(path, settings.socket_mode_bits)
    sock.listen(LISTEN_BACKLOG)
    return sock


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a crashed daemon; refuse to steal a live one."""
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise ConfigError(f"another process is already listening on {path} ([socket] path); "
                          "stop it or choose another path")
    finally:
        probe.close()


def refuse_if_served(settings: Settings) -> None:
    """Raise ConfigError when another daemon already serves [socket] path (outside socket
    activation): checked before anything else starts, so a second copy touches nothing of the
    first's (its private PostgreSQL cluster above all)."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(settings.socket_path)
    except OSError:
        return
    finally:
        probe.close()
    raise ConfigError(f"another ralph-monitor is already listening on {settings.socket_path} ([socket] path); "
                      "stop it first, or give this one its own config (another [socket] path and "
                      "[paths] state_dir)")


def activated_socket() -> socket.socket | None:
    """The listening socket passed by systemd socket activation (LISTEN_FDS), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0"))
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    sock = socket.socket(fileno=3)
    sock.setblocking(False)
    return sock
