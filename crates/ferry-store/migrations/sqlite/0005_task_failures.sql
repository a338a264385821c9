-- Ferry task failure log (sqlite). See docs/executor.md.
-- One row per executor task whose retries were spent (or that a shutdown
-- cancelled), kept until it is re-run successfully or deleted.
-- Times are UTC text, 'YYYY-MM-DDTHH:MM:SS.sssZ', as in ferry_outbox.

CREATE TABLE ferry_task_failures (
    id              TEXT    PRIMARY KEY,
    task            TEXT    NOT NULL,
    -- JSON text; NULL for an ad-hoc closure, which cannot be re-run.
    input           TEXT,
    error           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    first_failed_at TEXT    NOT NULL,
    last_failed_at  TEXT    NOT NULL
);

CREATE INDEX ferry_task_failures_task ON ferry_task_failures (task, first_failed_at);
CREATE INDEX ferry_task_failures_first_failed_at ON ferry_task_failures (first_failed_at);
