"""The event protocol on its own: every class of bad line gets its exact code and a message
naming the problem; good lines become events whose payload is the received text unchanged."""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ralph_monitor.errors import InvalidEvent
from ralph_monitor.protocol import (
    MAX_INT_DIGITS,
    MAX_JSON_DEPTH,
    Event,
    Origin,
    error_reply,
    make_reject,
    new_event_id,
    ok_reply,
    parse_line,
)

RECEIVED = datetime(2026, 11, 25, 3, 0, 0, tzinfo=timezone.utc)
ORIGIN = Origin(host="box-1", uid=1000, pid=4242)
SESSION = "6f1c2b4e-1111-4000-8000-000000000001"
EVENT_ID = "0b7e4a52-2222-4000-8000-000000000002"


def parse(raw: bytes | bytearray | str) -> Event:
    return parse_line(raw.encode() if isinstance(raw, str) else raw, received_at=RECEIVED, origin=ORIGIN)


def refusal(raw: bytes | str) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse(raw)
    return info.value


def event_with(**fields: object) -> bytes:
    return json.dumps({"type": "spec_started", **fields}).encode()


def in_data(value_text: str) -> bytes:
    """A valid event whose data.v is the given raw JSON text."""
    return b'{"type":"spec_started","data":{"v":' + value_text.encode() + b"}}"


def nested_arrays(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


# Every bad class: (raw line, exact code, fragments the message must contain).
BAD_LINES: dict[str, tuple[bytes, str, tuple[str, ...]]] = {
    # Not JSON at all, or broken JSON.
    "truncated": (b'{"type": "spec_started",', "invalid_json", ("invalid JSON",)),
    "plain_text": (b"hello daemon", "invalid_json", ("invalid JSON", "column 1")),
    "single_quotes": (b"{'type': 'spec_started'}", "invalid_json", ("invalid JSON", "double quotes")),
    "trailing_garbage": (b'{"type": "spec_started"} trailing', "invalid_json", ("invalid JSON", "Extra data")),
    "two_objects": (b'{"type":"a"}{"type":"b"}', "invalid_json", ("Extra data",)),
    "unterminated_string": (b'{"type": "spec_star', "invalid_json",
                            ("invalid JSON: Unterminated string starting at column 10",)),
    "trailing_comma": (b'{"type": "spec_started",}', "invalid_json", ("invalid JSON",)),
    # Valid JSON, but not an object.
    "array": (b'[{"type": "spec_started"}]', "not_an_object", ("JSON object", "got array")),
    "string": (b'"spec_started"', "not_an_object", ("JSON object", "got string")),
    "number": (b"42", "not_an_object", ("JSON object", "got number")),
    "float": (b"-1.5e3", "not_an_object", ("JSON object", "got number")),
    "null": (b"null", "not_an_object", ("JSON object", "got null")),
    "boolean": (b"true", "not_an_object", ("JSON object", "got boolean")),
    # The type.
    "empty_object": (b"{}", "missing_type", ('"type"',)),
    "no_type": (b'{"session_id": "' + SESSION.encode() + b'", "data": {}}', "missing_type", ('"type"',)),
    "type_null": (b'{"type": null}', "missing_type", ('"type" is null', "type name")),
    "type_number": (b'{"type": 5}', "invalid_type", ("type", "'5'", "letters")),
    "type_boolean": (b'{"type": true}', "invalid_type", ("type", "letters")),
    "type_array": (b'{"type": ["spec_started"]}', "invalid_type", ("type", "letters")),
    "type_object": (b'{"type": {"name": "x"}}', "invalid_type", ("type", "letters")),
    "type_empty": (b'{"type": ""}', "invalid_type", ("type ''", "letters")),
    "type_spaces": (b'{"type": "spec started"}', "invalid_type", ("'spec started'",)),
    "type_markup": (b'{"type": "<script>alert(1)</script>"}', "invalid_type", ("type",)),
    "type_leading_digit": (b'{"type": "1st"}', "invalid_type", ("'1st'",)),
    "type_newline": (b'{"type": "a\\nb"}', "invalid_type", ("type",)),
    "type_too_long": (b'{"type": "' + b"a" * 101 + b'"}', "invalid_type", ("at most 100 characters",)),
    # UUIDs.
    "session_id_garbage": (event_with(session_id="not-a-uuid"), "invalid_uuid",
                           ("session_id", "'not-a-uuid'", "not a valid UUID")),
    "session_id_short": (event_with(session_id=SESSION[:-1]), "invalid_uuid", ("session_id", "not a valid UUID")),
    "session_id_bad_hex": (event_with(session_id=SESSION[:-1] + "g"), "invalid_uuid", ("session_id",)),
    "session_id_empty": (event_with(session_id=""), "invalid_uuid", ("session_id", "not a valid UUID")),
    "session_id_number": (event_with(session_id=12345), "invalid_uuid", ("session_id", "UUID string", "got number")),
    "session_id_object": (event_with(session_id={"id": SESSION}), "invalid_uuid", ("session_id", "got object")),
    "event_id_garbage": (event_with(event_id="1234"), "invalid_uuid", ("event_id", "'1234'", "not a valid UUID")),
    "event_id_array": (event_with(event_id=[EVENT_ID]), "invalid_uuid", ("event_id", "got array")),
    # Timestamps.
    "ts_garbage": (event_with(ts="yesterday"), "invalid_ts", ("ts", "'yesterday'", "RFC 3339")),
    "ts_naive": (event_with(ts="2026-11-25T03:12:00"), "invalid_ts", ("ts", "no UTC offset")),
    "ts_date_only": (event_with(ts="2026-11-25"), "invalid_ts", ("ts", "no UTC offset")),
    "ts_bad_month": (event_with(ts="2026-13-01T00:00:00Z"), "invalid_ts", ("ts", "RFC 3339")),
    "ts_empty": (event_with(ts=""), "invalid_ts", ("ts", "RFC 3339")),
    "ts_epoch_number": (event_with(ts=1764040320), "invalid_ts", ("ts", "RFC 3339 string", "got number")),
    # data and spec_id.
    "data_array": (event_with(data=[1, 2]), "invalid_data", ("data", "JSON object", "got array")),
    "data_string": (event_with(data="tokens=5"), "invalid_data", ("data", "got string")),
    "data_number": (event_with(data=5), "invalid_data", ("data", "got number")),
    "data_boolean": (event_with(data=False), "invalid_data", ("data", "got boolean")),
    "spec_id_number": (event_with(spec_id=7), "invalid_spec_id", ("spec_id", "string")),
    "spec_id_empty": (event_with(spec_id=""), "invalid_spec_id", ("spec_id",)),
    "spec_id_too_long": (event_with(spec_id="s" * 201), "invalid_spec_id", ("spec_id", "200")),
    # NUL: raw byte anywhere, or the \u0000 escape jsonb refuses.
    "nul_byte_in_string": (b'{"type":"spec_started","data":{"a":"x\x00y"}}', "nul_byte", ("NUL byte", "offset 37")),
    "nul_byte_after_object": (b'{"type":"spec_started"}\x00', "nul_byte", ("NUL byte", "offset 23")),
    "nul_byte_alone": (b"\x00", "nul_byte", ("NUL byte", "offset 0")),
    "nul_escape_in_value": (b'{"type":"spec_started","data":{"a":"x\\u0000y"}}', "nul_character",
                            ("\\u0000", "NUL", "PostgreSQL")),
    "nul_escape_in_key": (b'{"type":"spec_started","data":{"k\\u0000":1}}', "nul_character", ("\\u0000",)),
    "nul_escape_top_level_key": (b'{"type":"spec_started","\\u0000":1}', "nul_character", ("\\u0000",)),
    "nul_escape_in_type": (b'{"type":"spec\\u0000started"}', "nul_character", ("\\u0000",)),
    "nul_escape_in_spec_id": (b'{"type":"spec_started","spec_id":"\\u0000"}', "nul_character", ("\\u0000",)),
    "nul_escape_deep_in_array": (b'{"type":"spec_started","data":{"a":[[["\\u0000"]]]}}', "nul_character",
                                 ("\\u0000",)),
    # Lone UTF-16 surrogate escapes (jsonb refuses them).
    "lone_high_surrogate": (b'{"type":"spec_started","data":{"a":"\\ud800"}}', "invalid_unicode", ("surrogate",)),
    "lone_low_surrogate": (b'{"type":"spec_started","data":{"a":"\\udfff"}}', "invalid_unicode", ("surrogate",)),
    "reversed_surrogates": (b'{"type":"spec_started","data":{"a":"\\ude00\\ud83d"}}', "invalid_unicode",
                            ("surrogate",)),
    "lone_surrogate_in_key": (b'{"type":"spec_started","data":{"\\ud800":1}}', "invalid_unicode", ("surrogate",)),
    # Bytes that are not UTF-8.
    "latin1_byte": (b'{"type":"spec_started","data":{"a":"caf\xe9"}}', "invalid_utf8", ("UTF-8", "offset 39")),
    "ff_byte": (b'{"type":"spec_started","data":{"a":"\xff"}}', "invalid_utf8", ("UTF-8", "offset 36")),
    "overlong_slash": (b'{"type":"spec_started","data":{"a":"\xc0\xaf"}}', "invalid_utf8", ("UTF-8",)),
    "encoded_surrogate": (b'{"type":"spec_started","data":{"a":"\xed\xa0\x80"}}', "invalid_utf8", ("UTF-8",)),
    "truncated_sequence": (b'{"type":"spec_started","data":{"a":"\xe2\x82"}}', "invalid_utf8", ("UTF-8",)),
    "utf8_in_key": (b'{"type":"spec_started","\xfe":1}', "invalid_utf8", ("UTF-8", "offset 24")),
    # Nesting.
    "arrays_10000_deep": (in_data(nested_arrays(10_000).decode()), "too_deep", ("nested deeper than 100",)),
    "objects_10000_deep": (in_data('{"a":' * 10_000 + "1" + "}" * 10_000), "too_deep", ("nested deeper",)),
    "top_level_10000_deep": (nested_arrays(10_000), "too_deep", ("nested deeper",)),
    "unclosed_10000_deep": (b'{"type":"spec_started","data":' + b"[" * 10_000, "too_deep", ("nested deeper",)),
    "arrays_150_deep": (in_data(nested_arrays(150).decode()), "too_deep", ("nested deeper than 100",)),
    "objects_150_deep": (in_data('{"a":' * 150 + "1" + "}" * 150), "too_deep", ("nested deeper",)),
    # Numbers PostgreSQL cannot store (or Python cannot hold).
    "nan": (in_data("NaN"), "invalid_number", ("NaN", "PostgreSQL")),
    "infinity": (in_data("Infinity"), "invalid_number", ("Infinity",)),
    "minus_infinity": (in_data("-Infinity"), "invalid_number", ("-Infinity",)),
    "nan_in_array": (in_data("[1, NaN]"), "invalid_number", ("NaN",)),
    "1e131072": (in_data("1e131072"), "invalid_number", ("1e131072", "out of range", "131072 digits before")),
    "minus_12e131071": (in_data("-12e131071"), "invalid_number", ("-12e131071", "131072 digits before")),
    "exponent_5000_digits_up": (in_data("1e" + "9" * 5000), "invalid_number", ("out of range",)),
    "int_5000_digits": (in_data("9" * 5000), "invalid_number", ("5000 digits", "too large")),
    "negative_int_5000_digits": (in_data("-" + "9" * 5000), "invalid_number", ("5000 digits", "too large")),
    "int_1001_digits": (in_data("1" * (MAX_INT_DIGITS + 1)), "invalid_number", ("1001 digits",)),
    "1e-16384": (in_data("1e-16384"), "invalid_number", ("1e-16384", "out of range", "16383")),
    "scale_16384": (in_data("0." + "0" * 16383 + "1"), "invalid_number", ("out of range", "16383")),
    "zero_scale_16384": (in_data("0e-16384"), "invalid_number", ("out of range",)),
    "exponent_5000_digits": (in_data("1e-" + "9" * 5000), "invalid_number", ("out of range",)),
    "zero_huge_exponent": (in_data("0e1073741823"), "invalid_number", ("out of range",)),
}


@pytest.mark.parametrize("raw, code, fragments", list(BAD_LINES.values()), ids=list(BAD_LINES))
def test_bad_line_gets_its_exact_code_and_a_message_naming_the_problem(
        raw: bytes, code: str, fragments: tuple[str, ...]) -> None:
    error = refusal(raw)
    assert error.code == code, str(error)
    message = str(error)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message
    assert " at at " not in message
    assert len(message) < 300, "messages quote at most a bounded part of the input"


@pytest.mark.parametrize("raw, code, fragments", list(BAD_LINES.values()), ids=list(BAD_LINES))
def test_bad_line_is_refused_the_same_way_as_a_bytearray(raw: bytes, code: str, fragments: tuple[str, ...]) -> None:
    """The server hands over slices of its receive buffer (bytearray)."""
    assert refusal(bytearray(raw)).code == code


def test_10000_deep_nesting_does_not_escape_as_recursion_error() -> None:
    for raw in (nested_arrays(10_000), in_data("[" * 10_000), in_data('{"a":' * 10_000 + "0" + "}" * 10_000),
                b'{"type":"x","data":' + b'{"a":[' * 5_000 + b"]}" * 5_000 + b"}"):
        try:
            parse(raw)
        except InvalidEvent as error:
            assert error.code == "too_deep"
        else:  # pragma: no cover - reported below
            pytest.fail("a 10,000-deep line was accepted")


def test_depth_limit_is_exact() -> None:
    """A document nested exactly MAX_JSON_DEPTH levels is fine; one level more is not."""
    # top-level object + data object + N arrays = N + 2 levels
    at_limit = in_data(nested_arrays(MAX_JSON_DEPTH - 2).decode())
    assert parse(at_limit).payload == at_limit.decode()
    assert refusal(in_data(nested_arrays(MAX_JSON_DEPTH - 1).decode())).code == "too_deep"
    # Many brackets side by side are not depth.
    wide = in_data("[" + ",".join(["[[1]]"] * 500) + "]")
    assert parse(wide).payload == wide.decode()
    # Brackets inside strings are not depth either.
    brackets_in_string = in_data(json.dumps("[" * 500 + "{" * 500))
    assert parse(brackets_in_string).payload == brackets_in_string.decode()


@pytest.mark.parametrize("number", [
    "0", "-0", "1.5", "1e308", "-1.7976931348623157e308", "1e-400", "1e-16383", "-1.5e-16382",
    "0." + "0" * 16382 + "1", "123.456e-16380", "0e400", "1E+2", "1e-0000000000001", "1" * MAX_INT_DIGITS,
    "-" + "9" * MAX_INT_DIGITS, "1e400", "-1e400", "9" * 5000 + ".5", "1e131071", "-9.9e131071", "0.5e131072",
    "123e131069", "0.00012e131075", "0e1073741822", "-1E+99999",
])
def test_numbers_postgresql_can_store_are_accepted(number: str) -> None:
    raw = in_data(number)
    assert parse(raw).payload == raw.decode()


def test_a_good_event_with_every_field() -> None:
    raw = ('{"type": "spec_completed", "session_id": "%s", "spec_id": "CR-02", '
           '"ts": "2026-11-25T03:12:00.250+01:00", "event_id": "%s", '
           '"data": {"tokens_used": 1200, "cost_usd": 0.42, "note": "ünïcode ✓"}}' % (SESSION, EVENT_ID))
    event = parse(raw)
    assert event.event_id == EVENT_ID
    assert event.client_event_id is True
    assert event.event_type == "spec_completed"
    assert event.known_type is True
    assert event.session_id == SESSION
    assert event.spec_id == "CR-02"
    assert event.occurred_at == datetime(2026, 11, 25, 2, 12, 0, 250_000, tzinfo=timezone.utc)
    assert event.occurred_at.utcoffset() == timedelta(hours=1)
    assert event.received_at == RECEIVED
    assert event.origin == ORIGIN
    assert event.payload == raw


@pytest.mark.parametrize("ts, expected", [
    ("2026-11-25T03:12:00Z", datetime(2026, 11, 25, 3, 12, tzinfo=timezone.utc)),
    ("2026-11-25T03:12:00.123456+00:00", datetime(2026, 11, 25, 3, 12, 0, 123456, tzinfo=timezone.utc)),
    ("2026-11-24T22:12:00-05:00", datetime(2026, 11, 25, 3, 12, tzinfo=timezone.utc)),
    ("2026-11-25 03:12:00+00:00", datetime(2026, 11, 25, 3, 12, tzinfo=timezone.utc)),
])
def test_rfc3339_timestamps_are_the_events_time(ts: str, expected: datetime) -> None:
    assert parse(event_with(ts=ts)).occurred_at == expected


def test_missing_ts_and_event_id_get_receipt_time_and_a_fresh_id() -> None:
    first = parse(b'{"type":"session_heartbeat"}')
    second = parse(b'{"type":"session_heartbeat"}')
    assert first.occurred_at == RECEIVED
    assert first.received_at == RECEIVED
    assert first.client_event_id is False
    assert uuid.UUID(first.event_id).version == 7
    assert first.event_id != second.event_id
    assert first.session_id is None
    assert first.spec_id is None


def test_null_optional_fields_count_as_absent() -> None:
    event = parse(b'{"type":"spec_started","session_id":null,"event_id":null,"ts":null,'
                  b'"spec_id":null,"data":null}')
    assert event.session_id is None
    assert event.client_event_id is False
    assert event.occurred_at == RECEIVED
    assert event.spec_id is None


def test_uuid_fields_accept_any_case() -> None:
    event = parse(event_with(session_id=SESSION.upper(), event_id="{%s}" % EVENT_ID.upper()))
    assert event.session_id == SESSION
    assert event.event_id == EVENT_ID


@pytest.mark.parametrize("text", [
    '{"type":"spec_started"}',
    '  {  "data" : {"z": 1, "a": [1, 2.50, 1E+2]} ,  "type" : "spec_started"  }  ',
    '{"type":"spec_started","data":{"e":"caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\\\ \\/ \\t"}}',
    '{"type":"spec_started","data":{"raw":"naïve — 東京 🎉"},"extra_top_level":{"kept":true}}',
    '{"type":"spec_started","data":{"big":' + "7" * MAX_INT_DIGITS + ',"tiny":1e-300,"neg":-0.0}}',
    '{"type":"spec_started","data":{}}\r',
])
def test_payload_is_the_received_text_unchanged(text: str) -> None:
    assert parse(text.encode()).payload == text


def test_unknown_type_is_accepted_and_flagged() -> None:
    event = parse(b'{"type":"deploy.finished","data":{"tool_name":"Bash"}}')
    assert event.event_type == "deploy.finished"
    assert event.known_type is False
    assert parse(b'{"type":"cc.PreToolUse"}').known_type is True
    for name in ("x", "A", "cc:hook-event.v2", "a" * 100, "Stop"):
        assert parse(event_with(type=name)).event_type == name


def test_ok_reply_is_one_json_line() -> None:
    event = parse(event_with(event_id=EVENT_ID))
    assert ok_reply(event) == b'{"ok": true, "id": "%s"}\n' % EVENT_ID.encode()
    assert json.loads(ok_reply(event, spooled=True)) == {"ok": True, "id": EVENT_ID, "spooled": True}
    assert json.loads(ok_reply(event, duplicate=True)) == {"ok": True, "id": EVENT_ID, "duplicate": True}


def test_ok_reply_for_an_unknown_type_carries_a_warning() -> None:
    event = parse(b'{"type":"deploy.finished"}')
    reply = ok_reply(event)
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    assert json.loads(reply) == {"ok": True, "id": event.event_id,
                                 "warning": "unknown type 'deploy.finished' stored as is",
                                 "warnings": ["unknown type 'deploy.finished' stored as is"]}
    assert "warning" not in json.loads(ok_reply(parse(b'{"type":"cc.PreToolUse"}')))


def test_error_reply_is_one_json_line_with_code_and_message() -> None:
    assert error_reply("invalid_json", "invalid JSON: Expecting value at column 1") == (
        b'{"ok": false, "code": "invalid_json", "error": "invalid JSON: Expecting value at column 1"}\n')
    awkward = 'line one\nline "two" \\ \x00 \ud800 ✓'
    reply = error_reply("x", awkward)
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    assert json.loads(reply) == {"ok": False, "code": "x", "error": awkward}
    reply.decode("ascii")


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_error_reply_for_each_bad_class_round_trips(name: str) -> None:
    raw, code, _ = BAD_LINES[name]
    error = refusal(raw)
    reply = error_reply(error.code, str(error))
    assert reply.count(b"\n") == 1
    assert json.loads(reply) == {"ok": False, "code": code, "error": str(error)}


def reject_of(raw: bytes, *, excerpt_bytes: int = 64, line_bytes: int | None = None):
    return make_reject(raw, InvalidEvent("invalid_json", "invalid JSON: boom"), received_at=RECEIVED,
                       origin=ORIGIN, excerpt_bytes=excerpt_bytes, line_bytes=line_bytes)


def test_reject_keeps_code_detail_origin_and_true_size() -> None:
    reject = reject_of(b"oops")
    assert (reject.code, reject.detail) == ("invalid_json", "invalid JSON: boom")
    assert reject.origin == ORIGIN
    assert reject.received_at == RECEIVED
    assert reject.line_bytes == 4
    assert reject.excerpt == "oops"
    assert reject.reject_id.version == 4
    assert reject_of(b"oops").reject_id != reject.reject_id


def test_reject_excerpt_is_bounded_but_line_bytes_is_the_true_size() -> None:
    raw = b"x" * 10_000
    reject = reject_of(raw)
    assert reject.excerpt == "x" * 64
    assert reject.line_bytes == 10_000
    # The server passes only the head of an oversized line, with its real size.
    head = reject_of(raw[:64], line_bytes=50 * 1024 * 1024)
    assert head.line_bytes == 50 * 1024 * 1024
    assert head.excerpt == "x" * 64


@pytest.mark.parametrize("raw", [
    b"\x00" * 1000,
    b"\xff" * 1000,
    "€".encode() * 1000,
    b'{"a":"' + b"\x00\xff" * 500,
])
def test_reject_excerpt_stays_within_its_byte_bound_after_escaping(raw: bytes) -> None:
    reject = reject_of(raw)
    assert len(reject.excerpt.encode("utf-8")) <= 64
    assert "\x00" not in reject.excerpt
    assert reject.excerpt, "something of the line is kept"
    assert reject.line_bytes == len(raw)


def test_reject_excerpt_makes_nul_visible_and_replaces_bad_utf8() -> None:
    reject = reject_of(b'{"a":"\x00\xff"}')
    assert reject.excerpt == '{"a":"\\u0000\ufffd"}'


# Property: whatever arrives, parse_line returns an Event or raises InvalidEvent, never anything else.

def _outcome(raw: bytes) -> Event | None:
    try:
        return parse(raw)
    except InvalidEvent as error:
        assert error.code and str(error)
        return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_parser(raw: bytes) -> None:
    _outcome(raw)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "session_id", "event_id", "ts", "spec_id", "data", "x"]),
                       json_values, max_size=6),
       st.booleans())
def test_arbitrary_json_objects_never_crash_the_parser(obj: dict[str, object], ascii_only: bool) -> None:
    text = json.dumps(obj, ensure_ascii=ascii_only)
    event = _outcome(text.encode("utf-8", "surrogatepass"))
    if event is not None:
        assert event.payload == text
        assert isinstance(obj.get("type"), str)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=60), st.binary(min_size=1, max_size=6))
def test_mangled_good_lines_never_crash_the_parser(position: int, junk: bytes) -> None:
    good = b'{"type":"spec_started","session_id":"%s","data":{"n":1.5,"s":"\\u00e9"}}' % SESSION.encode()
    _outcome(good[:position] + junk + good[position:])


def test_generated_ids_are_uuid7_in_time_order_and_unique() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == i for u, i in zip(parsed, ids))
    # The first 48 bits are milliseconds since the epoch: never decreasing, and now.
    millis = [u.int >> 80 for u in parsed]
    assert millis == sorted(millis)
    assert abs(millis[-1] / 1000 - time.time()) < 5


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, "\n".join(new_event_id()[-17:] for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as child:
        child_tails = set(child.read().split("\n"))
    assert len(child_tails) == 100
    assert not child_tails & {new_event_id()[-17:] for _ in range(100)}


@pytest.mark.parametrize("number", ["1e-16384", "0e1073741823", "-1E+999999", "1.5e-99999"])
def test_a_five_digit_exponent_takes_the_strict_path(number: str) -> None:
    """orjson would read these as 0 or refuse them vaguely; PostgreSQL refuses them all."""
    with pytest.raises(InvalidEvent) as caught:
        parse(in_data(number))
    assert caught.value.code == "invalid_number"


def test_orjson_refusals_get_the_strict_decoders_exact_message() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse(b'{"type":"spec_started","data":{"a":1,}}')
    assert caught.value.code == "invalid_json"
    assert str(caught.value) == "invalid JSON: Expecting property name enclosed in double quotes at column 38"
    with pytest.raises(InvalidEvent) as caught:
        parse(b'{"type":"spec_started","data":{"s":"\\ud800"}}')
    assert caught.value.code == "invalid_unicode"


def test_fields_in_the_wrong_place_get_a_hint() -> None:
    reply = json.loads(ok_reply(parse(b'{"type":"spec_completed","tokens_used":500}')))
    assert reply["warnings"] == [
        'tokens_used is at the top level, where nothing reads it; put it in "data"',
        "spec_completed without session_id and spec_id: stored, but not counted in any spec run"]
    fine = parse(b'{"type":"spec_completed","session_id":"6f1c2b4e-1111-4000-8000-000000000001",'
                 b'"spec_id":"CR-1","data":{"tokens_used":500}}')
    assert fine.warnings is None
