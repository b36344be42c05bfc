"""spend() adds whole local days up: it must equal the old way, one scan per period."""

from __future__ import annotations

import random
import uuid
import zoneinfo
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg.rows import dict_row

from ralph_monitor import queries
from ralph_monitor.outcomes import spec_outcome
from ralph_monitor.store import ReadStore

UTC = timezone.utc
STATUSES = ("completed", "completed", "completed", "failed", "timeout", "running")


@pytest.fixture
def runs_over_70_days(db_dsn: str) -> str:
    """~2,000 spec runs ending at random instants over 70 days (some without cost, duration or end)."""
    rng = random.Random(7)
    end = datetime(2026, 11, 25, 12, tzinfo=UTC)
    session = uuid.uuid4()
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO sessions (id, start_time, last_event_at, execution_state) "
                     "VALUES (%s, %s, %s, 'running')", (session, end - timedelta(days=70), end))
        rows = []
        for i in range(2000):
            status = rng.choice(STATUSES)
            ended = None if status == "running" else end - timedelta(seconds=rng.uniform(0, 70 * 86400))
            rows.append((session, f"CR-{i}", 1, ended, status, spec_outcome([status]),
                         rng.choice((None, rng.uniform(1, 900))), rng.randrange(1, 10**6),
                         rng.choice((None, round(rng.uniform(0, 3), 6)))))
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO spec_runs (session_id, spec_id, attempt, end_time, status, outcome, "
                            "duration_seconds, tokens_used, cost_usd) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                            rows)
    return db_dsn


def assert_same(added_up: queries.Outcomes, scanned: queries.Outcomes) -> None:
    """Equal, but for the last bits of the average duration (summed in another order)."""
    if scanned.avg_duration_seconds is None:
        assert added_up.avg_duration_seconds is None
    else:
        assert added_up.avg_duration_seconds == pytest.approx(scanned.avg_duration_seconds, rel=1e-12)
    assert type(added_up.tokens_used) is type(scanned.tokens_used) is int
    assert replace(added_up, avg_duration_seconds=None) == replace(scanned, avg_duration_seconds=None)


@pytest.mark.parametrize("zone_name", ["UTC", "Europe/Berlin", "America/Sao_Paulo", "Asia/Kolkata",
                                       "Pacific/Chatham", "America/Havana"])
def test_spend_periods_equal_one_scan_each(runs_over_70_days: str, zone_name: str) -> None:
    zone = zoneinfo.ZoneInfo(zone_name)
    with psycopg.connect(runs_over_70_days, row_factory=dict_row, autocommit=True) as conn:
        store = ReadStore(conn)
        # Month ends (the 31st reaches past a 30-day series), a Monday, a Sunday night, DST changes.
        for now in (datetime(2026, 10, 31, 22, 30, tzinfo=UTC), datetime(2026, 11, 2, 0, 5, tzinfo=UTC),
                    datetime(2026, 11, 1, 23, 59, tzinfo=UTC), datetime(2026, 11, 25, 11, 0, tzinfo=UTC),
                    datetime(2026, 10, 25, 1, 30, tzinfo=UTC), datetime(2026, 9, 30, 23, 0, tzinfo=UTC)):
            spend = queries.spend(store, now, zone)
            assert_same(spend.today, queries.outcomes(store, queries.day_window(now, zone)))
            assert_same(spend.week, queries.outcomes(store, queries.week_windows(now, zone)[0]))
            assert_same(spend.month, queries.outcomes(store, queries.month_window(now, zone)))
            series = queries.Window(queries._local_midnight(now - timedelta(days=29), zone), now)
            assert spend.per_day == queries.daily_runs(store, series, zone), now
            assert spend.month.counts.decided > 0


SCANNED = """
SELECT count(*) FILTER (WHERE outcome = 'passed') AS passed,
       count(*) FILTER (WHERE outcome = 'fixed_on_retry') AS fixed_on_retry,
       count(*) FILTER (WHERE outcome = 'failed') AS failed, count(*) FILTER (WHERE outcome = 'timed_out') AS timed_out,
       count(*) FILTER (WHERE outcome = 'interrupted') AS interrupted, count(*) AS runs,
       coalesce(sum(cost_usd), 0) AS cost_usd, coalesce(sum(tokens_used), 0)::bigint AS tokens_used,
       avg(duration_seconds) AS avg_duration_seconds
FROM spec_runs WHERE end_time >= %(since)s AND end_time < %(until)s
"""


def test_outcomes_added_up_from_the_totals_equal_a_scan_of_spec_runs(runs_over_70_days: str) -> None:
    """Hours from spec_run_totals_hourly, quarter hours from spec_run_totals and the ragged ends
    from spec_runs: the same as summing spec_runs over the window, for windows of any length
    starting anywhere."""
    rng = random.Random(11)
    end = datetime(2026, 11, 25, 12, tzinfo=UTC)
    with psycopg.connect(runs_over_70_days, row_factory=dict_row, autocommit=True) as conn:
        store = ReadStore(conn)
        for _ in range(60):
            since = end - timedelta(seconds=rng.uniform(0, 75 * 86400))
            since = rng.choice((since, since.replace(minute=15 * rng.randrange(4), second=0, microsecond=0)))
            length = rng.choice((0, 1, 59, 900, 1799, 3600, 86400, 7 * 86400, rng.uniform(0, 40 * 86400)))
            window = queries.Window(since, since + timedelta(seconds=length))
            row = conn.execute(SCANNED, {"since": window.since, "until": window.until}).fetchone()
            scanned = queries.Outcomes(counts=queries.Counts.of(row), runs=row["runs"], cost_usd=row["cost_usd"],
                                       tokens_used=row["tokens_used"], avg_duration_seconds=row["avg_duration_seconds"])
            assert_same(queries.outcomes(store, window), scanned)
