//! The relay: claims committed outbox messages in batches, hands them to a
//! [`Sink`](ferry_core::Sink) through the delivery engine
//! ([`ferry_delivery`], shared with the forwarder), and records what
//! happened.
//!
//! # Guarantees
//!
//! * **At least once.** A message is marked delivered only after the sink
//!   accepted it. A relay that dies between the two delivers it again after
//!   restart (or another relay does); receivers drop the duplicate by
//!   message id, so the effect happens once.
//! * **Per-key order.** Messages with the same key reach the sink one at a
//!   time, in order: a batch is sent in *waves*, each holding at most one
//!   message per key, and the next wave goes only when the previous one is
//!   settled. With [`OrderPolicy::Ordered`] a failed message holds back the
//!   rest of its key until it is delivered or dead; with
//!   [`OrderPolicy::Unordered`] the rest go ahead while it waits for its retry.
//! * **Failures.** Transient errors are retried with exponential backoff,
//!   jitter and a cap, up to
//!   [`RetryPolicy::max_attempts`](ferry_core::RetryPolicy::max_attempts);
//!   then the message is dead (kept with its last error). Permanent errors dead-letter at once.
//!   When the sink as a whole is unavailable, attempts are not counted: the
//!   relay pauses (capped backoff), then probes with 1, 2, 4 … 16 messages,
//!   one per key. A message refused as "unavailable" while others of the
//!   same call are accepted is the problem, not the sink: its attempt is
//!   counted, and other keys flow past it.
//! * **Time budget.** A batch gets half of [`RelayConfig::lease`]; a sink
//!   call not finished by then counts as a failed attempt (its messages may
//!   have arrived), and the rest waits for the next claim.
//! * **Pause.** A [`PauseSwitch`] stops a relay's claims by hand: batches
//!   in flight settle, the rest waits in the outbox, nothing counts as an
//!   attempt; resuming goes on where it stopped.
//! * **Shutdown.** When the token is cancelled the relay stops claiming,
//!   lets the batches in flight finish for up to
//!   [`RelayConfig::shutdown_grace`], then abandons them unrecorded (they are
//!   delivered again later) and returns.

mod config;
mod pause;
mod relay;
mod running;
mod trace;

pub use config::RelayConfig;
pub use ferry_delivery::{Health, OrderPolicy, SinkBackoff};
pub use ferry_store::outbox::Retention;
pub use pause::PauseSwitch;
pub use relay::{Relay, RelayError, RelayStats};
pub use running::{spawn, spawn_until, Running};
pub use tokio_util::sync::CancellationToken;
