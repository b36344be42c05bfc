-- A loop stopped by its budget (`ralph-monitor loop --max-cost`, [budget] session_usd) ends
-- its session as budget_exceeded: it did not fail, and it did not finish its specs either.
ALTER TABLE sessions DROP CONSTRAINT sessions_state_check;
ALTER TABLE sessions ADD CONSTRAINT sessions_state_check CHECK (
    execution_state IN ('running', 'stalled', 'completed', 'failed', 'interrupted', 'budget_exceeded'));
