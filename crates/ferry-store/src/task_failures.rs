//! The executor's failure log: tasks whose retries were spent (or that a
//! shutdown cancelled), kept in `ferry_task_failures` to be listed and
//! re-run. See `ferry-executor` and docs/executor.md.
//!
//! A row is keyed by the task's own id, so recording the same task again
//! (a re-run that failed once more) updates its row instead of adding one.

use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use crate::outbox::sqlite::format_time;
use crate::{text_columns, Database, StoreError};

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

const COLUMNS: &str = "id, task, input, error, attempts, first_failed_at, last_failed_at";

/// On MariaDB text is read as CHAR: `UUID` and binary-collated columns
/// reach the client flagged as binary, which sqlx will not decode as text.
const MYSQL_COLUMNS: &str = "CAST(id AS CHAR) AS id, CAST(task AS CHAR) AS task,
    CAST(input AS CHAR) AS input, CAST(error AS CHAR) AS error, attempts,
    first_failed_at, last_failed_at";

struct Stored {
    id: Uuid,
    task: String,
    input: Option<String>,
    error: String,
    attempts: i64,
    first_failed_at: DateTime<Utc>,
    last_failed_at: DateTime<Utc>,
}

impl Stored {
    fn into_failure(self) -> Result<TaskFailure, StoreError> {
        let input = self
            .input
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?;
        Ok(TaskFailure {
            id: self.id,
            task: self.task,
            input,
            error: self.error,
            attempts: u32::try_from(self.attempts.max(0)).unwrap_or(u32::MAX),
            first_failed_at: self.first_failed_at,
            last_failed_at: self.last_failed_at,
        })
    }
}

fn from_sqlite(r: &sqlx::sqlite::SqliteRow) -> Result<Stored, sqlx::Error> {
    Ok(Stored {
        id: text_columns::uuid("id", r.try_get("id")?)?,
        task: r.try_get("task")?,
        input: r.try_get("input")?,
        error: r.try_get("error")?,
        attempts: r.try_get("attempts")?,
        first_failed_at: text_columns::time("first_failed_at", r.try_get("first_failed_at")?)?,
        last_failed_at: text_columns::time("last_failed_at", r.try_get("last_failed_at")?)?,
    })
}

fn from_postgres(r: &sqlx::postgres::PgRow) -> Result<Stored, sqlx::Error> {
    Ok(Stored {
        id: r.try_get("id")?,
        task: r.try_get("task")?,
        input: r.try_get("input")?,
        error: r.try_get("error")?,
        attempts: r.try_get("attempts")?,
        first_failed_at: r.try_get("first_failed_at")?,
        last_failed_at: r.try_get("last_failed_at")?,
    })
}

fn from_mysql(r: &sqlx::mysql::MySqlRow) -> Result<Stored, sqlx::Error> {
    Ok(Stored {
        id: text_columns::uuid("id", r.try_get("id")?)?,
        task: r.try_get("task")?,
        input: r.try_get("input")?,
        error: r.try_get("error")?,
        attempts: r.try_get("attempts")?,
        first_failed_at: r.try_get("first_failed_at")?,
        last_failed_at: r.try_get("last_failed_at")?,
    })
}

fn decode_all<R>(
    rows: Vec<R>,
    decode: impl Fn(&R) -> Result<Stored, sqlx::Error>,
) -> Result<Vec<TaskFailure>, StoreError> {
    rows.iter().map(|r| decode(r)?.into_failure()).collect()
}

impl Database {
    /// Records a task failure, in a transaction of its own. A failure with
    /// the same id already there is updated: its error, attempts and
    /// `last_failed_at` are replaced, its `first_failed_at` and input kept.
    pub async fn record_task_failure(&self, failure: &TaskFailure) -> Result<(), StoreError> {
        let input = failure.input.as_ref().map(|v| v.to_string());
        let attempts = i64::from(failure.attempts);
        match self {
            Database::Postgres(pool) => {
                sqlx::query(&format!(
                    "INSERT INTO ferry_task_failures ({COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (id) DO UPDATE SET error = EXCLUDED.error,
                       attempts = EXCLUDED.attempts, last_failed_at = EXCLUDED.last_failed_at"
                ))
                .bind(failure.id)
                .bind(&failure.task)
                .bind(input)
                .bind(&failure.error)
                .bind(attempts)
                .bind(failure.first_failed_at)
                .bind(failure.last_failed_at)
                .execute(pool)
                .await?;
            }
            Database::Sqlite(pool) => {
                sqlx::query(&format!(
                    "INSERT INTO ferry_task_failures ({COLUMNS})
                     VALUES (?, ?, ?, ?, ?, ?, ?)
                     ON CONFLICT (id) DO UPDATE SET error = excluded.error,
                       attempts = excluded.attempts, last_failed_at = excluded.last_failed_at"
                ))
                .bind(failure.id.to_string())
                .bind(&failure.task)
                .bind(input)
                .bind(&failure.error)
                .bind(attempts)
                .bind(format_time(failure.first_failed_at))
                .bind(format_time(failure.last_failed_at))
                .execute(pool)
                .await?;
            }
            Database::Mysql(pool) => {
                sqlx::query(&format!(
                    "INSERT INTO ferry_task_failures ({COLUMNS})
                     VALUES (?, ?, ?, ?, ?, ?, ?)
                     ON DUPLICATE KEY UPDATE error = VALUES(error),
                       attempts = VALUES(attempts), last_failed_at = VALUES(last_failed_at)"
                ))
                .bind(failure.id.to_string())
                .bind(&failure.task)
                .bind(input)
                .bind(&failure.error)
                .bind(attempts)
                .bind(failure.first_failed_at)
                .bind(failure.last_failed_at)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Task failures, oldest first (by first failure), at most `limit`: of
    /// one task name, or of all (`None`).
    pub async fn task_failures(
        &self,
        task: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TaskFailure>, StoreError> {
        let limit = i64::from(limit);
        match self {
            Database::Postgres(pool) => {
                let rows = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM ferry_task_failures
                     WHERE ($1::text IS NULL OR task = $1)
                     ORDER BY first_failed_at, id LIMIT $2"
                ))
                .bind(task)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                decode_all(rows, from_postgres)
            }
            Database::Sqlite(pool) => {
                let rows = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM ferry_task_failures
                     WHERE (?1 IS NULL OR task = ?1)
                     ORDER BY first_failed_at, id LIMIT ?2"
                ))
                .bind(task)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                decode_all(rows, from_sqlite)
            }
            Database::Mysql(pool) => {
                let rows = sqlx::query(&format!(
                    "SELECT {MYSQL_COLUMNS} FROM ferry_task_failures
                     WHERE (? IS NULL OR task = ?)
                     ORDER BY first_failed_at, id LIMIT ?"
                ))
                .bind(task)
                .bind(task)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                decode_all(rows, from_mysql)
            }
        }
    }

    /// One task failure by id, or `None`.
    pub async fn task_failure(&self, id: Uuid) -> Result<Option<TaskFailure>, StoreError> {
        let stored = match self {
            Database::Postgres(pool) => sqlx::query(&format!(
                "SELECT {COLUMNS} FROM ferry_task_failures WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await?
            .map(|r| from_postgres(&r))
            .transpose()?,
            Database::Sqlite(pool) => sqlx::query(&format!(
                "SELECT {COLUMNS} FROM ferry_task_failures WHERE id = ?"
            ))
            .bind(id.to_string())
            .fetch_optional(pool)
            .await?
            .map(|r| from_sqlite(&r))
            .transpose()?,
            Database::Mysql(pool) => sqlx::query(&format!(
                "SELECT {MYSQL_COLUMNS} FROM ferry_task_failures WHERE id = ?"
            ))
            .bind(id.to_string())
            .fetch_optional(pool)
            .await?
            .map(|r| from_mysql(&r))
            .transpose()?,
        };
        stored.map(Stored::into_failure).transpose()
    }

    /// Deletes a task failure (it was re-run successfully, or an operator
    /// gave up on it); says whether there was one.
    pub async fn delete_task_failure(&self, id: Uuid) -> Result<bool, StoreError> {
        let sql = "DELETE FROM ferry_task_failures WHERE id = ";
        let done = match self {
            Database::Postgres(pool) => sqlx::query(&format!("{sql}$1"))
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected(),
            Database::Sqlite(pool) => sqlx::query(&format!("{sql}?"))
                .bind(id.to_string())
                .execute(pool)
                .await?
                .rows_affected(),
            Database::Mysql(pool) => sqlx::query(&format!("{sql}?"))
                .bind(id.to_string())
                .execute(pool)
                .await?
                .rows_affected(),
        };
        Ok(done > 0)
    }
}
