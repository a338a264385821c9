-- Ferry inbox, PostgreSQL: the message ids each consumer has applied. See docs/inbox.md.

CREATE TABLE ferry_inbox (
    consumer    TEXT        NOT NULL,
    message_id  UUID        NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

-- Pruning by age.
CREATE INDEX ferry_inbox_received ON ferry_inbox (received_at);
