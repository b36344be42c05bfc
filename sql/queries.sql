-- Named queries. Each starts with a "-- name: <name>" line; the store loads them by name.

-- name: migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_lock
SELECT pg_advisory_xact_lock(7262686);

-- name: applied_migrations
SELECT version FROM schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: read_only_session
SET default_transaction_read_only = on;

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = %(name)s;

-- name: ensure_event_partitions
SELECT ensure_event_partitions(%(first_day)s, %(last_day)s);

-- name: copy_events
COPY events (event_id, event_type, session_id, spec_id, occurred_at, received_at,
             host, writer_uid, writer_pid, payload) FROM STDIN;

-- name: copy_event_ids
COPY event_ids (event_id, occurred_at) FROM STDIN;

-- name: claim_event_id
INSERT INTO event_ids (event_id, occurred_at) VALUES (%s, %s)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id;

-- name: insert_event
INSERT INTO events (event_id, event_type, session_id, spec_id, occurred_at, received_at,
                    host, writer_uid, writer_pid, payload)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (event_id, occurred_at) DO NOTHING
RETURNING id;

-- name: insert_reject
INSERT INTO rejects (reject_id, received_at, host, writer_uid, writer_pid, reason, detail,
                     line_bytes, excerpt)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (reject_id) DO NOTHING;

-- name: upsert_monitor_host
INSERT INTO monitor_hosts AS m (host, version, started_at, last_seen, events_total, rejects_total,
                                spool_backlog, spooled_total, last_spooled_at, last_replayed_at,
                                ingest_rate_per_s)
VALUES (%(host)s, %(version)s, %(started_at)s, now(), %(events_total)s, %(rejects_total)s,
        %(spool_backlog)s, %(spooled_total)s, %(last_spooled_at)s, %(last_replayed_at)s,
        %(ingest_rate_per_s)s)
ON CONFLICT (host) DO UPDATE SET
    version = EXCLUDED.version, started_at = EXCLUDED.started_at, last_seen = now(),
    events_total = EXCLUDED.events_total, rejects_total = EXCLUDED.rejects_total,
    spool_backlog = EXCLUDED.spool_backlog, spooled_total = EXCLUDED.spooled_total,
    last_spooled_at = COALESCE(EXCLUDED.last_spooled_at, m.last_spooled_at),
    last_replayed_at = COALESCE(EXCLUDED.last_replayed_at, m.last_replayed_at),
    ingest_rate_per_s = EXCLUDED.ingest_rate_per_s;

-- name: recent_events
SELECT id, event_id, event_type, session_id, spec_id, occurred_at, created_at, host,
       writer_uid, writer_pid, payload
FROM events
WHERE (%(since)s::timestamptz IS NULL OR occurred_at >= %(since)s)
  AND (%(event_type)s::text IS NULL OR event_type = %(event_type)s)
  AND (%(session_id)s::uuid IS NULL OR session_id = %(session_id)s)
  AND (%(spec_id)s::text IS NULL OR spec_id = %(spec_id)s)
ORDER BY occurred_at DESC, id DESC
LIMIT %(limit)s;

-- name: recent_rejects
SELECT received_at, host, writer_uid, writer_pid, reason, detail, line_bytes, excerpt
FROM rejects
ORDER BY received_at DESC
LIMIT %(limit)s;

-- name: monitor_hosts
SELECT host, version, started_at, last_seen, events_total, rejects_total, spool_backlog,
       spooled_total, last_spooled_at, last_replayed_at, ingest_rate_per_s
FROM monitor_hosts
ORDER BY host;
