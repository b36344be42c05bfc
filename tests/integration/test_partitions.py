"""Events are stored in daily partitions; an event of any timestamp is accepted."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from ralph_monitor.store.events import PARTITION_DAYS_AHEAD, PARTITION_DAYS_BEHIND
from tests.conftest import Daemon, LineClient, query


def partition_of(dsn: str, event_id: str) -> str:
    return query(dsn, "SELECT tableoid::regclass::text AS p FROM events WHERE event_id = %s", (event_id,))[0]["p"]


def test_days_around_today_have_partitions(daemon: Daemon) -> None:
    names = {r["name"] for r in query(daemon.dsn, """
        SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'events'::regclass""")}
    today = datetime.now(timezone.utc).date()
    days = {f"events_{(today + timedelta(days=offset)):%Y%m%d}"
            for offset in range(-PARTITION_DAYS_BEHIND, PARTITION_DAYS_AHEAD + 1)}
    # Every day an event can be filed in (no more than a day ahead), and no empty days beyond:
    # each partition costs every query on events its share of planning.
    assert days | {"events_default"} <= names and PARTITION_DAYS_AHEAD >= 2
    latest = max(n for n in names if n != "events_default")
    assert latest <= f"events_{(today + timedelta(days=PARTITION_DAYS_AHEAD + 1)):%Y%m%d}"


def test_skewed_timestamps_are_kept_and_moved_when_their_day_gets_a_partition(
        daemon: Daemon, client: LineClient) -> None:
    today = datetime.now(timezone.utc)
    recent = client.request({"type": "spec_started", "ts": today.isoformat()})["id"]
    old_id = str(uuid.uuid4())
    old = client.request({"type": "spec_started", "ts": "2020-02-29T23:59:59Z", "event_id": old_id})
    ahead = client.request({"type": "spec_started", "ts": "2099-01-01T00:00:00+14:00"})
    assert old == {"ok": True, "id": old_id}
    assert partition_of(daemon.dsn, recent) == f"events_{today:%Y%m%d}"
    assert partition_of(daemon.dsn, old_id) == "events_default"
    # A clock years ahead is broken: the event keeps its ts but is filed at the time received.
    assert ahead["ok"] and "stored with the time received" in ahead["warnings"][0]
    assert partition_of(daemon.dsn, ahead["id"]) == f"events_{datetime.now(timezone.utc):%Y%m%d}"
    # Same event again: still deduplicated while in the default partition.
    assert client.request({"type": "spec_started", "ts": "2020-02-29T23:59:59Z", "event_id": old_id})["duplicate"]
    query(daemon.dsn, "SELECT ensure_event_partitions('2020-02-29', '2020-02-29')")
    assert partition_of(daemon.dsn, old_id) == "events_20200229"
    assert query(daemon.dsn, "SELECT count(*) AS n FROM events")[0]["n"] == 3
