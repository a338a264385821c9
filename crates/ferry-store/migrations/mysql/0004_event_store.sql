-- Ferry event store, MariaDB (10.10 or newer). See docs/event-store.md.
-- DDL is not transactional on MariaDB: every statement is written to be run
-- again, so a migration that failed half-way completes on the next run.

-- The sequence counter: one row. The insert trigger increments it, so the
-- row lock is held by the appending transaction until it commits or rolls
-- back; InnoDB makes a commit visible before it releases its locks. So
-- sequence numbers are handed out in commit order, without gaps (a
-- rollback undoes the increment), and a reader that sees number N sees
-- every committed number below N. Cost: transactions that append are
-- serialised from their first append to their end (append last).
CREATE TABLE IF NOT EXISTS ferry_event_head (
    id  TINYINT NOT NULL PRIMARY KEY CHECK (id = 1),
    seq BIGINT  NOT NULL
) ENGINE = InnoDB;

INSERT IGNORE INTO ferry_event_head (id, seq) VALUES (1, 0);

CREATE TABLE IF NOT EXISTS ferry_events (
    -- Assigned by the insert trigger; any value the client gives is replaced.
    seq          BIGINT       NOT NULL DEFAULT 0 PRIMARY KEY,
    -- UUIDv7, as in ferry_outbox.
    event_id     UUID         NOT NULL DEFAULT (CONCAT_WS('-',
                     LPAD(HEX(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) >> 16), 8, '0'),
                     LPAD(HEX(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) & 65535), 4, '0'),
                     CONCAT('7', SUBSTR(HEX(RANDOM_BYTES(2)), 2)),
                     CONCAT(HEX(8 | (ASCII(RANDOM_BYTES(1)) & 3)), SUBSTR(HEX(RANDOM_BYTES(2)), 2)),
                     HEX(RANDOM_BYTES(6)))),
    event_type   VARCHAR(255) NOT NULL,
    source_type  VARCHAR(255) NOT NULL DEFAULT '',
    source_id    VARCHAR(255) NOT NULL DEFAULT '',
    content_type VARCHAR(255) NOT NULL DEFAULT 'application/json',
    -- Text or bytes: a plain-SQL producer writes a string, the Rust API bytes.
    payload      LONGBLOB     NOT NULL,
    recorded_at  TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    CONSTRAINT ferry_events_type CHECK (event_type <> ''),
    UNIQUE KEY ferry_events_event_id (event_id),
    -- Readers filtered by type, or by source, in sequence order.
    KEY ferry_events_type_seq (event_type, seq),
    KEY ferry_events_source_seq (source_type, source_id, seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

CREATE OR REPLACE TRIGGER ferry_events_append
BEFORE INSERT ON ferry_events FOR EACH ROW
BEGIN
    -- LAST_INSERT_ID(expr) carries the value read under the row lock to
    -- the next statement; MariaDB restores the session's own
    -- LAST_INSERT_ID() when the trigger ends.
    UPDATE ferry_event_head SET seq = LAST_INSERT_ID(seq + 1) WHERE id = 1;
    SET NEW.seq = LAST_INSERT_ID();
END;

CREATE OR REPLACE TRIGGER ferry_events_no_update
BEFORE UPDATE ON ferry_events FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'ferry_events is append-only';

CREATE OR REPLACE TRIGGER ferry_events_no_delete
BEFORE DELETE ON ferry_events FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'ferry_events is append-only';

CREATE TABLE IF NOT EXISTS ferry_event_offsets (
    reader     VARCHAR(255) NOT NULL PRIMARY KEY,
    position   BIGINT       NOT NULL,
    updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    CONSTRAINT ferry_event_offsets_position CHECK (position >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;

CREATE TABLE IF NOT EXISTS ferry_event_failures (
    reader     VARCHAR(255) NOT NULL,
    seq        BIGINT       NOT NULL,
    event_id   UUID         NOT NULL,
    attempts   INT          NOT NULL,
    last_error TEXT         NOT NULL,
    failed_at  TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (reader, seq),
    KEY ferry_event_failures_failed_at (failed_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;
