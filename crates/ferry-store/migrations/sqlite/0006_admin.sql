-- Operations console (issue 12), SQLite: the dead-letter view over the
-- four kinds of failure, the audit log and pause flags. See docs/console.md.
-- Times are UTC text, 'YYYY-MM-DDTHH:MM:SS.sssZ', as in ferry_outbox.
--
-- `cause` is the fingerprint of the error (ferry_store::admin::cause_of),
-- written with the failure so that grouping by cause is one indexed
-- GROUP BY; NULL where plain SQL or a build before this one wrote the row
-- (the store then fingerprints the error when it reads it).

-- When an outbox message died; NULL for rows made dead by plain SQL (the
-- store then reads next_attempt_at, the time of its last attempt).
ALTER TABLE ferry_outbox ADD COLUMN dead_at TEXT;
ALTER TABLE ferry_outbox ADD COLUMN cause TEXT;
ALTER TABLE ferry_dead_letters ADD COLUMN cause TEXT;
ALTER TABLE ferry_event_failures ADD COLUMN cause TEXT;
ALTER TABLE ferry_task_failures ADD COLUMN cause TEXT;

-- Dead outbox messages only: partial indexes, which the relay's inserts and
-- its updates of pending rows never write to.
CREATE INDEX ferry_outbox_dead_at ON ferry_outbox (COALESCE(dead_at, next_attempt_at), seq)
    WHERE status = 'dead';
CREATE INDEX ferry_outbox_dead_topic ON ferry_outbox (topic, COALESCE(dead_at, next_attempt_at), seq)
    WHERE status = 'dead';
-- Grouping by stored cause: answered from the index alone (count, latest),
-- the newest error of each group by a LIMIT 1 over it.
CREATE INDEX ferry_outbox_dead_cause ON ferry_outbox (topic, cause, dead_at, next_attempt_at)
    WHERE status = 'dead' AND cause IS NOT NULL;
-- The outbox browser's key filter on dead messages (pending ones have
-- ferry_outbox_pending_key). No key index over every status: the relay's
-- settling updates would write it for each message (measured on
-- PostgreSQL, 1M rows: a 200k-row status update took 1.4 s without such an
-- index and 2.7-3.2 s with it).
CREATE INDEX ferry_outbox_dead_key ON ferry_outbox (message_key, seq)
    WHERE status = 'dead' AND message_key IS NOT NULL;
-- Dead rows without a stored cause (plain SQL): fingerprinted when read.
CREATE INDEX ferry_outbox_dead_no_cause ON ferry_outbox (seq) WHERE status = 'dead' AND cause IS NULL;

-- Newest first by (time, id), all or of one consumer, and grouped by cause.
DROP INDEX ferry_dead_letters_dead_at;
CREATE INDEX ferry_dead_letters_dead_at ON ferry_dead_letters (dead_at, id);
DROP INDEX ferry_dead_letters_consumer;
CREATE INDEX ferry_dead_letters_consumer ON ferry_dead_letters (consumer, dead_at, id);
CREATE INDEX ferry_dead_letters_cause ON ferry_dead_letters (consumer, cause, dead_at);
CREATE INDEX ferry_dead_letters_no_cause ON ferry_dead_letters (dead_at) WHERE cause IS NULL;

DROP INDEX ferry_event_failures_failed_at;
CREATE INDEX ferry_event_failures_failed_at ON ferry_event_failures (failed_at, reader, seq);
CREATE INDEX ferry_event_failures_reader ON ferry_event_failures (reader, failed_at, seq);
CREATE INDEX ferry_event_failures_cause ON ferry_event_failures (reader, cause, failed_at);
CREATE INDEX ferry_event_failures_no_cause ON ferry_event_failures (failed_at) WHERE cause IS NULL;

CREATE INDEX ferry_task_failures_last_failed_at ON ferry_task_failures (last_failed_at, id);
CREATE INDEX ferry_task_failures_task_last ON ferry_task_failures (task, last_failed_at, id);
CREATE INDEX ferry_task_failures_cause ON ferry_task_failures (task, cause, last_failed_at);
CREATE INDEX ferry_task_failures_no_cause ON ferry_task_failures (last_failed_at) WHERE cause IS NULL;

-- Every change made through the admin API or console: who (the token's
-- name), what, on what, how many.
CREATE TABLE ferry_audit_log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    count  INTEGER NOT NULL,
    detail TEXT
);

-- Paused pipelines, by name; the relays of every instance poll it.
CREATE TABLE ferry_pauses (
    name      TEXT PRIMARY KEY,
    paused_by TEXT NOT NULL,
    paused_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- The W3C trace context of the span that appended an event, so a
-- forwarder's deliveries continue the producer's trace: the `traceparent`
-- value, then, when there is trace state, one space and the `tracestate`
-- value (a traceparent never contains a space). NULL: no trace.
ALTER TABLE ferry_events ADD COLUMN trace_context TEXT;
