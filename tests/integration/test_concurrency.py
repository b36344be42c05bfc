"""Many concurrent writers: every acknowledged event is stored exactly once."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest

from ralph_monitor.config import Settings
from ralph_monitor.protocol import Origin, parse_line
from ralph_monitor.store import DUPLICATE, SMALL_BATCH_EVENTS, STORED, EventStore
from tests.conftest import query
from tests.loadgen import Load

WRITERS = 16
PER_WRITER = 2000


@pytest.mark.parametrize("writer_connections", [1, 2, 3])
def test_16_writers_each_acked_event_stored_exactly_once_and_in_order(
        daemon_factory: Any, writer_connections: int) -> None:
    """With any number of writer lanes: each connection's events land once, in its order."""
    daemon = daemon_factory(database={"writer_connections": writer_connections})
    daemon.start()
    load = Load(daemon.socket_path, writers=WRITERS, per_writer=PER_WRITER).start()
    load.join()
    assert [r.errors for r in load.results if r.errors] == []
    acked = load.acked
    assert len(acked) == WRITERS * PER_WRITER
    rows = query(daemon.dsn, "SELECT event_id::text AS id FROM events")
    stored = [r["id"] for r in rows]
    assert len(stored) == len(set(stored)) == len(acked)
    assert set(stored) == set(acked)
    per_writer_order = query(daemon.dsn, """
        SELECT (payload->'data'->>'writer')::int AS writer,
               array_agg((payload->'data'->>'seq')::int ORDER BY id) AS seqs
        FROM events GROUP BY 1""")
    for row in per_writer_order:
        assert row["seqs"] == sorted(row["seqs"]), f"writer {row['writer']} stored out of order"


def test_both_write_paths_lock_the_projector_queues_in_one_order(db_dsn: str) -> None:
    """Two writer lanes may commit a small batch (one statement) and a big one (COPY) at once,
    touching the same session and 5-minute bucket: both must lock the dirty rows in the same
    order (bucket first), or they could deadlock. Hold the bucket row, start a write, and see
    that it waits there without holding the session row yet."""
    session = "6f1c2b4e-1111-4000-8000-000000000001"
    received = datetime.now(timezone.utc)

    def write(count: int) -> None:
        events = [parse_line(('{"type":"spec_started","session_id":"%s","spec_id":"CR-%d"}' % (session, i)).encode(),
                             received_at=received, origin=Origin(host="h", uid=0, pid=0)) for i in range(count)]

        async def run() -> None:
            store = EventStore(Settings(), dsn=db_dsn)
            await store.connect()
            try:
                await store.write_batch(events, [], excerpt_bytes=100)
            finally:
                await store.close()
        asyncio.run(run())

    write(1)  # the queue rows exist from now on
    for count in (1, SMALL_BATCH_EVENTS + 1):
        with psycopg.connect(db_dsn) as holder:
            holder.execute("SELECT 1 FROM dirty_buckets FOR UPDATE")
            writer = threading.Thread(target=write, args=(count,))
            writer.start()
            time.sleep(0.5)
            with psycopg.connect(db_dsn) as probe:
                probe.execute("SET lock_timeout = '2s'")
                probe.execute("SELECT 1 FROM dirty_sessions FOR UPDATE")  # free: the writer waits at the bucket
            assert writer.is_alive(), "the write should be waiting for the bucket row"
            holder.rollback()
        writer.join(10)
        assert not writer.is_alive()
    assert query(db_dsn, "SELECT count(*) AS n FROM events")[0]["n"] == 2 + SMALL_BATCH_EVENTS + 1


@pytest.mark.parametrize("count", [40, SMALL_BATCH_EVENTS + 60], ids=["one-statement batches", "COPY batches"])
def test_two_lanes_resending_the_same_events_in_opposite_orders_do_not_deadlock(db_dsn: str, count: int) -> None:
    """The same client-id events committed at once by two writer connections, one batch in the
    reverse order of the other: each event is stored once, the other lane is told duplicate,
    and neither fails (which would spool the batch)."""
    received = datetime.now(timezone.utc)
    origin = Origin(host="h", uid=0, pid=0)

    async def run() -> None:
        stores = [EventStore(Settings(), dsn=db_dsn) for _ in range(2)]
        for store in stores:
            await store.connect()
        try:
            for _ in range(5):
                ids = [str(uuid.uuid4()) for _ in range(count)]
                events = [parse_line(('{"type":"spec_started","event_id":"%s"}' % i).encode(),
                                     received_at=received, origin=origin) for i in ids]
                first, second = await asyncio.gather(
                    stores[0].write_batch(events, [], excerpt_bytes=100),
                    stores[1].write_batch(events[::-1], [], excerpt_bytes=100))
                outcomes = list(zip(first, second[::-1]))
                assert all(sorted(pair) == [DUPLICATE, STORED] for pair in outcomes), outcomes
        finally:
            for store in stores:
                await store.close()

    asyncio.run(run())
    stored = query(db_dsn, "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM events")[0]
    assert stored == {"n": 5 * count, "ids": 5 * count}
