-- Ferry inbox, SQLite: the message ids each consumer has applied. See docs/inbox.md.

CREATE TABLE ferry_inbox (
    consumer    TEXT NOT NULL,
    -- Lower-case hyphenated UUID text.
    message_id  TEXT NOT NULL,
    received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, message_id)
) WITHOUT ROWID;

CREATE INDEX ferry_inbox_received ON ferry_inbox (received_at);
