CREATE FUNCTION public.ensure_event_partitions(first_day date, last_day date) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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
CREATE FUNCTION public.spec_run_totals_apply() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('spec_run_totals', 7262686));
    IF TG_OP = 'INSERT' THEN
        INSERT INTO spec_run_totals AS t
        SELECT date_bin('15 minutes', end_time, TIMESTAMPTZ '2000-01-01 00:00:00+00'), count(*),
               count(*) FILTER (WHERE outcome = 'passed'), count(*) FILTER (WHERE outcome = 'fixed_on_retry'),
               count(*) FILTER (WHERE outcome = 'failed'), count(*) FILTER (WHERE outcome = 'timed_out'),
               count(*) FILTER (WHERE outcome = 'interrupted'), coalesce(sum(cost_usd), 0),
               coalesce(sum(tokens_used), 0), coalesce(sum(duration_seconds::numeric), 0), count(duration_seconds)
        FROM new_runs WHERE end_time IS NOT NULL GROUP BY 1 ORDER BY 1
        ON CONFLICT (period_start) DO UPDATE SET
            runs = t.runs + EXCLUDED.runs, passed = t.passed + EXCLUDED.passed,
            fixed_on_retry = t.fixed_on_retry + EXCLUDED.fixed_on_retry, failed = t.failed + EXCLUDED.failed,
            timed_out = t.timed_out + EXCLUDED.timed_out, interrupted = t.interrupted + EXCLUDED.interrupted,
            cost_usd = t.cost_usd + EXCLUDED.cost_usd, tokens_used = t.tokens_used + EXCLUDED.tokens_used,
            duration_sum = t.duration_sum + EXCLUDED.duration_sum,
            duration_count = t.duration_count + EXCLUDED.duration_count;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO spec_run_totals AS t
        SELECT date_bin('15 minutes', end_time, TIMESTAMPTZ '2000-01-01 00:00:00+00'), -count(*),
               -count(*) FILTER (WHERE outcome = 'passed'), -count(*) FILTER (WHERE outcome = 'fixed_on_retry'),
               -count(*) FILTER (WHERE outcome = 'failed'), -count(*) FILTER (WHERE outcome = 'timed_out'),
               -count(*) FILTER (WHERE outcome = 'interrupted'), -coalesce(sum(cost_usd), 0),
               -coalesce(sum(tokens_used), 0), -coalesce(sum(duration_seconds::numeric), 0), -count(duration_seconds)
        FROM old_runs WHERE end_time IS NOT NULL GROUP BY 1 ORDER BY 1
        ON CONFLICT (period_start) DO UPDATE SET
            runs = t.runs + EXCLUDED.runs, passed = t.passed + EXCLUDED.passed,
            fixed_on_retry = t.fixed_on_retry + EXCLUDED.fixed_on_retry, failed = t.failed + EXCLUDED.failed,
            timed_out = t.timed_out + EXCLUDED.timed_out, interrupted = t.interrupted + EXCLUDED.interrupted,
            cost_usd = t.cost_usd + EXCLUDED.cost_usd, tokens_used = t.tokens_used + EXCLUDED.tokens_used,
            duration_sum = t.duration_sum + EXCLUDED.duration_sum,
            duration_count = t.duration_count + EXCLUDED.duration_count;
    ELSE  -- UPDATE: the new rows' part minus the old rows', in one pass (one lock order)
        INSERT INTO spec_run_totals AS t
        SELECT date_bin('15 minutes', end_time, TIMESTAMPTZ '2000-01-01 00:00:00+00'), sum(sign),
               coalesce(sum(sign) FILTER (WHERE outcome = 'passed'), 0),
               coalesce(sum(sign) FILTER (WHERE outcome = 'fixed_on_retry'), 0),
               coalesce(sum(sign) FILTER (WHERE outcome = 'failed'), 0),
               coalesce(sum(sign) FILTER (WHERE outcome = 'timed_out'), 0),
               coalesce(sum(sign) FILTER (WHERE outcome = 'interrupted'), 0), coalesce(sum(sign * cost_usd), 0),
               coalesce(sum(sign * tokens_used), 0), coalesce(sum(sign * duration_seconds::numeric), 0),
               coalesce(sum(sign) FILTER (WHERE duration_seconds IS NOT NULL), 0)
        FROM (SELECT 1 AS sign, * FROM new_runs UNION ALL SELECT -1, * FROM old_runs) AS d
        WHERE end_time IS NOT NULL GROUP BY 1 ORDER BY 1
        ON CONFLICT (period_start) DO UPDATE SET
            runs = t.runs + EXCLUDED.runs, passed = t.passed + EXCLUDED.passed,
            fixed_on_retry = t.fixed_on_retry + EXCLUDED.fixed_on_retry, failed = t.failed + EXCLUDED.failed,
            timed_out = t.timed_out + EXCLUDED.timed_out, interrupted = t.interrupted + EXCLUDED.interrupted,
            cost_usd = t.cost_usd + EXCLUDED.cost_usd, tokens_used = t.tokens_used + EXCLUDED.tokens_used,
            duration_sum = t.duration_sum + EXCLUDED.duration_sum,
            duration_count = t.duration_count + EXCLUDED.duration_count;
    END IF;
    RETURN NULL;
END
$$;
CREATE FUNCTION public.spec_run_totals_hourly_apply() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO spec_run_totals_hourly AS h
    VALUES (date_bin('1 hour', NEW.period_start, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
            NEW.runs - coalesce(OLD.runs, 0), NEW.passed - coalesce(OLD.passed, 0),
            NEW.fixed_on_retry - coalesce(OLD.fixed_on_retry, 0), NEW.failed - coalesce(OLD.failed, 0),
            NEW.timed_out - coalesce(OLD.timed_out, 0), NEW.interrupted - coalesce(OLD.interrupted, 0),
            NEW.cost_usd - coalesce(OLD.cost_usd, 0), NEW.tokens_used - coalesce(OLD.tokens_used, 0),
            NEW.duration_sum - coalesce(OLD.duration_sum, 0), NEW.duration_count - coalesce(OLD.duration_count, 0))
    ON CONFLICT (period_start) DO UPDATE SET
        runs = h.runs + EXCLUDED.runs, passed = h.passed + EXCLUDED.passed,
        fixed_on_retry = h.fixed_on_retry + EXCLUDED.fixed_on_retry, failed = h.failed + EXCLUDED.failed,
        timed_out = h.timed_out + EXCLUDED.timed_out, interrupted = h.interrupted + EXCLUDED.interrupted,
        cost_usd = h.cost_usd + EXCLUDED.cost_usd, tokens_used = h.tokens_used + EXCLUDED.tokens_used,
        duration_sum = h.duration_sum + EXCLUDED.duration_sum,
        duration_count = h.duration_count + EXCLUDED.duration_count;
    RETURN NULL;
END
$$;
CREATE TABLE public.alert_messages (
    id bigint NOT NULL,
    alert_id bigint,
    kind text NOT NULL,
    destination text NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    body_format text DEFAULT 'text'::text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    next_attempt_at timestamp with time zone DEFAULT now() NOT NULL,
    sent_at timestamp with time zone,
    gave_up_at timestamp with time zone,
    last_error text,
    CONSTRAINT alert_messages_format_check CHECK ((body_format = ANY (ARRAY['text'::text, 'markdown'::text]))),
    CONSTRAINT alert_messages_kind_check CHECK ((kind = ANY (ARRAY['firing'::text, 'resolved'::text, 'test'::text, 'report'::text])))
);
CREATE SEQUENCE public.alert_messages_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.alert_messages_id_seq OWNED BY public.alert_messages.id;
CREATE TABLE public.alerts (
    id bigint NOT NULL,
    rule text NOT NULL,
    subject text NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    link text,
    session_id uuid,
    fired_at timestamp with time zone DEFAULT now() NOT NULL,
    resolved_at timestamp with time zone
);
CREATE SEQUENCE public.alerts_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.alerts_id_seq OWNED BY public.alerts.id;
CREATE TABLE public.dirty_buckets (
    bucket_time timestamp with time zone NOT NULL,
    version bigint DEFAULT 1 NOT NULL
);
CREATE TABLE public.dirty_sessions (
    session_id uuid NOT NULL,
    version bigint DEFAULT 1 NOT NULL,
    marked_at timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.event_ids (
    event_id uuid NOT NULL,
    occurred_at timestamp with time zone NOT NULL
);
CREATE TABLE public.events (
    id bigint NOT NULL,
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    session_id uuid,
    spec_id text,
    occurred_at timestamp with time zone NOT NULL,
    received_at timestamp with time zone NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    host text NOT NULL,
    writer_uid integer,
    writer_pid integer,
    payload jsonb NOT NULL
)
PARTITION BY RANGE (occurred_at);
CREATE SEQUENCE public.events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.events_id_seq OWNED BY public.events.id;
CREATE TABLE public.events_default (
    id bigint DEFAULT nextval('public.events_id_seq'::regclass) NOT NULL,
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    session_id uuid,
    spec_id text,
    occurred_at timestamp with time zone NOT NULL,
    received_at timestamp with time zone NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    host text NOT NULL,
    writer_uid integer,
    writer_pid integer,
    payload jsonb NOT NULL
);
CREATE TABLE public.interventions (
    event_id uuid NOT NULL,
    session_id uuid NOT NULL,
    spec_id text,
    requested_at timestamp with time zone NOT NULL,
    message text,
    answered_at timestamp with time zone,
    answer text
);
CREATE TABLE public.metric_buckets (
    bucket_time timestamp with time zone NOT NULL,
    event_type text NOT NULL,
    count integer NOT NULL,
    avg_duration_seconds double precision
);
CREATE TABLE public.monitor_hosts (
    host text NOT NULL,
    version text NOT NULL,
    started_at timestamp with time zone NOT NULL,
    last_seen timestamp with time zone NOT NULL,
    events_total bigint DEFAULT 0 NOT NULL,
    rejects_total bigint DEFAULT 0 NOT NULL,
    spool_backlog bigint DEFAULT 0 NOT NULL,
    spooled_total bigint DEFAULT 0 NOT NULL,
    last_spooled_at timestamp with time zone,
    last_replayed_at timestamp with time zone,
    ingest_rate_per_s double precision DEFAULT 0 NOT NULL,
    connections_refused bigint DEFAULT 0 NOT NULL,
    connections_evicted bigint DEFAULT 0 NOT NULL,
    disks jsonb DEFAULT '{}'::jsonb NOT NULL
);
CREATE TABLE public.projection_failures (
    session_id uuid NOT NULL,
    error text NOT NULL,
    attempts integer DEFAULT 1 NOT NULL,
    first_failed_at timestamp with time zone DEFAULT now() NOT NULL,
    last_failed_at timestamp with time zone DEFAULT now() NOT NULL,
    retry_at timestamp with time zone NOT NULL
);
CREATE TABLE public.rejects (
    id bigint NOT NULL,
    reject_id uuid NOT NULL,
    received_at timestamp with time zone NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    host text NOT NULL,
    writer_uid integer,
    writer_pid integer,
    reason text NOT NULL,
    detail text NOT NULL,
    line_bytes bigint NOT NULL,
    excerpt text NOT NULL
);
CREATE SEQUENCE public.rejects_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.rejects_id_seq OWNED BY public.rejects.id;
CREATE TABLE public.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);
CREATE TABLE public.sessions (
    id uuid NOT NULL,
    name text,
    host text,
    start_time timestamp with time zone NOT NULL,
    end_time timestamp with time zone,
    last_event_at timestamp with time zone NOT NULL,
    total_specs integer,
    specs_completed integer DEFAULT 0 NOT NULL,
    specs_failed integer DEFAULT 0 NOT NULL,
    specs_timed_out integer DEFAULT 0 NOT NULL,
    execution_state text NOT NULL,
    tokens_used bigint DEFAULT 0 NOT NULL,
    cost_usd numeric(14,6) DEFAULT 0 NOT NULL,
    event_count integer DEFAULT 0 NOT NULL,
    interventions_pending integer DEFAULT 0 NOT NULL,
    final_result jsonb,
    metadata jsonb DEFAULT '{}'::jsonb NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    value_problems text[] DEFAULT '{}'::text[] NOT NULL,
    specs_fixed_on_retry integer DEFAULT 0 NOT NULL,
    waiting_since timestamp with time zone,
    loop_findings jsonb DEFAULT '[]'::jsonb NOT NULL,
    paused_until timestamp with time zone,
    first_event_at timestamp with time zone,
    CONSTRAINT sessions_state_check CHECK ((execution_state = ANY (ARRAY['running'::text, 'stalled'::text, 'completed'::text, 'failed'::text, 'interrupted'::text, 'budget_exceeded'::text, 'paused_for_usage_limit'::text, 'waiting_for_human'::text, 'stuck'::text])))
);
CREATE TABLE public.spec_run_totals (
    period_start timestamp with time zone NOT NULL,
    runs integer NOT NULL,
    passed integer NOT NULL,
    fixed_on_retry integer NOT NULL,
    failed integer NOT NULL,
    timed_out integer NOT NULL,
    interrupted integer NOT NULL,
    cost_usd numeric NOT NULL,
    tokens_used bigint NOT NULL,
    duration_sum numeric NOT NULL,
    duration_count integer NOT NULL
)
WITH (fillfactor='50');
CREATE TABLE public.spec_run_totals_hourly (
    period_start timestamp with time zone NOT NULL,
    runs integer NOT NULL,
    passed integer NOT NULL,
    fixed_on_retry integer NOT NULL,
    failed integer NOT NULL,
    timed_out integer NOT NULL,
    interrupted integer NOT NULL,
    cost_usd numeric NOT NULL,
    tokens_used bigint NOT NULL,
    duration_sum numeric NOT NULL,
    duration_count integer NOT NULL
)
WITH (fillfactor='50');
CREATE TABLE public.spec_runs (
    id bigint NOT NULL,
    session_id uuid NOT NULL,
    spec_id text NOT NULL,
    attempt integer NOT NULL,
    start_time timestamp with time zone,
    end_time timestamp with time zone,
    duration_seconds double precision,
    status text NOT NULL,
    tokens_used bigint,
    cost_usd numeric(14,6),
    error_message text,
    output_summary jsonb,
    value_problems text[] DEFAULT '{}'::text[] NOT NULL,
    outcome text NOT NULL,
    git jsonb,
    git_commits integer GENERATED ALWAYS AS (((git ->> 'commit_count'::text))::integer) STORED,
    git_files_changed integer GENERATED ALWAYS AS (((git ->> 'files_changed'::text))::integer) STORED,
    git_insertions bigint GENERATED ALWAYS AS (((git ->> 'insertions'::text))::bigint) STORED,
    git_deletions bigint GENERATED ALWAYS AS (((git ->> 'deletions'::text))::bigint) STORED,
    git_dirty boolean GENERATED ALWAYS AS (((git ->> 'dirty'::text))::boolean) STORED,
    CONSTRAINT spec_runs_outcome_check CHECK ((outcome = ANY (ARRAY['passed'::text, 'fixed_on_retry'::text, 'failed'::text, 'timed_out'::text, 'running'::text, 'interrupted'::text, 'later_passed'::text, 'retried'::text]))),
    CONSTRAINT spec_runs_status_check CHECK ((status = ANY (ARRAY['running'::text, 'completed'::text, 'failed'::text, 'timeout'::text, 'interrupted'::text])))
);
CREATE SEQUENCE public.spec_runs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.spec_runs_id_seq OWNED BY public.spec_runs.id;
ALTER TABLE ONLY public.events ATTACH PARTITION public.events_default DEFAULT;
ALTER TABLE ONLY public.alert_messages ALTER COLUMN id SET DEFAULT nextval('public.alert_messages_id_seq'::regclass);
ALTER TABLE ONLY public.alerts ALTER COLUMN id SET DEFAULT nextval('public.alerts_id_seq'::regclass);
ALTER TABLE ONLY public.events ALTER COLUMN id SET DEFAULT nextval('public.events_id_seq'::regclass);
ALTER TABLE ONLY public.rejects ALTER COLUMN id SET DEFAULT nextval('public.rejects_id_seq'::regclass);
ALTER TABLE ONLY public.spec_runs ALTER COLUMN id SET DEFAULT nextval('public.spec_runs_id_seq'::regclass);
ALTER TABLE ONLY public.alert_messages
    ADD CONSTRAINT alert_messages_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.alerts
    ADD CONSTRAINT alerts_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.dirty_buckets
    ADD CONSTRAINT dirty_buckets_pkey PRIMARY KEY (bucket_time);
ALTER TABLE ONLY public.dirty_sessions
    ADD CONSTRAINT dirty_sessions_pkey PRIMARY KEY (session_id);
ALTER TABLE ONLY public.event_ids
    ADD CONSTRAINT event_ids_pkey PRIMARY KEY (event_id);
ALTER TABLE ONLY public.events
    ADD CONSTRAINT events_event_id_key UNIQUE (event_id, occurred_at);
ALTER TABLE ONLY public.events_default
    ADD CONSTRAINT events_default_event_id_occurred_at_key UNIQUE (event_id, occurred_at);
ALTER TABLE ONLY public.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (id, occurred_at);
ALTER TABLE ONLY public.events_default
    ADD CONSTRAINT events_default_pkey PRIMARY KEY (id, occurred_at);
ALTER TABLE ONLY public.interventions
    ADD CONSTRAINT interventions_pkey PRIMARY KEY (event_id);
ALTER TABLE ONLY public.metric_buckets
    ADD CONSTRAINT metric_buckets_pkey PRIMARY KEY (bucket_time, event_type);
ALTER TABLE ONLY public.monitor_hosts
    ADD CONSTRAINT monitor_hosts_pkey PRIMARY KEY (host);
ALTER TABLE ONLY public.projection_failures
    ADD CONSTRAINT projection_failures_pkey PRIMARY KEY (session_id);
ALTER TABLE ONLY public.rejects
    ADD CONSTRAINT rejects_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.rejects
    ADD CONSTRAINT rejects_reject_id_key UNIQUE (reject_id);
ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);
ALTER TABLE ONLY public.sessions
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (id);
ALTER TABLE ONLY public.spec_run_totals_hourly
    ADD CONSTRAINT spec_run_totals_hourly_pkey PRIMARY KEY (period_start);
ALTER TABLE ONLY public.spec_run_totals
    ADD CONSTRAINT spec_run_totals_pkey PRIMARY KEY (period_start);
ALTER TABLE ONLY public.spec_runs
    ADD CONSTRAINT spec_runs_attempt_key UNIQUE (session_id, spec_id, attempt);
ALTER TABLE ONLY public.spec_runs
    ADD CONSTRAINT spec_runs_pkey PRIMARY KEY (id);
CREATE INDEX alert_messages_alert_idx ON public.alert_messages USING btree (alert_id);
CREATE INDEX alert_messages_due_idx ON public.alert_messages USING btree (next_attempt_at) WHERE ((sent_at IS NULL) AND (gave_up_at IS NULL));
CREATE INDEX alerts_fired_idx ON public.alerts USING btree (fired_at DESC);
CREATE UNIQUE INDEX alerts_open_key ON public.alerts USING btree (rule, subject) WHERE (resolved_at IS NULL);
CREATE INDEX alerts_subject_idx ON public.alerts USING btree (rule, subject);
CREATE INDEX event_ids_occurred_at_idx ON public.event_ids USING btree (occurred_at);
CREATE INDEX events_type_occurred_at_idx ON ONLY public.events USING btree (event_type, occurred_at DESC);
CREATE INDEX events_default_event_type_occurred_at_idx ON public.events_default USING btree (event_type, occurred_at DESC);
CREATE INDEX events_occurred_at_idx ON ONLY public.events USING btree (occurred_at DESC);
CREATE INDEX events_default_occurred_at_idx ON public.events_default USING btree (occurred_at DESC);
CREATE INDEX events_session_idx ON ONLY public.events USING btree (session_id, occurred_at) WHERE (session_id IS NOT NULL);
CREATE INDEX events_default_session_id_occurred_at_idx ON public.events_default USING btree (session_id, occurred_at) WHERE (session_id IS NOT NULL);
CREATE INDEX events_session_story_idx ON ONLY public.events USING btree (session_id, occurred_at) WHERE ((session_id IS NOT NULL) AND (event_type <> 'session_heartbeat'::text) AND (event_type !~~ 'cc.%'::text));
CREATE INDEX events_default_session_id_occurred_at_idx1 ON public.events_default USING btree (session_id, occurred_at) WHERE ((session_id IS NOT NULL) AND (event_type <> 'session_heartbeat'::text) AND (event_type !~~ 'cc.%'::text));
CREATE INDEX events_spec_idx ON ONLY public.events USING btree (spec_id, occurred_at) WHERE (spec_id IS NOT NULL);
CREATE INDEX events_default_spec_id_occurred_at_idx ON public.events_default USING btree (spec_id, occurred_at) WHERE (spec_id IS NOT NULL);
CREATE INDEX interventions_open_idx ON public.interventions USING btree (requested_at DESC) WHERE (answered_at IS NULL);
CREATE INDEX interventions_session_idx ON public.interventions USING btree (session_id);
CREATE INDEX metric_buckets_time_count_idx ON public.metric_buckets USING btree (bucket_time) INCLUDE (count);
CREATE INDEX metric_buckets_type_idx ON public.metric_buckets USING btree (event_type, bucket_time DESC) INCLUDE (count);
CREATE INDEX rejects_received_at_idx ON public.rejects USING btree (received_at DESC);
CREATE INDEX sessions_active_idx ON public.sessions USING btree (last_event_at) WHERE (execution_state = ANY (ARRAY['running'::text, 'stalled'::text, 'waiting_for_human'::text, 'paused_for_usage_limit'::text]));
CREATE INDEX sessions_activity_end_idx ON public.sessions USING btree (COALESCE(end_time, last_event_at));
CREATE INDEX sessions_name_start_idx ON public.sessions USING btree (name, start_time DESC);
CREATE INDEX sessions_start_idx ON public.sessions USING btree (start_time DESC);
CREATE INDEX sessions_updated_idx ON public.sessions USING btree (updated_at);
CREATE INDEX spec_runs_end_idx ON public.spec_runs USING btree (end_time DESC) INCLUDE (status, outcome, tokens_used, cost_usd, duration_seconds, spec_id) WHERE (end_time IS NOT NULL);
CREATE INDEX spec_runs_failed_idx ON public.spec_runs USING btree (end_time DESC) WHERE (status = ANY (ARRAY['failed'::text, 'timeout'::text]));
CREATE INDEX spec_runs_running_idx ON public.spec_runs USING btree (session_id, start_time DESC) WHERE (status = 'running'::text);
CREATE INDEX spec_runs_spec_end_idx ON public.spec_runs USING btree (spec_id, end_time DESC) INCLUDE (status, outcome) WHERE (end_time IS NOT NULL);
CREATE INDEX spec_runs_spec_failed_idx ON public.spec_runs USING btree (spec_id, end_time DESC) WHERE (status = ANY (ARRAY['failed'::text, 'timeout'::text]));
CREATE INDEX spec_runs_spec_idx ON public.spec_runs USING btree (spec_id, start_time DESC);
CREATE INDEX spec_runs_spec_recent_idx ON public.spec_runs USING btree (spec_id, COALESCE(start_time, end_time) DESC, id DESC) INCLUDE (status, outcome);
ALTER INDEX public.events_event_id_key ATTACH PARTITION public.events_default_event_id_occurred_at_key;
ALTER INDEX public.events_type_occurred_at_idx ATTACH PARTITION public.events_default_event_type_occurred_at_idx;
ALTER INDEX public.events_occurred_at_idx ATTACH PARTITION public.events_default_occurred_at_idx;
ALTER INDEX public.events_pkey ATTACH PARTITION public.events_default_pkey;
ALTER INDEX public.events_session_idx ATTACH PARTITION public.events_default_session_id_occurred_at_idx;
ALTER INDEX public.events_session_story_idx ATTACH PARTITION public.events_default_session_id_occurred_at_idx1;
ALTER INDEX public.events_spec_idx ATTACH PARTITION public.events_default_spec_id_occurred_at_idx;
CREATE TRIGGER spec_run_totals_delete AFTER DELETE ON public.spec_runs REFERENCING OLD TABLE AS old_runs FOR EACH STATEMENT EXECUTE FUNCTION public.spec_run_totals_apply();
CREATE TRIGGER spec_run_totals_hourly_insert AFTER INSERT ON public.spec_run_totals FOR EACH ROW EXECUTE FUNCTION public.spec_run_totals_hourly_apply();
CREATE TRIGGER spec_run_totals_hourly_update AFTER UPDATE ON public.spec_run_totals FOR EACH ROW EXECUTE FUNCTION public.spec_run_totals_hourly_apply();
CREATE TRIGGER spec_run_totals_insert AFTER INSERT ON public.spec_runs REFERENCING NEW TABLE AS new_runs FOR EACH STATEMENT EXECUTE FUNCTION public.spec_run_totals_apply();
CREATE TRIGGER spec_run_totals_update AFTER UPDATE ON public.spec_runs REFERENCING OLD TABLE AS old_runs NEW TABLE AS new_runs FOR EACH STATEMENT EXECUTE FUNCTION public.spec_run_totals_apply();
ALTER TABLE ONLY public.alert_messages
    ADD CONSTRAINT alert_messages_alert_id_fkey FOREIGN KEY (alert_id) REFERENCES public.alerts(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.interventions
    ADD CONSTRAINT interventions_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.sessions(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.spec_runs
    ADD CONSTRAINT spec_runs_session_id_fkey FOREIGN KEY (session_id) REFERENCES public.sessions(id) ON DELETE CASCADE;
