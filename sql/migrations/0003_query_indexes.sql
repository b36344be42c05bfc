-- Indexes chosen with bench/queries.py (10x the design note: 1.5 M events over 30 days,
-- 3,650 sessions and 182,000 spec runs over a year), from EXPLAIN (ANALYZE, BUFFERS).

-- Spend (today / week / month / per day), compare this week with last, and last night's
-- outcomes aggregate every spec run that ended in a window: ~12,600 runs for a month.
-- EXPLAIN showed "Index Scan using spec_runs_end_idx" fetching each of those rows from the
-- heap, where a spec run is wide (error text, output summary) and the aggregates need only
-- five columns. With those columns in the index it is an Index Only Scan (Heap Fetches: 0):
-- run_outcomes_between for a month 2.8 -> 2.2 ms, daily_runs' per-day scans 3.6 -> 3.1 ms
-- warm, and far fewer pages when the heap is not cached. Same key and predicate as before,
-- so the range scans and ORDER BY end_time that used the old index use this one.
DROP INDEX spec_runs_end_idx;
CREATE INDEX spec_runs_end_idx ON spec_runs (end_time DESC)
    INCLUDE (status, tokens_used, cost_usd, duration_seconds) WHERE end_time IS NOT NULL;
