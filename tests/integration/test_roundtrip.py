"""An event sent on the socket becomes one row in `events`, and the reply names it."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import Daemon, LineClient, query

SESSION = "6f1c2b4e-1111-4000-8000-000000000001"


def test_event_round_trip_stores_every_field(daemon: Daemon, client: LineClient) -> None:
    event_id = str(uuid.uuid4())
    reply = client.request({
        "type": "spec_completed", "session_id": SESSION, "spec_id": "CR-02",
        "ts": "2026-11-25T03:12:00.250+01:00", "event_id": event_id,
        "data": {"tokens_used": 1200, "cost_usd": 0.42, "note": "ünïcode ✓"},
    })
    assert reply == {"ok": True, "id": event_id}
    rows = query(daemon.dsn, "SELECT *, occurred_at AT TIME ZONE 'UTC' AS utc FROM events")
    assert len(rows) == 1
    row = rows[0]
    assert str(row["event_id"]) == event_id
    assert row["event_type"] == "spec_completed"
    assert str(row["session_id"]) == SESSION
    assert row["spec_id"] == "CR-02"
    assert row["utc"].isoformat() == "2026-11-25T02:12:00.250000"
    assert row["received_at"] <= row["created_at"]
    assert row["occurred_at"] < row["received_at"]
    assert row["payload"]["data"] == {"tokens_used": 1200, "cost_usd": 0.42, "note": "ünïcode ✓"}
    assert row["writer_uid"] == os.getuid()
    assert row["writer_pid"] == os.getpid()
    assert row["host"]


def test_event_without_ts_or_id_gets_receipt_time_and_fresh_id(daemon: Daemon, client: LineClient) -> None:
    reply = client.request({"type": "session_heartbeat"})
    assert reply["ok"] is True
    row = query(daemon.dsn, "SELECT * FROM events WHERE event_id = %s", (reply["id"],))[0]
    assert row["occurred_at"] == row["received_at"]
    assert row["session_id"] is None


def test_same_event_id_twice_is_stored_once(daemon: Daemon, client: LineClient) -> None:
    event = {"type": "spec_started", "spec_id": "CR-01", "event_id": str(uuid.uuid4())}
    first = client.request(event)
    second = client.request(event)
    assert first == {"ok": True, "id": event["event_id"]}
    assert second == {"ok": True, "id": event["event_id"], "duplicate": True}
    assert query(daemon.dsn, "SELECT count(*) AS n FROM events")[0]["n"] == 1


def test_duplicates_inside_one_batch_are_stored_once(daemon: Daemon) -> None:
    event_id = str(uuid.uuid4())
    line = f'{{"type":"spec_started","event_id":"{event_id}"}}\n'
    c = LineClient(daemon.connect())
    c.send((line * 50).encode() + b'{"type":"spec_started","spec_id":"other"}\n')
    replies = [c.reply() for _ in range(51)]
    assert all(r["ok"] for r in replies)
    assert sum(1 for r in replies if r.get("duplicate")) == 49
    assert query(daemon.dsn, "SELECT count(*) AS n FROM events")[0]["n"] == 2


def test_unknown_type_is_stored_with_a_warning(daemon: Daemon, client: LineClient) -> None:
    reply = client.request({"type": "deploy.finished", "data": {"tool_name": "Bash"}})
    assert reply["ok"] is True
    assert reply["warning"] == "unknown type 'deploy.finished' stored as is"
    assert query(daemon.dsn, "SELECT event_type FROM events")[0]["event_type"] == "deploy.finished"
    hook_event = client.request({"type": "cc.PreToolUse", "data": {"tool_name": "Bash"}})
    assert hook_event["ok"] is True and "warning" not in hook_event


def test_socat_client_that_closes_at_once_is_stored(daemon: Daemon) -> None:
    lines = "".join(f'{{"type":"session_heartbeat","data":{{"n":{i}}}}}\n' for i in range(20))
    subprocess.run(["socat", "-u", "-", f"UNIX-CONNECT:{daemon.socket_path}"],
                   input=lines.encode(), check=True, timeout=10)
    # The last line without a newline before EOF counts as a line too.
    subprocess.run(["socat", "-u", "-", f"UNIX-CONNECT:{daemon.socket_path}"],
                   input=b'{"type":"session_heartbeat","data":{"n":20}}', check=True, timeout=10)
    daemon.stop()
    numbers = sorted(r["n"] for r in query(daemon.dsn, "SELECT (payload->'data'->>'n')::int AS n FROM events"))
    assert numbers == list(range(21))


def test_replies_keep_the_order_of_lines(daemon: Daemon) -> None:
    c = LineClient(daemon.connect())
    ids = [str(uuid.uuid4()) for _ in range(300)]
    batch = []
    for i, event_id in enumerate(ids):
        batch.append(f'{{"type":"spec_started","event_id":"{event_id}"}}\n' if i % 7 else "oops\n")
    c.send("".join(batch))
    replies = [c.reply() for _ in ids]
    for i, (event_id, reply) in enumerate(zip(ids, replies)):
        if i % 7:
            assert reply == {"ok": True, "id": event_id}
        else:
            assert reply["code"] == "invalid_json"


@pytest.mark.parametrize("batch_size", [20, 200], ids=["one-statement batch", "COPY batch"])
def test_an_event_postgresql_refuses_is_answered_and_recorded_and_its_batch_is_stored(
        daemon_factory: Any, batch_size: int) -> None:
    """Defence in depth: validation should leave PostgreSQL nothing to refuse, but if it does
    (here a CHECK constraint an operator added), only that event is refused."""
    daemon = daemon_factory()
    daemon.start()
    with psycopg.connect(daemon.dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE events ADD CONSTRAINT no_cr_13 CHECK (spec_id IS DISTINCT FROM 'CR-13')")
    c = LineClient(daemon.connect())
    specs = [f"CR-{i:02d}" for i in range(batch_size)]
    c.send("".join(json.dumps({"type": "spec_started", "spec_id": spec}) + "\n" for spec in specs))
    replies = [c.reply() for _ in specs]
    refused = replies[13]
    assert refused["ok"] is False and refused["code"] == "refused_by_database"
    assert "no_cr_13" in refused["error"]
    assert all(r["ok"] for i, r in enumerate(replies) if i != 13)
    stored = query(daemon.dsn, "SELECT spec_id FROM events ORDER BY id")
    assert [r["spec_id"] for r in stored] == [s for s in specs if s != "CR-13"]
    rejects = query(daemon.dsn, "SELECT reason, excerpt FROM rejects")
    assert len(rejects) == 1 and rejects[0]["reason"] == "refused_by_database"
    assert '"CR-13"' in rejects[0]["excerpt"]
    c.close()
    daemon.stop()
    # The daemon's own count of rejects includes it (monitor_hosts, written at least every 10 s).
    rejects_total = query(daemon.dsn, "SELECT rejects_total FROM monitor_hosts")
    assert rejects_total == [{"rejects_total": 1}]
