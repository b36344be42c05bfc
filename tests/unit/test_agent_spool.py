"""The agent side's spool: fsync'd appends, in-order delivery, partial failures, refusals,
torn lines, and several processes appending while one delivers."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ralph_monitor.agent.spool import ClientSpool, spool_dir_for
from ralph_monitor.errors import ClientError


def line(n: int) -> bytes:
    return json.dumps({"type": "session_heartbeat", "event_id": f"00000000-0000-4000-8000-{n:012d}",
                       "data": {"n": n}}).encode() + b"\n"


class FakeDaemon:
    """Records delivered lines; fails after `fail_after` lines; refuses lines with n in `refuse`."""

    def __init__(self, fail_after: int | None = None, refuse: set[int] = frozenset()) -> None:
        self.received: list[int] = []
        self.fail_after = fail_after
        self.refuse = refuse

    def __call__(self, lines: Sequence[bytes]) -> list[dict[str, Any]]:
        if self.fail_after is not None and len(self.received) + len(lines) > self.fail_after:
            raise ClientError("the daemon went away")
        replies = []
        for raw in lines:
            n = json.loads(raw)["data"]["n"]
            if n in self.refuse:
                replies.append({"ok": False, "code": "invalid_type", "error": "bad"})
            else:
                self.received.append(n)
                replies.append({"ok": True, "id": "x"})
        return replies


def test_append_then_flush_delivers_in_order_and_empties(tmp_path: Path) -> None:
    spool = ClientSpool(tmp_path / "s")
    assert not spool.has_pending()
    spool.append([line(i) for i in range(5)])
    spool.append([line(5)])
    assert spool.has_pending() and spool.pending_count() == 6
    assert oct((tmp_path / "s").stat().st_mode & 0o777) == "0o700"
    daemon = FakeDaemon()
    result = spool.flush(daemon)
    assert daemon.received == list(range(6))
    assert (result.delivered, result.remaining, result.error) == (6, 0, None)
    assert not spool.has_pending()


def test_partial_delivery_keeps_the_rest_in_order_before_newer_events(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("ralph_monitor.agent.spool.FLUSH_BATCH", 3)
    spool = ClientSpool(tmp_path / "s")
    spool.append([line(i) for i in range(10)])
    first = FakeDaemon(fail_after=6)
    result = spool.flush(first)
    assert first.received == list(range(6))
    assert result.error == "the daemon went away" and result.remaining == 4
    spool.append([line(10), line(11)])  # while the daemon is still away
    second = FakeDaemon()
    spool.flush(second)
    assert second.received == [6, 7, 8, 9, 10, 11]
    assert not spool.has_pending()


def test_refused_lines_are_set_aside_not_retried_forever(tmp_path: Path) -> None:
    spool = ClientSpool(tmp_path / "s")
    spool.append([line(i) for i in range(4)])
    daemon = FakeDaemon(refuse={2})
    result = spool.flush(daemon)
    assert daemon.received == [0, 1, 3] and result.rejected == 1
    rejected = [json.loads(x) for x in (tmp_path / "s" / "rejected.jsonl").read_text().splitlines()]
    assert rejected[0]["reply"]["code"] == "invalid_type" and '"n": 2' in rejected[0]["line"]
    assert not spool.has_pending()


def test_a_torn_last_line_is_not_sent_and_does_not_swallow_the_next(tmp_path: Path) -> None:
    spool = ClientSpool(tmp_path / "s")
    spool.append([line(0)])
    with open(spool.path, "ab") as f:
        f.write(line(1)[:20])  # a crash mid-append: never acknowledged
    spool.append([line(2)])
    sent: list[bytes] = []

    def send(lines: Sequence[bytes]) -> list[dict[str, Any]]:
        sent.extend(lines)
        return [{"ok": True} if b'"n"' in x else {"ok": False, "code": "invalid_json", "error": "torn"} for x in lines]

    result = spool.flush(send)
    assert [json.loads(x)["data"]["n"] for x in sent if b'"n"' in x] == [0, 2]
    assert result.delivered == 2 and result.rejected == 1


def test_one_flusher_at_a_time(tmp_path: Path) -> None:
    spool = ClientSpool(tmp_path / "s")
    spool.append([line(0)])
    inner: list[Any] = []

    def send(lines: Sequence[bytes]) -> list[dict[str, Any]]:
        inner.append(spool.flush(FakeDaemon()))  # a second process trying meanwhile
        return [{"ok": True}] * len(lines)

    assert spool.flush(send).delivered == 1
    assert inner[0].error == "another process is delivering the spool"


def _append_many(directory: str, start: int, count: int) -> None:
    spool = ClientSpool(Path(directory))
    for i in range(start, start + count):
        spool.append([line(i)])


def test_concurrent_appenders_and_a_flusher_lose_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_append_many, args=(str(directory), k * 1000, 150)) for k in range(4)]
    for w in writers:
        w.start()
    spool = ClientSpool(directory)
    daemon = FakeDaemon()
    while any(w.is_alive() for w in writers):
        spool.flush(daemon, wait=True)
    for w in writers:
        w.join()
        assert w.exitcode == 0
    spool.flush(daemon, wait=True)
    assert sorted(daemon.received) == sorted(k * 1000 + i for k in range(4) for i in range(150))
    for k in range(4):  # each writer's events arrive in the order it wrote them
        mine = [n for n in daemon.received if n // 1000 == k]
        assert mine == sorted(mine)


def test_spool_directory_per_socket_and_user(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("RALPH_MONITOR_CLIENT_SPOOL", str(tmp_path))
    a, b = spool_dir_for("/run/a.sock"), spool_dir_for("/run/b.sock")
    assert a.parent == b.parent == tmp_path and a != b
    assert a.name == "%2Frun%2Fa.sock"
    ClientSpool.for_socket("/run/a.sock").append([line(1)])
    if os.getuid() == 0:
        os.chown(a, 12345, 12345)
        with pytest.raises(Exception, match="belongs to another user"):
            ClientSpool.for_socket("/run/a.sock").append([line(2)])
