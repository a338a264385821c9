//! Where tasks go when their retries are spent: the failure log.

use ferry_core::BoxFuture;
use ferry_store::{Database, StoreError};
use futures::FutureExt;
use uuid::Uuid;

use crate::{BoxError, TaskFailure};

/// The failure log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FailureLogError {
    /// The database failed or could not be reached; a retry may help.
    #[error("failure log database request failed")]
    Store(#[from] StoreError),
    /// Another implementation's error.
    #[error("failure log request failed")]
    Other(#[source] BoxError),
}

/// Keeps the tasks the executor gave up on, to be listed and re-run.
///
/// Contract:
/// * [`record`](FailureLog::record) is keyed by [`TaskFailure::id`] (the
///   task's id): recording the same id again updates that failure (error,
///   attempts, last failure time) and keeps its input and first failure
///   time. When it returns `Ok(true)` the failure is durable as far as the
///   implementation goes (committed, for a database); `Ok(false)` means the
///   implementation keeps nothing (log only). On `Err` the executor logs
///   the failure with the task's name at error level, so it is not lost
///   silently, but it cannot be re-run.
/// * [`list`](FailureLog::list) returns failures oldest first (by first
///   failure time).
/// * [`remove`](FailureLog::remove) is what a successful re-run calls; a
///   crash between the re-run and the removal leaves the row, so a task
///   re-run from the log runs at least once and its handler should be
///   idempotent.
///
/// Implementations are shared by the executor's tasks: they must be
/// thread safe (`Send + Sync`). The methods return boxed futures because
/// the executor holds the log as a trait object.
pub trait FailureLog: Send + Sync + std::fmt::Debug + 'static {
    /// Records (or updates, same id) a failure; says whether it is kept.
    fn record<'a>(
        &'a self,
        failure: &'a TaskFailure,
    ) -> BoxFuture<'a, Result<bool, FailureLogError>>;

    /// Failures oldest first, at most `limit`: of one task name, or all.
    fn list<'a>(
        &'a self,
        task: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<TaskFailure>, FailureLogError>>;

    /// One failure by id.
    fn get(&self, id: Uuid) -> BoxFuture<'_, Result<Option<TaskFailure>, FailureLogError>>;

    /// Deletes a failure; says whether there was one.
    fn remove(&self, id: Uuid) -> BoxFuture<'_, Result<bool, FailureLogError>>;
}

/// The failure log in the `ferry_task_failures` table, on SQLite,
/// PostgreSQL or MariaDB (run [`Database::migrate`] first). Each call is a
/// transaction of its own.
#[derive(Clone, Debug)]
pub struct DatabaseFailureLog {
    db: Database,
}

impl DatabaseFailureLog {
    /// A failure log in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The database it writes to.
    pub fn database(&self) -> &Database {
        &self.db
    }
}

impl FailureLog for DatabaseFailureLog {
    fn record<'a>(
        &'a self,
        failure: &'a TaskFailure,
    ) -> BoxFuture<'a, Result<bool, FailureLogError>> {
        async move {
            self.db.record_task_failure(failure).await?;
            Ok(true)
        }
        .boxed()
    }

    fn list<'a>(
        &'a self,
        task: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<TaskFailure>, FailureLogError>> {
        async move { Ok(self.db.task_failures(task, limit).await?) }.boxed()
    }

    fn get(&self, id: Uuid) -> BoxFuture<'_, Result<Option<TaskFailure>, FailureLogError>> {
        async move { Ok(self.db.task_failure(id).await?) }.boxed()
    }

    fn remove(&self, id: Uuid) -> BoxFuture<'_, Result<bool, FailureLogError>> {
        async move { Ok(self.db.delete_task_failure(id).await?) }.boxed()
    }
}

/// A failure log that keeps nothing: each failure is written to the
/// application's log (tracing, error level, with the task's name, id,
/// attempts and error; never its input) and that is all. Nothing can be
/// listed or re-run.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogOnlyFailureLog;

impl FailureLog for LogOnlyFailureLog {
    fn record<'a>(
        &'a self,
        failure: &'a TaskFailure,
    ) -> BoxFuture<'a, Result<bool, FailureLogError>> {
        tracing::error!(
            task = %failure.task,
            task_id = %failure.id,
            attempts = failure.attempts,
            error = %failure.error,
            first_failed_at = %failure.first_failed_at,
            "task failed for good (log-only failure log: not kept)"
        );
        futures::future::ready(Ok(false)).boxed()
    }

    fn list<'a>(
        &'a self,
        _task: Option<&'a str>,
        _limit: u32,
    ) -> BoxFuture<'a, Result<Vec<TaskFailure>, FailureLogError>> {
        futures::future::ready(Ok(Vec::new())).boxed()
    }

    fn get(&self, _id: Uuid) -> BoxFuture<'_, Result<Option<TaskFailure>, FailureLogError>> {
        futures::future::ready(Ok(None)).boxed()
    }

    fn remove(&self, _id: Uuid) -> BoxFuture<'_, Result<bool, FailureLogError>> {
        futures::future::ready(Ok(false)).boxed()
    }
}
