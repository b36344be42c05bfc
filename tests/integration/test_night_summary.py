"""night_summary reads only the attempts of the specs it lists (night_attempts): its lists must
equal spec results worked out from every attempt of the night's sessions, for any window."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg.rows import dict_row

from ralph_monitor import queries
from ralph_monitor.outcomes import FIXED_ON_RETRY, RUNNING, STILL_FAILING, Attempt, attempt_outcomes, spec_results
from ralph_monitor.store import ReadStore

UTC = timezone.utc
END = datetime(2026, 11, 25, 12, tzinfo=UTC)
STATUSES = ("completed", "completed", "failed", "timeout", "running", "interrupted")


@pytest.fixture
def sessions_over_10_days(db_dsn: str) -> str:
    """60 sessions of 1-12 h over 10 days (some still open), specs of 1-3 attempts with every
    status, errors on some failures, runs without an end."""
    rng = random.Random(3)
    with psycopg.connect(db_dsn, autocommit=True) as conn, conn.cursor() as cur:
        for n in range(60):
            session = uuid.uuid4()
            start = END - timedelta(hours=rng.uniform(0, 240))
            length = timedelta(hours=rng.uniform(1, 12))
            ended = start + length if rng.random() < 0.8 else None
            cur.execute("INSERT INTO sessions (id, name, start_time, end_time, last_event_at, execution_state) "
                        "VALUES (%s, %s, %s, %s, %s, %s)",
                        (session, f"loop {n % 7}", start, ended, start + length, "completed" if ended else "running"))
            t = start
            for k in range(rng.randrange(1, 15)):
                statuses = [rng.choice(STATUSES[:4]) for _ in range(rng.randrange(0, 3))]
                statuses.append(rng.choice(STATUSES))
                for attempt, (status, outcome) in enumerate(zip(statuses, attempt_outcomes(statuses)), start=1):
                    t += timedelta(minutes=rng.uniform(1, 40))
                    cur.execute(
                        "INSERT INTO spec_runs (session_id, spec_id, attempt, start_time, end_time, status, outcome, "
                        "duration_seconds, tokens_used, cost_usd, error_message) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        (session, f"CR-{k}", attempt, t - timedelta(minutes=1), None if status == "running" else t,
                         status, outcome, rng.choice((None, rng.uniform(1, 900))), rng.randrange(0, 10**5),
                         rng.choice((None, round(rng.uniform(0, 2), 4))),
                         rng.choice((None, "", f"boom {attempt}", "red")) if status != "completed" else None))
    return db_dsn


def test_the_lists_equal_spec_results_from_every_attempt(sessions_over_10_days: str) -> None:
    rng = random.Random(5)
    with psycopg.connect(sessions_over_10_days, row_factory=dict_row, autocommit=True) as conn:
        store = ReadStore(conn)
        listed = 0
        for _ in range(40):
            since = END - timedelta(hours=rng.uniform(0, 250))
            window = queries.Window(since, since + timedelta(hours=rng.choice((1, 6, 15, 48))))
            night = queries.night_summary(store, window)
            ids = [s.id for s in night.sessions]
            every = spec_results(store.fetch_as("attempts_of_sessions", {"ids": ids}, Attempt) if ids else [],
                                 {s.id: s.name for s in night.sessions})
            decided = [r for r in every if r.ended_at is not None and window.since <= r.ended_at < window.until]

            def key(r: object) -> tuple[str, str]:
                return str(r.session_id), r.spec_id  # type: ignore[attr-defined]

            assert sorted(night.still_failing, key=key) == sorted(
                [r for r in decided if r.outcome in STILL_FAILING], key=key)
            assert sorted(night.fixed_on_retry, key=key) == sorted(
                [r for r in decided if r.outcome == FIXED_ON_RETRY], key=key)
            assert sorted(night.retrying, key=key) == sorted(
                [r for r in every if r.outcome == RUNNING and r.error is not None], key=key)
            assert [r.ended_at for r in night.results] == sorted(r.ended_at for r in night.results)
            listed += len(night.results) + len(night.retrying)
        assert listed > 100
