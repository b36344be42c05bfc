-- Headroom (issue 17): "the last 100 events of a type" finds how far back to read from the
-- 5-minute counts (queries.sql: recent_events_floor_of_type), newest bucket first; the primary
-- key leads with the bucket, so without this index a rare type read every bucket of 30 days.
CREATE INDEX metric_buckets_type_idx ON metric_buckets (event_type, bucket_time DESC) INCLUDE (count);
