-- Headroom (issue 17): spend() reads its month and 30 days from hourly totals, ~750 rows
-- instead of ~3,000 quarter hours.
--
-- spec_run_totals_hourly: spec_run_totals (migration 0010) added up per UTC hour. A local day
-- or night in a whole-hour zone is whole hours; in a zone 30 or 45 minutes off (Asia/Kolkata,
-- Asia/Kathmandu) its first and last quarter hours come from spec_run_totals, and what does not
-- fill a quarter hour from spec_runs (queries.sql: period_runs).
--
-- Kept by a row trigger on spec_run_totals: each change of a quarter hour adds its difference
-- to its hour, in the same statement, so under the totals' advisory lock that the statement
-- trigger on spec_runs takes first. Quarter hours are deleted only once empty (all zeros:
-- prune_empty_spec_run_totals), so a delete changes no hour and needs no trigger; empty hours
-- are deleted with them.
CREATE TABLE spec_run_totals_hourly (LIKE spec_run_totals INCLUDING ALL) WITH (fillfactor = 50);

CREATE FUNCTION spec_run_totals_hourly_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO spec_run_totals_hourly AS h
    VALUES (date_bin('1 hour', NEW.period_start, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
            NEW.runs - coalesce(OLD.runs, 0), NEW.passed - coalesce(OLD.passed, 0),
            NEW.fixed_on_retry - coalesce(OLD.fixed_on_retry, 0), NEW.failed - coalesce(OLD.failed, 0),
            NEW.timed_out - coalesce(OLD.timed_out, 0), NEW.interrupted - coalesce(OLD.interrupted, 0),
            NEW.cost_usd - coalesce(OLD.cost_usd, 0), NEW.tokens_used - coalesce(OLD.tokens_used, 0),
            NEW.duration_sum - coalesce(OLD.duration_sum, 0), NEW.duration_count - coalesce(OLD.duration_count, 0))
    ON CONFLICT (period_start) DO UPDATE SET
        runs = h.runs + EXCLUDED.runs, passed = h.passed + EXCLUDED.passed,
        fixed_on_retry = h.fixed_on_retry + EXCLUDED.fixed_on_retry, failed = h.failed + EXCLUDED.failed,
        timed_out = h.timed_out + EXCLUDED.timed_out, interrupted = h.interrupted + EXCLUDED.interrupted,
        cost_usd = h.cost_usd + EXCLUDED.cost_usd, tokens_used = h.tokens_used + EXCLUDED.tokens_used,
        duration_sum = h.duration_sum + EXCLUDED.duration_sum,
        duration_count = h.duration_count + EXCLUDED.duration_count;
    RETURN NULL;
END
$$;

CREATE TRIGGER spec_run_totals_hourly_insert AFTER INSERT ON spec_run_totals
    FOR EACH ROW EXECUTE FUNCTION spec_run_totals_hourly_apply();
CREATE TRIGGER spec_run_totals_hourly_update AFTER UPDATE ON spec_run_totals
    FOR EACH ROW EXECUTE FUNCTION spec_run_totals_hourly_apply();

-- The quarter hours kept before this migration.
INSERT INTO spec_run_totals_hourly
SELECT date_bin('1 hour', period_start, TIMESTAMPTZ '2000-01-01 00:00:00+00'), sum(runs), sum(passed),
       sum(fixed_on_retry), sum(failed), sum(timed_out), sum(interrupted), sum(cost_usd), sum(tokens_used),
       sum(duration_sum), sum(duration_count)
FROM spec_run_totals GROUP BY 1 ORDER BY 1;
