"""spec_run_totals (migration 0010, issue 17) and its hourly sums (spec_run_totals_hourly, 0017)
always equal a recomputation from spec_runs:
after ingest, after a re-projection that changes earlier runs' outcomes, after
rebuild-aggregates, after retention prunes sessions with their runs, and when a session's
projection fails halfway (its transaction, totals included, is rolled back)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from ralph_monitor import retention
from ralph_monitor.config import load_settings
from ralph_monitor.projector import rebuild_aggregates
from tests.conftest import LineClient, query
from tests.integration.test_overnight import wait_until_settled

RECOMPUTED = """
SELECT date_bin(%(grain)s::interval, end_time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS period_start, count(*) AS runs,
       count(*) FILTER (WHERE outcome = 'passed') AS passed,
       count(*) FILTER (WHERE outcome = 'fixed_on_retry') AS fixed_on_retry,
       count(*) FILTER (WHERE outcome = 'failed') AS failed, count(*) FILTER (WHERE outcome = 'timed_out') AS timed_out,
       count(*) FILTER (WHERE outcome = 'interrupted') AS interrupted, coalesce(sum(cost_usd), 0) AS cost_usd,
       coalesce(sum(tokens_used), 0) AS tokens_used, coalesce(sum(duration_seconds::numeric), 0) AS duration_sum,
       count(duration_seconds) AS duration_count
FROM spec_runs WHERE end_time IS NOT NULL GROUP BY 1 ORDER BY 1
"""
KEPT = """
SELECT period_start, runs, passed, fixed_on_retry, failed, timed_out, interrupted, cost_usd, tokens_used,
       duration_sum, duration_count
FROM {table} WHERE runs <> 0 ORDER BY 1
"""
GRAINS = {"spec_run_totals": "15 minutes", "spec_run_totals_hourly": "1 hour"}


def assert_totals_equal_spec_runs(dsn: str) -> list[dict[str, Any]]:
    """The quarter hours kept (the hours checked alike)."""
    for table, grain in GRAINS.items():
        kept = query(dsn, KEPT.format(table=table))
        assert kept == query(dsn, RECOMPUTED, {"grain": grain}), table
        # A period whose runs are all gone is all zeros, never a stray remainder.
        assert query(dsn, f"SELECT * FROM {table} WHERE runs = 0 AND (passed, fixed_on_retry, failed, timed_out, "
                          "interrupted, cost_usd, tokens_used, duration_sum, duration_count) "
                          "<> (0, 0, 0, 0, 0, 0, 0, 0, 0)") == []
    return query(dsn, KEPT.format(table="spec_run_totals"))


def send(client: LineClient, events: list[dict[str, Any]]) -> None:
    for event in events:
        reply = client.request(event)
        assert reply["ok"], reply


def ev(kind: str, at: datetime, session: str, spec: str | None = None, **data: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": kind, "session_id": session, "event_id": str(uuid.uuid4()), "ts": at.isoformat()}
    if spec:
        event["spec_id"] = spec
    if data:
        event["data"] = data
    return event


def night(session: str, start: datetime, *, specs: int) -> list[dict[str, Any]]:
    """A session's specs, 7 minutes each (so they end in every quarter hour), with failures,
    retries, a timeout, odd costs and some without cost or duration."""
    out = [ev("session_started", start, session, name=f"loop {session[:4]}", total_specs=specs)]
    t = start
    for k in range(specs):
        spec = f"CR-{k:03d}"
        out.append(ev("spec_started", t + timedelta(seconds=1), session, spec))
        t += timedelta(minutes=7, seconds=k)
        if k % 5 == 1:
            out.append(ev("spec_failed", t, session, spec, cost_usd=0.013 * k, tokens_used=100 * k, error="boom",
                          duration_s=419.5))
            out.append(ev("spec_started", t + timedelta(seconds=2), session, spec))
            t += timedelta(minutes=3)
            out.append(ev("spec_completed", t, session, spec, cost_usd=0.021, tokens_used=77))
        elif k % 7 == 3:
            out.append(ev("timeout_triggered", t, session, spec, cost_usd=1.5, duration_s=420))
        else:
            out.append(ev("spec_completed", t, session, spec, cost_usd=round(0.001 * k, 6), tokens_used=1000 + k,
                          duration_s=420.25 + k))
    out.append(ev("session_ended", t + timedelta(seconds=5), session, status="completed"))
    return out


def test_totals_equal_spec_runs_after_ingest_reprojection_rebuild_and_pruning(daemon_factory: Any) -> None:
    d = daemon_factory()
    d.start()
    now = datetime.now(timezone.utc)
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    client = LineClient(d.connect())
    send(client, night(a, now - timedelta(hours=9), specs=30) + night(b, now - timedelta(hours=7, minutes=3), specs=25)
         + night(c, now - timedelta(days=3), specs=12))
    # A failure still being retried, in a session still going.
    running = str(uuid.uuid4())
    send(client, [ev("session_started", now - timedelta(minutes=30), running),
                  ev("spec_started", now - timedelta(minutes=29), running, "CR-900"),
                  ev("spec_failed", now - timedelta(minutes=20), running, "CR-900", cost_usd=0.5, error="red"),
                  ev("spec_started", now - timedelta(minutes=19), running, "CR-900")])
    wait_until_settled(d.dsn)
    kept = assert_totals_equal_spec_runs(d.dsn)
    assert sum(r["runs"] for r in kept) == query(d.dsn, "SELECT count(end_time) AS n FROM spec_runs")[0]["n"] > 70

    # Re-projection: the retry passes, so the first attempt becomes later_passed and the spec
    # fixed_on_retry; a late event moves an earlier run's end into another quarter hour.
    send(client, [ev("spec_completed", now - timedelta(minutes=2), running, "CR-900", cost_usd=0.25),
                  ev("spec_completed", now - timedelta(days=3) + timedelta(minutes=3), c, "CR-000", cost_usd=9.5)])
    wait_until_settled(d.dsn)
    assert query(d.dsn, "SELECT outcome FROM spec_runs WHERE spec_id = 'CR-900' ORDER BY attempt") == [
        {"outcome": "later_passed"}, {"outcome": "fixed_on_retry"}]
    assert_totals_equal_spec_runs(d.dsn)

    # rebuild-aggregates with the daemon up.
    settings = load_settings(d.config_path)
    rebuild_aggregates(settings, dsn=d.dsn)
    wait_until_settled(d.dsn)
    assert_totals_equal_spec_runs(d.dsn)

    # Retention: a year and a bit later, every ended session goes with its spec runs (the one
    # still open stays if it is still `running`, goes if it was marked stalled meanwhile).
    client.close()
    d.stop()
    report = retention.prune(settings, d.dsn, now=now + timedelta(days=366))
    assert not report.errors and report.removed["spec_runs"] > 70
    left = assert_totals_equal_spec_runs(d.dsn)
    assert sum(r["runs"] for r in left) == query(d.dsn, "SELECT count(end_time) AS n FROM spec_runs")[0]["n"] <= 2
    for table in GRAINS:  # pruned too
        assert query(d.dsn, f"SELECT count(*) AS n FROM {table} WHERE runs = 0")[0]["n"] == 0, table


FAIL_INSERT = """
CREATE FUNCTION fail_runs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.session_id = '{sid}'::uuid THEN RAISE EXCEPTION 'injected failure in spec runs'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER fail_runs BEFORE INSERT ON spec_runs FOR EACH ROW EXECUTE FUNCTION fail_runs();
"""


def test_a_quarantined_session_leaves_the_totals_as_they_were(daemon_factory: Any) -> None:
    """Its projection fails after its old runs were deleted (and subtracted): the rollback
    takes the subtraction back too."""
    d = daemon_factory()
    d.start()
    now = datetime.now(timezone.utc)
    bad, good = str(uuid.uuid4()), str(uuid.uuid4())
    client = LineClient(d.connect())
    send(client, night(bad, now - timedelta(hours=5), specs=10) + night(good, now - timedelta(hours=4), specs=6))
    wait_until_settled(d.dsn)
    before = assert_totals_equal_spec_runs(d.dsn)
    with psycopg.connect(d.dsn, autocommit=True) as conn:
        conn.execute(FAIL_INSERT.replace("{sid}", bad))
    send(client, [ev("spec_started", now - timedelta(minutes=3), bad, "CR-500"),
                  ev("spec_completed", now - timedelta(minutes=1), bad, "CR-500", cost_usd=3.0)])
    deadline = time.monotonic() + 60
    while not query(d.dsn, "SELECT 1 FROM projection_failures WHERE session_id = %s", (bad,)):
        assert time.monotonic() < deadline, "the failing session was not recorded"
        time.sleep(0.1)
    assert "injected failure in spec runs" in query(d.dsn, "SELECT error FROM projection_failures")[0]["error"]
    assert assert_totals_equal_spec_runs(d.dsn) == before
    with psycopg.connect(d.dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER fail_runs ON spec_runs")
    rebuild_aggregates(load_settings(d.config_path), dsn=d.dsn)
    after = assert_totals_equal_spec_runs(d.dsn)
    assert sum(r["cost_usd"] for r in after) == sum(r["cost_usd"] for r in before) + 3
