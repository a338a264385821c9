-- Ferry outbox, SQLite. See docs/outbox.md.
-- Times are UTC text, 'YYYY-MM-DDTHH:MM:SS.sssZ', so they compare as strings.

CREATE TABLE ferry_outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    -- UUIDv7: 48-bit Unix milliseconds, version 7, random rest. julianday()
    -- rather than unixepoch('subsec'), which SQLite before 3.42 lacks.
    message_id      TEXT    NOT NULL DEFAULT (lower(printf('%08x-%04x-7%s-%s%s-%s',
                        CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) >> 16,
                        CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) & 65535,
                        substr(hex(randomblob(2)), 2, 3),
                        substr('89ab', 1 + (abs(random()) % 4), 1),
                        substr(hex(randomblob(2)), 2, 3),
                        hex(randomblob(6))))),
    kind            TEXT    NOT NULL DEFAULT 'event' CHECK (kind IN ('event', 'command')),
    topic           TEXT    NOT NULL CHECK (topic <> ''),
    message_key     TEXT,
    headers         TEXT    NOT NULL DEFAULT '{}',
    content_type    TEXT    NOT NULL DEFAULT 'application/json',
    -- Text or blob: a plain-SQL producer writes text, the Rust API a blob.
    payload         BLOB    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    next_attempt_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    delivered_at    TEXT,
    last_error      TEXT
);

CREATE UNIQUE INDEX ferry_outbox_message_id ON ferry_outbox (message_id);
CREATE INDEX ferry_outbox_pending ON ferry_outbox (seq) WHERE status = 'pending';
-- The first due message of each key, for probing a sink that is down.
CREATE INDEX ferry_outbox_pending_key ON ferry_outbox (message_key, seq)
    WHERE status = 'pending' AND message_key IS NOT NULL;
CREATE INDEX ferry_outbox_retrying_key ON ferry_outbox (message_key, seq)
    WHERE status = 'pending' AND attempts > 0;
CREATE INDEX ferry_outbox_retrying_due ON ferry_outbox (next_attempt_at)
    WHERE status = 'pending' AND attempts > 0;
CREATE INDEX ferry_outbox_delivered ON ferry_outbox (delivered_at) WHERE status = 'delivered';
CREATE INDEX ferry_outbox_dead ON ferry_outbox (seq) WHERE status = 'dead';
