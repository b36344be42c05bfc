-- One bad value never stops anything (issue 12).
--
-- Values the aggregates skip (values.py: a count of 1e30, a cost sent as a string) are kept
-- as reasons on the session and the spec run, so the morning view says what was not counted.
ALTER TABLE sessions ADD COLUMN value_problems text[] NOT NULL DEFAULT '{}';
ALTER TABLE spec_runs ADD COLUMN value_problems text[] NOT NULL DEFAULT '{}';

-- Sessions whose projection failed (any error, not only a known one). The projector records
-- the error here, goes on with every other session, and retries this one at retry_at with a
-- growing backoff; the row goes when the session projects again. Shown by `ralph-query
-- status`, the dashboard's health panel, `doctor` and the daemon's STATUS= line.
CREATE TABLE projection_failures (
    session_id       uuid PRIMARY KEY,
    error            text        NOT NULL,
    attempts         integer     NOT NULL DEFAULT 1,
    first_failed_at  timestamptz NOT NULL DEFAULT now(),
    last_failed_at   timestamptz NOT NULL DEFAULT now(),
    retry_at         timestamptz NOT NULL
);

-- Connection pressure: connections refused at a limit, and idle ones closed to make room
-- (server.py), as counted by each daemon since it started.
ALTER TABLE monitor_hosts ADD COLUMN connections_refused bigint NOT NULL DEFAULT 0;
ALTER TABLE monitor_hosts ADD COLUMN connections_evicted bigint NOT NULL DEFAULT 0;

-- Free space of the disks the daemon writes to (disk.py), sampled by each daemon:
-- {"state": {"path": ..., "free_bytes": ..., "total_bytes": ...}, "site": ..., ...}.
ALTER TABLE monitor_hosts ADD COLUMN disks jsonb NOT NULL DEFAULT '{}';
