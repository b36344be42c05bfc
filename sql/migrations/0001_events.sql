-- Events: the source of truth. One row per accepted event line.
-- occurred_at is the agent's time (its "ts", else the moment the daemon received the line);
-- created_at is when the row was committed. payload is the received JSON object as is.
CREATE TABLE events (
    id           bigserial PRIMARY KEY,
    event_id     uuid        NOT NULL,
    event_type   text        NOT NULL,
    session_id   uuid,
    spec_id      text,
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    host         text        NOT NULL,
    writer_uid   integer,
    writer_pid   integer,
    payload      jsonb       NOT NULL,
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

-- "last 100 events", "events since ... of type ...": newest first by the agent's time.
CREATE INDEX events_occurred_at_idx ON events (occurred_at DESC);
CREATE INDEX events_type_occurred_at_idx ON events (event_type, occurred_at DESC);
-- Session timeline and per-spec history.
CREATE INDEX events_session_idx ON events (session_id, occurred_at) WHERE session_id IS NOT NULL;
CREATE INDEX events_spec_idx ON events (spec_id, occurred_at) WHERE spec_id IS NOT NULL;

-- Lines the daemon refused, kept (truncated) so the morning view shows them.
CREATE TABLE rejects (
    id           bigserial PRIMARY KEY,
    reject_id    uuid        NOT NULL,
    received_at  timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    host         text        NOT NULL,
    writer_uid   integer,
    writer_pid   integer,
    reason       text        NOT NULL,
    detail       text        NOT NULL,
    line_bytes   bigint      NOT NULL,
    excerpt      text        NOT NULL,
    CONSTRAINT rejects_reject_id_key UNIQUE (reject_id)
);
CREATE INDEX rejects_received_at_idx ON rejects (received_at DESC);

-- One row per daemon host: liveness, spool backlog and ingest counters for the health view.
CREATE TABLE monitor_hosts (
    host                text PRIMARY KEY,
    version             text        NOT NULL,
    started_at          timestamptz NOT NULL,
    last_seen           timestamptz NOT NULL,
    events_total        bigint      NOT NULL DEFAULT 0,
    rejects_total       bigint      NOT NULL DEFAULT 0,
    spool_backlog       bigint      NOT NULL DEFAULT 0,
    spooled_total       bigint      NOT NULL DEFAULT 0,
    last_spooled_at     timestamptz,
    last_replayed_at    timestamptz,
    ingest_rate_per_s   double precision NOT NULL DEFAULT 0
);
