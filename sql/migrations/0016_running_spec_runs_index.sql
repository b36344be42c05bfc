-- Headroom (issue 17): a session's running spec run, found by one probe. `active_sessions`
-- (status, the overview) reads each live session's current spec, and `night_attempts` the specs
-- being tried again; both walked every run of those sessions for the one still running
-- (at 100x, 25 live sessions: active_sessions 2.2 -> 1.2 ms, night_attempts 21.5 -> 14.0 ms).
-- Only running runs are in it: a handful of rows whatever the volume.
CREATE INDEX spec_runs_running_idx ON spec_runs (session_id, start_time DESC) WHERE status = 'running';
