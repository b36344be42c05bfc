-- Aggregates derived from events. They are recomputed per session (and per 5-minute bucket)
-- from the events themselves, so the result never depends on arrival order, and a rebuild
-- from scratch gives the same rows as live maintenance.

-- Overnight runs.
CREATE TABLE sessions (
    id                      uuid PRIMARY KEY,
    name                    text,
    host                    text,
    start_time              timestamptz NOT NULL,
    end_time                timestamptz,
    last_event_at           timestamptz NOT NULL,
    total_specs             integer,
    specs_completed         integer     NOT NULL DEFAULT 0,
    specs_failed            integer     NOT NULL DEFAULT 0,
    specs_timed_out         integer     NOT NULL DEFAULT 0,
    execution_state         text        NOT NULL,
    tokens_used             bigint      NOT NULL DEFAULT 0,
    cost_usd                numeric(14,6) NOT NULL DEFAULT 0,
    event_count             integer     NOT NULL DEFAULT 0,
    interventions_pending   integer     NOT NULL DEFAULT 0,
    final_result            jsonb,
    metadata                jsonb       NOT NULL DEFAULT '{}',
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sessions_state_check CHECK (
        execution_state IN ('running', 'stalled', 'completed', 'failed', 'interrupted'))
);
CREATE INDEX sessions_start_idx ON sessions (start_time DESC);
CREATE INDEX sessions_active_idx ON sessions (last_event_at) WHERE execution_state IN ('running', 'stalled');

-- One row per execution of a spec; a retry in the same session is attempt 2, 3, ...
CREATE TABLE spec_runs (
    id                bigserial PRIMARY KEY,
    session_id        uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    spec_id           text        NOT NULL,
    attempt           integer     NOT NULL,
    start_time        timestamptz,
    end_time          timestamptz,
    duration_seconds  double precision,
    status            text        NOT NULL,
    tokens_used       bigint,
    cost_usd          numeric(14,6),
    error_message     text,
    output_summary    jsonb,
    CONSTRAINT spec_runs_attempt_key UNIQUE (session_id, spec_id, attempt),
    CONSTRAINT spec_runs_status_check CHECK (
        status IN ('running', 'completed', 'failed', 'timeout', 'interrupted'))
);
CREATE INDEX spec_runs_spec_idx ON spec_runs (spec_id, start_time DESC);
CREATE INDEX spec_runs_end_idx ON spec_runs (end_time DESC) WHERE end_time IS NOT NULL;
CREATE INDEX spec_runs_failed_idx ON spec_runs (end_time DESC) WHERE status IN ('failed', 'timeout');

-- Events per 5 minutes and type, for the dashboard's charts.
CREATE TABLE metric_buckets (
    bucket_time           timestamptz NOT NULL,
    event_type            text        NOT NULL,
    count                 integer     NOT NULL,
    avg_duration_seconds  double precision,
    PRIMARY KEY (bucket_time, event_type)
);

-- Work queues for the projector, written in the same transaction as the events. The
-- version column makes a writer wait for (rather than slip past) a projector that is
-- recomputing the same key, so no committed event is ever missed.
CREATE TABLE dirty_sessions (
    session_id  uuid PRIMARY KEY,
    version     bigint      NOT NULL DEFAULT 1,
    marked_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE dirty_buckets (
    bucket_time timestamptz PRIMARY KEY,
    version     bigint      NOT NULL DEFAULT 1
);

-- Requests for a human, and their answers (a later user_feedback in the session).
CREATE TABLE interventions (
    event_id      uuid PRIMARY KEY,
    session_id    uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    spec_id       text,
    requested_at  timestamptz NOT NULL,
    message       text,
    answered_at   timestamptz,
    answer        text
);
CREATE INDEX interventions_session_idx ON interventions (session_id);
CREATE INDEX interventions_open_idx ON interventions (requested_at DESC) WHERE answered_at IS NULL;
