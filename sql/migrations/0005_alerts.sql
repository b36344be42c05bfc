-- Alerts (issue 14): conditions that need a person, and the durable outbox of their messages.
--
-- An alert is one condition on one subject (a session stalled, a request waiting, the night
-- over budget, a disk low). The evaluator that detects it inserts it, with one outbox row per
-- destination, in the same transaction; at most one alert per (rule, subject) is open at a
-- time, so a condition that lasts all night sends one message, then one "resolved".
CREATE TABLE alerts (
    id           bigserial PRIMARY KEY,
    rule         text        NOT NULL,
    subject      text        NOT NULL,
    title        text        NOT NULL,
    body         text        NOT NULL,
    link         text,
    session_id   uuid,
    fired_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz
);
CREATE UNIQUE INDEX alerts_open_key ON alerts (rule, subject) WHERE resolved_at IS NULL;
CREATE INDEX alerts_subject_idx ON alerts (rule, subject);
CREATE INDEX alerts_fired_idx ON alerts (fired_at DESC);

-- The outbox: one message to one destination. Delivered (sent_at), retried with a growing
-- backoff (next_attempt_at, attempts, last_error), or given up (gave_up_at). `destination` is
-- a label that never holds the URL's secrets (Apprise's privacy form, or "command").
CREATE TABLE alert_messages (
    id               bigserial PRIMARY KEY,
    alert_id         bigint      REFERENCES alerts (id) ON DELETE CASCADE,
    kind             text        NOT NULL,
    destination      text        NOT NULL,
    title            text        NOT NULL,
    body             text        NOT NULL,
    body_format      text        NOT NULL DEFAULT 'text',
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    gave_up_at       timestamptz,
    last_error       text,
    CONSTRAINT alert_messages_kind_check CHECK (kind IN ('firing', 'resolved', 'test', 'report')),
    CONSTRAINT alert_messages_format_check CHECK (body_format IN ('text', 'markdown'))
);
CREATE INDEX alert_messages_due_idx ON alert_messages (next_attempt_at)
    WHERE sent_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX alert_messages_alert_idx ON alert_messages (alert_id);
