-- Messages a consumer gave up on, MariaDB. See docs/inbox.md.
-- Text columns are TEXT: a dead letter must be recordable whatever a
-- producer put in the message (the outbox's 255-character limits do not
-- bind messages from other producers).

CREATE TABLE IF NOT EXISTS ferry_dead_letters (
    id           UUID         NOT NULL PRIMARY KEY,
    consumer     VARCHAR(255) NOT NULL,
    message_id   UUID         NOT NULL,
    kind         VARCHAR(16)  NOT NULL,
    topic        TEXT         NOT NULL,
    message_key  TEXT,
    headers      LONGTEXT     NOT NULL,
    content_type TEXT         NOT NULL,
    payload      LONGBLOB     NOT NULL,
    created_at   TIMESTAMP(6) NOT NULL,
    error        TEXT         NOT NULL,
    attempts     BIGINT       NOT NULL,
    dead_at      TIMESTAMP(6) NOT NULL,
    KEY ferry_dead_letters_consumer (consumer, dead_at),
    KEY ferry_dead_letters_dead_at (dead_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;
