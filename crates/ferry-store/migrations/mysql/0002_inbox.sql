-- Ferry inbox, MariaDB: the message ids each consumer has applied. See docs/inbox.md.

CREATE TABLE IF NOT EXISTS ferry_inbox (
    consumer    VARCHAR(255) NOT NULL,
    message_id  UUID         NOT NULL,
    received_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (consumer, message_id),
    KEY ferry_inbox_received (received_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;
