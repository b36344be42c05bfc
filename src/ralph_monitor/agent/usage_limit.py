"""Whether an agent run ended on its subscription's usage limit, and when that limit resets.

`claude -p` reports the limit as a failed result (`is_error: true`) whose text is the limit
message alone ("Claude AI usage limit reached|1764400000", "5-hour limit reached ∙ resets 3am",
"You've hit your limit · resets 4pm (Europe/Berlin)"), or as an API error with status 429; in
text mode it prints the message and exits non-zero. Only a failed run counts, and only such a
message at the start of the result (or of an output line): the word "limit" in the agent's own
words is not a limit (loop tools that grep for it stop on the first spec about rate limiting).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

MESSAGE_CHARS = 300
"""How much of the limit message is kept (the messages themselves are one short line)."""
OUTPUT_LINES = 5
"""How many of the last output lines of a run without a result are read for the message."""
LIMIT_MESSAGE = re.compile(
    r"(?:claude(?: ai)? usage limit reached"
    r"|(?:5-hour|five-hour|session|daily|weekly|opus weekly|sonnet weekly|usage) limit reached"
    r"|you(?:'|’)ve (?:hit|reached) your (?:usage )?limit)\b", re.IGNORECASE)
"""Claude Code's usage-limit messages; matched at the start of the text only."""
RATE_LIMIT_WORDS = re.compile(r"rate[ _]limit|usage limit|limit reached|hit your limit|too many requests",
                              re.IGNORECASE)
"""What the text of an API error with status 429 says when it is the (usage or rate) limit."""
RESET_EPOCH = re.compile(r"limit reached\|(\d{9,11})\b", re.IGNORECASE)
RESET_CLOCK = re.compile(
    r"\breset(?:s)?\s+(?:at\s+|on\s+)?"
    r"(?:(?P<month>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(?P<day>\d{1,2}),?\s+(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>[ap]\.?m\.?)?"
    r"(?:\s*\((?P<zone>[A-Za-z][A-Za-z0-9_+\-/]*)\))?", re.IGNORECASE)
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


@dataclass(frozen=True)
class UsageLimit:
    """A run that hit the usage limit: what said so, and when the limit resets (if it said)."""

    message: str
    source: str
    """Where it was read: `result` (the result's text), `api_error_status` (a 429), `output`."""
    resets_at: float | None
    """Unix seconds, or None when the message gives no reset time."""


def detect(result: dict[str, Any] | None, returncode: int, output: str, *, now: float) -> UsageLimit | None:
    """The usage limit a finished run hit, or None. `result` is its `claude -p` result object
    (None without one), `output` the tail of its stdout and stderr (read only without a
    result); `now` (Unix seconds) places a clock-time reset ("resets 3am")."""
    if result is not None:
        if result.get("is_error") is not True:
            return None
        texts = [t.strip() for t in [result.get("result"), *(result.get("errors") or [])]
                 if isinstance(t, str) and t.strip()]
        for text in texts:
            if LIMIT_MESSAGE.match(text):
                return _limit(text, "result", now)
        if result.get("api_error_status") == 429:
            text = next((t for t in texts if RATE_LIMIT_WORDS.search(t)), None)
            return _limit(text, "api_error_status", now) if text is not None else None
        return None
    if returncode == 0:
        return None
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines[-OUTPUT_LINES:]:
        if LIMIT_MESSAGE.match(line):
            return _limit(line, "output", now)
    return None


def _limit(text: str, source: str, now: float) -> UsageLimit:
    return UsageLimit(text[:MESSAGE_CHARS], source, reset_time(text, now=now))


def reset_time(message: str, *, now: float) -> float | None:
    """When a limit message says the limit resets, in Unix seconds: the epoch after `|`, or
    the next occurrence (after `now`) of the clock time it names ("resets 3am", "resets Apr 23
    at 4pm (America/Recife)"), in the zone it names, else the local one. None if it names no
    time, or a zone this machine does not know."""
    epoch = RESET_EPOCH.search(message)
    if epoch is not None:
        return float(epoch.group(1))
    clock = RESET_CLOCK.search(message)
    if clock is None or (clock.group("ampm") is None and clock.group("minute") is None):
        return None
    hour, minute = int(clock.group("hour")), int(clock.group("minute") or 0)
    if clock.group("ampm"):
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if clock.group("ampm").lower().startswith("p") else 0)
    if hour > 23 or minute > 59:
        return None
    zone = _zone(clock.group("zone")) if clock.group("zone") else None
    if clock.group("zone") and zone is None:
        return None
    today = datetime.fromtimestamp(now, zone).date()  # zone None: local time
    at = time(hour, minute)
    if clock.group("month"):
        month, day = MONTHS.index(clock.group("month").lower()[:3]) + 1, int(clock.group("day"))
        for year in (today.year, today.year + 1):
            try:
                when = datetime.combine(date(year, month, day), at, zone).timestamp()
            except ValueError:
                return None
            if when > now:
                return when
        return None
    when = datetime.combine(today, at, zone).timestamp()
    return when if when > now else datetime.combine(today + timedelta(days=1), at, zone).timestamp()


def _zone(name: str) -> tzinfo | None:
    """The time zone `name`, or None if this machine does not know it. `zoneinfo` is imported
    here, when a message names a zone: it loads `sysconfig`, which the agent modules keep out
    of their import (tests/unit/test_agent_imports.py)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
