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
-- Reads never write, and see every time in UTC whatever the server's TimeZone: the dashboard's
-- snapshots encode a UTC time with a `Z` natively (orjson), and exports read the same anywhere.
SELECT set_config('default_transaction_read_only', 'on', false), set_config('TimeZone', 'UTC', false);

-- name: read_source
-- Whether reads are answered by a standby, and how far its replay is behind: 0 when it has
-- replayed all the WAL it received, else the age of the last transaction it replayed.
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0.0
            ELSE greatest(0, extract(epoch FROM now() - pg_last_xact_replay_timestamp()))::float8
       END AS lag_s,
       pg_last_xact_replay_timestamp() AS last_replay_at;

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = %(name)s;

-- name: create_database
CREATE DATABASE {database};

-- name: ensure_event_partitions
SELECT ensure_event_partitions(%(first_day)s, %(last_day)s);

-- name: copy_events
COPY events (event_id, event_type, session_id, spec_id, occurred_at, received_at,
             host, writer_uid, writer_pid, payload) FROM STDIN;

-- name: copy_event_ids
COPY event_ids (event_id, occurred_at) FROM STDIN;

-- name: insert_events
-- A small batch in one statement (one round trip, its own transaction in autocommit mode):
-- claim the client-chosen ids, store the events whose claim succeeded (or that need none),
-- and queue their sessions and 5-minute buckets for the projector (keys sorted, so concurrent
-- writers lock queue rows in one order). The batch is one JSON array of rows, each carrying its
-- payload as is: cheaper to pass than eleven arrays. It holds no client id twice (the caller
-- sees to it). Returns the ids stored now; the others were duplicates.
WITH batch AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb)
        AS b(event_id uuid, event_type text, session_id uuid, spec_id text, occurred_at timestamptz,
             received_at timestamptz, host text, writer_uid integer, writer_pid integer,
             payload jsonb, claim boolean)
), claimed AS (
    INSERT INTO event_ids (event_id, occurred_at)
    SELECT event_id, occurred_at FROM batch WHERE claim ORDER BY event_id
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
), stored AS (
    INSERT INTO events (event_id, event_type, session_id, spec_id, occurred_at, received_at,
                        host, writer_uid, writer_pid, payload)
    SELECT event_id, event_type, session_id, spec_id, occurred_at, received_at, host, writer_uid,
           writer_pid, payload
    FROM batch WHERE NOT claim OR event_id IN (SELECT event_id FROM claimed)
    ON CONFLICT (event_id, occurred_at) DO NOTHING
    RETURNING event_id
), marked_sessions AS (
    INSERT INTO dirty_sessions (session_id)
    SELECT DISTINCT session_id FROM batch WHERE session_id IS NOT NULL ORDER BY 1
    ON CONFLICT (session_id) DO UPDATE SET version = dirty_sessions.version + 1, marked_at = now()
), marked_buckets AS (
    INSERT INTO dirty_buckets (bucket_time)
    SELECT DISTINCT date_bin('5 minutes', occurred_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') FROM batch ORDER BY 1
    ON CONFLICT (bucket_time) DO UPDATE SET version = dirty_buckets.version + 1
)
SELECT event_id::text FROM stored;

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
                                ingest_rate_per_s, connections_refused, connections_evicted, disks)
VALUES (%(host)s, %(version)s, %(started_at)s, now(), %(events_total)s, %(rejects_total)s,
        %(spool_backlog)s, %(spooled_total)s, %(last_spooled_at)s, %(last_replayed_at)s,
        %(ingest_rate_per_s)s, %(connections_refused)s, %(connections_evicted)s, %(disks)s)
ON CONFLICT (host) DO UPDATE SET
    version = EXCLUDED.version, started_at = EXCLUDED.started_at, last_seen = now(),
    events_total = EXCLUDED.events_total, rejects_total = EXCLUDED.rejects_total,
    spool_backlog = EXCLUDED.spool_backlog, spooled_total = EXCLUDED.spooled_total,
    last_spooled_at = COALESCE(EXCLUDED.last_spooled_at, m.last_spooled_at),
    last_replayed_at = COALESCE(EXCLUDED.last_replayed_at, m.last_replayed_at),
    ingest_rate_per_s = EXCLUDED.ingest_rate_per_s,
    connections_refused = EXCLUDED.connections_refused, connections_evicted = EXCLUDED.connections_evicted,
    disks = EXCLUDED.disks;

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

-- name: recent_events_of_session
-- recent_events for one session. The session is matched as a range on purpose, and sorted on:
-- with "session_id = <id>" the planner drops it from the sort order, and then walks a day's
-- whole occurred_at index newest first, filtering on the session (bench/queries.py: 48,000
-- rows read, 15 ms, for a session that ended early in its last day). Ordered by
-- (session_id, occurred_at) only the session index yields the order: it reads 100 entries.
SELECT id, event_id, event_type, session_id, spec_id, occurred_at, created_at, host,
       writer_uid, writer_pid, payload
FROM events
WHERE session_id >= %(session_id)s AND session_id <= %(session_id)s
  AND (%(since)s::timestamptz IS NULL OR occurred_at >= %(since)s)
  AND (%(event_type)s::text IS NULL OR event_type = %(event_type)s)
  AND (%(spec_id)s::text IS NULL OR spec_id = %(spec_id)s)
ORDER BY session_id DESC, occurred_at DESC, id DESC
LIMIT %(limit)s;

-- name: recent_events_floor
-- The floors of recent_events: a time from which at least %(limit)s matching events are
-- likely to exist, so that the events query reads, and is planned for, only the partitions
-- from there on (planning all ~40 of 30 days cost more than the read). A guess, read from the
-- projections: queries.recent_events reads again without it when it yields fewer rows. NULL:
-- no guess. This one: the newest 5-minute bucket from which the newest buckets hold %(limit)s
-- events, among the newest %(buckets)s rows of metric_buckets (a bound on the work: a running
-- sum is not something the planner stops early on).
SELECT (SELECT bucket_time
        FROM (SELECT bucket_time, sum(sum(count)) OVER (ORDER BY bucket_time DESC) AS total
              FROM (SELECT bucket_time, count FROM metric_buckets
                    ORDER BY bucket_time DESC LIMIT %(buckets)s) newest
              GROUP BY bucket_time) b
        WHERE total >= %(limit)s
        ORDER BY bucket_time DESC LIMIT 1) AS floor;

-- name: recent_events_floor_of_type
SELECT (SELECT bucket_time
        FROM (SELECT bucket_time, sum(count) OVER (ORDER BY bucket_time DESC) AS total
              FROM (SELECT bucket_time, count FROM metric_buckets
                    -- A range, as in latest_event_of_type: the index then yields the order.
                    WHERE event_type >= %(event_type)s AND event_type <= %(event_type)s
                    ORDER BY event_type, bucket_time DESC LIMIT %(buckets)s) newest) b
        WHERE total >= %(limit)s
        ORDER BY bucket_time DESC LIMIT 1) AS floor;

-- name: recent_events_floor_of_session
SELECT (SELECT start_time FROM sessions WHERE id = %(session_id)s) AS floor;

-- name: recent_events_floor_of_spec
-- The start of the spec's fifth newest run: a run writes tens of events.
SELECT (SELECT min(start_time)
        FROM (SELECT start_time FROM spec_runs WHERE spec_id = %(spec_id)s AND start_time IS NOT NULL
              ORDER BY start_time DESC LIMIT 5) r) AS floor;

-- name: recent_rejects
SELECT received_at, host, writer_uid, writer_pid, reason, detail, line_bytes, excerpt
FROM rejects
ORDER BY received_at DESC
LIMIT %(limit)s;

-- name: monitor_hosts
SELECT host, version, started_at, last_seen, events_total, rejects_total, spool_backlog,
       spooled_total, last_spooled_at, last_replayed_at, ingest_rate_per_s,
       connections_refused, connections_evicted, disks
FROM monitor_hosts
ORDER BY host;

-- Projections ------------------------------------------------------------------------------

-- name: mark_all_dirty_sessions
INSERT INTO dirty_sessions (session_id)
SELECT session_id FROM events WHERE session_id IS NOT NULL
UNION SELECT id FROM sessions
ORDER BY 1
ON CONFLICT (session_id) DO UPDATE SET version = dirty_sessions.version + 1;

-- name: mark_all_dirty_buckets
INSERT INTO dirty_buckets (bucket_time)
SELECT date_bin('5 minutes', occurred_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') FROM events
UNION SELECT bucket_time FROM metric_buckets
ORDER BY 1
ON CONFLICT (bucket_time) DO UPDATE SET version = dirty_buckets.version + 1;

-- name: session_events
SELECT event_id, event_type, spec_id, occurred_at, host, payload->'data' AS data
FROM events
WHERE session_id = %(session_id)s AND event_type = ANY(%(types)s)
ORDER BY occurred_at, event_id;

-- name: session_recent_activity
-- The session's latest Claude Code hook events (projections.ACTIVITY_TYPES) for the loop-health
-- rules and the waiting state: newest first, bounded in time and number (the tool input of calls
-- only, cut to what loop_health.FINGERPRINT_CHARS compares). `since` is never before the session's first event: a
-- daily partition the session has no events in would otherwise be read through its occurred_at
-- index, a whole day of other sessions' events (the prepared statement's generic plan does so).
-- The session is a range, and in the sort, as in recent_events_of_session: so the session's
-- own index gives the order (with "session_id =", the day's occurred_at index was walked,
-- every other session's events in the window filtered out: 4x the rows at 10x, 40x at 100x).
SELECT event_id, event_type, occurred_at, payload->'data'->>'tool_name' AS tool_name,
       CASE WHEN event_type = 'cc.PreToolUse' THEN left(payload->'data'->>'tool_input', 400) END AS tool_input,
       payload->'data'->>'notification_type' AS notification_type
FROM events
WHERE session_id >= %(session_id)s AND session_id <= %(session_id)s AND event_type = ANY(%(types)s)
  AND occurred_at BETWEEN %(since)s AND %(until)s
ORDER BY session_id DESC, occurred_at DESC
LIMIT %(limit)s;

-- name: session_activity
SELECT count(*) AS event_count, min(occurred_at) AS first_at,
       max(occurred_at) FILTER (WHERE event_type <> 'session_stalled') AS last_event_at,
       max(occurred_at) AS last_any_at,
       max(occurred_at) FILTER (WHERE event_type <> ALL(%(not_activity)s::text[])) AS last_active_at
FROM events WHERE session_id = %(session_id)s;

-- name: upsert_session
INSERT INTO sessions AS s (id, name, host, start_time, end_time, last_event_at, total_specs,
    specs_completed, specs_failed, specs_timed_out, specs_fixed_on_retry, execution_state, tokens_used,
    cost_usd, event_count, interventions_pending, final_result, metadata, value_problems, waiting_since,
    loop_findings, paused_until, first_event_at, updated_at)
VALUES (%(id)s, %(name)s, %(host)s, %(start_time)s, %(end_time)s, %(last_event_at)s, %(total_specs)s,
    %(specs_completed)s, %(specs_failed)s, %(specs_timed_out)s, %(specs_fixed_on_retry)s, %(execution_state)s,
    %(tokens_used)s, %(cost_usd)s, %(event_count)s, %(interventions_pending)s, %(final_result)s, %(metadata)s,
    %(value_problems)s, %(waiting_since)s, %(loop_findings)s, %(paused_until)s, %(first_event_at)s, now())
ON CONFLICT (id) DO UPDATE SET
    name = EXCLUDED.name, host = EXCLUDED.host, start_time = EXCLUDED.start_time,
    end_time = EXCLUDED.end_time, last_event_at = EXCLUDED.last_event_at,
    total_specs = EXCLUDED.total_specs, specs_completed = EXCLUDED.specs_completed,
    specs_failed = EXCLUDED.specs_failed, specs_timed_out = EXCLUDED.specs_timed_out,
    specs_fixed_on_retry = EXCLUDED.specs_fixed_on_retry, execution_state = EXCLUDED.execution_state, tokens_used = EXCLUDED.tokens_used,
    cost_usd = EXCLUDED.cost_usd, event_count = EXCLUDED.event_count,
    interventions_pending = EXCLUDED.interventions_pending, final_result = EXCLUDED.final_result,
    metadata = EXCLUDED.metadata, value_problems = EXCLUDED.value_problems,
    waiting_since = EXCLUDED.waiting_since, loop_findings = EXCLUDED.loop_findings,
    paused_until = EXCLUDED.paused_until, first_event_at = EXCLUDED.first_event_at, updated_at = now();

-- name: delete_session_spec_runs
DELETE FROM spec_runs WHERE session_id = %(session_id)s;

-- name: copy_spec_runs
-- A session's spec runs, all in one statement (store/projection.py writes the rows in this
-- order): the totals' statement triggers (migrations 0010, 0017) fire once for the session,
-- not once a run.
COPY spec_runs (session_id, spec_id, attempt, start_time, end_time, duration_seconds, status, outcome,
                tokens_used, cost_usd, error_message, output_summary, value_problems, git) FROM STDIN;

-- name: delete_session_interventions
DELETE FROM interventions WHERE session_id = %(session_id)s;

-- name: insert_intervention
INSERT INTO interventions (event_id, session_id, spec_id, requested_at, message, answered_at, answer)
VALUES (%(event_id)s, %(session_id)s, %(spec_id)s, %(requested_at)s, %(message)s, %(answered_at)s,
        %(answer)s);

-- name: delete_session_aggregate
DELETE FROM sessions WHERE id = %(session_id)s;

-- name: recompute_buckets_delete
DELETE FROM metric_buckets WHERE bucket_time = ANY(%(buckets)s::timestamptz[]);

-- name: recompute_buckets_insert
INSERT INTO metric_buckets (bucket_time, event_type, count, avg_duration_seconds)
SELECT d.b, e.event_type, count(*),
       -- The value policy's bounds on duration_s (values.py): a reported 1e400 must not stop the charts.
       -- (Nested CASE: only a JSON number may be cast, and AND does not promise an order.)
       avg(CASE WHEN jsonb_typeof(e.payload->'data'->'duration_s') = 'number' THEN
               CASE WHEN (e.payload->'data'->'duration_s')::numeric BETWEEN 0 AND 10000000
                    THEN (e.payload->'data'->'duration_s')::numeric::double precision END END)
FROM unnest(%(buckets)s::timestamptz[]) AS d(b)
JOIN events e ON e.occurred_at >= d.b AND e.occurred_at < d.b + interval '5 minutes'
GROUP BY d.b, e.event_type;

-- name: stalled_candidates
SELECT id, last_event_at FROM sessions
WHERE execution_state IN ('running', 'waiting_for_human')
  AND last_event_at < now() - make_interval(secs => %(stall_after_s)s);

-- name: usage_resets_due
-- Sessions paused for their usage limit whose window has reset (the projector records usage_limit_reset).
SELECT id, paused_until FROM sessions
WHERE execution_state = 'paused_for_usage_limit' AND paused_until <= now();

-- name: dirty_backlog
SELECT (SELECT count(*) FROM dirty_sessions) AS sessions, (SELECT count(*) FROM dirty_buckets) AS buckets;

-- Read queries (CLI, dashboard) ---------------------------------------------------------------

-- name: active_sessions
-- The current spec: the session's newest running run (spec_runs_running_idx, migration 0016).
SELECT s.*, (SELECT r.spec_id FROM spec_runs r
             WHERE r.session_id = s.id AND r.status = 'running'
             ORDER BY r.start_time DESC LIMIT 1) AS current_spec
FROM sessions s
WHERE s.execution_state IN ('running', 'stalled', 'waiting_for_human', 'paused_for_usage_limit')
ORDER BY s.execution_state = 'waiting_for_human' DESC, s.start_time DESC;

-- name: pending_interventions
SELECT i.event_id, i.session_id, s.name AS session_name, i.spec_id, i.requested_at, i.message
FROM interventions i JOIN sessions s ON s.id = i.session_id
WHERE i.answered_at IS NULL AND s.end_time IS NULL
ORDER BY i.requested_at;

-- name: sessions_since
SELECT s.*, NULL::text AS current_spec FROM sessions s
WHERE s.start_time >= %(since)s
ORDER BY s.start_time DESC
LIMIT %(limit)s;

-- name: sessions_of_month
-- The month as session_months computes it; the range (a day wider on each side, whatever the
-- offset) reads only that month's sessions from sessions_start_idx.
SELECT s.*, NULL::text AS current_spec FROM sessions s
WHERE s.start_time >= (%(month)s::date - 1)::timestamp AT TIME ZONE %(tz)s
  AND s.start_time < ((%(month)s::date + interval '1 month')::date + 1)::timestamp AT TIME ZONE %(tz)s
  AND date_trunc('month', s.start_time AT TIME ZONE %(tz)s)::date = %(month)s
ORDER BY s.start_time DESC;

-- name: session_months
-- Sessions per local month, newest first: the dashboard's archive of every session kept.
SELECT date_trunc('month', start_time AT TIME ZONE %(tz)s)::date AS month, count(*) AS sessions,
       sum(specs_completed)::bigint AS specs_completed, sum(specs_failed)::bigint AS specs_failed,
       sum(cost_usd) AS cost_usd
FROM sessions GROUP BY 1 ORDER BY 1 DESC;

-- name: sessions_overlapping
SELECT s.*, NULL::text AS current_spec FROM sessions s
WHERE s.start_time < %(until)s AND coalesce(s.end_time, s.last_event_at) >= %(since)s
ORDER BY s.start_time;

-- name: session_ids_by_prefix
-- The ids between the prefix padded with 0s and with fs (the primary key's range: a year of
-- sessions is not read), spelled with the prefix's dashes where it has some.
SELECT id FROM sessions
WHERE id >= %(low)s AND id <= %(high)s AND id::text LIKE %(prefix)s || '%%'
ORDER BY id LIMIT 2;

-- name: session
SELECT s.*, NULL::text AS current_spec FROM sessions s WHERE s.id = %(session_id)s;

-- name: latest_session
-- What `ralph-query diff` compares by default: the session that started last among those with an
-- earlier session of the same name (a session with no name, say one `ralph-monitor emit` made, or
-- the first run of a new loop has nothing to compare with); when none has one, the session that
-- started last. The second branch runs only when the first finds nothing.
(SELECT s.*, NULL::text AS current_spec FROM sessions s
 WHERE EXISTS (SELECT FROM sessions p WHERE p.name = s.name AND p.start_time < s.start_time)
 ORDER BY s.start_time DESC LIMIT 1)
UNION ALL
(SELECT s.*, NULL::text AS current_spec FROM sessions s ORDER BY s.start_time DESC LIMIT 1)
LIMIT 1;

-- name: previous_session
-- The last session of the same name that started before `before` (ralph-query diff).
SELECT s.*, NULL::text AS current_spec FROM sessions s
WHERE s.name = %(name)s AND s.start_time < %(before)s
ORDER BY s.start_time DESC LIMIT 1;

-- name: previous_sessions_of
-- previous_session of each of the sessions `ids` that has one (the session pages).
SELECT s.id AS of_id, p.* FROM sessions s CROSS JOIN LATERAL (
    SELECT p.*, NULL::text AS current_spec FROM sessions p
    WHERE p.name = s.name AND p.start_time < s.start_time
    ORDER BY p.start_time DESC LIMIT 1) p
WHERE s.id = ANY(%(ids)s::uuid[]);

-- name: session_spec_runs
-- In queries.SpecRunRow's order (read without a dict per row).
SELECT id, session_id, spec_id, attempt, start_time, end_time, duration_seconds, status, outcome, tokens_used,
       cost_usd, error_message, output_summary, NULL::text AS session_name, value_problems, git, git_commits,
       git_files_changed, git_insertions, git_deletions, git_dirty
FROM spec_runs WHERE session_id = %(session_id)s
ORDER BY coalesce(start_time, end_time), spec_id, attempt;

-- name: session_timeline
-- The newest %(limit)s events of a session (all of them when limit is NULL), newest first, in
-- queries.TimelineEvent's columns.
-- The session is a range, and in the sort, for the reason given at recent_events_of_session.
-- `since`: the session's first_event_at (NULL: not known), so that only the partitions from
-- there on are planned.
SELECT id, event_id, event_type, spec_id, occurred_at, host, payload->'data' AS data
FROM events WHERE session_id >= %(session_id)s AND session_id <= %(session_id)s
  AND (%(since)s::timestamptz IS NULL OR occurred_at >= %(since)s)
ORDER BY session_id DESC, occurred_at DESC, id DESC
LIMIT %(limit)s;

-- name: session_interventions
SELECT event_id, spec_id, requested_at, message, answered_at, answer
FROM interventions WHERE session_id = %(session_id)s ORDER BY requested_at;

-- name: spec_history
SELECT r.*, s.name AS session_name FROM spec_runs r JOIN sessions s ON s.id = r.session_id
WHERE r.spec_id = %(spec_id)s
ORDER BY coalesce(r.start_time, r.end_time) DESC
LIMIT %(limit)s;

-- name: top_failing_specs
-- Specs with runs that failed or timed out since `since`: how many, and how their sessions
-- decided them (spec_runs.outcome of the last attempt, outcomes.py). Specs still failing
-- somewhere come first, then those that failed most often.
-- The ranking needs only the window's failed runs (an outcome of failed or timed_out is a last
-- attempt that failed: outcomes.py), counted with a hash; then, for the few specs shown, all
-- their runs in the window (spec_runs_spec_end_idx, migration 0014) and the last error.
WITH failing AS (
    SELECT spec_id, count(*) AS failures,
           count(*) FILTER (WHERE outcome = 'failed') AS failed,
           count(*) FILTER (WHERE outcome = 'timed_out') AS timed_out,
           max(end_time) AS last_failed_at
    FROM spec_runs
    WHERE end_time >= %(since)s AND status IN ('failed', 'timeout')
    GROUP BY spec_id
    ORDER BY count(*) FILTER (WHERE outcome IN ('failed', 'timed_out')) DESC, failures DESC, last_failed_at DESC
    LIMIT %(limit)s
)
SELECT f.spec_id, f.failures, a.runs, a.passed, a.fixed_on_retry, f.failed, f.timed_out, f.last_failed_at,
       (SELECT r.error_message FROM spec_runs r
        WHERE r.spec_id = f.spec_id AND r.end_time >= %(since)s AND r.status IN ('failed', 'timeout')
          AND r.error_message IS NOT NULL
        ORDER BY r.end_time DESC LIMIT 1) AS last_error
FROM failing f
CROSS JOIN LATERAL (
    SELECT count(*) AS runs, count(*) FILTER (WHERE r.outcome = 'passed') AS passed,
           count(*) FILTER (WHERE r.outcome = 'fixed_on_retry') AS fixed_on_retry
    FROM spec_runs r WHERE r.spec_id = f.spec_id AND r.end_time >= %(since)s) a
ORDER BY f.failed + f.timed_out DESC, f.failures DESC, f.last_failed_at DESC;

-- name: period_runs
-- Per period (queries._period_rows gives their bounds: period `period` runs from bounds[period]
-- to bounds[period + 1]): the specs decided in it by outcome (their last attempt ended in it:
-- outcomes.py) and every run that ended in it (retries cost too), with the duration sums that
-- let spend() add whole days up into today, this week and this month. Each period's whole
-- hours come from spec_run_totals_hourly (migration 0017), the quarter hours before its first
-- and after its last whole hour from spec_run_totals (0010), and what is left at its ends (now,
-- a historical offset, a window shorter than a quarter hour) from spec_runs: ~750 rows for a
-- month of local days in a whole-hour zone, ~3,000 in one 30 or 45 minutes off, whatever the
-- volume. Periods without runs are left out.
WITH p AS (
    SELECT i AS period, b[i] AS low, b[i + 1] AS high
    FROM (SELECT %(bounds)s::timestamptz[] AS b) AS a CROSS JOIN generate_subscripts(a.b, 1) AS i
    WHERE i < cardinality(a.b)
), q0 AS (
    SELECT period, low, high,
           date_bin('15 minutes', low - interval '1 microsecond', TIMESTAMPTZ '2000-01-01 00:00:00+00')
               + interval '15 minutes' AS qa,
           date_bin('15 minutes', high, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS qb
    FROM p
), q AS (  -- whole quarter hours [qa, qb), or none (qa = qb = high)
    SELECT period, low, high, CASE WHEN qa < qb THEN qa ELSE high END AS qa, CASE WHEN qa < qb THEN qb ELSE high END AS qb
    FROM q0
), h0 AS (
    SELECT period, low, high, qa, qb,
           date_bin('1 hour', qa - interval '1 microsecond', TIMESTAMPTZ '2000-01-01 00:00:00+00')
               + interval '1 hour' AS ha,
           date_bin('1 hour', qb, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hb
    FROM q
), h AS MATERIALIZED (  -- whole hours [ha, hb) within them, or none (ha = hb = qb); computed once a period
    SELECT period, low, high, qa, qb, CASE WHEN ha < hb THEN ha ELSE qb END AS ha, CASE WHEN ha < hb THEN hb ELSE qb END AS hb
    FROM h0
), ranges AS (
    SELECT h.period, r.source, r.low, r.high
    FROM h CROSS JOIN LATERAL (VALUES ('runs', h.low, h.qa), ('quarters', h.qa, h.ha), ('hours', h.ha, h.hb),
                                      ('quarters', h.hb, h.qb), ('runs', h.qb, h.high)) AS r(source, low, high)
    WHERE r.low < r.high
), parts AS (
    SELECT g.period, t.passed, t.fixed_on_retry, t.failed, t.timed_out, t.interrupted, t.runs, t.cost_usd,
           t.tokens_used, t.duration_sum, t.duration_count
    FROM ranges g JOIN spec_run_totals_hourly t ON t.period_start >= g.low AND t.period_start < g.high
    WHERE g.source = 'hours'
    UNION ALL
    SELECT g.period, t.passed, t.fixed_on_retry, t.failed, t.timed_out, t.interrupted, t.runs, t.cost_usd,
           t.tokens_used, t.duration_sum, t.duration_count
    FROM ranges g JOIN spec_run_totals t ON t.period_start >= g.low AND t.period_start < g.high
    WHERE g.source = 'quarters'
    UNION ALL
    SELECT g.period, (r.outcome = 'passed')::int, (r.outcome = 'fixed_on_retry')::int, (r.outcome = 'failed')::int,
           (r.outcome = 'timed_out')::int, (r.outcome = 'interrupted')::int, 1, coalesce(r.cost_usd, 0),
           coalesce(r.tokens_used, 0), coalesce(r.duration_seconds::numeric, 0), (r.duration_seconds IS NOT NULL)::int
    FROM ranges g JOIN spec_runs r ON r.end_time >= g.low AND r.end_time < g.high
    WHERE g.source = 'runs'
)
SELECT period, sum(passed)::bigint AS passed, sum(fixed_on_retry)::bigint AS fixed_on_retry,
       sum(failed)::bigint AS failed, sum(timed_out)::bigint AS timed_out, sum(interrupted)::bigint AS interrupted,
       sum(runs)::bigint AS runs, sum(cost_usd) AS cost_usd, sum(tokens_used)::bigint AS tokens_used,
       sum(duration_sum)::double precision AS duration_sum, sum(duration_count)::bigint AS duration_count
FROM parts
GROUP BY period HAVING sum(runs) > 0
ORDER BY period;

-- name: event_counts_per_bucket
-- From metric_buckets_time_count_idx alone, in its order (migration 0015).
SELECT bucket_time, sum(count)::bigint AS count FROM metric_buckets
WHERE bucket_time >= %(since)s
GROUP BY bucket_time ORDER BY bucket_time;

-- name: latest_event_of_type
-- The type is matched as a range on purpose. With "event_type = <type>" the planner drops the
-- type from the sort order, and the generic plan a long-lived connection settles on (psycopg
-- prepares the statement, PostgreSQL caches it) walks events_occurred_at_idx newest first
-- filtering for the type: every row of every partition for a once-a-day event such as
-- backup_completed (EXPLAIN: "Rows Removed by Filter" ~50,000 per partition, 700 ms for
-- `status`). Ordered by (event_type, occurred_at DESC), every plan reads the first entry of
-- events_type_occurred_at_idx in each partition instead (0.5 ms).
-- `since` (NULL: ever): only events from then on, so that only those days' partitions are
-- opened, even by the generic plan (pruned as it starts): a nightly event's latest is in the
-- last two days, and opening a month of partitions took 0.8 ms of the 1 ms.
SELECT occurred_at, host, payload->'data' AS data FROM events
WHERE event_type >= %(event_type)s AND event_type <= %(event_type)s
  AND occurred_at >= coalesce(%(since)s::timestamptz, '-infinity')
ORDER BY event_type, occurred_at DESC LIMIT 1;

-- name: reject_count_since
SELECT count(*) AS n FROM rejects WHERE received_at >= %(since)s;

-- name: export_events
SELECT id, event_id, event_type, session_id, spec_id, occurred_at, received_at, created_at, host,
       writer_uid, writer_pid, payload
FROM events WHERE occurred_at >= %(since)s AND occurred_at < %(until)s
ORDER BY occurred_at, id;

-- name: export_sessions
SELECT id, name, host, start_time, end_time, last_event_at, total_specs, specs_completed,
       specs_failed, specs_timed_out, specs_fixed_on_retry, execution_state, tokens_used, cost_usd, event_count,
       interventions_pending, final_result, metadata, paused_until
FROM sessions WHERE start_time >= %(since)s AND start_time < %(until)s
ORDER BY start_time, id;

-- name: export_spec_runs
SELECT id, session_id, spec_id, attempt, start_time, end_time, duration_seconds, status, outcome,
       tokens_used, cost_usd, error_message, output_summary, git_commits, git_files_changed, git_insertions,
       git_deletions, git_dirty, git
FROM spec_runs WHERE coalesce(start_time, end_time) >= %(since)s AND coalesce(start_time, end_time) < %(until)s
ORDER BY coalesce(start_time, end_time), id;

-- Maintenance: backups, restores, retention, doctor (backup.py, retention.py, doctor.py) ----

-- name: maintenance_user_tables
-- Every table a backup holds (a partitioned table stands for all its partitions).
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
ORDER BY 1, 2;

-- name: count_table_rows
SELECT count(*) FROM {table};

-- name: database_objects
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
ORDER BY 1, 2
LIMIT %(limit)s;

-- name: export_snapshot
SELECT pg_export_snapshot();

-- name: server_identity
SELECT current_setting('server_version_num')::int, current_database();

-- name: maintenance_try_lock
SELECT pg_try_advisory_lock(7262687);

-- name: maintenance_unlock
SELECT pg_advisory_unlock(7262687);

-- name: event_partition_tables
-- Daily event tables, attached or left detached by an interrupted prune.
SELECT c.relname,
       EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid AND i.inhparent = 'events'::regclass)
FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
  AND c.relname ~ '^events_[0-9]{8}$'
ORDER BY c.relname;

-- name: set_local_lock_timeout
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: detach_event_partition
ALTER TABLE events DETACH PARTITION {partition};

-- name: drop_detached_partition
DROP TABLE IF EXISTS {partition};

-- name: table_rows_json
SELECT row_to_json(t)::text FROM {table} t;

-- name: count_events_default_before
SELECT count(*) FROM events_default WHERE occurred_at < %(cutoff)s;

-- name: prune_events_default
-- Batched deletes find a batch through an index and delete it by ctid (a TID scan), so each
-- batch costs the same whatever the table's size (an IN (subquery) may hash-join the whole table).
DELETE FROM events_default WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM events_default WHERE occurred_at < %(cutoff)s LIMIT %(batch)s))
RETURNING row_to_json(events_default)::text;

-- name: count_event_ids_before
SELECT count(*) FROM event_ids WHERE occurred_at < %(cutoff)s;

-- name: prune_event_ids
-- Newest first below the cutoff, each batch starting where the previous one ended (upto):
-- the index entries of rows deleted earlier (dead until VACUUM, older than the day being
-- pruned) are stepped over once per prune, not once per batch.
WITH gone AS (
    DELETE FROM event_ids WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM event_ids
        WHERE occurred_at < %(cutoff)s AND occurred_at <= %(upto)s
        ORDER BY occurred_at DESC LIMIT %(batch)s))
    RETURNING occurred_at)
SELECT count(*), min(occurred_at) FROM gone;

-- name: count_prunable_sessions
WITH p AS (SELECT id FROM sessions
           WHERE execution_state <> 'running' AND coalesce(end_time, last_event_at) < %(cutoff)s)
SELECT (SELECT count(*) FROM p),
       (SELECT count(*) FROM spec_runs WHERE session_id IN (SELECT id FROM p)),
       (SELECT count(*) FROM interventions WHERE session_id IN (SELECT id FROM p));

-- name: prunable_session_ids
-- Never a running session, however old.
SELECT id FROM sessions
WHERE execution_state <> 'running' AND coalesce(end_time, last_event_at) < %(cutoff)s
ORDER BY id LIMIT %(batch)s
FOR UPDATE SKIP LOCKED;

-- name: prune_interventions_of
DELETE FROM interventions WHERE session_id = ANY(%(ids)s::uuid[]) RETURNING row_to_json(interventions)::text;

-- name: prune_spec_runs_of
DELETE FROM spec_runs WHERE session_id = ANY(%(ids)s::uuid[]) RETURNING row_to_json(spec_runs)::text;

-- name: prune_empty_spec_run_totals
-- After prune_spec_runs_of (whose trigger took the totals' advisory lock in this transaction):
-- the quarter hours and the hours (migration 0017) left without runs.
WITH quarters AS (DELETE FROM spec_run_totals WHERE runs = 0)
DELETE FROM spec_run_totals_hourly WHERE runs = 0;

-- name: prune_sessions_of
DELETE FROM sessions WHERE id = ANY(%(ids)s::uuid[]) RETURNING row_to_json(sessions)::text;

-- name: count_metric_buckets_before
SELECT count(*) FROM metric_buckets WHERE bucket_time < %(cutoff)s;

-- name: prune_metric_buckets
DELETE FROM metric_buckets WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM metric_buckets WHERE bucket_time < %(cutoff)s LIMIT %(batch)s))
RETURNING row_to_json(metric_buckets)::text;

-- name: count_rejects_before
SELECT count(*) FROM rejects WHERE received_at < %(cutoff)s;

-- name: prune_rejects
DELETE FROM rejects WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM rejects WHERE received_at < %(cutoff)s LIMIT %(batch)s))
RETURNING row_to_json(rejects)::text;

-- name: doctor_identity
SELECT current_user AS user, r.rolsuper AS superuser, current_database() AS database,
       current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       to_regclass('schema_migrations') IS NOT NULL AS migrations_table,
       to_regclass('events') IS NOT NULL AS events_table,
       CASE WHEN to_regclass('events') IS NOT NULL THEN has_table_privilege('events', 'INSERT') END
           AS can_insert_events
FROM pg_roles r WHERE r.rolname = current_user;

-- name: doctor_reader_roles
-- Roles that may read events but not write them (the read-only role for ralph-query).
SELECT r.rolname FROM pg_roles r
WHERE r.rolname !~ '^pg_' AND NOT r.rolsuper
  AND has_table_privilege(r.oid, 'events', 'SELECT')
  AND NOT has_table_privilege(r.oid, 'events', 'INSERT')
  AND has_database_privilege(r.oid, current_database(), 'CONNECT')
ORDER BY 1;

-- Dashboard (dashboard/render.py) ----------------------------------------------------------------

-- name: database_now
-- On a standby, what it has replayed up to (the primary's commit time), so a render on a
-- lagging replica does not skip what the primary committed but the replica has not replayed.
SELECT CASE WHEN pg_is_in_recovery() THEN least(now(), coalesce(pg_last_xact_replay_timestamp(), now()))
            ELSE now() END AS now;

-- name: sessions_changed_since
-- Sessions whose aggregate was recomputed at or after `since` (every session when it is NULL).
SELECT s.*, NULL::text AS current_spec FROM sessions s
WHERE %(since)s::timestamptz IS NULL OR s.updated_at >= %(since)s
ORDER BY s.start_time DESC;

-- name: sessions_active_since
-- Sessions whose activity ended at or after `since` (the dashboard's session pages: those whose
-- events are kept), newest first; sessions_activity_end_idx reads only those.
SELECT s.*, NULL::text AS current_spec FROM sessions s
WHERE coalesce(s.end_time, s.last_event_at) >= %(since)s
ORDER BY s.start_time DESC;

-- name: session_ids_active_since
SELECT s.id FROM sessions s WHERE coalesce(s.end_time, s.last_event_at) >= %(since)s;

-- name: spec_runs_of_sessions
-- In queries.SpecRunRow's order (read without a dict per row).
SELECT id, session_id, spec_id, attempt, start_time, end_time, duration_seconds, status, outcome, tokens_used,
       cost_usd, error_message, output_summary, NULL::text AS session_name, value_problems, git, git_commits,
       git_files_changed, git_insertions, git_deletions, git_dirty
FROM spec_runs WHERE session_id = ANY(%(ids)s::uuid[])
ORDER BY session_id, coalesce(start_time, end_time), spec_id, attempt;

-- name: timelines_of_sessions
-- The newest `limit` events per session, oldest first: every event for the sessions in `whole`,
-- otherwise without heartbeats and forwarded tool-level hook events (cc.*), read from the
-- index that holds just those (migration 0012: the two kinds of session are two branches, so
-- that the planner sees its predicate). `since`: the sessions' earliest first_event_at (NULL:
-- not known), so that only the partitions from there on are planned. queries.TimelineEvent's
-- columns in its order, then the session (read without a dict per row).
SELECT id, event_id, event_type, spec_id, occurred_at, host, data, session_id FROM (
    SELECT *, row_number() OVER (PARTITION BY session_id ORDER BY occurred_at DESC, id DESC) AS n FROM (
        SELECT id, event_id, event_type, session_id, spec_id, occurred_at, host, payload->'data' AS data
        FROM events
        WHERE session_id = ANY(%(whole)s::uuid[]) AND (%(since)s::timestamptz IS NULL OR occurred_at >= %(since)s)
        UNION ALL
        SELECT id, event_id, event_type, session_id, spec_id, occurred_at, host, payload->'data' AS data
        FROM events
        WHERE session_id = ANY(%(ids)s::uuid[]) AND NOT session_id = ANY(%(whole)s::uuid[])
          AND (%(since)s::timestamptz IS NULL OR occurred_at >= %(since)s)
          AND event_type <> 'session_heartbeat' AND event_type NOT LIKE 'cc.%%'
    ) e
) t
WHERE n <= %(limit)s
ORDER BY session_id, occurred_at, id;

-- name: interventions_of_sessions
SELECT event_id, session_id, spec_id, requested_at, message, answered_at, answer
FROM interventions WHERE session_id = ANY(%(ids)s::uuid[])
ORDER BY session_id, requested_at;

-- name: attempts_of_sessions
-- What spec results need of every spec run of these sessions (outcomes.Attempt).
SELECT session_id, spec_id, attempt, status, outcome, end_time, duration_seconds, tokens_used, cost_usd,
       error_message
FROM spec_runs WHERE session_id = ANY(%(ids)s::uuid[]);

-- name: night_attempts
-- Every attempt of the specs a night summary lists (queries.night_summary), among the sessions
-- active in the window: those whose last attempt ended in it failed, timed out or fixed on
-- retry (only a spec's last attempt has one of those outcomes), and those being tried now
-- (an attempt running: spec_runs_running_idx, migration 0016; night_summary keeps those whose
-- last attempt it is). Not the specs that simply passed: the summary counts them
-- (period_runs) and lists none, so a night reads a few dozen runs, not all of them.
WITH active AS (
    SELECT s.id FROM sessions s
    WHERE s.start_time < %(until)s AND coalesce(s.end_time, s.last_event_at) >= %(since)s
), listed AS (
    SELECT r.session_id, r.spec_id FROM spec_runs r
    WHERE r.end_time >= %(since)s AND r.end_time < %(until)s AND r.outcome IN ('failed', 'timed_out', 'fixed_on_retry')
      AND r.session_id IN (SELECT id FROM active)
    UNION
    SELECT r.session_id, r.spec_id FROM active a JOIN spec_runs r ON r.session_id = a.id WHERE r.status = 'running'
)
SELECT r.session_id, r.spec_id, r.attempt, r.status, r.outcome, r.end_time, r.duration_seconds, r.tokens_used,
       r.cost_usd, r.error_message
FROM listed l JOIN spec_runs r ON r.session_id = l.session_id AND r.spec_id = l.spec_id
ORDER BY r.id;

-- name: spec_ids_of_sessions
SELECT DISTINCT spec_id FROM spec_runs WHERE session_id = ANY(%(ids)s::uuid[]) ORDER BY spec_id;

-- name: all_spec_ids
SELECT DISTINCT spec_id FROM spec_runs ORDER BY spec_id;

-- name: spec_histories
-- Per spec: its runs that started (or ended) since `since` and at least its newest `at_least`,
-- at most `limit` (newest first; `since` NULL: the newest `limit`), plus how many runs and
-- failures it has in all, and how its sessions decided it (outcome of each last attempt,
-- outcomes.py). The totals are counted from spec_runs_spec_recent_idx alone, and only the
-- runs listed are read whole (a spec of a busy year has thousands of runs): the two ranges of
-- that index, the window's and the newest few, not its newest `limit`. A run's columns come in
-- queries.SpecRunRow's order (read without a dict per row), the totals on each spec's first row
-- only (a value to load costs as much as a short row).
WITH totals AS (
    SELECT spec_id, count(*) AS total_runs,
           count(*) FILTER (WHERE status IN ('failed', 'timeout')) AS total_failures,
           count(*) FILTER (WHERE outcome = 'passed') AS passed,
           count(*) FILTER (WHERE outcome = 'fixed_on_retry') AS fixed_on_retry,
           count(*) FILTER (WHERE outcome = 'failed') AS failed,
           count(*) FILTER (WHERE outcome = 'timed_out') AS timed_out
    FROM spec_runs WHERE spec_id = ANY(%(spec_ids)s::text[])
    GROUP BY spec_id
)
SELECT r.id, r.session_id, r.spec_id, r.attempt, r.start_time, r.end_time, r.duration_seconds, r.status, r.outcome,
       r.tokens_used, r.cost_usd, r.error_message, r.output_summary, s.name AS session_name, r.value_problems, r.git,
       r.git_commits, r.git_files_changed, r.git_insertions, r.git_deletions, r.git_dirty,
       CASE WHEN h.n = 1 THEN t.total_runs END AS total_runs, CASE WHEN h.n = 1 THEN t.total_failures END AS total_failures,
       CASE WHEN h.n = 1 THEN t.passed END AS passed, CASE WHEN h.n = 1 THEN t.fixed_on_retry END AS fixed_on_retry,
       CASE WHEN h.n = 1 THEN t.failed END AS failed, CASE WHEN h.n = 1 THEN t.timed_out END AS timed_out
FROM totals t
CROSS JOIN LATERAL (
    SELECT u.id, row_number() OVER (ORDER BY u.at DESC, u.id DESC) AS n
    FROM ((SELECT x.id, coalesce(x.start_time, x.end_time) AS at FROM spec_runs x
           WHERE x.spec_id = t.spec_id
             AND coalesce(x.start_time, x.end_time) >= coalesce(%(since)s::timestamptz, '-infinity')
           ORDER BY coalesce(x.start_time, x.end_time) DESC, x.id DESC LIMIT %(limit)s)
          UNION
          (SELECT x.id, coalesce(x.start_time, x.end_time) FROM spec_runs x WHERE x.spec_id = t.spec_id
           ORDER BY coalesce(x.start_time, x.end_time) DESC, x.id DESC LIMIT %(at_least)s)) u
    ORDER BY u.at DESC, u.id DESC
    LIMIT %(limit)s
) h
JOIN spec_runs r ON r.id = h.id
JOIN sessions s ON s.id = r.session_id
ORDER BY t.spec_id, h.n;

-- name: recent_failed_runs
SELECT r.*, s.name AS session_name FROM spec_runs r JOIN sessions s ON s.id = r.session_id
WHERE r.status IN ('failed', 'timeout') AND r.end_time IS NOT NULL
ORDER BY r.end_time DESC
LIMIT %(limit)s;

-- name: event_types_seen
-- Per type, by name: its events since `since` and since `anchor` (the dashboard notices new
-- events of a type by the second count changing between renders), from the 5-minute counts.
SELECT event_type, sum(count)::bigint AS count,
       coalesce(sum(count) FILTER (WHERE bucket_time >= %(anchor)s), 0)::bigint AS since_anchor
FROM metric_buckets
WHERE bucket_time >= %(since)s
GROUP BY event_type ORDER BY event_type;

-- Projector work queues without row locks: a recomputation reads the queue entry's version
-- and deletes the entry only if no writer bumped it meanwhile, so writers never wait for a
-- projector; projectors exclude each other per key with advisory locks.

-- name: dirty_sessions_batch
-- Sessions whose projection failed wait for their retry_at (projection_failures).
SELECT d.session_id, d.version FROM dirty_sessions d
WHERE NOT EXISTS (SELECT 1 FROM projection_failures f
                  WHERE f.session_id = d.session_id AND f.retry_at > now())
ORDER BY d.marked_at LIMIT %(limit)s;

-- name: record_projection_failure
-- Backoff doubles from 10 s per attempt, at most an hour.
INSERT INTO projection_failures AS f (session_id, error, retry_at)
VALUES (%(session_id)s, %(error)s, now() + interval '10 seconds')
ON CONFLICT (session_id) DO UPDATE SET
    error = EXCLUDED.error, attempts = f.attempts + 1, last_failed_at = now(),
    retry_at = now() + least(interval '1 hour', interval '10 seconds' * power(2, least(f.attempts, 20)));

-- name: clear_projection_failure
DELETE FROM projection_failures WHERE session_id = %(session_id)s;

-- name: clear_projection_failures
DELETE FROM projection_failures;

-- name: projection_failures
SELECT f.session_id, s.name AS session_name, f.error, f.attempts, f.first_failed_at,
       f.last_failed_at, f.retry_at
FROM projection_failures f LEFT JOIN sessions s ON s.id = f.session_id
ORDER BY f.first_failed_at
LIMIT %(limit)s;

-- name: projection_failure_count
SELECT count(*) AS failing, min(first_failed_at) AS since FROM projection_failures;

-- name: try_lock_projection
SELECT pg_try_advisory_xact_lock(hashtextextended(%(key)s, 7262686)) AS locked;

-- name: lock_projection
-- try_lock_projection's lock, waited for (its holders' transactions are short).
SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 7262686));

-- name: delete_dirty_session_version
DELETE FROM dirty_sessions WHERE session_id = %(session_id)s AND version = %(version)s;

-- name: dirty_buckets_batch
SELECT bucket_time, version FROM dirty_buckets ORDER BY bucket_time LIMIT %(limit)s;

-- name: delete_dirty_buckets_versions
DELETE FROM dirty_buckets d
USING unnest(%(buckets)s::timestamptz[], %(versions)s::bigint[]) AS v(bucket_time, version)
WHERE d.bucket_time = v.bucket_time AND d.version = v.version;

-- name: mark_dirty
-- One round trip for both queues; keys sorted so concurrent writers lock rows in one order.
WITH marked_sessions AS (
    INSERT INTO dirty_sessions (session_id)
    SELECT s FROM unnest(%(session_ids)s::uuid[]) AS s ORDER BY s
    ON CONFLICT (session_id) DO UPDATE SET version = dirty_sessions.version + 1, marked_at = now()
    RETURNING 1
)
INSERT INTO dirty_buckets (bucket_time)
SELECT b FROM unnest(%(buckets)s::timestamptz[]) AS b ORDER BY b
ON CONFLICT (bucket_time) DO UPDATE SET version = dirty_buckets.version + 1;

-- Alerts (alerts/, store alert side) -------------------------------------------------------------

-- name: alert_waiting_requests
SELECT i.event_id, i.session_id, i.spec_id, i.message, i.requested_at, s.name AS session_name
FROM interventions i JOIN sessions s ON s.id = i.session_id
WHERE i.answered_at IS NULL AND s.end_time IS NULL
  AND i.requested_at < now() - make_interval(secs => %(after_s)s)
  AND i.requested_at > now() - interval '2 days'
ORDER BY i.requested_at;

-- name: alert_stuck_sessions
-- Open loop-health episodes of sessions still going (an ended session's are history).
SELECT s.id, s.name, s.loop_findings FROM sessions s
WHERE s.execution_state IN ('running', 'stalled', 'waiting_for_human') AND s.loop_findings <> '[]'
  AND s.last_event_at > now() - interval '1 day';

-- name: flagged_sessions
-- Sessions a guard must stop: open loop-health episodes while going, or ended as stuck
-- (the daemon answers `session_flags` from these).
SELECT s.id, s.execution_state, s.loop_findings, s.final_result->>'reason' AS reason FROM sessions s
WHERE (s.execution_state IN ('running', 'stalled', 'waiting_for_human') AND s.loop_findings <> '[]'
       AND s.last_event_at > now() - interval '2 days')
   OR (s.execution_state = 'stuck' AND s.end_time > now() - interval '2 days');

-- name: alert_stalled_sessions
SELECT s.id, s.name, s.last_event_at,
       (SELECT r.spec_id FROM spec_runs r WHERE r.session_id = s.id ORDER BY r.start_time DESC NULLS LAST
        LIMIT 1) AS current_spec
FROM sessions s
WHERE s.execution_state = 'stalled' AND s.last_event_at > now() - interval '1 day';

-- name: alert_failed_sessions
SELECT s.id, s.name, s.specs_completed, s.specs_failed, s.specs_timed_out,
       ARRAY(SELECT DISTINCT r.spec_id FROM spec_runs r
             WHERE r.session_id = s.id AND r.status IN ('failed', 'timeout') ORDER BY 1) AS failed_specs
FROM sessions s
WHERE coalesce(s.end_time, s.last_event_at) > now() - interval '1 day'   -- sessions_activity_end_idx
  AND s.end_time > now() - interval '1 day' AND s.specs_failed > 0;

-- name: alert_costly_sessions
SELECT id, name, cost_usd, tokens_used FROM sessions
WHERE start_time > now() - interval '2 days'
  AND ((%(usd)s > 0 AND cost_usd > %(usd)s) OR (%(tokens)s > 0 AND tokens_used > %(tokens)s));

-- name: alert_spend_between
SELECT coalesce(sum(cost_usd), 0) AS cost_usd, coalesce(sum(tokens_used), 0)::bigint AS tokens_used
FROM spec_runs WHERE end_time >= %(start)s AND end_time < %(end)s;

-- name: alert_latest_backup
-- The newest of each type by events_type_occurred_at_idx (see latest_event_of_type), then the
-- newer of the two: "IN (...) ORDER BY occurred_at" walked every partition (37 ms at 1/20 of
-- the benchmark's volume). Backups run nightly: the last 2 days' partitions hold the latest.
SELECT event_type FROM (
    (SELECT event_type, occurred_at FROM events
     WHERE event_type >= 'backup_completed' AND event_type <= 'backup_completed'
       AND occurred_at > now() - interval '2 days'
     ORDER BY event_type, occurred_at DESC LIMIT 1)
    UNION ALL
    (SELECT event_type, occurred_at FROM events
     WHERE event_type >= 'backup_failed' AND event_type <= 'backup_failed'
       AND occurred_at > now() - interval '2 days'
     ORDER BY event_type, occurred_at DESC LIMIT 1)
) AS latest
ORDER BY occurred_at DESC LIMIT 1;

-- name: open_alerts
SELECT id, rule, subject FROM alerts WHERE resolved_at IS NULL;

-- name: alerts_ever_fired
-- Which of these (rule, subject) pairs fired before: one round trip for every one-shot
-- condition of a pass (a night's failed sessions each are one).
SELECT DISTINCT a.rule, a.subject FROM alerts a
JOIN unnest(%(rules)s::text[], %(subjects)s::text[]) AS k(rule, subject)
  ON a.rule = k.rule AND a.subject = k.subject;

-- name: insert_alert
INSERT INTO alerts (rule, subject, title, body, link, session_id, resolved_at)
VALUES (%(rule)s, %(subject)s, %(title)s, %(body)s, %(link)s, %(session_id)s,
        CASE WHEN %(one_shot)s THEN now() END)
ON CONFLICT (rule, subject) WHERE resolved_at IS NULL DO NOTHING
RETURNING id;

-- name: resolve_alert
UPDATE alerts SET resolved_at = now() WHERE id = %(id)s AND resolved_at IS NULL
RETURNING title, body, link;

-- name: insert_alert_message
INSERT INTO alert_messages (alert_id, kind, destination, title, body, body_format)
VALUES (%(alert_id)s, %(kind)s, %(destination)s, %(title)s, %(body)s, %(body_format)s)
RETURNING id;

-- name: claim_alert_messages
-- A lease: a daemon that dies while sending leaves the message to be retried when it ends.
UPDATE alert_messages m SET attempts = m.attempts + 1, next_attempt_at = now() + make_interval(secs => %(lease_s)s)
WHERE m.id IN (SELECT id FROM alert_messages
               WHERE sent_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= now()
               ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING m.id, m.alert_id, m.kind, m.destination, m.title, m.body, m.body_format, m.attempts, m.created_at,
          (SELECT a.rule FROM alerts a WHERE a.id = m.alert_id) AS rule,
          (SELECT a.subject FROM alerts a WHERE a.id = m.alert_id) AS subject,
          (SELECT a.link FROM alerts a WHERE a.id = m.alert_id) AS link,
          (SELECT a.session_id FROM alerts a WHERE a.id = m.alert_id) AS session_id;

-- name: alert_message_sent
UPDATE alert_messages SET sent_at = now(), last_error = NULL WHERE id = %(id)s;

-- name: alert_message_failed
-- Backoff: [alerts] retry_after_s, doubling, at most an hour; given up once older than
-- [alerts] give_up_after_h.
UPDATE alert_messages SET last_error = %(error)s,
    next_attempt_at = now() + least(interval '1 hour',
                                    make_interval(secs => %(retry_s)s) * power(2, least(attempts - 1, 10))),
    gave_up_at = CASE WHEN created_at < now() - make_interval(secs => %(give_up_s)s) OR %(give_up)s
                      THEN now() END
WHERE id = %(id)s;

-- name: recent_alerts
SELECT a.id, a.rule, a.subject, a.title, a.body, a.link, a.session_id, a.fired_at, a.resolved_at,
       coalesce(jsonb_agg(jsonb_build_object(
           'kind', m.kind, 'destination', m.destination, 'sent_at', m.sent_at, 'attempts', m.attempts,
           'last_error', m.last_error, 'gave_up_at', m.gave_up_at, 'next_attempt_at', m.next_attempt_at)
           ORDER BY m.id) FILTER (WHERE m.id IS NOT NULL), '[]') AS messages
FROM alerts a LEFT JOIN alert_messages m ON m.alert_id = a.id
WHERE a.fired_at > %(since)s
GROUP BY a.id
ORDER BY a.fired_at DESC
LIMIT %(limit)s;

-- name: budget_session_spend
SELECT name, cost_usd, tokens_used FROM sessions WHERE id = %(session_id)s;

-- name: git_runs_between
-- Spec runs that ended in a window and recorded what they changed in git (the night's changes).
SELECT r.*, s.name AS session_name FROM spec_runs r JOIN sessions s ON s.id = r.session_id
WHERE r.end_time >= %(since)s AND r.end_time < %(until)s AND r.git_commits IS NOT NULL
ORDER BY r.end_time, r.id;
