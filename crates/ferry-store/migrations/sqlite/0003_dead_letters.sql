-- Messages a consumer gave up on, SQLite. See docs/inbox.md.
-- Times are UTC text, 'YYYY-MM-DDTHH:MM:SS.sssZ', as in ferry_outbox.

CREATE TABLE ferry_dead_letters (
    id           TEXT    PRIMARY KEY,
    consumer     TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    topic        TEXT    NOT NULL,
    message_key  TEXT,
    headers      TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    created_at   TEXT    NOT NULL,
    error        TEXT    NOT NULL,
    attempts     INTEGER NOT NULL,
    dead_at      TEXT    NOT NULL
);

CREATE INDEX ferry_dead_letters_consumer ON ferry_dead_letters (consumer, dead_at);
CREATE INDEX ferry_dead_letters_dead_at ON ferry_dead_letters (dead_at);
