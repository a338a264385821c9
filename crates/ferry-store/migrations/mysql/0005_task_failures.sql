-- Ferry task failure log (mysql). See docs/executor.md.
-- One row per executor task whose retries were spent (or that a shutdown
-- cancelled), kept until it is re-run successfully or deleted.
-- Written to be run again (IF NOT EXISTS): DDL is not transactional here.

CREATE TABLE IF NOT EXISTS ferry_task_failures (
    id              UUID         NOT NULL PRIMARY KEY,
    task            TEXT         NOT NULL,
    -- JSON text; NULL for an ad-hoc closure, which cannot be re-run.
    input           LONGTEXT,
    error           MEDIUMTEXT   NOT NULL,
    attempts        BIGINT       NOT NULL,
    first_failed_at TIMESTAMP(6) NOT NULL,
    last_failed_at  TIMESTAMP(6) NOT NULL,
    KEY ferry_task_failures_task (task(191), first_failed_at),
    KEY ferry_task_failures_first_failed_at (first_failed_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_nopad_bin;
