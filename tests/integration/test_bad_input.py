"""Bad input through a real daemon (guarantee 2): each bad line gets its exact error reply,
the connection and the daemon keep serving, and the rejected line is recorded, bounded.
Also the limits: line size, idle clients, connection count, rejects per connection."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ralph_monitor.cluster import Cluster
from ralph_monitor.errors import InvalidEvent
from ralph_monitor.protocol import Origin, error_reply, parse_line
from tests.conftest import (TEMPLATE_DB, Daemon, LineClient, admin_connect, create_database, drop_database, query,
                            short_tempdir)
from tests.integration.test_overnight import ralph_query

SESSION = "6f1c2b4e-1111-4000-8000-000000000001"
EXCERPT_BYTES = 4096
"""[limits] reject_excerpt_bytes default."""
MAX_LINE_BYTES = 1_048_576
"""[limits] max_line_bytes default."""
MAX_REJECTS_PER_CONNECTION = 100
"""[limits] max_rejects_per_connection default."""
MiB = 1024 * 1024
RECEIVED = datetime.now(timezone.utc)
TEST_ORIGIN = Origin("test", None, None)


class Client(LineClient):
    """LineClient that can also read a reply line as raw bytes and expect the end of stream."""

    def raw_reply(self) -> bytes:
        line = self._file.readline()
        if not line:
            raise EOFError("connection closed without a reply")
        return line

    def expect_closed(self) -> None:
        assert self._file.readline() == b"", "the daemon should have closed the connection"

    def good(self, **fields: Any) -> str:
        """Send a valid event and check it is acknowledged; returns its event_id."""
        event_id = str(uuid.uuid4())
        reply = self.request({"type": "spec_started", "event_id": event_id, **fields})
        assert reply == {"ok": True, "id": event_id}
        return event_id


def connect(daemon: Daemon, timeout: float = 10.0) -> Client:
    return Client(daemon.connect(timeout))


def expected_error(raw: bytes) -> tuple[str, str]:
    """The code and message the protocol gives this line (the daemon must send exactly that)."""
    with pytest.raises(InvalidEvent) as info:
        parse_line(raw, received_at=RECEIVED, origin=TEST_ORIGIN)
    return info.value.code, str(info.value)


def expected_excerpt(raw: bytes, limit: int = EXCERPT_BYTES) -> str:
    """At most `limit` bytes of the line, NULs written as \\u0000, bad UTF-8 replaced."""
    text = raw[:limit].decode("utf-8", "replace").replace("\x00", "\\u0000")
    return text.encode()[:limit].decode("utf-8", "ignore")


def max_reject_id(dsn: str) -> int:
    return query(dsn, "SELECT coalesce(max(id), 0) AS m FROM rejects")[0]["m"]


def rejects_after(dsn: str, after_id: int, expected: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Rejected lines recorded after `after_id`, waiting (briefly) until `expected` are there."""
    deadline = time.monotonic() + timeout
    while True:
        rows = query(dsn, "SELECT * FROM rejects WHERE id > %s ORDER BY id", (after_id,))
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def event_count(dsn: str) -> int:
    return query(dsn, "SELECT count(*) AS n FROM events")[0]["n"]


def assert_healthy(daemon: Daemon) -> None:
    """The daemon process is alive, serves a new client, and logged no crash."""
    assert daemon.process is not None and daemon.process.poll() is None, daemon.log()
    c = connect(daemon)
    try:
        c.good()
    finally:
        c.close()
    log = daemon.log()
    for sign in ("Traceback", "Fatal error", "Exception in callback", "exception was never retrieved"):
        assert sign not in log, log[-5000:]


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def nested_arrays(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def in_data(value_text: bytes) -> bytes:
    return b'{"type":"spec_started","data":{"v":' + value_text + b"}}"


# Every bad class, as sent (without the newline), with the code and message the daemon must answer.
BAD_LINES: dict[str, tuple[bytes, str, str]] = {
    "invalid_json": (b'{"type": "spec_started", "data": {', "invalid_json",
        "invalid JSON: Expecting property name enclosed in double quotes at column 35"),
    "plain_text": (b"this is not json", "invalid_json",
        "invalid JSON: Expecting value at column 1"),
    "trailing_garbage": (b'{"type":"spec_started"} and more', "invalid_json",
        "invalid JSON: Extra data at column 25"),
    "array": (b'[{"type":"spec_started"}]', "not_an_object",
        "event must be a JSON object, got array"),
    "string": (b'"spec_started"', "not_an_object",
        "event must be a JSON object, got string"),
    "number": (b"12345", "not_an_object",
        "event must be a JSON object, got number"),
    "null": (b"null", "not_an_object",
        "event must be a JSON object, got null"),
    "missing_type": (b'{"session_id":"' + SESSION.encode() + b'","data":{"a":1}}', "missing_type",
        'event has no "type" field'),
    "type_number": (b'{"type":42}', "invalid_type",
        "type '42' must be a name of letters, digits, _ . : - (at most 100 characters)"),
    "type_garbage": (b'{"type":"DROP TABLE events; --"}', "invalid_type",
        "type 'DROP TABLE events; --' must be a name of letters, digits, _ . : - (at most 100 characters)"),
    "bad_session_id": (b'{"type":"spec_started","session_id":"not-a-uuid"}', "invalid_uuid",
        "session_id 'not-a-uuid' is not a valid UUID"),
    "bad_event_id": (b'{"type":"spec_started","event_id":"1234-5678"}', "invalid_uuid",
        "event_id '1234-5678' is not a valid UUID"),
    "bad_ts": (b'{"type":"spec_started","ts":"last tuesday"}', "invalid_ts",
        "ts 'last tuesday' is not RFC 3339; send e.g. 2026-11-25T03:12:00Z"),
    "naive_ts": (b'{"type":"spec_started","ts":"2026-11-25T03:12:00"}', "invalid_ts",
        "ts '2026-11-25T03:12:00' has no UTC offset; send e.g. 2026-11-25T03:12:00Z"),
    "data_not_object": (b'{"type":"spec_started","data":[1,2,3]}', "invalid_data",
        "data must be a JSON object, got array"),
    "nul_byte": (b'{"type":"spec_started","data":{"a":"x\x00y"}}', "nul_byte",
        "line contains a NUL byte at offset 37"),
    "nul_escape": (b'{"type":"spec_started","data":{"a":"x\\u0000y"}}', "nul_character",
        "string contains \\u0000 (NUL), which PostgreSQL cannot store"),
    "nul_escape_in_key": (b'{"type":"spec_started","data":{"\\u0000":"v"}}', "nul_character",
        "string contains \\u0000 (NUL), which PostgreSQL cannot store"),
    "lone_surrogate": (b'{"type":"spec_started","data":{"a":"\\ud800"}}', "invalid_unicode",
        "string contains an unpaired UTF-16 surrogate escape"),
    "invalid_utf8": (b'{"type":"spec_started","data":{"a":"\xff\xfe caf\xe9"}}', "invalid_utf8",
        "line is not valid UTF-8 (bad byte at offset 36)"),
    "encoded_surrogate": (b'{"type":"spec_started","data":{"a":"\xed\xa0\x80"}}', "invalid_utf8",
        "line is not valid UTF-8 (bad byte at offset 36)"),
    "nested_10000": (in_data(nested_arrays(10_000)), "too_deep",
        "JSON nested deeper than 100 levels"),
    "nested_150": (in_data(nested_arrays(150)), "too_deep",
        "JSON nested deeper than 100 levels"),
    "nan": (in_data(b"NaN"), "invalid_number",
        "NaN is not a JSON number PostgreSQL can store"),
    "infinity": (in_data(b"-Infinity"), "invalid_number",
        "-Infinity is not a JSON number PostgreSQL can store"),
    "1e131072": (in_data(b"1e131072"), "invalid_number",
        "number 1e131072 is out of range (PostgreSQL keeps at most 131072 digits before the decimal point)"),
    "int_5000_digits": (in_data(b"9" * 5000), "invalid_number",
        "integer with 5000 digits is too large to store"),
    "1e-16384": (in_data(b"1e-16384"), "invalid_number",
        "number 1e-16384 is out of range (PostgreSQL keeps at most 16383 digits after the decimal point)"),
    "scale_20000": (in_data(b"0." + b"0" * 20_000 + b"1"), "invalid_number",
        "number 0.00000000000000000000000000000000000000 is out of range "
        "(PostgreSQL keeps at most 16383 digits after the decimal point)"),
    "nul_flood": (b'{"type":"spec_started","data":{"a":"' + b"\x00" * 6000 + b'"}}', "nul_byte",
        "line contains a NUL byte at offset 36"),
    "bad_utf8_flood": (b'{"type":"spec_started","data":{"a":"' + b"\xff" * 6000 + b'"}}', "invalid_utf8",
        "line is not valid UTF-8 (bad byte at offset 36)"),
    "big_invalid_json": (b'{"type":"spec_started","data":"' + b"x" * 500_000, "invalid_json",
        "invalid JSON: Unterminated string starting at column 31"),
}


@pytest.fixture(scope="module")
def shared_daemon(pg_cluster: Cluster, template_dsn: str) -> Iterator[Daemon]:
    """One daemon on its own database for the per-class tests (saves a start-up per class)."""
    name = f"test_bad_input_{os.getpid()}"
    daemon = Daemon(root=short_tempdir("rm-d-"), dsn=create_database(pg_cluster, name, template=TEMPLATE_DB))
    daemon.start()
    yield daemon
    assert daemon.process is not None
    alive = daemon.process.poll() is None
    if alive:
        daemon.stop()
    else:
        daemon.process.wait(10)
    drop_database(pg_cluster, name)
    log = daemon.log()
    shutil.rmtree(daemon.root, ignore_errors=True)
    assert alive, f"the shared daemon died:\n{log[-5000:]}"


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_bad_line_gets_exact_error_and_everything_keeps_working(shared_daemon: Daemon, name: str) -> None:
    raw, code, message = BAD_LINES[name]
    dsn = shared_daemon.dsn
    assert expected_error(raw) == (code, message)  # the table agrees with the protocol module
    before = max_reject_id(dsn)
    events_before = event_count(dsn)

    c = connect(shared_daemon)
    try:
        c.send(raw + b"\n")
        line = c.raw_reply()
        assert line == error_reply(code, message)
        assert line == b'{"ok": false, "code": "%s", "error": %s}\n' % (
            code.encode(), json.dumps(message).encode())
        # The same connection keeps working.
        good_id = c.good(spec_id=name)
    finally:
        c.close()
    # And a new client is served.
    other = connect(shared_daemon)
    try:
        other.good()
    finally:
        other.close()

    rows = rejects_after(dsn, before, 1)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["reason"] == code
    assert row["detail"] == message
    assert row["line_bytes"] == len(raw)
    assert row["excerpt"] == expected_excerpt(raw)
    assert len(row["excerpt"].encode()) <= EXCERPT_BYTES
    assert "\x00" not in row["excerpt"]
    assert row["writer_pid"] == os.getpid()
    assert row["writer_uid"] == os.getuid()
    assert row["host"]
    assert event_count(dsn) == events_before + 2
    assert query(dsn, "SELECT spec_id FROM events WHERE event_id = %s", (good_id,))[0]["spec_id"] == name


def test_every_bad_class_in_one_stream_keeps_order(shared_daemon: Daemon) -> None:
    """All bad classes pipelined in one write, each followed by a good event: replies in order."""
    before = max_reject_id(shared_daemon.dsn)
    ids = [str(uuid.uuid4()) for _ in BAD_LINES]
    stream = b"".join(raw + b"\n" + b'{"type":"spec_started","event_id":"%s"}\n' % event_id.encode()
                      for (raw, _, _), event_id in zip(BAD_LINES.values(), ids))
    c = connect(shared_daemon)
    try:
        c.send(stream)
        for (_, code, message), event_id in zip(BAD_LINES.values(), ids):
            assert c.raw_reply() == error_reply(code, message)
            assert c.reply() == {"ok": True, "id": event_id}
    finally:
        c.close()
    rows = rejects_after(shared_daemon.dsn, before, len(BAD_LINES))
    assert [r["reason"] for r in rows] == [code for _, code, _ in BAD_LINES.values()]
    assert_healthy(shared_daemon)


# Line size.

def test_50_mb_line_is_refused_with_bounded_memory(daemon: Daemon) -> None:
    assert daemon.process is not None
    pid = daemon.process.pid
    c = connect(daemon, timeout=30)
    c.good()
    rss_before = vm_kib(pid, "VmRSS")
    before = max_reject_id(daemon.dsn)

    head = b'{"type":"spec_started","data":{"blob":"'
    size = 50 * MiB
    c.send(head)
    chunk = b"x" * MiB
    sent = len(head)
    while sent + len(chunk) <= size:
        c.send(chunk)
        sent += len(chunk)
    c.send(b"x" * (size - sent) + b"\n")

    assert c.raw_reply() == error_reply(
        "line_too_long",
        f"line of {size} bytes exceeds the limit of {MAX_LINE_BYTES} bytes ([limits] max_line_bytes)")
    c.good()  # the same connection still works
    rss_after = vm_kib(pid, "VmRSS")
    peak = vm_kib(pid, "VmHWM")
    c.close()

    assert (rss_after - rss_before) < 30 * 1024, (rss_before, rss_after)
    assert (peak - rss_before) < 30 * 1024, (rss_before, peak)
    rows = rejects_after(daemon.dsn, before, 1)
    assert len(rows) == 1
    assert rows[0]["reason"] == "line_too_long"
    assert rows[0]["line_bytes"] == size
    assert rows[0]["excerpt"] == (head + b"x" * (EXCERPT_BYTES - len(head))).decode()
    assert_healthy(daemon)


def test_oversized_lines_between_good_ones_in_one_write(daemon: Daemon) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    good = [b'{"type":"spec_started","event_id":"%s"}\n' % i.encode() for i in ids]
    exactly_max = b'{"type":"spec_started","data":{"s":"' + b"y" * (MAX_LINE_BYTES - 39) + b'"}}'
    assert len(exactly_max) == MAX_LINE_BYTES
    one_over = b"z" * (MAX_LINE_BYTES + 1)
    c = connect(daemon, timeout=30)
    c.send(good[0] + b"a" * (3 * MiB) + b"\n" + good[1] + one_over + b"\n" + exactly_max + b"\n" + good[2])
    assert c.reply() == {"ok": True, "id": ids[0]}
    assert c.reply()["code"] == "line_too_long"
    assert c.reply() == {"ok": True, "id": ids[1]}
    assert c.raw_reply() == error_reply(
        "line_too_long",
        f"line of {MAX_LINE_BYTES + 1} bytes exceeds the limit of {MAX_LINE_BYTES} bytes ([limits] max_line_bytes)")
    assert c.reply()["ok"] is True  # a line of exactly max_line_bytes is accepted
    assert c.reply() == {"ok": True, "id": ids[2]}
    c.close()
    sizes = [r["line_bytes"] for r in query(daemon.dsn, "SELECT line_bytes FROM rejects ORDER BY id")]
    assert sizes == [3 * MiB, MAX_LINE_BYTES + 1]
    # `ralph-query rejects` says why, not only the reason's code.
    listed = ralph_query(daemon, "rejects").stdout
    assert f"line_too_long: line of {MAX_LINE_BYTES + 1} bytes exceeds the limit" in listed, listed


def test_oversized_line_cut_short_by_eof_is_still_answered(daemon: Daemon) -> None:
    c = connect(daemon, timeout=30)
    c.send(b"q" * (2 * MiB))
    c.sock.shutdown(socket.SHUT_WR)
    assert c.raw_reply() == error_reply(
        "line_too_long",
        f"line of {2 * MiB} bytes exceeds the limit of {MAX_LINE_BYTES} bytes ([limits] max_line_bytes)")
    c.expect_closed()
    c.close()
    assert rejects_after(daemon.dsn, 0, 1)[0]["line_bytes"] == 2 * MiB
    assert_healthy(daemon)


def test_small_max_line_bytes_is_configurable(daemon_factory: Any) -> None:
    d = daemon_factory(limits={"max_line_bytes": 2048, "reject_excerpt_bytes": 100})
    d.start()
    c = connect(d)
    c.good(data={"s": "a" * 1500})
    line = b'{"type":"spec_started","data":{"s":"' + "é".encode() * 1500 + b'"}}'
    c.send(line + b"\n")
    assert c.raw_reply() == error_reply(
        "line_too_long", f"line of {len(line)} bytes exceeds the limit of 2048 bytes ([limits] max_line_bytes)")
    c.good()
    c.close()
    row = rejects_after(d.dsn, 0, 1)[0]
    assert row["line_bytes"] == len(line)
    assert len(row["excerpt"].encode()) <= 100
    assert row["excerpt"].startswith('{"type":"spec_started","data":{"s":"é')


# Idle clients.

def test_idle_client_is_cut_off_and_active_client_is_not(daemon_factory: Any) -> None:
    d = daemon_factory(limits={"idle_timeout_s": 1.0})
    d.start()
    idle = connect(d)
    started = time.monotonic()
    partial = connect(d)
    partial.send(b'{"type":"spec_start')  # half a line, then nothing
    active = connect(d)

    acked = 0
    while time.monotonic() - started < 2.6:
        active.good()
        acked += 1
        time.sleep(0.25)
    assert acked >= 8

    cut = error_reply("idle_timeout", "no data for 1 s ([limits] idle_timeout_s); closing")
    assert idle.raw_reply() == cut
    elapsed = time.monotonic() - started
    idle.expect_closed()
    assert partial.raw_reply() == cut
    partial.expect_closed()
    assert 0.9 <= elapsed <= 2.6 + 1.0, elapsed
    active.good()  # never cut off
    active.close()
    idle.close()
    partial.close()
    # A half line is not an event and not a reject.
    assert query(d.dsn, "SELECT count(*) AS n FROM rejects")[0]["n"] == 0
    assert event_count(d.dsn) == acked + 1  # +1: the event just after the cut-off
    assert_healthy(d)


# Connection limits.

def test_connections_beyond_max_are_refused_and_slots_come_back(daemon_factory: Any) -> None:
    d = daemon_factory(limits={"max_connections": 20})
    d.start()
    held = [connect(d) for _ in range(20)]
    for c in held:
        c.good()  # each is registered and served

    refused_line = error_reply(
        "too_many_connections",
        "the daemon already serves 20 connections ([limits] max_connections); retry shortly")
    extra = [connect(d) for _ in range(5)]
    for c in extra:
        assert c.raw_reply() == refused_line
        c.expect_closed()
        c.close()
    for c in held:
        c.good()  # the held ones are unaffected

    for c in held[:5]:
        c.close()
    deadline = time.monotonic() + 5
    accepted = []
    while len(accepted) < 5:
        assert time.monotonic() < deadline, "closed connections did not free their slots"
        c = connect(d)
        try:
            c.send(b'{"type":"spec_started"}\n')
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before the line went out: the refusal is still there to read
        reply = c.reply()
        if reply.get("ok"):
            accepted.append(c)
        else:
            assert reply["code"] == "too_many_connections"
            c.close()
            time.sleep(0.05)
    extra = connect(d)
    assert extra.raw_reply() == refused_line  # full again: 15 held + 5 new
    extra.close()
    for c in held[5:] + accepted:
        c.close()
    assert_healthy(d)


def test_thousands_of_connections_opened_and_closed_rapidly(daemon: Daemon) -> None:
    good_lines = 0
    started = time.monotonic()
    for i in range(2000):
        sock = daemon.connect()
        kind = i % 5
        if kind == 1:
            sock.sendall(b'{"type":"session_heartbeat","data":{"i":%d}}\n' % i)
            good_lines += 1
        elif kind == 2:
            sock.sendall(b"garbage\n")
        elif kind == 3:
            sock.sendall(b'{"type":"spec_sta')  # half a line
        elif kind == 4:
            sock.sendall(b"x" * 5000)
            sock.shutdown(socket.SHUT_WR)
        sock.close()
    assert time.monotonic() - started < 30
    # Events from clients that closed at once are stored (guarantee 3).
    deadline = time.monotonic() + 10
    while event_count(daemon.dsn) < good_lines and time.monotonic() < deadline:
        time.sleep(0.1)
    assert event_count(daemon.dsn) == good_lines
    assert_healthy(daemon)


def test_many_simultaneous_connections_within_the_default_limit(daemon: Daemon) -> None:
    """1,000 clients of one uid at once are all served (default [limits] max_connections_per_uid 1024)."""
    clients = [daemon.connect() for _ in range(1000)]
    try:
        for i, sock in enumerate(clients):
            sock.sendall(b'{"type":"session_heartbeat","data":{"i":%d}}\n' % i)
        for sock in clients:
            assert sock.makefile("rb").readline().startswith(b'{"ok": true')
    finally:
        for sock in clients:
            sock.close()
    assert event_count(daemon.dsn) == 1000
    assert_healthy(daemon)


# Rejects per connection.

def test_rejects_recorded_per_connection_are_bounded(daemon: Daemon) -> None:
    c = connect(daemon)
    c.send(b"".join(b"bad line %d\n" % i for i in range(500)))
    replies = [c.reply() for _ in range(500)]
    assert all(r["ok"] is False and r["code"] == "invalid_json" for r in replies)
    c.good()
    c.close()
    rows = rejects_after(daemon.dsn, 0, MAX_REJECTS_PER_CONNECTION)
    assert len(rows) == MAX_REJECTS_PER_CONNECTION
    assert [r["excerpt"] for r in rows] == [f"bad line {i}" for i in range(MAX_REJECTS_PER_CONNECTION)]
    # The log is bounded the same way (one line per recorded reject, one warning at the limit).
    log = daemon.log()
    assert log.count(f"rejected a line from pid {os.getpid()}") == MAX_REJECTS_PER_CONNECTION
    assert log.count("max_rejects_per_connection") == 1
    # Another connection has its own budget.
    other = connect(daemon)
    for _ in range(3):
        assert other.request(b"[]")["code"] == "not_an_object"
    other.good()
    other.close()
    time.sleep(0.2)
    assert len(rejects_after(daemon.dsn, 0, MAX_REJECTS_PER_CONNECTION + 3)) == MAX_REJECTS_PER_CONNECTION + 3
    assert_healthy(daemon)


def test_reconnecting_does_not_reset_the_budget_of_recorded_rejects(daemon_factory: Any) -> None:
    """A writer that reconnects for a fresh per-connection budget still gets at most
    [limits] max_rejects_per_minute lines recorded (all are answered), and one warning."""
    d = daemon_factory(limits={"max_rejects_per_minute": 150})
    d.start()
    for n in range(5):
        c = connect(d)
        c.send(b"".join(b"bad line %d.%d\n" % (n, i) for i in range(50)))
        assert all(c.reply()["code"] == "invalid_json" for _ in range(50))
        c.close()
    time.sleep(0.3)
    rows = rejects_after(d.dsn, 0, 150)
    assert len(rows) == 150
    # The first 150 lines answered; connections use different writer lanes, so not in id order.
    assert sorted(r["excerpt"] for r in rows) == sorted(f"bad line {n}.{i}" for n in range(3) for i in range(50))
    assert d.log().count("max_rejects_per_minute") == 1
    assert_healthy(d)


def test_client_that_does_not_read_its_replies_is_slowed_down_not_buffered(daemon: Daemon) -> None:
    """Each 2-byte bad line earns a ~90-byte reply: the daemon stops reading from a client that
    does not read, instead of buffering its replies without bound -- also within one read, which
    can bring everything queued in the socket (tens of thousands of lines) at once."""
    assert daemon.process is not None
    pid = daemon.process.pid
    c = connect(daemon, timeout=30)
    c.good()
    rss_before = vm_kib(pid, "VmRSS")
    hwm_before = vm_kib(pid, "VmHWM")
    # Queue as many lines as the socket takes while the daemon is stopped, so that its first
    # read gets them all in one piece.
    os.kill(pid, signal.SIGSTOP)
    try:
        c.sock.setblocking(False)
        queued = 0
        block = b"x\n" * 131_072
        while True:
            try:
                queued += c.sock.send(block)
            except BlockingIOError:
                break
        c.sock.settimeout(30)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert queued > 100_000
    lines = (queued + 1) // 2
    if queued % 2:
        c.send(b"\n")  # complete the last "x"
    time.sleep(0.5)  # the daemon reads, answers and stops; nobody reads the answers yet
    expected = error_reply("invalid_json", "invalid JSON: Expecting value at column 1")
    for _ in range(lines):
        assert c.raw_reply() == expected
    c.good()
    c.close()
    growth = vm_kib(pid, "VmHWM") - max(rss_before, hwm_before)
    # Unbounded, the replies alone would take lines * 90 bytes (several MB) here.
    assert growth < max(2 * 1024, lines * 90 // 1024 // 2), (lines, growth)
    assert query(daemon.dsn, "SELECT count(*) AS n FROM rejects")[0]["n"] == MAX_REJECTS_PER_CONNECTION
    assert_healthy(daemon)


def test_pipelined_lines_wait_while_the_writer_queue_is_full(daemon_factory: Any) -> None:
    """With a tiny [limits] max_pending_events, reading stops in the middle of a read and goes on
    where it stopped: every line of a big pipelined write is answered, in order, once."""
    d = daemon_factory(limits={"max_pending_events": 8})
    d.start()
    clients = [connect(d, timeout=30) for _ in range(3)]
    expected: list[list[tuple[str, str | None]]] = []
    for n, c in enumerate(clients):
        lines, replies = [], []
        for i in range(2000):
            if i % 9 == 4:
                lines.append(b"[%d]\n" % i)
                replies.append(("not_an_object", None))
            else:
                event_id = str(uuid.uuid4())
                lines.append(b'{"type":"session_heartbeat","event_id":"%s","data":{"c":%d,"i":%d}}\n'
                             % (event_id.encode(), n, i))
                replies.append(("ok", event_id))
        c.send(b"".join(lines))
        expected.append(replies)
    for c, replies in zip(clients, expected):
        for kind, event_id in replies:
            reply = c.reply()
            if kind == "ok":
                assert reply == {"ok": True, "id": event_id}
            else:
                assert reply["code"] == kind
        c.good()
        c.close()
    assert event_count(d.dsn) == sum(1 for r in expected for kind, _ in r if kind == "ok") + 3
    assert_healthy(d)


# Stream framing.

def test_blank_lines_are_ignored(daemon: Daemon) -> None:
    c = connect(daemon)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    c.send(b"\n\n   \n\t\n\r\n \r\n"
           + b'{"type":"spec_started","event_id":"%s"}\n' % first.encode()
           + b"\n\n\n"
           + b'{"type":"spec_started","event_id":"%s"}\n' % second.encode())
    # Exactly two replies, in order: a blank line answered would show up here first.
    assert c.reply() == {"ok": True, "id": first}
    assert c.reply() == {"ok": True, "id": second}
    c.close()
    assert event_count(daemon.dsn) == 2
    assert query(daemon.dsn, "SELECT count(*) AS n FROM rejects")[0]["n"] == 0


def test_crlf_line_endings(daemon: Daemon) -> None:
    c = connect(daemon)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    c.send(b"".join(b'{"type":"spec_started","event_id":"%s"}\r\n' % i.encode() for i in ids)
           + b"oops\r\n" + b'{"type":"spec_started","spec_id":"last"}\r\n')
    for event_id in ids:
        assert c.reply() == {"ok": True, "id": event_id}
    assert c.reply() == {"ok": False, "code": "invalid_json",
                         "error": "invalid JSON: Expecting value at column 1"}
    assert c.reply()["ok"] is True
    c.close()
    rows = query(daemon.dsn, "SELECT event_id, payload::text AS p FROM events ORDER BY id")
    assert [str(r["event_id"]) for r in rows[:3]] == ids
    reject = query(daemon.dsn, "SELECT * FROM rejects")[0]
    assert (reject["excerpt"], reject["line_bytes"]) == ("oops", 4)


def test_line_sent_one_byte_at_a_time(daemon: Daemon) -> None:
    c = connect(daemon)
    event_id = str(uuid.uuid4())
    line = ('{"type":"spec_completed","session_id":"%s","spec_id":"CR-07","event_id":"%s",'
            '"data":{"note":"naïve ✓","tokens_used":12}}\r\n' % (SESSION, event_id)).encode()
    for i in range(len(line)):
        c.send(line[i:i + 1])
        if i % 8 == 0:
            time.sleep(0.001)  # let the daemon see the pieces separately
    assert c.reply() == {"ok": True, "id": event_id}
    # A bad line trickled in the same way, then a good one, split across the newline.
    for byte in b"{nope}\r":
        c.send(bytes([byte]))
        time.sleep(0.001)
    c.send(b"\n{")
    time.sleep(0.01)
    c.send(b'"type":"spec_started"}\n')
    assert c.reply()["code"] == "invalid_json"
    assert c.reply()["ok"] is True
    c.close()
    row = query(daemon.dsn, "SELECT payload->'data'->>'note' AS note FROM events WHERE event_id = %s",
                (event_id,))[0]
    assert row["note"] == "naïve ✓"


def test_many_lines_pipelined_in_one_write(daemon: Daemon) -> None:
    c = connect(daemon, timeout=30)
    expected = []
    lines = []
    for i in range(3000):
        if i % 10 == 3:
            lines.append(b'{"type":"spec_started","session_id":"nope"}\n')
            expected.append(("invalid_uuid", None))
        elif i % 10 == 7:
            lines.append(b"\n")  # blank: no reply
        else:
            event_id = str(uuid.uuid4())
            lines.append(b'{"type":"session_heartbeat","event_id":"%s","data":{"i":%d}}\n' % (event_id.encode(), i))
            expected.append(("ok", event_id))
    c.send(b"".join(lines))
    for kind, event_id in expected:
        reply = c.reply()
        if kind == "ok":
            assert reply == {"ok": True, "id": event_id}
        else:
            assert reply["code"] == kind
    c.close()
    assert event_count(daemon.dsn) == sum(1 for kind, _ in expected if kind == "ok")


# The validator promises PostgreSQL accepts whatever it lets through as jsonb.

@pytest.fixture(scope="module")
def jsonb_checker(pg_cluster: Cluster) -> Iterator[psycopg.Connection[Any]]:
    with admin_connect(pg_cluster) as conn:
        yield conn


numbers = st.from_regex(r"-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,6})?", fullmatch=True)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(numbers)
def test_every_number_the_validator_accepts_postgresql_stores(jsonb_checker: psycopg.Connection[Any],
                                                              number: str) -> None:
    text = '{"type":"spec_started","data":{"v":%s}}' % number
    try:
        parse_line(text.encode(), received_at=RECEIVED, origin=TEST_ORIGIN)
    except InvalidEvent as error:
        assert error.code == "invalid_number"
        return
    jsonb_checker.execute("SELECT %s::jsonb::text", (text,)).fetchone()


@pytest.mark.parametrize("number", ["1e-16383", "-1.5e-16382", "0." + "0" * 16382 + "1", "1e308",
                                    "9" * 1000, "0e1073741822", "123.456e-16380"])
def test_edge_numbers_accepted_by_both(jsonb_checker: psycopg.Connection[Any], number: str) -> None:
    text = '{"type":"spec_started","data":{"v":%s}}' % number
    parse_line(text.encode(), received_at=RECEIVED, origin=TEST_ORIGIN)
    jsonb_checker.execute("SELECT %s::jsonb::text", (text,)).fetchone()


@pytest.mark.parametrize("number", ["1e-16384", "1.5e-16383", "0." + "0" * 16383 + "1", "0e1073741823",
                                    "0e-16384", "1e-" + "9" * 20])
def test_numbers_postgresql_refuses_are_refused_up_front(jsonb_checker: psycopg.Connection[Any],
                                                         number: str) -> None:
    text = '{"type":"spec_started","data":{"v":%s}}' % number
    with pytest.raises(psycopg.DataError):
        jsonb_checker.execute("SELECT %s::jsonb::text", (text,)).fetchone()
    with pytest.raises(InvalidEvent) as info:
        parse_line(text.encode(), received_at=RECEIVED, origin=TEST_ORIGIN)
    assert info.value.code == "invalid_number"


def test_connection_limit_holds_when_the_inherited_fd_limit_is_lower(daemon_factory: Any) -> None:
    """systemd's default soft RLIMIT_NOFILE is 1024, the default max_connections too: the daemon
    must still answer every client over the limit with an error line instead of stalling on EMFILE."""
    d = daemon_factory(limits={"max_connections": 300})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, hard))
    try:
        d.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    clients = [connect(d, timeout=5) for _ in range(320)]
    try:
        for c in clients[:300]:
            c.good()
        for c in clients[300:]:
            assert c.reply()["code"] == "too_many_connections"
            c.expect_closed()
    finally:
        for c in clients:
            c.close()
    assert_healthy(d)
