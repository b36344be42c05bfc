"""Many concurrent writers: every acknowledged event is stored exactly once."""

from __future__ import annotations

from typing import Any

import pytest

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
