"""The spool keeps acknowledged records across crashes and replays each once, in order."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path

from ralph_monitor.errors import InvalidEvent
from ralph_monitor.protocol import Event, Origin, make_reject, parse_line
from ralph_monitor.spool import Spool, decode, encode

ORIGIN = Origin(host="box", uid=1000, pid=42)
NOW = datetime(2026, 11, 25, 3, 0, tzinfo=timezone.utc)


def event(n: int) -> Event:
    line = f'{{"type":"spec_started","spec_id":"S\\t{n}",\t"data":{{"n":{n},"s":"ü"}}}}'.encode()
    return parse_line(line, received_at=NOW, origin=ORIGIN)


def test_encode_decode_round_trip_event_and_reject() -> None:
    e = parse_line(b'{"type":"x.y","session_id":"6f1c2b4e-1111-4000-8000-000000000001","ts":"2026-11-25T01:00:00Z"}',
                   received_at=NOW, origin=ORIGIN)
    assert decode(encode(e)[:-1]) == e
    r = make_reject(b"bad\tline\x00\xff", InvalidEvent("nul_byte", "NUL"), received_at=NOW, origin=ORIGIN,
                    excerpt_bytes=100)
    assert decode(encode(r)[:-1]) == r
    tabbed = event(1)
    assert decode(encode(tabbed)[:-1]) == tabbed


def test_replay_in_chunks_then_empty(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    spool.append([event(i) for i in range(10)])
    assert spool.backlog == 10
    first, offset = spool.read_chunk(4)
    assert [e.payload for e in first] == [event(i).payload for i in range(4)]
    spool.mark_replayed(offset, len(first))
    assert spool.backlog == 6
    rest, offset = spool.read_chunk(100)
    assert [e.payload for e in rest] == [event(i).payload for i in range(4, 10)]
    spool.mark_replayed(offset, len(rest))
    assert spool.backlog == 0
    assert spool.path.stat().st_size == 0


def test_offset_survives_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    spool.append([event(i) for i in range(5)])
    chunk, offset = spool.read_chunk(2)
    spool.mark_replayed(offset, 2)
    spool.close()
    again = Spool(tmp_path)
    again.open()
    assert again.backlog == 3
    assert [e.payload for e in again.read_chunk(10)[0]] == [event(i).payload for i in range(2, 5)]


def test_torn_last_record_is_dropped_on_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    spool.append([event(1), event(2)])
    spool.close()
    with open(spool.path, "ab") as f:
        f.write(encode(event(3))[:-7])  # a crash in the middle of an append: never acknowledged
    again = Spool(tmp_path)
    again.open()
    assert again.backlog == 2
    again.append([event(4)])
    assert [e.payload for e in again.read_chunk(10)[0]] == [event(i).payload for i in (1, 2, 4)]


def test_spool_files_are_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    spool.append([event(1)])
    assert (spool.directory.stat().st_mode & 0o777) == 0o700
    assert (spool.path.stat().st_mode & 0o777) == 0o600


def test_unique_ids_survive_round_trip() -> None:
    ids = {decode(encode(event(i))[:-1]).event_id for i in range(50)}
    assert len(ids) == 50 and all(str(uuid.UUID(i)) == i for i in ids)
