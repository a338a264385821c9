-- Messages a consumer gave up on, PostgreSQL. See docs/inbox.md.

CREATE TABLE ferry_dead_letters (
    id           UUID        PRIMARY KEY,
    consumer     TEXT        NOT NULL,
    message_id   UUID        NOT NULL,
    kind         TEXT        NOT NULL,
    topic        TEXT        NOT NULL,
    message_key  TEXT,
    -- JSON text, exactly as the message carried them.
    headers      TEXT        NOT NULL,
    content_type TEXT        NOT NULL,
    payload      BYTEA       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    error        TEXT        NOT NULL,
    attempts     BIGINT      NOT NULL,
    dead_at      TIMESTAMPTZ NOT NULL
);

CREATE INDEX ferry_dead_letters_consumer ON ferry_dead_letters (consumer, dead_at);
CREATE INDEX ferry_dead_letters_dead_at ON ferry_dead_letters (dead_at);
