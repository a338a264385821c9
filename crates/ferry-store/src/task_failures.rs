//! The executor's failure log: tasks whose retries were spent (or that a
//! shutdown cancelled), kept in `ferry_task_failures` to be listed and
//! re-run. See `ferry-executor` and docs/executor.md.
//!
//! A row is keyed by the task's own id, so recording the same task again
//! (a re-run that failed once more) updates its row instead of adding one.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::admin::cause_of;
use crate::dialect::{with_pool, Dialect, PerDialect, Read, Stmt};
use crate::log_table::{self, LogTable, Record};
use crate::{Database, StoreError};

/// A task the executor gave up on.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskFailure {
    /// The task's id (chosen when it was submitted).
    pub id: Uuid,
    /// The task's name: for a registered task, the name its handler is
    /// registered under.
    pub task: String,
    /// The registered task's input; `None` for an ad-hoc closure, which
    /// cannot be re-run from the log.
    pub input: Option<serde_json::Value>,
    /// The last error (or panic message), or why the task was cancelled.
    pub error: String,
    /// Attempts made in all.
    pub attempts: u32,
    /// When the task first failed.
    pub first_failed_at: DateTime<Utc>,
    /// When the task last failed.
    pub last_failed_at: DateTime<Utc>,
}

impl TaskFailure {
    /// Whether the task can be re-run from the log: it was a registered
    /// task, so its input is kept.
    pub fn is_rerunnable(&self) -> bool {
        self.input.is_some()
    }
}

impl Record for TaskFailure {
    fn table() -> &'static LogTable {
        static TABLE: LogTable = LogTable {
            table: "ferry_task_failures",
            columns: &[
                "id",
                "task",
                "input",
                "error",
                "attempts",
                "first_failed_at",
                "last_failed_at",
                "cause",
            ],
            plain: &["attempts", "first_failed_at", "last_failed_at"],
            filter: "task",
            order: "first_failed_at, id",
            replace: &["error", "attempts", "last_failed_at", "cause"],
            statements: PerDialect::new(),
        };
        &TABLE
    }

    fn bind<'q, DB: Dialect>(&'q self, stmt: Stmt<'q, DB>) -> Stmt<'q, DB> {
        stmt.bind(DB::id(self.id))
            .bind(self.task.as_str())
            .bind(self.input.as_ref().map(|v| v.to_string()))
            .bind(self.error.as_str())
            .bind(i64::from(self.attempts))
            .bind(DB::time(self.first_failed_at))
            .bind(DB::time(self.last_failed_at))
            .bind(cause_of(&self.error))
    }

    fn read<DB: Dialect>(r: &DB::Row) -> Result<Self, StoreError> {
        let input: Option<String> = r.read("input")?;
        let input = input
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?;
        let attempts: i64 = r.read("attempts")?;
        Ok(TaskFailure {
            id: DB::read_uuid(r, "id")?,
            task: r.read("task")?,
            input,
            error: r.read("error")?,
            attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
            first_failed_at: DB::read_time(r, "first_failed_at")?,
            last_failed_at: DB::read_time(r, "last_failed_at")?,
        })
    }
}

impl Database {
    /// Records a task failure, in a transaction of its own. A failure with
    /// the same id already there is updated: its error, attempts and
    /// `last_failed_at` are replaced, its `first_failed_at` and input kept.
    pub async fn record_task_failure(&self, failure: &TaskFailure) -> Result<(), StoreError> {
        with_pool!(self, |pool| log_table::insert(pool, failure).await)
    }

    /// Task failures, oldest first (by first failure), at most `limit`: of
    /// one task name, or of all (`None`).
    pub async fn task_failures(
        &self,
        task: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TaskFailure>, StoreError> {
        with_pool!(self, |pool| log_table::list(pool, task, limit).await)
    }

    /// One task failure by id, or `None`.
    pub async fn task_failure(&self, id: Uuid) -> Result<Option<TaskFailure>, StoreError> {
        with_pool!(self, |pool| log_table::get(pool, id).await)
    }

    /// Deletes a task failure (it was re-run successfully, or an operator
    /// gave up on it); says whether there was one.
    pub async fn delete_task_failure(&self, id: Uuid) -> Result<bool, StoreError> {
        with_pool!(self, |pool| log_table::delete::<_, TaskFailure>(pool, id)
            .await)
    }
}
