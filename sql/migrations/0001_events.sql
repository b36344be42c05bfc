-- Events: the source of truth. One row per accepted event line.
-- occurred_at is the agent's time (its "ts", else the moment the daemon received the line);
-- created_at is when the row was committed. payload is the received JSON object as is.
CREATE TABLE events (
    id           bigserial,
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
    PRIMARY KEY (id, occurred_at),
    -- A partitioned table's unique keys must include the partition column: this one makes
    -- the daemon's own spool replay idempotent (same event_id, same occurred_at).
    CONSTRAINT events_event_id_key UNIQUE (event_id, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- Idempotency across resends by clients: an event_id chosen by the client is stored once,
-- even when the resend has no "ts" (so its occurred_at, the receive time, differs).
-- Only client-chosen ids are recorded here; pruned with the events they belong to.
CREATE TABLE event_ids (
    event_id     uuid PRIMARY KEY,
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX event_ids_occurred_at_idx ON event_ids (occurred_at);

-- One partition per UTC day, so retention drops whole partitions instead of deleting rows.
-- Events whose day has no partition (a skewed clock, a very late replay) land in the
-- default partition, so nothing is ever refused for its timestamp.
CREATE TABLE events_default PARTITION OF events DEFAULT;

-- "last 100 events", "events since ... of type ...": newest first by the agent's time.
CREATE INDEX events_occurred_at_idx ON events (occurred_at DESC);
CREATE INDEX events_type_occurred_at_idx ON events (event_type, occurred_at DESC);
-- Session timeline and per-spec history.
CREATE INDEX events_session_idx ON events (session_id, occurred_at) WHERE session_id IS NOT NULL;
CREATE INDEX events_spec_idx ON events (spec_id, occurred_at) WHERE spec_id IS NOT NULL;

-- Create the daily partitions from first_day to last_day (UTC) that do not exist yet.
-- Rows already in the default partition for such a day are moved into it first. ATTACH
-- (unlike CREATE ... PARTITION OF) does not block concurrent inserts into other partitions.
CREATE FUNCTION ensure_event_partitions(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day      date;
    name     text;
    low      timestamptz;
    high     timestamptz;
    created  integer := 0;
BEGIN
    FOR day IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
        name := 'events_' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        low := day::timestamp AT TIME ZONE 'UTC';
        high := (day + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
        EXECUTE format('WITH moved AS (DELETE FROM events_default WHERE occurred_at >= %L AND occurred_at < %L '
                       'RETURNING *) INSERT INTO %I SELECT * FROM moved', low, high, name);
        EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, low, high);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

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
