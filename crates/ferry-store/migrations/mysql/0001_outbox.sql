-- Ferry outbox, MariaDB (10.10 or newer: RANDOM_BYTES, SKIP LOCKED). See docs/outbox.md.
-- DDL is not transactional on MariaDB: every statement is written to be run
-- again, so a migration that failed half-way completes on the next run.
-- Binary, no-pad collation: topics and keys compare byte for byte, as on
-- PostgreSQL and SQLite.

CREATE TABLE IF NOT EXISTS ferry_outbox (
    seq             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    -- UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version 7, variant 10, random rest.
    message_id      UUID         NOT NULL DEFAULT (CONCAT_WS('-',
                        LPAD(HEX(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) >> 16), 8, '0'),
                        LPAD(HEX(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) & 65535), 4, '0'),
                        CONCAT('7', SUBSTR(HEX(RANDOM_BYTES(2)), 2)),
                        CONCAT(HEX(8 | (ASCII(RANDOM_BYTES(1)) & 3)), SUBSTR(HEX(RANDOM_BYTES(2)), 2)),
                        HEX(RANDOM_BYTES(6)))),
    kind            VARCHAR(16)  NOT NULL DEFAULT 'event',
    topic           VARCHAR(255) NOT NULL,
    message_key     VARCHAR(255),
    headers         JSON         NOT NULL DEFAULT '{}',
    content_type    VARCHAR(255) NOT NULL DEFAULT 'application/json',
    -- Text or bytes: a plain-SQL producer writes a string, the Rust API bytes.
    payload         LONGBLOB     NOT NULL,
    status          VARCHAR(16)  NOT NULL DEFAULT 'pending',
    attempts        INT          NOT NULL DEFAULT 0,
    created_at      TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    next_attempt_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    delivered_at    TIMESTAMP(6) NULL DEFAULT NULL,
    last_error      TEXT,
    CONSTRAINT ferry_outbox_kind CHECK (kind IN ('event', 'command')),
    CONSTRAINT ferry_outbox_topic CHECK (topic <> ''),
    CONSTRAINT ferry_outbox_status CHECK (status IN ('pending', 'delivered', 'dead')),
    UNIQUE KEY ferry_outbox_message_id (message_id),
    -- The relay's claim scan, in sequence order (no partial indexes here).
    KEY ferry_outbox_status_seq (status, seq),
    -- Per-key order checks.
    KEY ferry_outbox_key_seq (message_key, seq),
    -- Messages waiting for a retry (few): the keys they hold back, and when
    -- the next one is due.
    KEY ferry_outbox_retrying_key (status, attempts, message_key, seq),
    KEY ferry_outbox_retrying_due (status, attempts, next_attempt_at),
    -- Delivered rows by age, for the purge.
    KEY ferry_outbox_status_delivered (status, delivered_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;
