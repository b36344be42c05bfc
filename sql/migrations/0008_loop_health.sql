-- Loop health (issue 16): a loop stopped on a finding ends its session as `stuck`; a session
-- whose agent waits for a person (a request, a permission prompt, a question) is
-- `waiting_for_human`, since `waiting_since`. `loop_findings` holds the session's open
-- loop-health episodes (each loop_stuck event not followed by its loop_recovered).
ALTER TABLE sessions DROP CONSTRAINT sessions_state_check;
ALTER TABLE sessions ADD CONSTRAINT sessions_state_check CHECK (
    execution_state IN ('running', 'stalled', 'waiting_for_human', 'completed', 'failed', 'interrupted',
                        'budget_exceeded', 'stuck'));
ALTER TABLE sessions ADD COLUMN waiting_since timestamptz;
ALTER TABLE sessions ADD COLUMN loop_findings jsonb NOT NULL DEFAULT '[]';

DROP INDEX sessions_active_idx;
CREATE INDEX sessions_active_idx ON sessions (last_event_at)
    WHERE execution_state IN ('running', 'stalled', 'waiting_for_human');
