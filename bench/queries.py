#!/usr/bin/env python3
"""Query benchmark: every function of the query layer (src/ralph_monitor/queries.py) timed
at 10x the design note's volume (or --scale N: N times it), against the design note's figures.

    python bench/queries.py [--scale 10] [--repeats 7] [--warmup 10] [--explain] [--keep | --reuse DIR]
    python bench/queries.py --scale 100 --keep        # 100x: ~20 min to build, ~15 GB under /tmp
    python bench/queries.py --compare A.json B.json   # two runs' tables side by side (10x | 100x)

--scale is a multiple of the design note's volume (365 sessions a year, 150,000 events kept
over 30 days): 10 (the default) is what the design note calls 10x, 100 is 100x. The data grows
with it (sessions a day, spec runs, events); the time spans stay (a year of sessions, 30 days
of events), so a query over a window (last night, this week, the last 100 events) reads more
rows only where the window itself holds more.

Data (built with SQL on a private cluster under /tmp, then VACUUM ANALYZE), at --scale 10:
  sessions       ~3,650 over one year (10 a day, 1-10 h each, 20-80 specs each, ~5% failed,
                 the newest few still running), ~10% with an intervention request
  spec_runs      ~180,000 (85% completed, 11% failed, 4% timeout, 6% of runs a retry: attempt 2)
  events         1.5 M over the last 30 days, consistent with the sessions and spec runs that
                 started in those days (older sessions' events were pruned): ~61% cc.PreToolUse /
                 cc.PostToolUse (200-600 byte payloads), ~22% heartbeats, ~15% other cc.* hook
                 events, spec_started / completed / failed / timeout_triggered, session_started /
                 ended, intervention_request / user_feedback, a daily backup_completed /
                 prune_completed; one daily partition per day, rows in time order
  metric_buckets 5-minute buckets for every event (computed as the projector does)
A few recent sessions are re-projected from their events with the daemon's own projection code
and compared with the generated rows (the data is what live maintenance would have written).

The "loop" row times what the loop-health rules (loop_health.py) add to one projector pass at
this volume: for each session a pass would recompute (the running ones, at most a pass's 50;
at least the latest one),
the query of its recent hook events (session_recent_activity) and the rules themselves; the
closing events they also read come with the projection's own query, which is not counted.

Timing: each row calls a query-layer function through a read-only ReadStore (what the CLI
and the dashboard do: SQL, transfer, and building the dataclasses), --warmup times first
(so the server's plan cache has settled on the plan a long-lived connection keeps: psycopg
prepares a statement on its 5th execution and PostgreSQL may switch to a generic plan
after 5 more), then --repeats times; median and p95 (nearest rank) in ms. Targets (design
note, PRODUCT.md "Performance targets"): last 100 events < 10 ms, session summary < 20 ms,
compare two sessions / weeks < 50 ms, dashboard metrics < 5 ms; one pass of the alert rules
(the issue "Wake-up") < 5 ms. Rows marked "info" have no
target of their own; the "new connection" rows show what one `ralph-query` run pays on top
(a new backend plans its first query on `events` with cold catalog caches: ~40 partitions).

Before each row it waits (--quiet-wait) for the machine to be nearly idle; "other%" is the CPU
that everything else on the machine used while the row was timed (% of one core; this script
and PostgreSQL excluded): where it is high, that row's figures are noise.

The exit status is non-zero only when the generated data is inconsistent (the projection
check); rows that miss their target are marked FAIL in the table.

--explain prints EXPLAIN (ANALYZE, BUFFERS) of every named query behind each row that misses
its target (--explain-all: behind every row). --keep keeps the cluster; --reuse DIR runs on a
kept cluster without rebuilding the data (pending migrations are applied first, so a new
index can be compared on the same data).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, time as dtime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from ingest import children_cpu, system_busy, wait_quiet  # noqa: E402
from ralph_monitor import loop_health, queries, resources  # noqa: E402
from ralph_monitor.cluster import Cluster  # noqa: E402
from ralph_monitor.config import Settings  # noqa: E402
from ralph_monitor.projections import ACTIVITY_TYPES, SPEC_TERMINAL, project_session  # noqa: E402
from ralph_monitor.store import AlertStore, ReadStore, ensure_database, migrate, open_read_store  # noqa: E402
from ralph_monitor.store.projection import ACTIVITY_LIMIT, ACTIVITY_WINDOW, project_one  # noqa: E402
from ralph_monitor.store.events import PARTITION_DAYS_AHEAD, PARTITION_DAYS_BEHIND  # noqa: E402

DBNAME = "bench"
SESSIONS_PER_YEAR = 365
"""The design note's volume (--scale 1); the default scale is 10."""
EVENTS = 150_000
EVENT_DAYS = 30
HEARTBEAT_SHARE = 0.22
"""Share of all events that are heartbeats; the heartbeat interval is derived from it."""

TARGETS = {"events": 10.0, "summary": 20.0, "compare": 50.0, "dashboard": 5.0, "alerts": 5.0, "loop": 5.0,
           "info": None}
WINDOW_ROWS = ("recent_events limit 100", "recent_events --since 8h --type spec_failed", "sessions_since 7d",
               "compare_weeks", "spend (today/week/month + 30 days)", "top_failing_specs 7d", "night_summary",
               "event_counts 24h", "outcomes (one week)", "active_sessions", "pending_interventions",
               "dashboard: sessions_changed_since 1 min", "dashboard: recent_failed_runs 10")
"""Rows that read a window of time or the newest rows (last night, this week, the last 100
events): --compare checks that each stays within WINDOW_GROWTH between two scales."""
WINDOW_GROWTH = 1.5
TARGET_NAMES = {"events": "last 100 events", "summary": "session summary",
                "compare": "compare two sessions / weeks", "dashboard": "dashboard metrics",
                "alerts": "one alert evaluation pass", "loop": "loop-health rules per pass", "info": "-"}


# ---------------------------------------------------------------------------- data

def q(value: Any) -> str:
    """A SQL literal for one of our own values (numbers, timestamps, strings without quotes)."""
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, str):
        assert "'" not in value
        return f"'{value}'"
    return repr(value)


PLAN_SQL = """
SELECT setseed({seed});
DROP TABLE IF EXISTS bench_sessions, bench_runs, bench_interventions, bench_stage, bench_meta;
CREATE TABLE bench_meta AS SELECT {now} AS now, {scale} AS scale;

-- Sessions: `count` over the year before `now`, newest first (n = 0 started in the last hours):
-- ten loops, each run once a day on its own 40 specs (so a session has a previous run of its
-- name to compare with, as `ralph-query diff` does).
CREATE UNLOGGED TABLE bench_sessions AS
SELECT n, md5('session-' || n)::uuid AS id,
       'loop ' || mod(n, 10) AS name,
       'host-' || chr(97 + mod(n, 3)) AS host,
       {now} - make_interval(secs => {span_s} * (n + random()) / {count}) AS start_time,
       3600 + random() * 9 * 3600 AS planned_s,
       20 + floor(random() * 61)::int AS n_specs,
       mod(n, 10) * 40 AS spec_base,
       random() < 0.05 AS fails,
       mod(n, 10) = 3 OR n < 3 AS asks
FROM generate_series(0, {count} - 1) AS n;
ALTER TABLE bench_sessions
    ADD COLUMN end_time timestamptz, ADD COLUMN state text;
UPDATE bench_sessions SET
    end_time = CASE WHEN start_time + make_interval(secs => planned_s + 10) <= {now}
                    THEN start_time + make_interval(secs => planned_s + 10) END;
UPDATE bench_sessions SET state = CASE WHEN end_time IS NULL THEN 'running'
                                       WHEN fails THEN 'failed' ELSE 'completed' END;

-- Spec runs, one after the other in each session; a retry (attempt 2) follows a failure.
CREATE UNLOGGED TABLE bench_runs AS
WITH r AS (
    SELECT s.id AS session_id, s.n, k, s.spec_base,
           s.start_time + make_interval(secs => 5 + s.planned_s * (k - 1) / s.n_specs) AS start_time,
           s.planned_s / s.n_specs AS slot_s,
           random() AS u_status, random() AS u_len, random() AS u_tok,
           (k > 1 AND random() < 0.06) AS retry
    FROM bench_sessions s CROSS JOIN LATERAL generate_series(1, s.n_specs) AS k
), r2 AS (
    SELECT *, k - sum(retry::int) OVER w AS spec_idx, coalesce(lead(retry) OVER w, false) AS retried
    FROM r WINDOW w AS (PARTITION BY session_id ORDER BY k)
), r3 AS (
    SELECT *, CASE WHEN retried THEN 'failed' WHEN u_status < 0.85 THEN 'completed'
                   WHEN u_status < 0.96 THEN 'failed' ELSE 'timeout' END AS outcome,
              start_time + make_interval(secs => CASE WHEN u_status >= 0.96 AND NOT retried
                                                      THEN slot_s * 0.97
                                                      ELSE slot_s * (0.3 + 0.65 * u_len) END) AS planned_end
    FROM r2
)
SELECT (row_number() OVER (ORDER BY start_time))::bigint AS id, session_id, n, k,
       'CR-' || lpad((mod(spec_base + spec_idx, 400) + 1)::text, 3, '0') AS spec_id,
       (row_number() OVER (PARTITION BY session_id, spec_idx ORDER BY k))::int AS attempt,
       start_time,
       CASE WHEN planned_end <= {now} THEN planned_end END AS end_time,
       CASE WHEN planned_end <= {now} THEN outcome ELSE 'running' END AS status,
       CASE WHEN planned_end <= {now} THEN (2000 + u_tok * 150000)::bigint END AS tokens,
       CASE WHEN planned_end <= {now} THEN round((2000 + u_tok * 150000)::bigint * 0.000015, 6) END AS cost,
       CASE WHEN planned_end > {now} THEN NULL
            WHEN outcome = 'failed' THEN 'pytest: ' || (1 + mod(k, 7)) || ' failed in tests/test_'
                 || lower(replace('CR-' || (mod(spec_base + spec_idx, 400) + 1), '-', '_'))
                 || '.py: AssertionError: expected ' || mod(n * k, 97) || ' got ' || mod(n + k, 89)
            WHEN outcome = 'timeout' THEN 'no progress for ' || round(slot_s * 0.97) || ' s' END AS error,
       CASE WHEN planned_end <= {now} AND outcome = 'completed'
            THEN jsonb_build_object('files_changed', 1 + mod(n + k, 12), 'tests_passed', mod(n * k, 300)) END
           AS output_summary
FROM r3
WHERE start_time <= {now};

-- Interventions: one in ~10% of sessions (answered 5 minutes later), and an open one in each
-- running session that asks.
CREATE UNLOGGED TABLE bench_interventions AS
SELECT DISTINCT ON (s.n) md5('intervention-' || s.n)::uuid AS event_id, s.id AS session_id, r.spec_id,
       r.start_time + interval '20 seconds' AS requested_at,
       'Spec ' || r.spec_id || ' wants to change the public API of module ' || mod(s.n, 40)
           || ': proceed, or skip the spec?' AS message,
       CASE WHEN s.end_time IS NOT NULL THEN r.start_time + interval '320 seconds' END AS answered_at,
       CASE WHEN s.end_time IS NOT NULL THEN 'proceed, keep the old name as an alias' END AS answer
FROM bench_sessions s JOIN bench_runs r ON r.session_id = s.id
WHERE s.asks AND r.start_time + interval '20 seconds' <= {now}
ORDER BY s.n, (r.status = 'running') DESC, r.k;

"""

STAGE_SQL = """
-- Every event of the last {days} days, compactly (payloads are built per day below).
CREATE UNLOGGED TABLE bench_stage AS
WITH s AS (SELECT * FROM bench_sessions WHERE start_time >= {cutoff}),
     r AS (SELECT r.*, extract(epoch FROM coalesce(r.end_time, {now}) - r.start_time) AS dur_s
           FROM bench_runs r JOIN s ON s.id = r.session_id)
SELECT s.start_time AS t, 'session_started' AS type, s.id AS session_id, NULL::text AS spec_id,
       NULL::bigint AS run_id, NULL::uuid AS event_id, 0 AS g
FROM s
UNION ALL
SELECT s.end_time, 'session_ended', s.id, NULL, NULL, NULL, 0 FROM s WHERE s.end_time IS NOT NULL
UNION ALL
SELECT t, 'session_heartbeat', s.id, NULL, NULL, NULL, 0
FROM s CROSS JOIN LATERAL generate_series(s.start_time + make_interval(secs => {heartbeat_s}),
                                          coalesce(s.end_time, {now}), make_interval(secs => {heartbeat_s})) AS t
UNION ALL
SELECT r.start_time, 'spec_started', r.session_id, r.spec_id, r.id, NULL, 0 FROM r
UNION ALL
SELECT r.end_time, CASE r.status WHEN 'completed' THEN 'spec_completed' WHEN 'failed' THEN 'spec_failed'
                                 ELSE 'timeout_triggered' END,
       r.session_id, r.spec_id, r.id, NULL, 0
FROM r WHERE r.end_time IS NOT NULL
UNION ALL
-- Hook events while a spec runs: 80% tool use (PreToolUse then PostToolUse), 20% others.
SELECT r.start_time + make_interval(secs => r.dur_s * (g - 0.9 + 0.8 * random()) / f.n),
       CASE WHEN mod(g, 20) < 16 THEN CASE WHEN mod(g, 2) = 0 THEN 'cc.PreToolUse' ELSE 'cc.PostToolUse' END
            ELSE (ARRAY['cc.Notification', 'cc.UserPromptSubmit', 'cc.Stop', 'cc.SubagentStop'])[mod(g, 20) - 15]
       END,
       r.session_id, r.spec_id, r.id, NULL, g
FROM r CROSS JOIN LATERAL (SELECT greatest(1, round(r.dur_s * {fill_per_s}))::int AS n) AS f
       CROSS JOIN LATERAL generate_series(1, f.n) AS g
UNION ALL
SELECT i.requested_at, 'intervention_request', i.session_id, i.spec_id, NULL, i.event_id, 0
FROM bench_interventions i JOIN s ON s.id = i.session_id
UNION ALL
SELECT i.answered_at, 'user_feedback', i.session_id, i.spec_id, NULL, i.event_id, 1
FROM bench_interventions i JOIN s ON s.id = i.session_id WHERE i.answered_at IS NOT NULL
UNION ALL
SELECT d + interval '3 hours', 'backup_completed', NULL, NULL, NULL, NULL, 0
FROM generate_series(date_trunc('day', {cutoff}) + interval '1 day', {now}, interval '1 day') AS d
WHERE d + interval '3 hours' <= {now}
UNION ALL
SELECT d + interval '3 hours 5 minutes', 'prune_completed', NULL, NULL, NULL, NULL, 0
FROM generate_series(date_trunc('day', {cutoff}) + interval '1 day', {now}, interval '1 day') AS d
WHERE d + interval '3 hours 5 minutes' <= {now};
DELETE FROM bench_stage WHERE t > {now} OR t < {cutoff};
CREATE INDEX ON bench_stage (t);
ANALYZE bench_stage;
"""

DAY_SQL = """
INSERT INTO {table} (event_id, event_type, session_id, spec_id, occurred_at, received_at, created_at,
                     host, writer_uid, writer_pid, payload)
SELECT CASE WHEN st.type = 'intervention_request' THEN st.event_id ELSE gen_random_uuid() END, st.type, st.session_id, st.spec_id, st.t,
       st.t + interval '2 milliseconds', st.t + interval '9 milliseconds',
       coalesce(s.host, 'host-a'), 1000, 2000 + mod(coalesce(s.n, 0), 5000),
       jsonb_strip_nulls(jsonb_build_object(
           'type', st.type, 'session_id', st.session_id, 'spec_id', st.spec_id,
           'ts', to_char(st.t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           'data', CASE st.type
    WHEN 'cc.PreToolUse' THEN jsonb_build_object(
        'tool_name', (ARRAY['Bash', 'Edit', 'Read', 'Write', 'Grep', 'Glob'])[1 + mod(st.g / 2, 6)],
        'tool_input', jsonb_build_object(
            'command', 'cd /home/ralph/work && ' || substr(repeat(md5(st.g::text || st.spec_id) || ' src/ralph/', 12),
                                                          1, 60 + mod(st.g * 37, 300))))
    WHEN 'cc.PostToolUse' THEN jsonb_build_object(
        'tool_name', (ARRAY['Bash', 'Edit', 'Read', 'Write', 'Grep', 'Glob'])[1 + mod(st.g / 2, 6)],
        'duration_ms', mod(st.g * 7919, 30000),
        'tool_response', jsonb_build_object(
            'exit_code', (mod(st.g, 9) = 0)::int,
            'stdout', substr(repeat('ok ' || md5(st.g::text) || E'\n', 12), 1, 40 + mod(st.g * 53, 300))))
    WHEN 'session_heartbeat' THEN jsonb_build_object('rss_mb', 200 + mod(extract(epoch FROM st.t)::bigint, 300),
                                                    'load', round((mod(extract(epoch FROM st.t)::bigint, 400) / 100.0), 2))
    WHEN 'session_started' THEN jsonb_build_object(
        'name', s.name, 'total_specs', s.n_specs,
        'metadata', jsonb_build_object('repo', 'ralph-orchestrator', 'branch', 'night/' || s.n, 'model', 'claude'))
    WHEN 'session_ended' THEN jsonb_build_object('status', s.state, 'specs_total', s.n_specs,
                                                 'duration_s', round(s.planned_s))
    WHEN 'spec_started' THEN jsonb_build_object('attempt', r.attempt, 'title', 'Implement ' || r.spec_id)
    WHEN 'spec_completed' THEN jsonb_build_object('tokens_used', r.tokens, 'cost_usd', r.cost,
        'duration_s', round(extract(epoch FROM r.end_time - r.start_time), 3), 'output_summary', r.output_summary)
    WHEN 'spec_failed' THEN jsonb_build_object('tokens_used', r.tokens, 'cost_usd', r.cost,
        'duration_s', round(extract(epoch FROM r.end_time - r.start_time), 3), 'error', r.error)
    WHEN 'timeout_triggered' THEN jsonb_build_object('tokens_used', r.tokens, 'cost_usd', r.cost,
        'duration_s', round(extract(epoch FROM r.end_time - r.start_time), 3), 'reason', r.error)
    WHEN 'intervention_request' THEN jsonb_build_object('message', i.message)
    WHEN 'user_feedback' THEN jsonb_build_object('request_id', i.event_id, 'message', i.answer)
    WHEN 'backup_completed' THEN jsonb_build_object('file', 'ralph-' || to_char(st.t, 'YYYYMMDD') || '.dump',
                                                    'bytes', 123456789)
    WHEN 'prune_completed' THEN jsonb_build_object('dropped_partitions', 1)
    ELSE jsonb_build_object('message', substr(repeat(md5(st.g::text) || ' ', 8), 1, 40 + mod(st.g * 31, 200)))
    END))
FROM bench_stage st
LEFT JOIN bench_sessions s ON s.id = st.session_id
LEFT JOIN bench_runs r ON r.id = st.run_id
LEFT JOIN bench_interventions i ON i.event_id = st.event_id AND st.type IN ('intervention_request', 'user_feedback')
WHERE st.t >= {low} AND st.t < {high}
ORDER BY st.t
"""

FINISH_SQL = """
-- Each run's outcome, as src/ralph_monitor/outcomes.py gives it (the last attempt decides the spec).
ALTER TABLE bench_runs ADD COLUMN outcome text;
WITH specs AS (
    SELECT session_id, spec_id, max(attempt) AS last_attempt, bool_or(status IN ('failed', 'timeout')) AS any_failure
    FROM bench_runs GROUP BY session_id, spec_id
), decided AS (
    SELECT s.session_id, s.spec_id, s.last_attempt,
           CASE r.status WHEN 'completed' THEN CASE WHEN s.any_failure THEN 'fixed_on_retry' ELSE 'passed' END
                         WHEN 'failed' THEN 'failed' WHEN 'timeout' THEN 'timed_out' WHEN 'running' THEN 'running'
                         ELSE 'interrupted' END AS outcome
    FROM specs s JOIN bench_runs r ON r.session_id = s.session_id AND r.spec_id = s.spec_id AND r.attempt = s.last_attempt
)
UPDATE bench_runs r
SET outcome = CASE WHEN r.attempt = d.last_attempt THEN d.outcome
                   WHEN d.outcome IN ('passed', 'fixed_on_retry') THEN 'later_passed' ELSE 'retried' END
FROM decided d WHERE d.session_id = r.session_id AND d.spec_id = r.spec_id;

-- Sessions, with the aggregates the projection computes (final attempt per spec counts).
WITH counts AS (
    SELECT session_id, count(*) FILTER (WHERE outcome IN ('passed', 'fixed_on_retry')) AS completed,
           count(*) FILTER (WHERE outcome IN ('failed', 'timed_out')) AS failed,
           count(*) FILTER (WHERE outcome = 'timed_out') AS timed_out,
           count(*) FILTER (WHERE outcome = 'fixed_on_retry') AS fixed
    FROM bench_runs GROUP BY session_id
), sums AS (
    SELECT session_id, coalesce(sum(tokens), 0) AS tokens, coalesce(sum(cost), 0) AS cost
    FROM bench_runs GROUP BY session_id
), activity AS (
    SELECT session_id, count(*) AS n, min(t) AS first_at, max(t) AS last_at FROM bench_stage
    WHERE session_id IS NOT NULL GROUP BY session_id
), pending AS (
    SELECT session_id, count(*) AS n FROM bench_interventions WHERE answered_at IS NULL GROUP BY session_id
), waiting AS (
    -- An open request that nothing answered since: no sign that the agent went on (projections.py).
    SELECT i.session_id, min(i.requested_at) AS since FROM bench_interventions i
    WHERE i.answered_at IS NULL AND NOT EXISTS (
        SELECT FROM bench_stage x WHERE x.session_id = i.session_id AND x.t > i.requested_at
          AND x.type IN ('cc.PreToolUse', 'cc.PostToolUse', 'cc.UserPromptSubmit', 'cc.Stop', 'spec_started',
                         'user_feedback', 'spec_completed', 'spec_failed', 'timeout_triggered'))
    GROUP BY i.session_id
)
INSERT INTO sessions (id, name, host, start_time, end_time, last_event_at, total_specs, specs_completed,
                      specs_failed, specs_timed_out, specs_fixed_on_retry, execution_state, tokens_used, cost_usd,
                      event_count, interventions_pending, final_result, metadata, updated_at, waiting_since,
                      first_event_at)
SELECT s.id, s.name, s.host, s.start_time, s.end_time,
       coalesce(a.last_at, s.end_time, {now}), s.n_specs,
       coalesce(c.completed, 0), coalesce(c.failed, 0), coalesce(c.timed_out, 0), coalesce(c.fixed, 0),
       CASE WHEN s.state = 'running' AND w.since IS NOT NULL THEN 'waiting_for_human' ELSE s.state END,
       coalesce(u.tokens, 0), coalesce(u.cost, 0),
       coalesce(a.n, round(s.planned_s / {heartbeat_s} + s.planned_s * {fill_per_s}) + 2 * s.n_specs + 2),
       CASE WHEN s.end_time IS NULL THEN coalesce(p.n, 0) ELSE 0 END,
       CASE WHEN s.end_time IS NOT NULL
            THEN jsonb_build_object('status', s.state, 'specs_total', s.n_specs, 'duration_s', round(s.planned_s)) END,
       jsonb_build_object('repo', 'ralph-orchestrator', 'branch', 'night/' || s.n, 'model', 'claude'),
       coalesce(s.end_time, {now}), CASE WHEN s.state = 'running' THEN w.since END, a.first_at
FROM bench_sessions s
LEFT JOIN waiting w ON w.session_id = s.id
LEFT JOIN counts c ON c.session_id = s.id
LEFT JOIN sums u ON u.session_id = s.id
LEFT JOIN activity a ON a.session_id = s.id
LEFT JOIN pending p ON p.session_id = s.id
ORDER BY s.start_time;

-- Spec runs, in time order (as the projector would have written them).
INSERT INTO spec_runs (session_id, spec_id, attempt, start_time, end_time, duration_seconds, status, outcome,
                       tokens_used, cost_usd, error_message, output_summary)
SELECT session_id, spec_id, attempt, start_time, end_time,
       extract(epoch FROM end_time - start_time)::double precision, status, outcome, tokens, cost, error,
       output_summary
FROM bench_runs ORDER BY id;

INSERT INTO interventions (event_id, session_id, spec_id, requested_at, message, answered_at, answer)
SELECT event_id, session_id, spec_id, requested_at, message, answered_at, answer
FROM bench_interventions ORDER BY requested_at;

-- 5-minute buckets for every event, as recompute_buckets_insert computes them.
INSERT INTO metric_buckets (bucket_time, event_type, count, avg_duration_seconds)
SELECT date_bin('5 minutes', e.occurred_at, TIMESTAMPTZ '2000-01-01 00:00:00+00'), e.event_type, count(*),
       avg((e.payload->'data'->>'duration_s')::double precision)
           FILTER (WHERE jsonb_typeof(e.payload->'data'->'duration_s') = 'number')
FROM events e GROUP BY 1, 2 ORDER BY 1, 2;

INSERT INTO rejects (reject_id, received_at, host, writer_uid, writer_pid, reason, detail, line_bytes, excerpt)
SELECT md5('reject-' || g)::uuid, {now} - make_interval(secs => g * 7200), 'host-' || chr(97 + mod(g, 3)), 1000,
       3000 + g, 'invalid_json', 'line is not a JSON object', 80 + g, '{{"type": "spec_started", "spec' || g
FROM generate_series(1, 360) AS g;

INSERT INTO monitor_hosts (host, version, started_at, last_seen, events_total, rejects_total, spool_backlog,
                           spooled_total, ingest_rate_per_s)
SELECT 'host-' || chr(97 + g), '0.1.0', {now} - interval '9 days', {now} - interval '20 seconds',
       500000, 120, 0, 0, 3.5
FROM generate_series(0, 2) AS g;

DROP TABLE bench_stage;
"""


def build(dsn: str, scale: float, now: datetime, seed: float) -> dict[str, Any]:
    """Fill a migrated, empty database; returns a few facts about what was built."""
    sessions = max(30, round(SESSIONS_PER_YEAR * scale))
    events_target = round(EVENTS * scale)
    cutoff = now - timedelta(days=EVENT_DAYS)
    timings: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET work_mem = '256MB'")
        conn.execute("SET maintenance_work_mem = '512MB'")
        started = time.monotonic()
        conn.execute(PLAN_SQL.format(seed=seed, now=q(now), scale=scale, count=sessions, span_s=365 * 86400))
        timings["plan"] = time.monotonic() - started

        # Rates that give `events_target` events over the recent sessions' spec runs.
        total_run_s, total_session_s, spec_events = conn.execute(f"""
            SELECT sum(extract(epoch FROM coalesce(r.end_time, {q(now)}) - r.start_time)),
                   (SELECT sum(extract(epoch FROM coalesce(end_time, {q(now)}) - start_time))
                    FROM bench_sessions WHERE start_time >= {q(cutoff)}),
                   count(*) + count(r.end_time)
            FROM bench_runs r JOIN bench_sessions s ON s.id = r.session_id
            WHERE s.start_time >= {q(cutoff)}""").fetchone()
        heartbeat_s = round(float(total_session_s) / (HEARTBEAT_SHARE * events_target), 3)
        filler = events_target * (1 - HEARTBEAT_SHARE) - spec_events
        fill_per_s = round(filler / float(total_run_s), 6)

        started = time.monotonic()
        conn.execute(STAGE_SQL.format(days=EVENT_DAYS, now=q(now), cutoff=q(cutoff), heartbeat_s=heartbeat_s,
                                      fill_per_s=fill_per_s))
        timings["stage"] = time.monotonic() - started

        # One partition per UTC day, named and bounded as ensure_event_partitions() does it, but
        # filled before it is attached (attaching builds its indexes in one go), then the empty
        # ones the daemon keeps ready for the days ahead.
        started = time.monotonic()
        last_day = now.astimezone(timezone.utc).date()
        day = cutoff.astimezone(timezone.utc).date()
        while day <= last_day:
            table = f"events_{day:%Y%m%d}"
            low = datetime.combine(day, dtime(0), tzinfo=timezone.utc)
            high = low + timedelta(days=1)
            conn.execute(f"CREATE TABLE {table} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            conn.execute(DAY_SQL.format(table=table, low=q(low), high=q(high)))
            conn.execute(f"ALTER TABLE events ATTACH PARTITION {table} FOR VALUES FROM ({q(low)}) TO ({q(high)})")
            day += timedelta(days=1)
        conn.execute(resources.query("ensure_event_partitions"),
                     {"first_day": last_day - timedelta(days=PARTITION_DAYS_BEHIND),
                      "last_day": last_day + timedelta(days=PARTITION_DAYS_AHEAD)})
        timings["events"] = time.monotonic() - started

        started = time.monotonic()
        conn.execute(FINISH_SQL.format(now=q(now), heartbeat_s=heartbeat_s, fill_per_s=fill_per_s))
        timings["aggregates"] = time.monotonic() - started
        started = time.monotonic()
        conn.execute("VACUUM (ANALYZE)")
        timings["vacuum"] = time.monotonic() - started
    return {"timings": timings, "heartbeat_s": heartbeat_s, "fill_per_s": fill_per_s}


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("events", "sessions", "spec_runs", "interventions", "metric_buckets")}


def check_projection(dsn: str, session_ids: list[uuid.UUID]) -> list[str]:
    """Re-project sessions from their events with the daemon's own read and projection code (the
    projector's per-session step, its writes rolled back); differences from the generated rows."""
    return asyncio.run(_check_projection(dsn, session_ids))


async def _check_projection(dsn: str, session_ids: list[uuid.UUID]) -> list[str]:
    problems = []
    limits = loop_health.thresholds(Settings())
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        for sid in session_ids:
            stored = await (await conn.execute("SELECT * FROM sessions WHERE id = %s", (sid,))).fetchone()
            runs = await (await conn.execute(
                "SELECT spec_id, attempt, start_time, end_time, status, outcome, tokens_used, cost_usd, error_message "
                "FROM spec_runs WHERE session_id = %s ORDER BY start_time, attempt", (sid,))).fetchall()
            answers = await (await conn.execute("SELECT event_id, answered_at FROM interventions "
                                                "WHERE session_id = %s ORDER BY requested_at", (sid,))).fetchall()
            async with conn.transaction(force_rollback=True):
                p = await project_one(conn, sid, project_session, limits)
            if p is None or stored is None:
                problems.append(f"{sid}: stored {stored is not None}, projected {p is not None}")
                continue
            for key, value in vars(p).items():
                if key in ("spec_runs", "interventions", "loop_due"):
                    continue
                if stored[key] != value:
                    problems.append(f"{sid} {key}: stored {stored[key]!r}, projected {value!r}")
            projected = [{"spec_id": r.spec_id, "attempt": r.attempt, "start_time": r.start_time,
                          "end_time": r.end_time, "status": r.status, "outcome": r.outcome, "tokens_used": r.tokens_used,
                          "cost_usd": r.cost_usd, "error_message": r.error_message}
                         for r in sorted(p.spec_runs, key=lambda r: (r.start_time, r.attempt))]
            if runs != projected:
                diff = next(((a, b) for a, b in zip(runs, projected) if a != b), (len(runs), len(projected)))
                problems.append(f"{sid} spec_runs differ: stored vs projected {diff}")
            if answers != [{"event_id": i.event_id, "answered_at": i.answered_at} for i in p.interventions]:
                problems.append(f"{sid} interventions differ")
    return problems


# ---------------------------------------------------------------------------- timing

class Recorder:
    """A ReadStore stand-in that notes the named queries (and parameters) a function runs."""

    def __init__(self, store: ReadStore) -> None:
        self.store = store
        self.calls: list[tuple[str, Any]] = []

    def fetch(self, name: str, params: Any = None) -> list[dict[str, Any]]:
        self.calls.append((name, params))
        return self.store.fetch(name, params)

    def fetch_as(self, name: str, params: Any, row: Any) -> list[Any]:
        self.calls.append((name, params))
        return self.store.fetch_as(name, params, row)

    def stream(self, name: str, params: Any = None) -> Any:
        self.calls.append((name, params))
        return self.store.stream(name, params)

    def fetch_many(self, requests: Any) -> list[list[Any]]:
        self.calls.extend((request[0], request[1]) for request in requests)
        return self.store.fetch_many(requests)

    def run(self, plan: Any) -> Any:
        return ReadStore.run(self, plan)  # type: ignore[arg-type]  # its round trips through fetch_many above

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)  # what else a query function asks the store (its source, ...)


@dataclass
class Case:
    group: str
    label: str
    run: Callable[[Any], Any]
    samples: list[float] = field(default_factory=list)
    rows: int = 0
    calls: list[tuple[str, Any]] = field(default_factory=list)
    error: str = ""
    other_cpu: float = 0.0
    """% of one core used by everything but this script and PostgreSQL while it was timed."""

    @property
    def target(self) -> float | None:
        return TARGETS[self.group]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples)
        return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]

    @property
    def verdict(self) -> str:
        if self.error:
            return "error"
        if self.target is None:
            return "info"
        return "PASS" if self.median < self.target else "FAIL"

    @property
    def half(self) -> str:
        """Against half the target (issue 17's headroom)."""
        if self.error or self.target is None:
            return "-"
        return "ok" if self.median < self.target / 2 else "MISS"


def size_of(result: Any) -> int:
    if isinstance(result, list):
        return len(result)
    if isinstance(result, queries.SessionDetail):
        return 1 + len(result.spec_runs) + len(result.timeline) + len(result.interventions)
    if isinstance(result, queries.Status):
        return len(result.active) + len(result.pending_interventions) + len(result.hosts)
    if isinstance(result, queries.NightSummary):
        return len(result.sessions) + len(result.results)
    if isinstance(result, queries.SessionDiff):
        return sum(len(getattr(result.changes, k)) for k in (
            "newly_failing", "fixed", "still_failing", "flaky", "slower", "costlier", "new_errors"))
    if isinstance(result, dict):
        return len(result)
    if isinstance(result, queries.Spend):
        return 3 + len(result.per_day)
    if isinstance(result, int):
        return result
    return 1


def pick(dsn: str) -> dict[str, Any]:
    """Realistic arguments: the largest recent session, a typical one, a busy spec."""
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        meta = conn.execute("SELECT now, scale FROM bench_meta").fetchone()
        big = conn.execute("""
            SELECT id, event_count FROM sessions WHERE start_time > %(now)s - interval '29 days'
            ORDER BY event_count DESC LIMIT 1""", {"now": meta["now"]}).fetchone()
        typical = conn.execute("""
            SELECT id, event_count FROM sessions WHERE end_time IS NOT NULL AND start_time > %(now)s - interval '30 days'
            ORDER BY event_count LIMIT 1 OFFSET (SELECT count(*) / 2 FROM sessions
                                                 WHERE end_time IS NOT NULL AND start_time > %(now)s - interval '30 days')
            """, {"now": meta["now"]}).fetchone()
        spec = conn.execute("SELECT spec_id, count(*) AS n FROM spec_runs GROUP BY 1 ORDER BY 2 DESC LIMIT 1").fetchone()
    return {"now": meta["now"], "scale": meta["scale"], "big": big, "typical": typical, "spec": spec}


def session_summary(store: Any, session_id: uuid.UUID) -> int:
    """session_detail without the timeline: the session row, its spec runs and interventions."""
    params = {"session_id": session_id}
    return sum(len(store.fetch(name, params)) for name in ("session", "session_spec_runs", "session_interventions"))


def export_count(store: Any, table: str, window: queries.Window) -> int:
    return sum(1 for _ in queries.export_rows(store, table, window))


def on_new_connection(dsn: str, call: Callable[[Any], Any]) -> Any:
    """What one `ralph-query` run pays: connect, then the first query of a new backend."""
    with open_read_store(Settings(), dsn=dsn) as store:
        return call(store)


class AlertPass:
    """One evaluation of every alert rule (budgets set, so their rules read too), as the
    daemon's alerts feature runs it every [alerts] check_interval_s: the facts, the open
    alerts, and nothing to write once the first pass has fired what holds."""

    def __init__(self, dsn: str, night: queries.Window) -> None:
        settings = replace(Settings(), budget_session_usd=5.0, budget_session_tokens=2_000_000,
                           budget_night_usd=50.0, budget_night_tokens=20_000_000)
        self.store = AlertStore(settings, dsn=dsn)
        self.night = (night.since, night.until)

    def __call__(self, _: Any) -> int:
        fired, resolved = self.store.evaluate(night=self.night, destinations=["json://127.0.0.1:9/"])
        return fired + resolved


def cases(p: dict[str, Any], zone: ZoneInfo, dsn: str, alerts: AlertPass) -> list[Case]:
    now: datetime = p["now"]
    big, typical, spec = p["big"]["id"], p["typical"]["id"], p["spec"]["spec_id"]
    night = queries.night_window(now, zone, start=dtime(18), end=dtime(9))
    running, limits = running_sessions(dsn), loop_health.thresholds(Settings())
    return [*targets(now, zone, night, big, typical, spec, p, dsn), *dashboard_batches(now),
            Case("alerts", "alerts: evaluate every rule (one pass)", alerts),
            Case("loop", "loop-health rules, one projector pass (its running sessions)",
                 lambda s: loop_health_pass(s, running, limits))]


RunningSession = tuple[uuid.UUID, datetime, datetime, list[loop_health.Closing]]


def running_sessions(dsn: str) -> list[RunningSession]:
    """The sessions a projector pass recomputes (the running ones, at most 50; at least the
    latest, so a small --scale has one), with their spec runs' closing events (read by the
    projection's own query, so not timed here)."""
    found = []
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        for s in conn.execute("SELECT id, start_time, last_event_at FROM sessions ORDER BY execution_state IN "
                              "('running', 'stalled', 'waiting_for_human') DESC, last_event_at DESC LIMIT greatest("
                              "1, (SELECT count(*) FROM sessions WHERE end_time IS NULL))").fetchall()[:50]:
            rows = conn.execute(resources.query("session_events"),
                                {"session_id": s["id"], "types": list(SPEC_TERMINAL)}).fetchall()
            closings = [loop_health.Closing(
                r["event_id"], r["spec_id"], r["occurred_at"], r["event_type"] != "spec_completed",
                (r["data"] or {}).get("error"), None, (r["data"] or {}).get("git")) for r in rows]
            found.append((s["id"], s["start_time"], s["last_event_at"], closings))
    return found


def loop_health_pass(store: Any, running: list[RunningSession], limits: loop_health.Thresholds) -> int:
    """What the rules add to a projector pass: each session's recent hook events, then the rules
    (their settings are read once, when the projector starts)."""
    read = 0
    for session_id, start, last, closings in running:
        rows = store.fetch_as("session_recent_activity", {"session_id": session_id, "types": list(ACTIVITY_TYPES),
                                                          "since": max(last - ACTIVITY_WINDOW, start), "until": last,
                                                          "limit": ACTIVITY_LIMIT}, loop_health.Activity)
        activity = rows[::-1]
        current = loop_health.findings(closings, activity, now=last, started=start, limits=limits)
        loop_health.episodes_due(session_id, current, [], now=last)
        read += len(rows)
    return read


def dashboard_batches(now: datetime) -> list[Case]:
    """The dashboard's batched reads, where this checkout has them (they are newer than the rest)."""
    if not hasattr(queries, "session_details"):
        return []

    def changed_details(s: Any) -> Any:
        changed = queries.sessions_changed_since(s, now - timedelta(minutes=1))
        return list(queries.session_details(s, changed, whole_timeline_max=500, timeline_limit=2000).values())

    return [
        Case("info", "dashboard: sessions_changed_since 1 min", lambda s: queries.sessions_changed_since(
            s, now - timedelta(minutes=1))),
        Case("info", "dashboard: session_details of those", changed_details),
        Case("info", "dashboard: spec_histories 10 specs", lambda s: queries.spec_histories(
            s, [f"CR-{i:03d}" for i in range(1, 11)], since=now - timedelta(days=30), at_least=20)),
        Case("info", "dashboard: recent_failed_runs 10", lambda s: queries.recent_failed_runs(s, limit=10)),
        Case("info", "dashboard: event_types_seen 24h", lambda s: queries.event_types_seen(
            s, now - timedelta(hours=24))),
    ]


def targets(now: datetime, zone: ZoneInfo, night: queries.Window, big: uuid.UUID, typical: uuid.UUID,
            spec: str, p: dict[str, Any], dsn: str) -> list[Case]:
    return [
        Case("events", "recent_events limit 100", lambda s: queries.recent_events(s, limit=100)),
        Case("events", "recent_events --type cc.PostToolUse (common)",
             lambda s: queries.recent_events(s, event_type="cc.PostToolUse", limit=100)),
        Case("events", "recent_events --type spec_failed (rare)",
             lambda s: queries.recent_events(s, event_type="spec_failed", limit=100)),
        Case("events", "recent_events --session <largest>",
             lambda s: queries.recent_events(s, session_id=big, limit=100)),
        Case("events", "recent_events --spec <busiest>",
             lambda s: queries.recent_events(s, spec_id=spec, limit=100)),
        Case("events", "recent_events --since 8h --type spec_failed",
             lambda s: queries.recent_events(s, since=now - timedelta(hours=8), event_type="spec_failed", limit=100)),
        Case("events", "recent_rejects limit 100", lambda s: queries.recent_rejects(s, limit=100)),
        Case("summary", "resolve_session (8-char prefix)", lambda s: queries.resolve_session(s, str(big)[:8])),
        Case("summary", "session row + spec runs + interventions", lambda s: session_summary(s, big)),
        Case("summary", f"session_detail typical ({p['typical']['event_count']} events)",
             lambda s: queries.session_detail(s, typical)),
        Case("summary", f"session_detail largest ({p['big']['event_count']} events)",
             lambda s: queries.session_detail(s, big)),
        Case("summary", "sessions_since 7d", lambda s: queries.sessions_since(s, now - timedelta(days=7))),
        Case("summary", "spec_history <busiest> limit 100", lambda s: queries.spec_history(s, spec)),
        Case("compare", "compare_weeks", lambda s: queries.compare_weeks(s, now, zone)),
        Case("compare", "session_diff (latest vs the previous run of its name)", lambda s: queries.session_diff(s)),
        Case("compare", "session_diff <largest> <typical>", lambda s: queries.session_diff(s, big, typical)),
        Case("info", "diffs_against_previous, last night's sessions (report)", lambda s: queries.diffs_against_previous(
            s, queries.night_summary(s, night).sessions)),
        Case("dashboard", "status", lambda s: queries.status(s, now)),
        Case("dashboard", "active_sessions", lambda s: queries.active_sessions(s)),
        Case("dashboard", "pending_interventions", lambda s: queries.pending_interventions(s)),
        Case("dashboard", "monitor_hosts", lambda s: queries.monitor_hosts(s)),
        Case("dashboard", "spend (today/week/month + 30 days)", lambda s: queries.spend(s, now, zone)),
        Case("dashboard", "top_failing_specs 7d", lambda s: queries.top_failing_specs(s, now - timedelta(days=7))),
        Case("dashboard", "night_summary", lambda s: queries.night_summary(s, night)),
        Case("dashboard", "event_counts 24h", lambda s: queries.event_counts(s, now - timedelta(hours=24))),
        Case("info", "outcomes (one week)", lambda s: queries.outcomes(s, queries.week_windows(now, zone)[1])),
        Case("info", "top_failing_specs 30d", lambda s: queries.top_failing_specs(s, now - timedelta(days=30))),
        Case("info", "sessions_since 1y limit 100", lambda s: queries.sessions_since(s, now - timedelta(days=365))),
        Case("info", "recent_events limit 100, new connection (CLI)",
             lambda s: on_new_connection(dsn, lambda store: queries.recent_events(store, limit=100))),
        Case("info", "status, new connection (CLI)", lambda s: on_new_connection(dsn, lambda store: queries.status(store, now))),
        Case("info", "export_rows events, 1 day (rows)",
             lambda s: export_count(s, "events", queries.Window(now - timedelta(days=2), now - timedelta(days=1)))),
        Case("info", "export_rows spec_runs, 30 days (rows)",
             lambda s: export_count(s, "spec_runs", queries.Window(now - timedelta(days=30), now))),
    ]


def run_cases(dsn: str, todo: list[Case], warmup: int, repeats: int, quiet_wait: float, postmaster: int) -> None:
    with open_read_store(Settings(), dsn=dsn) as store:
        for case in todo:
            recorder = Recorder(store)
            try:
                case.rows = size_of(case.run(recorder))
            except Exception as exc:  # a function that changed under us: report, do not stop
                case.error = f"{type(exc).__name__}: {exc}"
                continue
            case.calls = recorder.calls
            for _ in range(warmup):
                case.run(store)
            if quiet_wait:
                wait_quiet(quiet_wait)
            wall, busy, own, server = time.monotonic(), system_busy(), time.process_time(), children_cpu(postmaster)
            for _ in range(repeats):
                started = time.perf_counter()
                case.run(store)
                case.samples.append((time.perf_counter() - started) * 1000)
            used = (system_busy() - busy) - (time.process_time() - own) - (children_cpu(postmaster) - server)
            case.other_cpu = max(0.0, 100 * used / (time.monotonic() - wall))


def explain(dsn: str, case: Case, warmup: int) -> str:
    """The plans the timed calls used, with EXPLAIN (ANALYZE, BUFFERS) detail: auto_explain on a
    connection that ran the case as often as the timed one had (so a prepared statement has
    switched to its generic plan, if PostgreSQL chose to)."""
    plans: list[str] = []
    with psycopg.connect(dsn, row_factory=dict_row, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
        conn.execute("LOAD 'auto_explain'")
        conn.execute("SET auto_explain.log_analyze = on; SET auto_explain.log_buffers = on; "
                     "SET auto_explain.log_level = notice; SET auto_explain.log_min_duration = -1")
        conn.execute(resources.query("read_only_session"))
        store = ReadStore(conn)
        for _ in range(warmup + 2):
            case.run(store)
        conn.execute("SET auto_explain.log_min_duration = 0")
        plans.clear()
        case.run(store)
        conn.execute("SET auto_explain.log_min_duration = -1")
    return "\n".join(p.rstrip() for p in plans if "Query Text" in p)


def print_table(todo: list[Case]) -> None:
    if not todo:
        return
    width = max(len(c.label) for c in todo)
    print(f"{'query':<{width}} {'rows':>6} {'median':>8} {'p95':>8} {'target':>8}  verdict  half  other%  named queries")
    for c in todo:
        target = f"< {c.target:g}" if c.target else "-"
        if c.error:
            print(f"{c.label:<{width}} {'':>6} {'':>8} {'':>8} {target:>8}  error                  {c.error[:100]}")
            continue
        names = ",".join(dict.fromkeys(n for n, _ in c.calls))
        print(f"{c.label:<{width}} {c.rows:>6} {c.median:>8.2f} {c.p95:>8.2f} {target:>8}  {c.verdict:<7} {c.half:<5} "
              f"{c.other_cpu:>6.0f}  {names}")


def compare(first: Path, second: Path) -> int:
    """Two runs' --json side by side (e.g. 10x and 100x): medians, their ratio, each row against
    half its target at the first scale, and the window rows' growth (at most WINDOW_GROWTH)."""
    a, b = (json.loads(p.read_text()) for p in (first, second))
    scale_a, scale_b = (f"{rows[0]['scale']:g}" if rows and "scale" in rows[0] else "?" for rows in (a, b))

    def key(label: str) -> str:  # "session_detail typical (5262 events)": the count differs by scale
        return re.sub(r" \(\d+ events\)", "", label)

    later = {key(r["label"]): r for r in b}
    width = max(len(r["label"]) for r in a)
    print(f"{'query':<{width}} {'target':>7} {'rows':>13} {f'{scale_a}x ms':>9} {f'{scale_b}x ms':>9} {'ratio':>6}  "
          f"half@{scale_a}x  "
          f"window  (load {a[0].get('load', '?') if a else '?'} | {b[0].get('load', '?') if b else '?'})")
    bad = 0
    for r in a:
        other = later.get(key(r["label"]))
        m1, m2 = r.get("median_ms"), other.get("median_ms") if other else None
        target = f"< {r['target_ms']:g}" if r.get("target_ms") else "-"
        half = "-" if not r.get("target_ms") or m1 is None else ("ok" if m1 < r["target_ms"] / 2 else "MISS")
        ratio = m2 / m1 if m1 and m2 else None
        window = "-"
        if r["label"] in WINDOW_ROWS and ratio is not None:
            window = "ok" if ratio <= WINDOW_GROWTH else "GREW"
            bad += window == "GREW"
        cells = [f"{m:>9.2f}" if m is not None else f"{'-':>9}" for m in (m1, m2)]
        rows = f"{r.get('rows', '')}/{other.get('rows', '') if other else ''}"
        print(f"{r['label']:<{width}} {target:>7} {rows:>13} {cells[0]} {cells[1]} "
              f"{f'{ratio:.2f}' if ratio is not None else '-':>6}  {half:<9} {window}")
    print(f"\nwindow rows grown more than {WINDOW_GROWTH}x: {bad}")
    return 0


# ---------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=10.0,
                        help="data volume as a multiple of the design note's: 10 (default) = 10x, 100 = 100x")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per query; default 7")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first; default 10")
    parser.add_argument("--tz", default="UTC", help="reporting time zone for days and weeks; default UTC")
    parser.add_argument("--quiet-wait", type=float, default=5.0, metavar="S",
                        help="before timing each row, wait up to S s for the machine's CPUs to be nearly "
                             "idle (other users' load makes figures noise); default 5")
    parser.add_argument("--seed", type=float, default=0.42, help=argparse.SUPPRESS)
    parser.add_argument("--only", help="run only the rows whose label contains this text")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN (ANALYZE, BUFFERS) rows that miss")
    parser.add_argument("--explain-all", action="store_true", help="EXPLAIN (ANALYZE, BUFFERS) every row")
    parser.add_argument("--keep", action="store_true", help="keep the cluster (see --reuse)")
    parser.add_argument("--reuse", metavar="DIR", help="run on a cluster kept by --keep, without rebuilding")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                        help="print two runs' --json side by side (e.g. --scale 10 and --scale 100) and exit")
    args = parser.parse_args()
    if args.compare:
        return compare(Path(args.compare[0]), Path(args.compare[1]))

    if args.reuse:
        root = Path(args.reuse)
    else:
        root = Path(tempfile.mkdtemp(prefix="rm-qbench-", dir="/tmp"))
        root.chmod(0o755)
    cluster = Cluster(root / "pg")
    keep = args.keep or bool(args.reuse)
    started = time.monotonic()
    was_running = cluster.is_running()
    try:
        cluster.start()
        dsn = cluster.dsn(DBNAME)
        exists = not ensure_database(cluster.dsn("postgres"), DBNAME)
        applied = asyncio.run(migrate(dsn))
        with psycopg.connect(dsn, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
        if exists:
            print(f"reusing {root}; migrations applied now: {applied or 'none'}", flush=True)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("VACUUM (ANALYZE)")
        else:
            now = datetime.now(timezone.utc).replace(microsecond=0)
            print(f"building scale {args.scale:g} in {root} ...", flush=True)
            built = build(dsn, args.scale, now, args.seed)
            print("built in " + ", ".join(f"{k} {v:.1f} s" for k, v in built["timings"].items())
                  + f" (heartbeat every {built['heartbeat_s']:.1f} s)", flush=True)
        n = counts(dsn)
        p = pick(dsn)
        scale = round(n["sessions"] / SESSIONS_PER_YEAR, 1)  # what the data is, whatever --scale said
        print(f"scale {scale:g}x; PostgreSQL {version}, {os.cpu_count()} cores; "
              + ", ".join(f"{k} {v:,}" for k, v in n.items())
              + f"; now = {p['now']:%Y-%m-%d %H:%M} UTC; total {time.monotonic() - started:.0f} s", flush=True)
        problems: list[str] = []
        if not exists:
            with psycopg.connect(dsn) as conn:
                sample = [r[0] for r in conn.execute("""
                    (SELECT id FROM sessions WHERE start_time > (SELECT now FROM bench_meta) - interval '29 days'
                     ORDER BY event_count DESC LIMIT 2)
                    UNION (SELECT id FROM sessions WHERE end_time IS NULL)
                    UNION (SELECT session_id FROM interventions
                           WHERE requested_at > (SELECT now FROM bench_meta) - interval '29 days' LIMIT 2)
                    UNION (SELECT id FROM sessions WHERE execution_state = 'failed'
                           AND start_time > (SELECT now FROM bench_meta) - interval '29 days' LIMIT 1)""")]
            problems = check_projection(dsn, sample)
            print(f"projection check: {len(sample)} sessions re-projected from their events, "
                  + ("all equal" if not problems else f"{len(problems)} differences:\n  " + "\n  ".join(problems[:20])),
                  flush=True)
        alerts = AlertPass(dsn, queries.night_window(p["now"], ZoneInfo(args.tz), start=dtime(18), end=dtime(9)))
        todo = [c for c in cases(p, ZoneInfo(args.tz), dsn, alerts) if not args.only or args.only in c.label]
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        try:
            run_cases(dsn, todo, args.warmup, args.repeats, args.quiet_wait, postmaster)
        finally:
            alerts.store.close()
        print(f"\nmedian / p95 of {args.repeats} calls after {args.warmup} warm-up calls, ms "
              f"(targets: {', '.join(f'{TARGET_NAMES[g]} < {t:g}' for g, t in TARGETS.items() if t)})")
        print_table(todo)
        misses = [c for c in todo if c.verdict == "FAIL"]
        print(f"\n{len(misses)} of {sum(1 for c in todo if c.target)} rows miss their target")
        if args.explain or args.explain_all:
            for case in (todo if args.explain_all else misses):
                if case.error:
                    continue
                print(f"\n=== {case.label}: median {case.median:.2f} ms\n{explain(dsn, case, args.warmup)}")
        if args.json:
            Path(args.json).write_text(json.dumps([{
                "group": c.group, "label": c.label, "rows": c.rows, "error": c.error,
                "median_ms": c.median if c.samples else None, "p95_ms": c.p95 if c.samples else None,
                "target_ms": c.target, "verdict": c.verdict, "samples_ms": c.samples, "other_cpu_pct": c.other_cpu,
                "queries": [n for n, _ in c.calls], "scale": scale, "half": c.half,
                "load": " ".join(f"{x:.2f}" for x in os.getloadavg())} for c in todo], indent=1))
        return 1 if problems else 0
    finally:
        if not was_running:
            cluster.stop(mode="fast")
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root} (rerun with --reuse {root})")


if __name__ == "__main__":
    sys.exit(main())
