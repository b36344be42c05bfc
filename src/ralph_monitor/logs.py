"""Logging to stderr in a form journald understands (syslog priority prefixes).

Under systemd (JOURNAL_STREAM is set) each line starts with `<N>` so journald records
its priority; on a terminal lines read `LEVEL logger: message`. Passwords that slip into a
message (a DSN in a driver error, a PGPASSWORD= in a command) are masked either way.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time

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
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.raiseExceptions = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("apscheduler").setLevel(max(root.level, logging.WARNING))
