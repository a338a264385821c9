-- Ferry event store, SQLite. See docs/event-store.md.
-- Times are UTC text, 'YYYY-MM-DDTHH:MM:SS.sssZ', so they compare as strings.
--
-- The read horizon holds by itself: SQLite has one writer at a time, so
-- sequence numbers (AUTOINCREMENT: always above any number used before)
-- are handed out in commit order.

CREATE TABLE ferry_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT CHECK (seq > 0),
    -- UUIDv7, as in ferry_outbox.
    event_id     TEXT    NOT NULL DEFAULT (lower(printf('%08x-%04x-7%s-%s%s-%s',
                     CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) >> 16,
                     CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) & 65535,
                     substr(hex(randomblob(2)), 2, 3),
                     substr('89ab', 1 + (abs(random()) % 4), 1),
                     substr(hex(randomblob(2)), 2, 3),
                     hex(randomblob(6))))),
    event_type   TEXT    NOT NULL CHECK (event_type <> ''),
    source_type  TEXT    NOT NULL DEFAULT '',
    source_id    TEXT    NOT NULL DEFAULT '',
    content_type TEXT    NOT NULL DEFAULT 'application/json',
    -- Text or blob: a plain-SQL producer writes text, the Rust API a blob.
    payload      BLOB    NOT NULL,
    recorded_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE UNIQUE INDEX ferry_events_event_id ON ferry_events (event_id);
CREATE INDEX ferry_events_type_seq ON ferry_events (event_type, seq);
CREATE INDEX ferry_events_source_seq ON ferry_events (source_type, source_id, seq);

-- SQLite triggers cannot replace a value, so a seq given by the client is
-- refused rather than overridden (NEW.seq is -1 when it is left out).
CREATE TRIGGER ferry_events_seq_assigned
    BEFORE INSERT ON ferry_events
    WHEN NEW.seq <> -1
BEGIN
    SELECT RAISE(ABORT, 'ferry_events.seq is assigned by the database; leave it out');
END;

CREATE TRIGGER ferry_events_no_update
    BEFORE UPDATE ON ferry_events
BEGIN
    SELECT RAISE(ABORT, 'ferry_events is append-only');
END;

CREATE TRIGGER ferry_events_no_delete
    BEFORE DELETE ON ferry_events
BEGIN
    SELECT RAISE(ABORT, 'ferry_events is append-only');
END;

CREATE TABLE ferry_event_offsets (
    reader     TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL CHECK (position >= 0),
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE ferry_event_failures (
    reader     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    event_id   TEXT    NOT NULL,
    attempts   INTEGER NOT NULL,
    last_error TEXT    NOT NULL,
    failed_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (reader, seq)
);

CREATE INDEX ferry_event_failures_failed_at ON ferry_event_failures (failed_at);
