//! Ferry's bounded in-process executor: work that may run after the
//! response (send the welcome mail, refresh a cache), on a fixed number of
//! slots with a bounded queue, retried per a [`ferry_core::RetryPolicy`],
//! and never lost silently: a task's error or panic is logged with its
//! name, retried, and when retries are spent recorded in a
//! [`FailureLog`] from which it can be listed and re-run.
//!
//! **Naming convention.** A function that returns before its work is done
//! says so in its name (`…_async`) and returns a [`TaskHandle`] the caller
//! may await (for the [`TaskOutcome`]) or drop (the task still runs):
//! [`Executor::submit_async`], [`Executor::submit_registered_async`].
//! Every other function returns when its work is done
//! ([`Executor::rerun_failure`], [`Executor::shutdown`]).
//!
//! ```no_run
//! # async fn demo(db: ferry_store::Database) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use ferry_executor::{DatabaseFailureLog, Executor, ExecutorConfig};
//!
//! let executor = Executor::new(
//!     ExecutorConfig::default(),
//!     Arc::new(DatabaseFailureLog::new(db)),
//! )?;
//! // Re-runnable: registered by name, submitted with a JSON input.
//! executor.register("send_welcome_mail", |input: serde_json::Value| async move {
//!     let _address = input["email"].as_str().ok_or("no email")?;
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//! })?;
//! let handle = executor
//!     .submit_registered_async("send_welcome_mail", serde_json::json!({"email": "a@example.com"}))
//!     .await?;
//! drop(handle); // the task still runs
//!
//! let report = executor.shutdown(executor.config().shutdown_deadline).await;
//! assert!(report.is_complete());
//! # Ok(()) }
//! ```

mod config;
mod error;
mod executor;
mod failure_log;
mod metrics;
mod shutdown;
mod task;

pub use config::{ExecutorConfig, InvalidExecutorConfig, OverloadPolicy};
pub use error::{RegisterError, RerunError, SubmitError};
pub use executor::{Executor, SHUTDOWN_RECORD_GRACE};
pub use failure_log::{DatabaseFailureLog, FailureLog, FailureLogError, LogOnlyFailureLog};
pub use ferry_store::task_failures::TaskFailure;
pub use metrics::ExecutorMetrics;
pub use shutdown::{ShutdownReport, UnfinishedState, UnfinishedTask};
pub use task::{BoxError, TaskHandle, TaskOutcome, TaskPanicked};
