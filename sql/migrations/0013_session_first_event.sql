-- Headroom (issue 17): the earliest `ts` of a session's events, kept by the projector (from the
-- session_activity it reads anyway). Reading a session's events from there on (queries.sql:
-- timelines_of_sessions) plans the query for those days' partitions, not all ~40 of the
-- retention window: planning, not reading, was most of a running session's page.
ALTER TABLE sessions ADD COLUMN first_event_at timestamptz;

-- Sessions projected before this migration: from the events still kept.
UPDATE sessions s SET first_event_at = e.first_at
FROM (SELECT session_id, min(occurred_at) AS first_at FROM events WHERE session_id IS NOT NULL
      GROUP BY session_id) e
WHERE e.session_id = s.id;
