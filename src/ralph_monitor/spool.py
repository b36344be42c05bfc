"""The durable local spool: where acknowledged events wait while PostgreSQL is unreachable.

One append-only file of records, fsync'd before the events are acknowledged. Replay reads
it in order from a saved offset; the offset file is written atomically after each replayed
chunk commits, and the spool is truncated only once everything in it is committed. Replaying
a chunk twice (crash between commit and offset save) is harmless: event_id is unique.

A full disk (ENOSPC, EDQUOT) or an I/O error is a state, not a crash: a failed append is cut
back off the file and refused (the caller does not acknowledge it); an offset that cannot be
saved is kept in memory (a crash then replays a little twice, which is harmless); emptying
the spool, which frees the space, is retried until it works.

Record format, one per line: `<meta JSON>\t<event JSON as received>` for events and
`<meta JSON>` for rejects. The meta JSON never holds a literal tab (json escapes it).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from ralph_monitor.errors import SpoolError
from ralph_monitor.protocol import Event, Origin, Reject

SPOOL_FILE = "events.spool"
OFFSET_FILE = "events.spool.offset"
DIR_MODE = 0o700
FILE_MODE = 0o600
READ_BLOCK_BYTES = 1 << 20

Record = Event | Reject
BAD_FILE = "events.spool.bad"
"""Where a record that cannot be decoded is moved (never expected; kept for a human to read)."""

log = logging.getLogger(__name__)


def encode(record: Record) -> bytes:
    """One spool line for an event or a reject."""
    origin = record.origin
    if isinstance(record, Event):
        meta = {"k": "e", "id": record.event_id, "t": record.event_type, "s": record.session_id,
                "p": record.spec_id, "o": record.occurred_at.isoformat(),
                "r": record.received_at.isoformat(), "h": origin.host, "u": origin.uid,
                "pid": origin.pid, "c": record.client_event_id}
        return (json.dumps(meta, separators=(",", ":")) + "\t" + record.payload + "\n").encode()
    meta = {"k": "r", "id": str(record.reject_id), "r": record.received_at.isoformat(),
            "h": origin.host, "u": origin.uid, "pid": origin.pid, "code": record.code,
            "detail": record.detail, "n": record.line_bytes, "x": record.excerpt}
    return (json.dumps(meta, separators=(",", ":")) + "\n").encode()


def decode(line: bytes) -> Record:
    """Inverse of `encode` (without the newline)."""
    text = line.decode("utf-8")
    head, _, payload = text.partition("\t")
    meta = json.loads(head)
    origin = Origin(host=meta["h"], uid=meta["u"], pid=meta["pid"])
    received_at = datetime.fromisoformat(meta["r"])
    if meta["k"] == "e":
        return Event(
            event_id=meta["id"], event_type=meta["t"], session_id=meta["s"], spec_id=meta["p"],
            occurred_at=datetime.fromisoformat(meta["o"]), received_at=received_at, origin=origin,
            payload=payload, client_event_id=meta["c"])
    return Reject(reject_id=uuid.UUID(meta["id"]), received_at=received_at, origin=origin,
                  code=meta["code"], detail=meta["detail"], line_bytes=meta["n"], excerpt=meta["x"])


class Spool:
    """The spool file of one daemon. Not thread-safe: the ingest writer alone uses it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / SPOOL_FILE
        self._offset_path = directory / OFFSET_FILE
        self._fd = -1
        self._size = 0
        """Bytes of whole, fsync'd records: the file ends here (a failed append is cut back to it)."""
        self._offset = 0
        """Replay position (saved in OFFSET_FILE whenever the disk lets us)."""
        self.offset_saved = True
        self.backlog = 0
        """Records appended and not yet replayed."""

    def open(self) -> None:
        """Open (creating) the spool, drop a torn last record, and count the backlog."""
        try:
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
            self._drop_torn_tail()
            self._size = os.fstat(self._fd).st_size
            self._offset = self._read_offset()
            self.backlog = self._count_from(self._offset)
        except OSError as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc.strerror}; "
                             f"check that {self.directory} is writable by the daemon") from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def append(self, records: Sequence[Record]) -> None:
        """Write records and fsync; only after this returns may they be acknowledged."""
        data = b"".join(encode(r) for r in records)
        if self._size and self._offset >= self._size:
            self._clear()   # all replayed, but emptying it failed before: free the space first
        try:
            if os.fstat(self._fd).st_size != self._size:
                os.ftruncate(self._fd, self._size)   # what a failed append left behind
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError as exc:
            self._cut_back()
            raise SpoolError(f"cannot write spool {self.path}: {exc.strerror}") from exc
        self._size += len(data)
        self.backlog += len(records)

    def _cut_back(self) -> None:
        """Remove a failed append's partial bytes (if this fails too, the next append retries)."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            pass

    def read_chunk(self, max_records: int) -> tuple[list[Record], int]:
        """Up to `max_records` records from the replay offset, and the offset after them.
        Raises SpoolError when the file cannot be read."""
        records: list[Record] = []
        position = self._offset
        try:
            with open(self.path, "rb") as f:
                f.seek(position)
                for line in f:
                    if position + len(line) > self._size or not line.endswith(b"\n") or len(records) >= max_records:
                        break
                    try:
                        records.append(decode(line[:-1]))
                    except (ValueError, KeyError, TypeError) as exc:
                        self._set_aside(line, position, exc)
                    position += len(line)
        except OSError as exc:
            raise SpoolError(f"cannot read spool {self.path}: {exc.strerror}") from exc
        return records, position

    def _set_aside(self, line: bytes, position: int, exc: Exception) -> None:
        log.error("spool %s: the record at byte %d cannot be read (%s); moved to %s",
                  self.path, position, exc, self.directory / BAD_FILE)
        try:
            with open(self.directory / BAD_FILE, "ab") as bad:
                bad.write(line)
        except OSError as error:
            log.error("cannot write %s (%s): the record is dropped", self.directory / BAD_FILE, error.strerror)

    def mark_replayed(self, offset: int, count: int) -> None:
        """Remember that everything before `offset` is committed; empty the spool when done.
        Never raises: an offset that cannot be saved stays in memory (see the module doc)."""
        self.backlog = max(0, self.backlog - count)
        self._offset = offset
        if offset >= self._size:
            self._clear()
            return
        tmp = self._offset_path.with_suffix(".tmp")
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.write(str(offset))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._offset_path)
            self._fsync_dir()
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if self.offset_saved:
                log.warning("cannot save the spool's replay offset in %s (%s); going on with it in memory "
                            "(a crash now would replay some events twice, which stores them once)",
                            self._offset_path, exc.strerror)
            self.offset_saved = False
            return
        self.offset_saved = True

    def _clear(self) -> None:
        """Empty the spool (everything in it is committed). Retried by the next append or
        replay if the disk refuses."""
        try:
            # Offset first: a crash between the two steps replays everything (harmless),
            # never skips records appended after a truncation.
            self._offset_path.unlink(missing_ok=True)
            self._fsync_dir()
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
        except OSError as exc:
            log.warning("cannot empty the spool %s (%s); retrying later", self.path, exc.strerror)
            return
        self._size = self._offset = 0
        self.offset_saved = True
        self.backlog = 0

    def _read_offset(self) -> int:
        try:
            offset = int(self._offset_path.read_text(encoding="ascii").strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            return 0
        return min(offset, os.fstat(self._fd).st_size)

    def _count_from(self, offset: int) -> int:
        count = 0
        with open(self.path, "rb") as f:
            f.seek(offset)
            while block := f.read(READ_BLOCK_BYTES):
                count += block.count(b"\n")
        return count

    def _drop_torn_tail(self) -> None:
        """A record cut short by a crash was never acknowledged: remove it."""
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            end = size
            while end > 0:
                start = max(0, end - READ_BLOCK_BYTES)
                f.seek(start)
                block = f.read(end - start)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                end = start
            else:
                keep = 0
        if keep != size:
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
