-- One definition of the counts (issue 14): every spec run carries the outcome that
-- src/ralph_monitor/outcomes.py gives it (the projection writes it), so each view counts the
-- same specs the same way; and "what changed since the previous run" finds that run by name.
--
-- spec_runs.outcome: on the last attempt of a spec in its session, the spec's outcome (passed,
-- fixed_on_retry, failed, timed_out, running, interrupted); on an earlier attempt later_passed
-- (the spec passed in the end) or retried.
ALTER TABLE spec_runs ADD COLUMN outcome text
    CHECK (outcome IN ('passed', 'fixed_on_retry', 'failed', 'timed_out', 'running', 'interrupted',
                       'later_passed', 'retried'));
ALTER TABLE sessions ADD COLUMN specs_fixed_on_retry integer NOT NULL DEFAULT 0;

-- Runs projected before this migration: the rule of outcomes.py, once, in SQL (the projector
-- writes every later run; rebuild-aggregates recomputes them all from the events).
WITH specs AS (
    SELECT session_id, spec_id, max(attempt) AS last_attempt,
           bool_or(status IN ('failed', 'timeout')) AS any_failure
    FROM spec_runs GROUP BY session_id, spec_id
), decided AS (
    SELECT s.session_id, s.spec_id, s.last_attempt,
           CASE r.status WHEN 'completed' THEN CASE WHEN s.any_failure THEN 'fixed_on_retry' ELSE 'passed' END
                         WHEN 'failed' THEN 'failed' WHEN 'timeout' THEN 'timed_out' WHEN 'running' THEN 'running'
                         ELSE 'interrupted' END AS outcome
    FROM specs s JOIN spec_runs r
      ON r.session_id = s.session_id AND r.spec_id = s.spec_id AND r.attempt = s.last_attempt
)
UPDATE spec_runs r
SET outcome = CASE WHEN r.attempt = d.last_attempt THEN d.outcome
                   WHEN d.outcome IN ('passed', 'fixed_on_retry') THEN 'later_passed' ELSE 'retried' END
FROM decided d
WHERE d.session_id = r.session_id AND d.spec_id = r.spec_id;
UPDATE sessions s SET specs_fixed_on_retry = f.n
FROM (SELECT session_id, count(*) AS n FROM spec_runs WHERE outcome = 'fixed_on_retry' GROUP BY session_id) f
WHERE f.session_id = s.id;
ALTER TABLE spec_runs ALTER COLUMN outcome SET NOT NULL;

-- Counting a window's specs by outcome stays an index-only scan.
DROP INDEX spec_runs_end_idx;
CREATE INDEX spec_runs_end_idx ON spec_runs (end_time DESC)
    INCLUDE (status, outcome, tokens_used, cost_usd, duration_seconds) WHERE end_time IS NOT NULL;

-- The previous session of the same name (ralph-query diff, the session page, the morning report).
CREATE INDEX sessions_name_start_idx ON sessions (name, start_time DESC);
