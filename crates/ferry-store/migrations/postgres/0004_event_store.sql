-- Ferry event store, PostgreSQL. See docs/event-store.md.

-- Sequence numbers come from this sequence, taken by the insert trigger
-- under a transaction-level advisory lock. CACHE 1 (the default) matters:
-- with a per-session cache, numbers would no longer follow the order in
-- which sessions ask for them.
CREATE SEQUENCE ferry_events_seq AS BIGINT START 1 CACHE 1;

CREATE TABLE ferry_events (
    -- Assigned by ferry_events_append(); any value the client gives is replaced.
    seq           BIGINT      PRIMARY KEY,
    event_id      UUID        NOT NULL DEFAULT ferry_uuid_v7(),
    event_type    TEXT        NOT NULL CHECK (event_type <> ''),
    source_type   TEXT        NOT NULL DEFAULT '',
    source_id     TEXT        NOT NULL DEFAULT '',
    content_type  TEXT        NOT NULL DEFAULT 'application/json',
    -- Text (valid UTF-8 without NUL) or bytes: exactly one of the two.
    payload       TEXT,
    payload_bytes BYTEA,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT ferry_events_one_payload CHECK ((payload IS NULL) <> (payload_bytes IS NULL))
);

ALTER SEQUENCE ferry_events_seq OWNED BY ferry_events.seq;

CREATE UNIQUE INDEX ferry_events_event_id ON ferry_events (event_id);
-- Readers filtered by type, or by source, in sequence order.
CREATE INDEX ferry_events_type_seq ON ferry_events (event_type, seq);
CREATE INDEX ferry_events_source_seq ON ferry_events (source_type, source_id, seq);

-- The read horizon: sequence numbers are handed out in commit order. The
-- trigger takes a transaction-level advisory lock (key: 'ferry_ev' in
-- ASCII) before nextval; the transaction keeps it until it ends, and
-- PostgreSQL makes a commit visible before it releases its locks. So the
-- next transaction to take a number starts after every lower number is
-- either visible or rolled back, and a reader that sees number N sees
-- every committed number below N. Cost: transactions that append are
-- serialised from their first append to their end (append last).
CREATE FUNCTION ferry_events_append() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(7378429400504558966);
  NEW.seq := nextval('ferry_events_seq');
  RETURN NEW;
END
$$;

CREATE TRIGGER ferry_events_append
    BEFORE INSERT ON ferry_events
    FOR EACH ROW EXECUTE FUNCTION ferry_events_append();

CREATE FUNCTION ferry_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ferry_events is append-only' USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER ferry_events_append_only
    BEFORE UPDATE OR DELETE ON ferry_events
    FOR EACH ROW EXECUTE FUNCTION ferry_events_append_only();

CREATE TRIGGER ferry_events_no_truncate
    BEFORE TRUNCATE ON ferry_events
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_events_append_only();

-- Wakes readers within milliseconds of a commit (they also poll).
CREATE FUNCTION ferry_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('ferry_events', '');
  RETURN NULL;
END
$$;

CREATE TRIGGER ferry_events_notify
    AFTER INSERT ON ferry_events
    FOR EACH STATEMENT EXECUTE FUNCTION ferry_events_notify();

-- How far each reader (a forwarder, an HTTP client) got: the highest seq it
-- is done with. Only ever moves forward.
CREATE TABLE ferry_event_offsets (
    reader     TEXT        PRIMARY KEY,
    position   BIGINT      NOT NULL CHECK (position >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Events a reader gave up on and stepped over.
CREATE TABLE ferry_event_failures (
    reader     TEXT        NOT NULL,
    seq        BIGINT      NOT NULL,
    event_id   UUID        NOT NULL,
    attempts   INTEGER     NOT NULL,
    last_error TEXT        NOT NULL,
    failed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (reader, seq)
);

CREATE INDEX ferry_event_failures_failed_at ON ferry_event_failures (failed_at);
