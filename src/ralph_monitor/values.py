"""The value policy: which agent-supplied values the aggregates use, and why one is skipped.

An event is the source of truth and is stored as sent. Its values feed the aggregates
(sessions, spec runs, charts) only when they fit: a count is a whole JSON number from 0 to
a sane maximum, an amount a JSON number from 0 to a sane maximum, a text is truncated to a
bound, a timestamp lies between EARLIEST_TS and MAX_TS_AHEAD_S past the monitor's clock.
A value that does not fit is skipped with a one-line reason ("tokens_used=1e30 ignored: out
of range ..."): the protocol puts the reasons in the ack's `warnings`, the projection keeps
them on the session or spec run. Both call this module, so they can never disagree.

Numbers sent as strings ("0.5"), booleans, objects and arrays are not numbers here: a
client that sends them has a bug worth seeing, and guessing would hide it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_TOKENS = 10**12
"""Tokens in one event. A million events of this size still sum within PostgreSQL's bigint."""
MAX_COST_USD = Decimal(1_000_000)
"""USD in one event; sums stay far inside the columns' numeric(14,6)."""
MAX_TOTAL_SPECS = 1_000_000
MAX_DURATION_S = 10**7
"""Seconds (about 116 days) in a reported duration_s."""
MAX_NAME_CHARS = 200
MAX_TEXT_CHARS = 10_000
"""Characters of an error, a request or an answer kept in the aggregates (the event keeps all)."""
MAX_TOTAL = {"tokens_used": 10**13, "cost_usd": Decimal("99999999.999999")}
"""A session's totals: cost is what numeric(14,6) holds; tokens stay low enough that a year of
sessions at 100x the design volume still sums within bigint in the reports. A total beyond
this is dropped, and said so."""
EARLIEST_TS = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_TS_AHEAD_S = 86_400
"""A `ts` more than a day ahead of the monitor's clock is a broken clock, not the future."""
SHOWN_CHARS = 40
"""Characters of an offending value quoted in a reason."""
MAX_GIT_COUNT = 10**9
"""Commits or files in one spec run's `data.git`."""
MAX_GIT_LINES = 10**11
"""Lines added or removed in one spec run (10^11, so a year of runs sums within bigint)."""
MAX_GIT_COMMITS_KEPT = 50
MAX_GIT_TEXT = 200
"""Characters of a repository path, a commit hash or a subject kept."""
GIT_COUNTS = ("commit_count", "files_changed", "insertions", "deletions")
MAX_EPOCH_S = 4_102_444_800
"""A reset time (Unix seconds, as Claude Code gives `resets_at`) before 2100."""
USAGE_WINDOWS = ("five_hour", "seven_day")
"""The usage windows of a `rate_limits` event (Claude Code's status-line input)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """How one data field is read: `kind` is count, amount, seconds, name, text or object."""

    kind: str
    maximum: int | Decimal = 0


RULES: dict[str, Rule] = {
    "tokens_used": Rule("count", MAX_TOKENS),
    "cost_usd": Rule("amount", MAX_COST_USD),
    "total_specs": Rule("count", MAX_TOTAL_SPECS),
    "duration_s": Rule("amount", MAX_DURATION_S),
    "name": Rule("text", MAX_NAME_CHARS),
    "metadata": Rule("object"),
    "git": Rule("git"),
    **{name: Rule("window") for name in USAGE_WINDOWS},
    "used_percentage": Rule("amount", 1000),
    "resets_at": Rule("count", MAX_EPOCH_S),
    **{f"git.{name}": Rule("count", MAX_GIT_LINES if name in ("insertions", "deletions") else MAX_GIT_COUNT)
       for name in GIT_COUNTS},
    **{field: Rule("text", MAX_TEXT_CHARS)
       for field in ("error", "error_message", "reason", "message", "question", "answer")},
}

NUMERIC_KINDS = frozenset({"count", "amount"})

READS: dict[str, tuple[str, ...]] = {
    "session_started": ("name", "total_specs", "metadata"),
    "session_ended": ("tokens_used", "cost_usd"),
    "spec_completed": ("tokens_used", "cost_usd", "duration_s", "error", "error_message", "reason", "git"),
    "intervention_request": ("message", "question", "reason"),
    "user_feedback": ("message", "answer"),
    "rate_limits": USAGE_WINDOWS,
    "usage_limit": ("resets_at", "message"),
}
"""The data fields the projection reads from each event type."""
READS["spec_failed"] = READS["timeout_triggered"] = READS["spec_completed"]


LARGE = 10**15
"""Numbers from this size on are shown in exponent form (1e+30): the same text whether the
value was decoded as a float (the ack) or read back from jsonb as an integer (the projection)."""


def shown(value: Any) -> str:
    """The value as JSON text, cut to SHOWN_CHARS, for a reason line."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) >= LARGE:
        try:
            return format(float(value), ".6g")
        except OverflowError:  # an integer beyond any float: its order of magnitude
            return f"{'-' if value < 0 else ''}1e+{len(str(abs(value))) - 1}"
    text = json.dumps(value, default=str)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", dict: "an object", list: "an array"}.get(type(value), type(value).__name__)


def number(field: str, value: Any) -> tuple[Decimal | None, str | None]:
    """The field's value if it fits its rule (absent: None), else None and the reason."""
    rule = RULES[field]
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        hint = " (send a JSON number, not a string)" if isinstance(value, str) else ""
        return None, f"{field}={shown(value)} ignored: {_json_kind(value)}, not a number{hint}"
    try:
        amount = value if isinstance(value, Decimal) else Decimal(value if isinstance(value, int) else str(value))
    except (InvalidOperation, ValueError):
        amount = Decimal("NaN")
    if not amount.is_finite() or amount > rule.maximum:
        return None, f"{field}={shown(value)} ignored: out of range (at most {rule.maximum:,})"
    if amount < 0:
        return None, f"{field}={shown(value)} ignored: negative"
    if rule.kind == "count" and amount != amount.to_integral_value():
        return None, f"{field}={shown(value)} ignored: not a whole number"
    return amount, None


def text(field: str, value: Any) -> tuple[str | None, str | None]:
    """The field as text (JSON text for a non-string), cut to its rule's bound, and the reason
    when it was cut."""
    if value is None:
        return None, None
    content = value if isinstance(value, str) else json.dumps(value, default=str)
    limit = int(RULES[field].maximum)
    if len(content) <= limit:
        return content, None
    return content[:limit], f"{field} cut to {limit:,} characters (was {len(content):,})"


def mapping(field: str, value: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The field if it is a JSON object; else None and the reason."""
    if value is None or isinstance(value, dict):
        return value, None
    return None, f"{field}={shown(value)} ignored: {_json_kind(value)}, not an object"


def git(value: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """A spec run's `data.git` (agent.gitstate) as the aggregates keep it, and the reasons for
    what was skipped: counts as any count (a whole number in bounds), `dirty` a boolean, the
    repository, heads and commits bounded text. `{"repo": null, "reason": ...}` (no repository,
    no git) is kept as it is: it says why there is nothing to count."""
    if value is None:
        return None, []
    if not isinstance(value, dict):
        return None, [f"git={shown(value)} ignored: {_json_kind(value)}, not an object"]
    kept: dict[str, Any] = {"repo": None}
    problems: list[str] = []
    for key in ("repo", "head_before", "head_after", "reason"):
        item = value.get(key)
        if isinstance(item, str):
            kept[key] = item[:MAX_GIT_TEXT]
        elif item is not None:
            problems.append(f"git.{key}={shown(item)} ignored: {_json_kind(item)}, not a string")
    for key in GIT_COUNTS:
        amount, problem = number(f"git.{key}", value.get(key))
        if problem is not None:
            problems.append(problem)
        elif amount is not None:
            kept[key] = int(amount)
    commits = value.get("commits")
    if isinstance(commits, list):
        kept["commits"] = [{"hash": str(c.get("hash"))[:MAX_GIT_TEXT], "subject": str(c.get("subject"))[:MAX_GIT_TEXT]}
                           for c in commits[:MAX_GIT_COMMITS_KEPT] if isinstance(c, dict)]
        if "commit_count" not in value:
            kept["commit_count"] = len(commits)
    elif commits is not None:
        problems.append(f"git.commits={shown(commits)} ignored: {_json_kind(commits)}, not an array")
    dirty = value.get("dirty")
    if isinstance(dirty, bool):
        kept["dirty"] = dirty
    elif dirty is not None:
        problems.append(f"git.dirty={shown(dirty)} ignored: {_json_kind(dirty)}, not a boolean")
    return kept, problems


def epoch(field: str, value: Any) -> tuple[datetime | None, str | None]:
    """A Unix time in seconds (Claude Code's `resets_at`) as a UTC datetime, if it fits."""
    seconds, problem = number(field, value)
    return (None if seconds is None else datetime.fromtimestamp(float(seconds), timezone.utc)), problem


def window(field: str, value: Any) -> tuple[tuple[Decimal, datetime | None] | None, list[str]]:
    """A usage window (`{"used_percentage": 42, "resets_at": 1781290000}`) as (percent used,
    reset time), and the reasons for what did not fit. Without a usable percentage: None."""
    if value is None:
        return None, []
    if not isinstance(value, dict):
        return None, [f"{field}={shown(value)} ignored: {_json_kind(value)}, not an object"]
    used, problem = number("used_percentage", value.get("used_percentage"))
    resets, reset_problem = epoch("resets_at", value.get("resets_at"))
    problems = [f"{field}.{p}" for p in (problem, reset_problem) if p is not None]
    return (None if used is None else (used, resets)), problems


def _plainly_fits(rule: Rule, value: Any) -> bool:
    """True for the common case, decided without Decimal: a non-negative int or float below
    the rule's bound (whole, for a count). Anything else takes the exact path in `number`."""
    kind = type(value)
    if kind is int:
        return 0 <= value < rule.maximum
    if kind is float:
        return 0.0 <= value < float(rule.maximum) and (rule.kind != "count" or value.is_integer())
    return False


def check(field: str, value: Any) -> str | None:
    """The reason `value` does not fit `field`'s rule, or None. Runs on every event that
    carries a field a projection reads, so the common case is answered cheaply."""
    rule = RULES[field]
    kind = rule.kind
    if kind in NUMERIC_KINDS and _plainly_fits(rule, value):
        return None
    if kind == "window":
        return "; ".join(window(field, value)[1]) or None
    if kind == "git":
        return "; ".join(git(value)[1]) or None
    if kind == "object":
        return mapping(field, value)[1]
    if kind == "text":
        return text(field, value)[1]
    return number(field, value)[1]


def data_warnings(event_type: str, data: Mapping[str, Any]) -> list[str]:
    """Reasons, for each field this type's projection reads, that it does not fit."""
    warnings = []
    for field in READS.get(event_type, ()):
        if field in data and (reason := check(field, data[field])) is not None:
            warnings.append(reason)
    return warnings


_MAX_AHEAD = timedelta(seconds=MAX_TS_AHEAD_S)


def timestamp_problem(ts: datetime, received_at: datetime) -> str | None:
    """Why an agent's `ts` cannot be the event's time (the receive time is used instead)."""
    try:
        if ts < EARLIEST_TS:
            return f"ts={ts.isoformat()} ignored: before {EARLIEST_TS.year}; stored with the time received"
        if ts > received_at + _MAX_AHEAD:
            return (f"ts={ts.isoformat()} ignored: more than {MAX_TS_AHEAD_S // 3600} h ahead of the "
                    "monitor's clock; stored with the time received")
    except OverflowError:
        return f"ts={ts.isoformat()} ignored: out of range; stored with the time received"
    return None
