"""The agent side's own spool: events an agent reported while the daemon could not take them.

When the socket is missing or the daemon does not answer in time, `emit`, the Python client
and the Claude Code hook append the event here (fsync'd) and report success to the agent.
The next successful send, or `ralph-monitor flush`, delivers the spool first, in order.
Every spooled event carries its own `event_id` (set when the event was created), so an
event sent twice (a crash or timeout after the daemon stored it) is stored once.

One directory per user and daemon socket (named after the socket's path), mode 0700:

    spool.jsonl          appended to under `append.lock` (held only for write + fsync)
    sending.<n>.jsonl    segments a flusher took over from spool.jsonl (oldest first)
    flush.lock           held by the one process delivering segments
    rejected.jsonl       lines the daemon refused (they would never be accepted), with why
    backoff              its mtime (in the future) says until when the hook should not wait for
                         a daemon that just failed to answer in time

A flush renames `spool.jsonl` to a new segment under the append lock, so appenders never
wait for the network; only the flusher ever rewrites or deletes a segment.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ralph_monitor.errors import ClientError, SpoolError

SPOOL_DIR_ENV = "RALPH_MONITOR_CLIENT_SPOOL"
SPOOL_FILE = "spool.jsonl"
SEGMENT_PREFIX = "sending."
SEGMENT_SUFFIX = ".jsonl"
REJECTED_FILE = "rejected.jsonl"
DIR_MODE = 0o700
FILE_MODE = 0o600
FLUSH_BATCH = 200
"""Lines sent on one connection before reading their replies."""

SendBatch = Callable[[Sequence[bytes]], list[dict[str, Any]]]
"""Sends lines (each ending in a newline) and returns one reply per line, in order;
raises ClientError when the daemon cannot be reached or stops answering."""


def default_base_dir() -> Path:
    """Where per-user spools live: $RALPH_MONITOR_CLIENT_SPOOL, else the XDG state dir."""
    explicit = os.environ.get(SPOOL_DIR_ENV)
    if explicit:
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME")
    if state:
        return Path(state) / "ralph-monitor" / "client-spool"
    home = os.environ.get("HOME")
    if home and os.access(home, os.W_OK):
        return Path(home) / ".local" / "state" / "ralph-monitor" / "client-spool"
    return Path("/tmp") / f"ralph-monitor-{os.getuid()}" / "client-spool"


def spool_dir_for(socket_path: str, base: Path | None = None) -> Path:
    """The spool directory for one daemon socket (events must go back where they were
    meant to): its absolute path with `%` and `/` escaped, e.g. `%2Frun%2Fralph-monitor%2Fevents.sock`."""
    key = os.path.abspath(socket_path).replace("%", "%25").replace("/", "%2F")
    return (base or default_base_dir()) / key


class FlushResult:
    """What a flush did. `error` says why delivery stopped early (daemon unreachable,
    someone else delivering, out of time), if it did; `remaining` is then what waits."""

    def __init__(self) -> None:
        self.delivered = 0
        self.duplicates = 0
        self.rejected = 0
        self.remaining = 0
        self.error: str | None = None

    def __repr__(self) -> str:
        return (f"FlushResult(delivered={self.delivered}, duplicates={self.duplicates}, "
                f"rejected={self.rejected}, remaining={self.remaining}, error={self.error!r})")


class ClientSpool:
    """The spool of one user for one daemon socket."""

    def __init__(self, directory: Path, socket_path: str | None = None) -> None:
        self.directory = directory
        self.socket_path = socket_path

    @classmethod
    def for_socket(cls, socket_path: str, base: Path | None = None) -> ClientSpool:
        return cls(spool_dir_for(socket_path, base), socket_path)

    @property
    def path(self) -> Path:
        return self.directory / SPOOL_FILE

    # appending

    def _ensure_dir(self) -> None:
        try:
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the client spool directory {self.directory}: {exc.strerror}") from None
        info = self.directory.stat()
        if info.st_uid != os.getuid():
            raise SpoolError(f"client spool directory {self.directory} belongs to another user; "
                             f"set ${SPOOL_DIR_ENV} to a directory of your own")

    @contextlib.contextmanager
    def _lock(self, name: str, *, blocking: bool = True) -> Iterator[bool]:
        fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def append(self, lines: Sequence[bytes]) -> None:
        """Append complete event lines and fsync them. Raises SpoolError if they are not safe."""
        if not lines:
            return
        data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
        self._ensure_dir()
        try:
            with self._lock("append.lock"):
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
                try:
                    # A torn line left by a crash mid-write would swallow the next one: start afresh.
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        data = b"\n" + data
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise SpoolError(f"cannot write the client spool {self.path}: {exc.strerror or exc}") from None

    # reading

    def _segments(self) -> list[Path]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        segments = [n for n in names if n.startswith(SEGMENT_PREFIX) and n.endswith(SEGMENT_SUFFIX)]
        return [self.directory / n for n in sorted(segments, key=_segment_number)]

    def has_pending(self) -> bool:
        """Cheap check (no lock): is anything waiting to be delivered?"""
        try:
            if os.stat(self.path).st_size > 0:
                return True
        except FileNotFoundError:
            pass
        return bool(self._segments())

    def pending_count(self) -> int:
        return sum(len(_read_lines(p)) for p in [*self._segments(), self.path])

    def _rotate(self) -> None:
        """Move spool.jsonl to a new segment (under the append lock), so appends go on meanwhile."""
        with self._lock("append.lock"):
            try:
                if os.stat(self.path).st_size == 0:
                    return
            except FileNotFoundError:
                return
            existing = [_segment_number(p.name) for p in self._segments()]
            number = max([time.time_ns(), *(n + 1 for n in existing)])
            os.rename(self.path, self.directory / f"{SEGMENT_PREFIX}{number}{SEGMENT_SUFFIX}")
            _fsync_dir(self.directory)

    def flush(self, send_batch: SendBatch, *, deadline: float | None = None, wait: bool = False) -> FlushResult:
        """Deliver everything spooled, oldest first, until done, the daemon fails, or
        `deadline` (time.monotonic()) passes. Only one process flushes at a time; with
        `wait=False` another flusher makes this return at once with `error` set."""
        result = FlushResult()
        if not self.has_pending():
            return result
        self._ensure_dir()
        with self._lock("flush.lock", blocking=wait) as locked:
            if not locked:
                result.error = "another process is delivering the spool"
                result.remaining = -1
                return result
            # Older segments first; take over spool.jsonl only once they are all delivered, so
            # a daemon that keeps failing leaves one segment, not one per attempt.
            while result.error is None:
                segments = self._segments()
                if not segments:
                    self._rotate()
                    segments = self._segments()
                    if not segments:
                        break
                for segment in segments:
                    if not self._flush_segment(segment, send_batch, deadline, result):
                        break
            if result.error is not None:
                result.remaining = self.pending_count()
        return result

    def back_off(self, seconds: float) -> None:
        """Note that the daemon did not answer: `backing_off()` is true for `seconds`."""
        marker = self.directory / "backoff"
        try:
            self._ensure_dir()
            marker.touch()
            until = time.time() + seconds
            os.utime(marker, (until, until))
        except OSError:
            pass

    def backing_off(self) -> bool:
        try:
            return os.stat(self.directory / "backoff").st_mtime > time.time()
        except OSError:
            return False

    def _flush_segment(self, segment: Path, send_batch: SendBatch, deadline: float | None,
                       result: FlushResult) -> bool:
        lines = _read_lines(segment)
        done = 0
        try:
            while done < len(lines):
                if deadline is not None and time.monotonic() >= deadline:
                    result.error = "out of time"
                    break
                batch = lines[done:done + FLUSH_BATCH]
                replies = send_batch(batch)
                if len(replies) != len(batch):
                    raise ClientError("the daemon answered fewer lines than were sent")
                refused = []
                for line, reply in zip(batch, replies):
                    if reply.get("ok"):
                        result.delivered += 1
                        result.duplicates += bool(reply.get("duplicate"))
                    elif reply.get("code") in TRANSIENT_CODES:
                        raise ClientError(f"the daemon is busy: {reply.get('error')}")
                    else:
                        refused.append((line, reply))
                if refused:
                    self._keep_rejected(refused)
                    result.rejected += len(refused)
                done += len(batch)
        except ClientError as exc:
            result.error = str(exc)
        if done >= len(lines):
            segment.unlink()
            _fsync_dir(self.directory)
            return True
        if done:
            _rewrite(segment, lines[done:])
        return False

    def _keep_rejected(self, refused: list[tuple[bytes, dict[str, Any]]]) -> None:
        records = []
        for line, reply in refused:
            records.append(json.dumps({"reply": reply, "line": line.decode("utf-8", "replace").rstrip("\n")},
                                      separators=(",", ":")).encode() + b"\n")
        fd = os.open(self.directory / REJECTED_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            _write_all(fd, b"".join(records))
            os.fsync(fd)
        finally:
            os.close(fd)


TRANSIENT_CODES = frozenset({"too_many_connections", "idle_timeout"})
"""Refusals that say nothing about the event itself: try again later."""


def _segment_number(name: str) -> int:
    middle = name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)]
    return int(middle) if middle.isdigit() else 0


def _read_lines(path: Path) -> list[bytes]:
    """Complete, non-empty lines (a torn last line from a crash mid-append is left out)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    lines.pop()  # empty after the final newline, or a torn line never acknowledged
    return [line + b"\n" for line in lines if line.strip()]


def _rewrite(path: Path, lines: Sequence[bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        _write_all(fd, b"".join(lines))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES):
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
