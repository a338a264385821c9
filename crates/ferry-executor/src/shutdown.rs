//! What a shutdown reports.

use uuid::Uuid;

/// What [`crate::Executor::shutdown`] could not finish before its deadline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// The tasks cancelled at the deadline, each handed to the failure log.
    pub unfinished: Vec<UnfinishedTask>,
}

impl ShutdownReport {
    /// Whether every task finished before the deadline.
    pub fn is_complete(&self) -> bool {
        self.unfinished.is_empty()
    }
}

/// A task a shutdown cancelled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnfinishedTask {
    /// The task's id (its failure log id).
    pub id: Uuid,
    /// The task's name.
    pub name: String,
    /// Where it was when cancelled.
    pub state: UnfinishedState,
    /// Attempts started.
    pub attempts: u32,
    /// Whether the failure log keeps it (see [`crate::TaskOutcome::Failed`]).
    pub recorded: bool,
}

/// Where a cancelled task was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnfinishedState {
    /// Still in the queue: never started.
    Queued,
    /// Running an attempt, or waiting to retry.
    Running,
}
