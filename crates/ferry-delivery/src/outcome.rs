//! What the engine is given and what it decides per message.

use chrono::{DateTime, Utc};
use ferry_core::Message;

/// A message waiting to be delivered, as the caller holds it (a claimed
/// outbox row, an event read from the store).
pub trait Item {
    /// The message, or why the stored row cannot be turned into one (it is
    /// then given up on with that reason, without a sink call).
    fn message(&self) -> Result<&Message, &str>;
    /// Attempts already made before this one.
    fn attempts(&self) -> u32;
    /// Its position in the caller's sequence, for logs.
    fn seq(&self) -> i64;
}

/// A message as its caller stored it, ready for the engine: the relay's
/// claimed outbox rows are these.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// Position in the caller's sequence (the outbox's `seq`).
    pub seq: i64,
    /// Attempts made before this one.
    pub attempts: u32,
    /// The message, or why the row cannot be turned into one (a plain-SQL
    /// producer wrote headers that are not a JSON object, say): such a
    /// message is given up on with that reason.
    pub message: Result<Message, String>,
}

impl Item for Claimed {
    fn message(&self) -> Result<&Message, &str> {
        self.message.as_ref().map_err(String::as_str)
    }
    fn attempts(&self) -> u32 {
        self.attempts
    }
    fn seq(&self) -> i64 {
        self.seq
    }
}

/// What a failing message does to the later messages of its key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderPolicy {
    /// A message waiting for a retry holds back its key (only its key)
    /// until it is delivered or given up on.
    #[default]
    Ordered,
    /// Later messages of the key go ahead while a failed one waits for its
    /// retry. Messages never attempted still go out in order.
    Unordered,
}

/// What a message given up on (permanent error, attempts spent) does to
/// the rest of its batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AfterGiveUp {
    /// The batch goes on, its key included: the caller dead-letters or
    /// skips the message (the relay; a forwarder that skips).
    #[default]
    Continue,
    /// The batch stops after the sink call that gave it up, and nothing
    /// more is sent: the caller stops at that message (a forwarder under
    /// `OnFailure::Stop`).
    Stop,
}

/// What became of one message.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The sink accepted it.
    Delivered,
    /// Attempted and failed: try again at `retry_at`, or give it up (dead
    /// letter, skip or stop) when `retry_at` is `None`.
    Failed {
        /// The error, as stored (`last_error`) and logged.
        error: String,
        /// When to try again; `None` gives it up.
        retry_at: Option<DateTime<Utc>>,
    },
    /// Not attempted (held back behind a failure of its key, the sink is
    /// down, the budget ran out, or shutdown): left exactly as it was.
    Released,
}

/// How many of `outcomes` were delivered, left to retry, and given up on.
pub fn tally(outcomes: &[Outcome]) -> (u64, u64, u64) {
    let (mut delivered, mut failed, mut dead) = (0, 0, 0);
    for o in outcomes {
        match o {
            Outcome::Delivered => delivered += 1,
            Outcome::Failed {
                retry_at: Some(_), ..
            } => failed += 1,
            Outcome::Failed { retry_at: None, .. } => dead += 1,
            Outcome::Released => {}
        }
    }
    (delivered, failed, dead)
}
