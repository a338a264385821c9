//! The transactional outbox.
//!
//! A producer writes a message row in the same transaction as its business
//! change ([`postgres::enqueue`], [`mysql::enqueue`], [`sqlite::enqueue`], or
//! plain SQL: see `docs/outbox.md`). The relay then repeatedly *claims* a batch of committed
//! pending messages ([`Outbox::claim`]), hands them to a sink, and *settles*
//! the batch ([`ClaimedBatch::settle`]) with one [`Outcome`] per message.
//!
//! # Guarantees
//!
//! * A message becomes visible to the relay only when its transaction
//!   commits; a rolled-back transaction leaves nothing.
//! * Claims select by status, never by a high-water mark, so a transaction
//!   that took a lower sequence number but committed later is picked up
//!   when it commits, never skipped.
//! * Per key, a batch only holds a message whose earlier messages (in
//!   sequence order, among those visible) are all delivered or dead, or are
//!   in the same batch. In [`OrderPolicy::Ordered`] a message waiting for a
//!   retry also holds back the later messages of its key.
//! * On PostgreSQL a batch is claimed with row locks (`FOR UPDATE SKIP
//!   LOCKED`) inside a transaction that stays open until it is settled;
//!   several relays share one outbox without taking the same message. If a
//!   relay dies, the server aborts its transaction and the messages become
//!   claimable again at once; if it hangs, the server ends its session after
//!   the lease (`idle_in_transaction_session_timeout`).
//! * MariaDB works the same way (`FOR UPDATE SKIP LOCKED` in a `READ
//!   COMMITTED` transaction held until settled; the lease is the session's
//!   `idle_transaction_timeout`), but has no notifications: relays poll, and
//!   an in-process producer can wake its relay with a [`Waker`].
//! * On SQLite one relay process per database file is supported.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_core::Message;

use crate::StoreError;

pub mod admin;
pub mod as_broker;
pub mod mysql;
pub mod postgres;
pub mod sqlite;

pub use admin::{DeadMessage, MessageRef, OutboxStats};

/// What a failing message does to the later messages of its key: the
/// delivery engine's policy.
pub use ferry_delivery::OrderPolicy;

/// Which messages a relay claims, and how many at a time.
#[derive(Clone, Debug)]
pub struct ClaimFilter {
    /// Most messages in one batch.
    pub limit: u32,
    /// Ordering policy.
    pub order: OrderPolicy,
    /// Only these topics; `None` for all.
    pub topics: Option<Vec<String>>,
    /// Only the first due message of each key (every keyless message counts
    /// as a key of its own). The relay probes a sink that is down with such
    /// batches, so that a message the sink refuses on its own is sent beside
    /// messages of other keys, and told apart from a sink that refuses all.
    pub one_per_key: bool,
}

/// A claimed message.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// Position in the outbox.
    pub seq: i64,
    /// Attempts made before this one.
    pub attempts: u32,
    /// The message, or why the row cannot be turned into one (a plain-SQL
    /// producer wrote headers that are not a JSON object, say): such a
    /// message is dead-lettered with that reason.
    pub message: Result<Message, String>,
}

/// What became of one claimed message: the delivery engine's outcome.
pub use ferry_delivery::Outcome;

/// The delivery engine delivers claimed messages as they are.
impl ferry_delivery::Item for Claimed {
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

/// What happens to delivered messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retention {
    /// Deleted in the transaction that records the delivery.
    #[default]
    Delete,
    /// Kept with status `delivered` for this long, then purged.
    Keep(Duration),
}

impl Retention {
    /// `0s` means delete at once.
    pub fn from_duration(d: Duration) -> Self {
        if d.is_zero() {
            Retention::Delete
        } else {
            Retention::Keep(d)
        }
    }
}

/// An outbox the relay can drain.
pub trait Outbox: Send + Sync + 'static {
    /// A claimed batch, settled exactly once.
    type Batch: ClaimedBatch;

    /// Claims up to `filter.limit` deliverable messages, in sequence order.
    /// An empty batch means there is nothing to do now.
    fn claim(
        &self,
        filter: &ClaimFilter,
    ) -> impl Future<Output = Result<Self::Batch, StoreError>> + Send;

    /// How long until the earliest message waiting for a retry (of these
    /// topics, or any) becomes due, by the database's clock; zero when one
    /// is already due; `None` when no message waits for a retry.
    fn next_retry_in(
        &self,
        topics: Option<&[String]>,
    ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send;

    /// Waits until a producer signals new messages or `timeout` passes.
    /// Wake-ups may be spurious or missed; the relay also polls.
    fn wait_for_work(&self, timeout: Duration) -> impl Future<Output = ()> + Send;

    /// How many relay workers may claim from this outbox at once; `None`
    /// for no limit. SQLite allows one, since its claims take no locks.
    fn max_workers(&self) -> Option<usize> {
        None
    }

    /// Deletes delivered messages older than the retention; returns how many.
    fn purge_delivered(
        &self,
        older_than: Duration,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// A batch claimed from an outbox.
pub trait ClaimedBatch: Send {
    /// The claimed messages, in sequence order.
    fn messages(&self) -> &[Claimed];

    /// Records one outcome per message (same order as [`messages`]) and
    /// releases the claim. Dropping a batch without settling releases it
    /// with nothing recorded (the messages will be claimed again).
    ///
    /// [`messages`]: ClaimedBatch::messages
    fn settle(self, outcomes: &[Outcome]) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Wakes an in-process relay after a commit, on databases without
/// notifications (SQLite, MariaDB). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Waker(Arc<tokio::sync::Notify>);

impl Waker {
    /// Signals that messages were committed.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Waits for a wake-up or `timeout`, whichever comes first.
    pub(crate) async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.0.notified()).await;
    }
}

/// A number of seconds from the database (possibly negative: overdue) as a
/// wait, saturating instead of panicking on absurd values.
pub(crate) fn seconds_until(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
}

/// `now - d`, or the earliest representable time when `d` is absurdly long.
pub(crate) fn before_now(d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Turns stored headers (a JSON object) into a map; non-string values keep
/// their JSON text.
pub(crate) fn parse_headers(
    text: &str,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("headers are not valid json: {e}"))?;
    headers_from_json(value)
}

pub(crate) fn headers_from_json(
    value: serde_json::Value,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    match value {
        serde_json::Value::Object(map) => Ok(map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect()),
        serde_json::Value::Null => Ok(Default::default()),
        _ => Err("headers must be a json object".to_owned()),
    }
}

pub(crate) fn headers_to_json(message: &Message) -> serde_json::Value {
    serde_json::Value::Object(
        message
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_leniently_but_reject_non_objects() {
        let h = parse_headers(r#"{"a":"x","n":1}"#).unwrap();
        assert_eq!(h["a"], "x");
        assert_eq!(h["n"], "1");
        assert!(parse_headers("[1]").unwrap_err().contains("object"));
        assert!(parse_headers("{").unwrap_err().contains("not valid json"));
    }
}
