-- Operations console (issue 12), MariaDB: the dead-letter view over the
-- four kinds of failure, the audit log and pause flags. See docs/console.md.
-- Written to be run again (IF NOT EXISTS): DDL is not transactional here.
--
-- `cause` is the fingerprint of the error (ferry_store::admin::cause_of, at
-- most 160 characters), written with the failure so that grouping by cause
-- is one indexed GROUP BY; NULL where plain SQL or a build before this one
-- wrote the row (the store then fingerprints the error when it reads it).
-- InnoDB secondary indexes end with the primary key, so (dead_at) orders
-- by (dead_at, id) already.

-- When an outbox message died; NULL for rows made dead by plain SQL (the
-- store then reads next_attempt_at, the time of its last attempt). No new
-- index on ferry_outbox: MariaDB has no partial indexes, and every index
-- there costs the relay on each insert; dead rows are found through
-- ferry_outbox_status_seq.
ALTER TABLE ferry_outbox
    ADD COLUMN IF NOT EXISTS dead_at TIMESTAMP(6) NULL DEFAULT NULL,
    ADD COLUMN IF NOT EXISTS cause VARCHAR(200) NULL DEFAULT NULL;

ALTER TABLE ferry_dead_letters ADD COLUMN IF NOT EXISTS cause VARCHAR(200) NULL DEFAULT NULL;
ALTER TABLE ferry_event_failures ADD COLUMN IF NOT EXISTS cause VARCHAR(200) NULL DEFAULT NULL;
ALTER TABLE ferry_task_failures ADD COLUMN IF NOT EXISTS cause VARCHAR(200) NULL DEFAULT NULL;

CREATE INDEX IF NOT EXISTS ferry_dead_letters_cause ON ferry_dead_letters (consumer, cause, dead_at);
CREATE INDEX IF NOT EXISTS ferry_event_failures_reader ON ferry_event_failures (reader, failed_at);
CREATE INDEX IF NOT EXISTS ferry_event_failures_cause ON ferry_event_failures (reader, cause, failed_at);
CREATE INDEX IF NOT EXISTS ferry_task_failures_last_failed_at ON ferry_task_failures (last_failed_at);
CREATE INDEX IF NOT EXISTS ferry_task_failures_task_last ON ferry_task_failures (task(191), last_failed_at);
CREATE INDEX IF NOT EXISTS ferry_task_failures_cause ON ferry_task_failures (task(191), cause, last_failed_at);

-- Every change made through the admin API or console: who (the token's
-- name), what, on what, how many.
CREATE TABLE IF NOT EXISTS ferry_audit_log (
    id     BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at     TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    actor  TEXT         NOT NULL,
    action TEXT         NOT NULL,
    target TEXT         NOT NULL,
    count  BIGINT       NOT NULL,
    detail TEXT
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

-- Paused pipelines, by name; the relays of every instance poll it.
CREATE TABLE IF NOT EXISTS ferry_pauses (
    name      VARCHAR(255) NOT NULL PRIMARY KEY,
    paused_by TEXT         NOT NULL,
    paused_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

-- The W3C trace context of the span that appended an event, so a
-- forwarder's deliveries continue the producer's trace: the `traceparent`
-- value, then, when there is trace state, one space and the `tracestate`
-- value (a traceparent never contains a space). NULL: no trace.
ALTER TABLE ferry_events ADD COLUMN IF NOT EXISTS trace_context TEXT;
