"""The event protocol: turn one received line into a validated `Event`, or say why not.

Validation guarantees that PostgreSQL will accept the original text as `jsonb`, so the
store can hand the text over as is instead of decoding and re-encoding it.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson

from ralph_monitor.errors import InvalidEvent
from ralph_monitor.values import READS, data_warnings, timestamp_problem

KNOWN_TYPES = frozenset({
    "session_started", "session_ended", "session_heartbeat",
    "spec_started", "spec_completed", "spec_failed",
    "timeout_triggered", "intervention_request", "user_feedback",
    "rate_limits", "usage_limit",
})
"""Types agents send that the aggregates understand. Others (e.g. `cc.PreToolUse`) are stored
as they are, with a warning in the reply."""
SESSION_ONLY_TYPES = KNOWN_TYPES - {"rate_limits", "usage_limit"}
"""Known types that mean nothing outside a session (the usage reports also describe the
account): `ralph-monitor emit` says so when one goes out with no session."""

TOOL_EVENT_PREFIX = "cc."
"""Claude Code hook events forwarded by `ralph-monitor hook` (cc.PreToolUse, cc.Stop, ...)."""

MONITOR_TYPES = frozenset({
    "session_stalled", "backup_completed", "backup_failed", "prune_completed", "prune_failed",
    "loop_stuck", "loop_recovered", "usage_limit_reset",
})
"""Types the monitor itself records."""

TYPE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.:\-]{0,99}")
MAX_SPEC_ID_CHARS = 200
MAX_JSON_DEPTH = 100
MAX_INT_DIGITS = 1000
"""PostgreSQL's numeric takes far more, but nothing an agent sends needs more than this."""
MAX_NUMERIC_SCALE = 16383
"""Most digits after the decimal point PostgreSQL's numeric (and so jsonb) accepts."""
MAX_NUMERIC_WEIGHT = 131_072
"""Most digits before the decimal point PostgreSQL's numeric accepts."""
MAX_NUMERIC_EXPONENT = 1_073_741_823
"""PostgreSQL refuses exponents at or beyond INT_MAX / 2, even for zero."""
FAST_PATH_MAX_BYTES = 16_383
"""Lines up to this size are decoded by orjson. Longer ones may hold a fraction with more digits
than PostgreSQL keeps (MAX_NUMERIC_SCALE), which only the strict decoder sees."""
_EXPONENT_DIGITS = bytes.maketrans(b"0123456789E+", b"9999999999e-")
"""Translated by this table, a 5-digit exponent reads `e99999` or `e-99999`: a number orjson
may read as 0 but PostgreSQL refuses (see _parse_float), so such lines take the strict path.
(A few hex strings look alike too; they only cost the slower path.)"""
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ids = random.Random()
"""Random bits of generated event ids: unique, not secret, so no system call per event.
Reseeded in a forked child, which would otherwise repeat the parent's ids."""
os.register_at_fork(after_in_child=_ids.seed)


@dataclass(frozen=True, slots=True)
class Origin:
    """Who sent a line: the daemon's host and the writer's credentials (SO_PEERCRED)."""

    host: str
    uid: int | None
    pid: int | None


@dataclass(slots=True)
class Event:
    """A valid event, ready to store. `payload` is the received JSON text itself; the ids are
    canonical UUID text (lowercase, with dashes), as stored and as acknowledged.

    Not frozen: a frozen dataclass's __init__ costs a microsecond more per event, and nothing
    changes an Event after parse_line made it."""

    event_id: str
    event_type: str
    session_id: str | None
    spec_id: str | None
    occurred_at: datetime
    received_at: datetime
    origin: Origin
    payload: str
    client_event_id: bool
    warnings: list[str] | None = None
    """Values the aggregates skip (see values.py), told to the client in the ack."""

    @property
    def known_type(self) -> bool:
        return (self.event_type in KNOWN_TYPES or self.event_type in MONITOR_TYPES
                or self.event_type.startswith(TOOL_EVENT_PREFIX))


@dataclass(frozen=True, slots=True)
class Reject:
    """A line that was refused, kept (bounded) so the morning view shows it."""

    reject_id: uuid.UUID
    received_at: datetime
    origin: Origin
    code: str
    detail: str
    line_bytes: int
    excerpt: str


def make_reject(raw: bytes | bytearray, error: InvalidEvent, *, received_at: datetime,
                origin: Origin, excerpt_bytes: int, line_bytes: int | None = None) -> Reject:
    """Record of a refused line; keeps at most `excerpt_bytes` of it, NULs made visible."""
    excerpt = bytes(raw[:excerpt_bytes]).decode("utf-8", "replace").replace("\x00", "\\u0000")
    # Replacement characters and escaped NULs take more room than the bytes they stand for.
    excerpt = excerpt.encode()[:excerpt_bytes].decode("utf-8", "ignore")
    return Reject(
        reject_id=uuid.uuid4(), received_at=received_at, origin=origin, code=error.code,
        detail=str(error), line_bytes=len(raw) if line_bytes is None else line_bytes,
        excerpt=excerpt)


def _reject_constant(name: str) -> None:
    raise InvalidEvent("invalid_number", f"{name} is not a JSON number PostgreSQL can store")


def _parse_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise InvalidEvent("invalid_number", f"integer with {digits} digits is too large to store")
    return int(text)


def _parse_float(text: str) -> float:
    """Refuse the numbers PostgreSQL's numeric (and so jsonb) refuses, whatever float() makes of
    them: more than MAX_NUMERIC_WEIGHT digits before the decimal point (1e131072), more than
    MAX_NUMERIC_SCALE after it (1e-16384), or an exponent PostgreSQL cannot read (0e1073741823).
    Others are fine even where a float overflows (1e400): the received text is what is stored."""
    mantissa, _, exponent = text.lower().lstrip("-").partition("e")
    magnitude = exponent.lstrip("+-").lstrip("0")
    power = int(magnitude) if 0 < len(magnitude) <= 10 else (1 << 40 if magnitude else 0)
    if exponent.startswith("-"):
        power = -power
    integer, _, fraction = mantissa.partition(".")
    if abs(power) >= MAX_NUMERIC_EXPONENT or len(fraction) - power > MAX_NUMERIC_SCALE:
        raise InvalidEvent("invalid_number", f"number {text[:40]} is out of range (PostgreSQL keeps at most "
                           f"{MAX_NUMERIC_SCALE} digits after the decimal point)")
    significant = integer.lstrip("0")
    if significant:
        weight = len(significant) + power
    else:
        weight = power - (len(fraction) - len(fraction.lstrip("0"))) if fraction.strip("0") else 0
    if weight > MAX_NUMERIC_WEIGHT:
        raise InvalidEvent("invalid_number", f"number {text[:40]} is out of range (PostgreSQL keeps at most "
                           f"{MAX_NUMERIC_WEIGHT} digits before the decimal point)")
    return float(text)


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _check_strings(value: object, depth: int = 0) -> None:
    """Refuse what jsonb refuses: NUL in strings, lone surrogates; and absurd nesting."""
    if depth >= MAX_JSON_DEPTH:
        raise InvalidEvent("too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidEvent("nul_character", "string contains \\u0000 (NUL), which PostgreSQL cannot store")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent("invalid_unicode", "string contains an unpaired UTF-16 surrogate escape") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, depth + 1)
            _check_strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, depth + 1)


def _uuid_field(obj: dict[str, object], name: str) -> str | None:
    """The field as canonical UUID text (any form uuid.UUID takes is accepted)."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent("invalid_uuid", f"{name} must be a UUID string, got {_json_type(value)}")
    if _CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidEvent("invalid_uuid", f"{name} {value[:80]!r} is not a valid UUID") from None


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562) as text: milliseconds since the epoch, then 74 random bits.
    Time-ordered ids go to the right edge of the unique index instead of all over it, and
    cost a third of str(uuid.uuid4())."""
    ms = time.time_ns() // 1_000_000
    bits = _ids.getrandbits(74)
    return "%08x-%04x-7%03x-%04x-%012x" % (
        ms >> 16, ms & 0xFFFF, bits >> 62, 0x8000 | (bits >> 48) & 0x3FFF, bits & 0xFFFF_FFFF_FFFF)


def _timestamp(value: object) -> datetime:
    if not isinstance(value, str):
        raise InvalidEvent("invalid_ts", f"ts must be an RFC 3339 string, got {_json_type(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(
            "invalid_ts", f"ts {value[:80]!r} is not RFC 3339; send e.g. 2026-11-25T03:12:00Z") from None
    if parsed.tzinfo is None:
        raise InvalidEvent(
            "invalid_ts", f"ts {value[:80]!r} has no UTC offset; send e.g. 2026-11-25T03:12:00Z")
    return parsed


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_reject_constant)
"""Built once: json.loads with hooks would build a decoder for every line."""


_valid_types: set[str] = set()
"""Type names already checked against TYPE_PATTERN: a set lookup instead of a regex per event."""
MAX_REMEMBERED_TYPES = 10_000
"""Bound of _valid_types, so a client inventing names cannot grow it without end."""


def _valid_type(name: str) -> bool:
    if not TYPE_PATTERN.fullmatch(name):
        return False
    if len(_valid_types) < MAX_REMEMBERED_TYPES:
        _valid_types.add(name)
    return True


def _decode_strictly(raw: bytes | bytearray) -> tuple[object, str]:
    """The decoded value and the text, checking every number against what PostgreSQL stores;
    raises InvalidEvent with the exact problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("invalid_utf8", f"line is not valid UTF-8 (bad byte at offset {exc.start})") from None
    try:
        return _DECODER.decode(text), text
    except json.JSONDecodeError as exc:
        # json's "Unterminated string starting at" already ends in "at".
        raise InvalidEvent(
            "invalid_json", f"invalid JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}") from None
    except RecursionError:
        raise InvalidEvent("too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None


def _decode(raw: bytes | bytearray) -> tuple[object, str]:
    """orjson for the common line (four times faster); the strict decoder for long lines, lines
    with 5-digit exponents, and anything orjson refuses (so the error names the problem)."""
    if len(raw) > FAST_PATH_MAX_BYTES:
        return _decode_strictly(raw)
    shape = raw.translate(_EXPONENT_DIGITS)
    if b"e99999" in shape or b"e-99999" in shape:
        return _decode_strictly(raw)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _decode_strictly(raw)
    return obj, raw.decode("utf-8")


DATA_FIELDS_AT_TOP = ("tokens_used", "cost_usd", "total_specs", "duration_s", "error", "name")
"""Fields that belong in `data`: sent beside `type` they are kept but read by nothing."""
SPEC_ENDS = frozenset({"spec_completed", "spec_failed", "timeout_triggered"})
"""Events that close a spec run: without their spec and session, their outcome and cost are lost."""


_TOP_LEVEL_MISPLACED = frozenset(DATA_FIELDS_AT_TOP)


def _placement_hints(obj: dict[str, object], event_type: str, spec_id: object) -> list[str]:
    """Well-formed events that count for nothing as sent: a field outside `data`, a spec
    event without its spec or session. (Every known event asks: the common answer is cheap.)"""
    hints = [] if _TOP_LEVEL_MISPLACED.isdisjoint(obj) else [
        f"{field} is at the top level, where nothing reads it; put it in \"data\""
        for field in DATA_FIELDS_AT_TOP if field in obj]
    if event_type in SPEC_ENDS and (spec_id is None or obj.get("session_id") is None):
        missing = [name for name, value in (("session_id", obj.get("session_id")), ("spec_id", spec_id))
                   if value is None]
        hints.append(f"{event_type} without {' and '.join(missing)}: stored, but not counted in any spec run")
    return hints


def parse_line(raw: bytes | bytearray, *, received_at: datetime, origin: Origin) -> Event:
    """Validate one line (without its newline). Raises InvalidEvent naming the problem."""
    if b"\x00" in raw:
        raise InvalidEvent("nul_byte", f"line contains a NUL byte at offset {raw.index(0)}")
    obj, text = _decode(raw)
    if not isinstance(obj, dict):
        raise InvalidEvent("not_an_object", f"event must be a JSON object, got {_json_type(obj)}")
    # More than MAX_JSON_DEPTH levels take more than twice as many characters.
    if "\\u" in text or (len(text) > 2 * MAX_JSON_DEPTH
                          and text.count("{") + text.count("[") > MAX_JSON_DEPTH):
        _check_strings(obj)

    event_type = obj.get("type")
    if event_type is None:   # null counts as absent, as for every field
        raise InvalidEvent("missing_type", "event has no \"type\" field" if "type" not in obj
                           else "\"type\" is null; every event needs a type name")
    if type(event_type) is not str or (event_type not in _valid_types and not _valid_type(event_type)):
        raise InvalidEvent(
            "invalid_type", f"type {str(event_type)[:80]!r} must be a name of letters, digits, _ . : - "
            "(at most 100 characters)")
    spec_id = obj.get("spec_id")
    if spec_id is not None and (not isinstance(spec_id, str) or not 0 < len(spec_id) <= MAX_SPEC_ID_CHARS):
        raise InvalidEvent("invalid_spec_id", f"spec_id must be a string of 1 to {MAX_SPEC_ID_CHARS} characters")
    data = obj.get("data")
    if data is not None and not isinstance(data, dict):
        raise InvalidEvent("invalid_data", f"data must be a JSON object, got {_json_type(data)}")
    session_id = _uuid_field(obj, "session_id")
    event_id = _uuid_field(obj, "event_id")
    warnings = data_warnings(event_type, data) or None if data and event_type in READS else None
    if event_type in KNOWN_TYPES and (hints := _placement_hints(obj, event_type, spec_id)):
        warnings = [*(warnings or ()), *hints]
    ts = obj.get("ts")
    occurred_at = received_at
    if ts is not None:
        occurred_at = _timestamp(ts)
        if (problem := timestamp_problem(occurred_at, received_at)) is not None:
            occurred_at = received_at
            warnings = [*(warnings or ()), problem]
    # Positional: a little cheaper per event than keywords (the order of Event's fields).
    return Event(event_id or new_event_id(), event_type, session_id, spec_id,
                 occurred_at, received_at, origin, text, event_id is not None, warnings)


def internal_event(event_type: str, *, origin: Origin, data: dict[str, object],
                   session_id: uuid.UUID | str | None = None, event_id: uuid.UUID | None = None,
                   ts: datetime | None = None) -> Event:
    """An event the monitor itself records (a stall, a backup, a prune), validated like any
    other so it is stored and spooled the same way. Give `event_id` to make it idempotent,
    `ts` when it happened before now (a finding about earlier events)."""
    now = datetime.now(timezone.utc)
    fields: dict[str, object] = {"type": event_type, "ts": (ts or now).isoformat(), "data": data}
    if session_id is not None:
        fields["session_id"] = str(session_id)
    if event_id is not None:
        fields["event_id"] = str(event_id)
    return parse_line(json.dumps(fields, default=str).encode(), received_at=now, origin=origin)


def ok_reply(event: Event, *, spooled: bool = False, duplicate: bool = False) -> bytes:
    """The acknowledgement line for a stored (or spooled) event."""
    if not (spooled or duplicate or event.warnings) and event.known_type:
        return b'{"ok": true, "id": "%s"}\n' % event.event_id.encode()  # the common case, cheaply
    reply: dict[str, object] = {"ok": True, "id": event.event_id}
    if spooled:
        reply["spooled"] = True
    if duplicate:
        reply["duplicate"] = True
    warnings = list(event.warnings or ())
    if not event.known_type:
        reply["warning"] = f"unknown type {event.event_type!r} stored as is"   # kept for older clients
        warnings.insert(0, reply["warning"])
    if warnings:
        reply["warnings"] = warnings
    return json.dumps(reply).encode() + b"\n"


def error_reply(code: str, message: str) -> bytes:
    """The reply line for a refused line."""
    return json.dumps({"ok": False, "code": code, "error": message}).encode() + b"\n"
