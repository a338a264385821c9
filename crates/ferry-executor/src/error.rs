//! What can go wrong when submitting, registering or re-running a task.

use uuid::Uuid;

use crate::{BoxError, FailureLogError};

/// A task the executor did not take.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full and the overload policy is `reject`. A retry after
    /// a while may succeed.
    #[error("executor is full ({capacity} tasks queued), task {task:?} refused; retrying later may succeed")]
    Full {
        /// The refused task's name.
        task: String,
        /// The queue's capacity.
        capacity: usize,
    },
    /// The executor is shutting down (or shut down). A retry will not help.
    #[error("executor is shutting down and takes no new tasks, task {task:?} refused")]
    ShuttingDown {
        /// The refused task's name.
        task: String,
    },
    /// No handler is registered under this name. A retry will not help.
    #[error("no task is registered under the name {task:?}")]
    UnknownTask {
        /// The name asked for.
        task: String,
    },
}

impl SubmitError {
    /// Whether submitting again later may succeed (only when the queue was
    /// full).
    pub fn is_retryable(&self) -> bool {
        matches!(self, SubmitError::Full { .. })
    }
}

/// A handler that could not be registered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    /// Another handler already has this name; names identify re-runnable
    /// tasks in the failure log, so one name is one handler.
    #[error("a task is already registered under the name {task:?}")]
    AlreadyRegistered {
        /// The name.
        task: String,
    },
}

/// A failure that could not be re-run, or that failed again.
#[derive(Debug, thiserror::Error)]
pub enum RerunError {
    /// The failure log has no failure with this id (re-run and removed
    /// already, deleted, or the log keeps nothing).
    #[error("no task failure {id} in the failure log")]
    NotFound {
        /// The id asked for.
        id: Uuid,
    },
    /// The failure is of an ad-hoc closure, whose code and input the log
    /// cannot keep.
    #[error("task failure {id} ({task:?}) was an ad-hoc closure and cannot be re-run")]
    NotRerunnable {
        /// The failure's id.
        id: Uuid,
        /// The task's name.
        task: String,
    },
    /// No handler is registered under the failure's task name in this
    /// executor. Registering it and re-running will help.
    #[error("task failure {id} names task {task:?}, which is not registered")]
    UnknownTask {
        /// The failure's id.
        id: Uuid,
        /// The task's name.
        task: String,
    },
    /// This failure is being re-run already.
    #[error("task failure {id} is being re-run already")]
    InProgress {
        /// The failure's id.
        id: Uuid,
    },
    /// The executor is shutting down and runs nothing new.
    #[error("executor is shutting down, task failure {id} not re-run")]
    ShuttingDown {
        /// The failure's id.
        id: Uuid,
    },
    /// The task ran and failed again; its row was updated (one more
    /// attempt, the new error) and stays in the log. A later re-run may
    /// succeed.
    #[error("task failure {id} ({task:?}) failed again when re-run")]
    Failed {
        /// The failure's id.
        id: Uuid,
        /// The task's name.
        task: String,
        /// The error (a [`crate::TaskPanicked`] for a panic).
        #[source]
        source: BoxError,
    },
    /// A shutdown's deadline passed during the re-run, which was cancelled;
    /// the row stays in the log.
    #[error("task failure {id} ({task:?}) was cancelled by shutdown while re-running")]
    Cancelled {
        /// The failure's id.
        id: Uuid,
        /// The task's name.
        task: String,
    },
    /// The failure log could not be read or written. If the task had run
    /// successfully, its row may remain and a later re-run runs it again.
    #[error("failure log unavailable")]
    FailureLog(#[from] FailureLogError),
}
