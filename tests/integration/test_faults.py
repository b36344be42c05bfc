"""Faults under load: kill -9 of the daemon, PostgreSQL stopped and started again.

Guarantee 1: nothing acknowledged is lost, nothing is stored twice, and each
connection's events keep their order.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest

from ralph_monitor.cluster import Cluster
from ralph_monitor.ingest import HEALTH_INTERVAL_S
from ralph_monitor.store import ensure_database
from tests.conftest import Daemon, query, short_tempdir
from tests.loadgen import Load

pytestmark = pytest.mark.slow

REPLAY_TIMEOUT_S = 30.0


def wait_for_rows(dsn: str, expected: int, timeout: float = REPLAY_TIMEOUT_S) -> int:
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        try:
            count = query(dsn, "SELECT count(*) AS n FROM events")[0]["n"]
        except Exception:  # the database may still be starting
            count = -1
        if count >= expected:
            return count
        time.sleep(0.2)
    return count


def assert_exactly_once_in_order(dsn: str, acked: list[str]) -> None:
    stored = [r["id"] for r in query(dsn, "SELECT event_id::text AS id FROM events")]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events are missing"
    for row in query(dsn, """
            SELECT (payload->'data'->>'writer')::int AS writer,
                   array_agg((payload->'data'->>'seq')::int ORDER BY id) AS seqs
            FROM events GROUP BY 1"""):
        assert row["seqs"] == sorted(row["seqs"]), f"writer {row['writer']}: events out of order"


def test_kill_9_mid_load_loses_no_acknowledged_event(daemon_factory) -> None:
    d: Daemon = daemon_factory()
    d.start()
    load = Load(d.socket_path, writers=16, per_writer=2000).start()
    time.sleep(0.7)
    d.kill()
    load.join()
    acked = load.acked
    assert 0 < len(acked) < 16 * 2000, "the kill should land mid-load"
    d.start()
    d.stop()
    assert_exactly_once_in_order(d.dsn, acked)


@pytest.fixture
def own_cluster() -> Iterator[tuple[Cluster, str]]:
    """A cluster of this test's own, since the test stops and starts it."""
    root = short_tempdir("rm-own-")
    cluster = Cluster(root / "cluster")
    cluster.start()
    ensure_database(cluster.dsn("postgres"), "ralph")
    yield cluster, cluster.dsn("ralph")
    cluster.stop(mode="immediate")
    shutil.rmtree(root, ignore_errors=True)


def test_postgres_stopped_mid_load_events_are_spooled_then_replayed(daemon_factory, own_cluster) -> None:
    cluster, dsn = own_cluster
    d: Daemon = daemon_factory(dsn=dsn)
    d.start()
    load = Load(d.socket_path, writers=8, per_writer=1500, pace_s=0.01).start()
    time.sleep(0.5)
    cluster.stop(mode="fast")
    time.sleep(1.5)
    spooled_while_down = load.spooled
    cluster.start()
    load.join()
    assert [r.errors for r in load.results if r.errors] == []
    acked = load.acked
    assert len(acked) == 8 * 1500
    assert spooled_while_down > 0, "no event was spooled: the outage did not happen mid-load"
    assert wait_for_rows(dsn, len(acked)) == len(acked)
    assert d.stop() == 0
    assert_exactly_once_in_order(dsn, acked)
    assert "replayed" in d.log()
    assert not d.spool_path.exists() or d.spool_path.stat().st_size == 0


def test_daemon_started_while_postgres_is_down_spools_and_catches_up(daemon_factory, own_cluster) -> None:
    cluster, dsn = own_cluster
    d: Daemon = daemon_factory(dsn=dsn)
    d.start()  # migrates
    d.stop()
    cluster.stop(mode="fast")
    d.start()
    load = Load(d.socket_path, writers=2, per_writer=200).start()
    load.join()
    assert load.spooled == 400
    d.kill()  # a crash while everything is still only in the spool
    cluster.start()
    d.start()
    assert wait_for_rows(dsn, 400) == 400
    d.stop()
    assert_exactly_once_in_order(dsn, load.acked)


def test_postgres_restarted_while_idle_next_events_are_stored_not_spooled(daemon_factory, own_cluster) -> None:
    """Every writer connection died with the restart; the first write on each finds out, and
    takes a new connection instead of spooling (an agent sees `spooled` only in an outage)."""
    cluster, dsn = own_cluster
    d: Daemon = daemon_factory(dsn=dsn)
    d.start()
    warm = Load(d.socket_path, writers=8, per_writer=50).start()  # every writer lane connected
    warm.join()
    assert warm.spooled == 0
    cluster.stop(mode="fast")
    cluster.start()
    time.sleep(HEALTH_INTERVAL_S + 1)  # the idle daemon's health row is written on a dead connection too
    load = Load(d.socket_path, writers=8, per_writer=50).start()
    load.join()
    assert [r.errors for r in load.results if r.errors] == []
    assert load.spooled == 0, "events were spooled although PostgreSQL was up"
    assert wait_for_rows(dsn, 800) == 800
    assert "trying once more on a new connection" in d.log()
    assert "spooling events" not in d.log()  # PostgreSQL was never taken for away
    assert d.stop() == 0
