"""Logging in a form journald understands, with structured fields when it can.

When stderr is the journal (JOURNAL_STREAM names it), records go to journald's native socket
with `PRIORITY`, `LOGGER`, `CODE_FILE`/`CODE_LINE`/`CODE_FUNC` and `THREAD` fields
(`journalctl -u ralph-monitor -o json` shows them); a record the socket does not take goes to
stderr instead, each line starting with `<N>` so journald still records its priority. On a
terminal lines read `LEVEL logger: message`. Passwords that slip into a message (a DSN in a
driver error, a PGPASSWORD= in a command) are masked every way.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import sys
import time

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "ralph-monitor"

_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

_SECRETS = (
    # libpq key=value: password=secret, password = 'se cret'
    (re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.IGNORECASE), r"\1***"),
    # PGPASSWORD=secret in an environment dump
    (re.compile(r"(PGPASSWORD=)(\S+)"), r"\1***"),
    # URLs: scheme://user:secret@host
    (re.compile(r"(://[^:/@\s]*:)([^@\s]+)(@)"), r"\1***\3"),
)


def redact(text: str) -> str:
    """`text` with anything that looks like a password replaced by ***."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _JournalFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


class _JournalHandler(logging.Handler):
    """Sends each record to journald's native socket as one datagram of fields; a record it
    cannot send (too big, the journal away) goes to `fallback` (stderr) instead."""

    def __init__(self, fallback: logging.Handler) -> None:
        super().__init__()
        self._fallback = fallback
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.connect(JOURNAL_SOCKET)

    def emit(self, record: logging.LogRecord) -> None:
        fields = {
            "MESSAGE": redact(self.format(record)),
            "PRIORITY": str(_PRIORITIES.get(record.levelno, 6)),
            "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
            "THREAD": record.threadName or "",
        }
        try:
            self._socket.send(b"".join(_journal_field(name, value) for name, value in fields.items()))
        except OSError:
            self._fallback.handle(record)


def _journal_field(name: str, value: str) -> bytes:
    """One field of journald's native protocol (a value with a newline is length-prefixed)."""
    data = value.encode("utf-8", "replace")
    if b"\n" in data:
        return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


def _stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd connected (JOURNAL_STREAM is `dev:inode`)."""
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{stat.st_dev}:{stat.st_ino}"


class Throttle:
    """Lets a repeating message through at most once per `interval_s`, so a failure that
    repeats for every batch (a full disk) is said again and again without flooding the journal."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last = -interval_s
        self._suppressed = 0

    def ready(self) -> int | None:
        """How many messages were held back since the last one, if one may go now; else None."""
        now = time.monotonic()
        if now - self._last < self._interval_s:
            self._suppressed += 1
            return None
        self._last, suppressed, self._suppressed = now, self._suppressed, 0
        return suppressed


def setup_logging(level: str = "info") -> None:
    """Send log records to stderr; idempotent. A log line that cannot be written (stderr on a
    full disk) is dropped, never raised into the daemon, and no traceback is attempted."""
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
        if _stderr_is_journal():
            try:
                native = _JournalHandler(fallback=handler)
            except OSError:
                pass   # no native socket: the priority-prefixed lines on stderr still work
            else:
                native.setFormatter(logging.Formatter("%(message)s"))
                handler = native
    else:
        handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.raiseExceptions = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("apscheduler").setLevel(max(root.level, logging.WARNING))
