//! What a submission gives back: a handle on the task and its outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;
use uuid::Uuid;

/// A task's error: anything that converts into a boxed error
/// (`anyhow::Error` does, and so does a `&str` or `String`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error a task's attempt counts as when it panicked.
#[derive(Clone, Debug, thiserror::Error)]
#[error("task panicked: {message}")]
pub struct TaskPanicked {
    /// The panic's message, or a placeholder when its payload was not text.
    pub message: String,
}

impl TaskPanicked {
    pub(crate) fn from_payload(payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a payload that is not text".to_owned()
        };
        Self { message }
    }
}

/// How a task ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskOutcome {
    /// An attempt succeeded.
    Succeeded {
        /// Attempts made, the successful one included.
        attempts: u32,
    },
    /// Every attempt the retry policy allows failed.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error with its sources (`outer: inner`), or
        /// the panic's message.
        error: String,
        /// Whether the failure log keeps it (under the task's id) for
        /// listing and re-running; `false` with the log-only failure log,
        /// or when recording failed (the failure is then only in the
        /// application's log).
        recorded: bool,
    },
    /// A shutdown's deadline passed before the task ended: it was cancelled
    /// (while queued, running or waiting to retry).
    Cancelled {
        /// Attempts started, the interrupted one included.
        attempts: u32,
        /// Whether the failure log keeps it, as for `Failed`.
        recorded: bool,
    },
    /// The executor went away without saying how the task ended: its
    /// runtime was shut down under it. Nothing is known about the task.
    Abandoned,
}

impl TaskOutcome {
    /// Whether the task succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, TaskOutcome::Succeeded { .. })
    }
}

/// A submitted task. Await it for the task's [`TaskOutcome`], or drop it:
/// the task runs either way, and its failures reach the failure log
/// whether or not anyone awaits.
#[derive(Debug)]
#[must_use = "a TaskHandle may be dropped, but then say so: `drop(handle)` or `let _ = handle`"]
pub struct TaskHandle {
    pub(crate) id: Uuid,
    pub(crate) name: Arc<str>,
    pub(crate) outcome: oneshot::Receiver<TaskOutcome>,
}

impl TaskHandle {
    /// The task's id; its failure, if any, is recorded under this id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Future for TaskHandle {
    type Output = TaskOutcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TaskOutcome> {
        Pin::new(&mut self.outcome)
            .poll(cx)
            .map(|r| r.unwrap_or(TaskOutcome::Abandoned))
    }
}
