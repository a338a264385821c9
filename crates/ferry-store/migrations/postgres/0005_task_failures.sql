-- Ferry task failure log (postgres). See docs/executor.md.
-- One row per executor task whose retries were spent (or that a shutdown
-- cancelled), kept until it is re-run successfully or deleted.

CREATE TABLE ferry_task_failures (
    -- The task's own id: recording the same task again updates its row.
    id              UUID        PRIMARY KEY,
    task            TEXT        NOT NULL,
    -- The registered task's input, JSON text; NULL for an ad-hoc closure,
    -- which cannot be re-run.
    input           TEXT,
    error           TEXT        NOT NULL,
    attempts        BIGINT      NOT NULL,
    first_failed_at TIMESTAMPTZ NOT NULL,
    last_failed_at  TIMESTAMPTZ NOT NULL
);

CREATE INDEX ferry_task_failures_task ON ferry_task_failures (task, first_failed_at);
CREATE INDEX ferry_task_failures_first_failed_at ON ferry_task_failures (first_failed_at);
