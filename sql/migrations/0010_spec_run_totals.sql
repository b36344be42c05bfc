-- Headroom (issue 17): spend, outcomes and the night summary read totals per quarter hour
-- instead of summing a year of spec runs, and window reads on sessions stay window-sized.
--
-- spec_run_totals: per quarter hour (UTC-aligned, by end_time), what run_outcomes_between sums
-- over spec_runs: the specs decided by outcome, the runs, their cost, tokens and durations.
-- A quarter hour, not a day: a local day starts at a quarter hour in every time zone in use
-- today (UTC+5:45 too), and so does a night (18:00-09:00), so any zone's days add up exactly;
-- the parts of a window that do not fill a quarter hour (now, a historical offset) are read
-- from spec_runs (queries.sql: run_outcomes_between, daily_runs).
--
-- Kept by a statement trigger on spec_runs, in the transaction that changes the runs: the
-- projector's re-projection, retention's pruning, a session deleted with its runs (cascade),
-- rebuild-aggregates. The trigger first takes a transaction advisory lock, so concurrent
-- projectors add their deltas one after the other (rows locked in one order: no deadlock).
-- Quarter hours whose runs are all gone keep a row of zeros until retention removes it.
CREATE TABLE spec_run_totals (
    period_start    timestamptz PRIMARY KEY,
    runs            integer       NOT NULL,
    passed          integer       NOT NULL,
    fixed_on_retry  integer       NOT NULL,
    failed          integer       NOT NULL,
    timed_out       integer       NOT NULL,
    interrupted     integer       NOT NULL,
    cost_usd        numeric       NOT NULL,
    tokens_used     bigint        NOT NULL,
    duration_sum    numeric       NOT NULL,
    duration_count  integer       NOT NULL
) WITH (fillfactor = 50);
-- Half-empty pages: the trigger's updates stay on their row's page (HOT), so a month's rows
-- stay a few dozen pages in time order, and spend() reads ~3,000 of them from those.

CREATE FUNCTION spec_run_totals_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('spec_run_totals', 7262686));
    IF TG_OP = 'INSERT' THEN
        INSERT INTO spec_run_totals AS t
        SELECT date_bin('15 minutes', end_time, TIMESTAMPTZ '2000-01-01 00:00:00+00'), count(*),
               count(*) FILTER (WHERE outcome = 'passed'), count(*) FILTER (WHERE outcome = 'fixed_on_retry'),
               count(*) FILTER (WHERE outcome = 'failed'), count(*) FILTER (WHERE outcome = 'timed_out'),
               count(*) FILTER (WHERE outcome = 'interrupted'), coalesce(sum(cost_usd), 0),
               coalesce(sum(tokens_used), 0), coalesce(sum(duration_seconds::numeric), 0), count(duration_seconds)
        FROM new_runs WHERE end_time IS NOT NULL GROUP BY 1 ORDER BY 1
        ON CONFLICT (period_start) DO UPDATE SET
            runs = t.runs + EXCLUDED.runs, passed = t.passed + EXCLUDED.passed,
            fixed_on_retry = t.fixed_on_retry + EXCLUDED.fixed_on_retry, failed = t.failed + EXCLUDED.failed,
            timed_out = t.timed_out + EXCLUDED.timed_out, interrupted = t.interrupted + EXCLUDED.interrupted,
            cost_usd = t.cost_usd + EXCLUDED.cost_usd, tokens_used = t.tokens_used + EXCLUDED.tokens_used,
            duration_sum = t.duration_sum + EXCLUDED.duration_sum,
            duration_count = t.duration_count + EXCLUDED.duration_count;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO spec_run_totals AS t
        SELECT date_bin('15 minutes', end_time, TIMESTAMPTZ '2000-01-01 00:00:00+00'), -count(*),
               -count(*) FILTER (WHERE outcome = 'passed'), -count(*) FILTER (WHERE outcome = 'fixed_on_retry'),
               -count(*) FILTER (WHERE outcome = 'failed'), -count(*) FILTER (WHERE outcome = 'timed_out'),
               -count(*) FILTER (WHERE outcome = 'interrupted'), -coalesce(sum(cost_usd), 0),
               -coalesce(sum(tokens_used), 0), -coalesce(sum(duration_seconds::numeric), 0), -count(duration_seconds)
        FROM old_runs WHERE end_time IS NOT NULL GROUP BY 1 ORDER BY 1
        ON CONFLICT (period_start) DO UPDATE SET
            runs = t.runs + EXCLUDED.runs, passed = t.passed + EXCLUDED.passed,
            fixed_on_retry = t.fixed_on_retry + EXCLUDED.fixed_on_retry, failed = t.failed + EXCLUDED.failed,
            timed_out = t.timed_out + EXCLUDED.timed_out, interrupted = t.interrupted + EXCLUDED.interrupted,
            cost_usd = t.cost_usd + EXCLUDED.cost_usd, tokens_used = t.tokens_used + EXCLUDED.tokens_used,
            duration_sum = t.duration_sum + EXCLUDED.duration_sum,
            duration_count = t.duration_count + EXCLUDED.duration_count;
    ELSE  -- UPDATE: the new rows' part minus the old rows', in one pass (one lock order)
        INSERT INTO spec_run_totals AS t
        SELECT date_bin('15 minutes', end_time, TIMESTAMPTZ '2000-01-01 00:00:00+00'), sum(sign),
               coalesce(sum(sign) FILTER (WHERE outcome = 'passed'), 0),
               coalesce(sum(sign) FILTER (WHERE outcome = 'fixed_on_retry'), 0),
               coalesce(sum(sign) FILTER (WHERE outcome = 'failed'), 0),
               coalesce(sum(sign) FILTER (WHERE outcome = 'timed_out'), 0),
               coalesce(sum(sign) FILTER (WHERE outcome = 'interrupted'), 0), coalesce(sum(sign * cost_usd), 0),
               coalesce(sum(sign * tokens_used), 0), coalesce(sum(sign * duration_seconds::numeric), 0),
               coalesce(sum(sign) FILTER (WHERE duration_seconds IS NOT NULL), 0)
        FROM (SELECT 1 AS sign, * FROM new_runs UNION ALL SELECT -1, * FROM old_runs) AS d
        WHERE end_time IS NOT NULL GROUP BY 1 ORDER BY 1
        ON CONFLICT (period_start) DO UPDATE SET
            runs = t.runs + EXCLUDED.runs, passed = t.passed + EXCLUDED.passed,
            fixed_on_retry = t.fixed_on_retry + EXCLUDED.fixed_on_retry, failed = t.failed + EXCLUDED.failed,
            timed_out = t.timed_out + EXCLUDED.timed_out, interrupted = t.interrupted + EXCLUDED.interrupted,
            cost_usd = t.cost_usd + EXCLUDED.cost_usd, tokens_used = t.tokens_used + EXCLUDED.tokens_used,
            duration_sum = t.duration_sum + EXCLUDED.duration_sum,
            duration_count = t.duration_count + EXCLUDED.duration_count;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER spec_run_totals_insert AFTER INSERT ON spec_runs
    REFERENCING NEW TABLE AS new_runs FOR EACH STATEMENT EXECUTE FUNCTION spec_run_totals_apply();
CREATE TRIGGER spec_run_totals_delete AFTER DELETE ON spec_runs
    REFERENCING OLD TABLE AS old_runs FOR EACH STATEMENT EXECUTE FUNCTION spec_run_totals_apply();
CREATE TRIGGER spec_run_totals_update AFTER UPDATE ON spec_runs
    REFERENCING OLD TABLE AS old_runs NEW TABLE AS new_runs FOR EACH STATEMENT EXECUTE FUNCTION spec_run_totals_apply();

-- The runs projected before this migration.
INSERT INTO spec_run_totals
SELECT date_bin('15 minutes', end_time, TIMESTAMPTZ '2000-01-01 00:00:00+00'), count(*),
       count(*) FILTER (WHERE outcome = 'passed'), count(*) FILTER (WHERE outcome = 'fixed_on_retry'),
       count(*) FILTER (WHERE outcome = 'failed'), count(*) FILTER (WHERE outcome = 'timed_out'),
       count(*) FILTER (WHERE outcome = 'interrupted'), coalesce(sum(cost_usd), 0),
       coalesce(sum(tokens_used), 0), coalesce(sum(duration_seconds::numeric), 0), count(duration_seconds)
FROM spec_runs WHERE end_time IS NOT NULL GROUP BY 1 ORDER BY 1;

-- Sessions active in a window (the night summary): those whose activity ended after its
-- start, found without reading every older session.
CREATE INDEX sessions_activity_end_idx ON sessions ((coalesce(end_time, last_event_at)));

-- A spec's last error (top_failing_specs): its newest failure, one index probe.
CREATE INDEX spec_runs_spec_failed_idx ON spec_runs (spec_id, end_time DESC)
    WHERE status IN ('failed', 'timeout');

-- The week's failing specs (top_failing_specs) counted from the index alone.
DROP INDEX spec_runs_end_idx;
CREATE INDEX spec_runs_end_idx ON spec_runs (end_time DESC)
    INCLUDE (status, outcome, tokens_used, cost_usd, duration_seconds, spec_id) WHERE end_time IS NOT NULL;

-- A spec's page (spec_histories): its newest runs in order, and its totals from the index alone.
CREATE INDEX spec_runs_spec_recent_idx ON spec_runs (spec_id, (coalesce(start_time, end_time)) DESC, id DESC)
    INCLUDE (status, outcome);

-- The dashboard's incremental render: the sessions recomputed since the last one.
CREATE INDEX sessions_updated_idx ON sessions (updated_at);
