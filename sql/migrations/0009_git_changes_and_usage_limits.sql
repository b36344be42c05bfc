-- What each spec run changed in its git repository (issue 16): the closing event's data.git
-- as values.git keeps it (agent/gitstate.py writes it: repo, head_before, head_after, commits,
-- commit_count, files_changed, insertions, deletions, dirty; or repo null and the reason).
-- The counts are columns of their own, derived from it, so sessions and nights sum them in SQL.
-- values.git has already bounded them (at most 10^9 commits or files, 10^11 lines a run).
ALTER TABLE spec_runs ADD COLUMN git jsonb;
ALTER TABLE spec_runs
    ADD COLUMN git_commits integer GENERATED ALWAYS AS ((git->>'commit_count')::integer) STORED,
    ADD COLUMN git_files_changed integer GENERATED ALWAYS AS ((git->>'files_changed')::integer) STORED,
    ADD COLUMN git_insertions bigint GENERATED ALWAYS AS ((git->>'insertions')::bigint) STORED,
    ADD COLUMN git_deletions bigint GENERATED ALWAYS AS ((git->>'deletions')::bigint) STORED,
    ADD COLUMN git_dirty boolean GENERATED ALWAYS AS ((git->>'dirty')::boolean) STORED;

-- Usage windows (issue 16): a session whose agent hit its usage limit is paused until the
-- window resets (sessions.paused_until), not failed and not stalled; it is still active.
ALTER TABLE sessions ADD COLUMN paused_until timestamptz;
ALTER TABLE sessions DROP CONSTRAINT sessions_state_check;
ALTER TABLE sessions ADD CONSTRAINT sessions_state_check CHECK (
    execution_state IN ('running', 'stalled', 'completed', 'failed', 'interrupted', 'budget_exceeded',
                        'paused_for_usage_limit', 'waiting_for_human', 'stuck'));

DROP INDEX sessions_active_idx;
CREATE INDEX sessions_active_idx ON sessions (last_event_at)
    WHERE execution_state IN ('running', 'stalled', 'waiting_for_human', 'paused_for_usage_limit');
