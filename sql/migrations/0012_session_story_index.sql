-- Headroom (issue 17): a big session's page lists its events without heartbeats and tool-level
-- hook events (queries.sql: timelines_of_sessions), a few hundred of its thousands. This index
-- holds just those, so each minute's render of a running session reads them and not the
-- whole session (at 10x: ~300 rows instead of ~5,000). Only those events pay for it on insert.
CREATE INDEX events_session_story_idx ON events (session_id, occurred_at)
    WHERE session_id IS NOT NULL AND event_type <> 'session_heartbeat' AND event_type NOT LIKE 'cc.%';
