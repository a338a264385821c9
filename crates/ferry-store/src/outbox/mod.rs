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

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ferry_core::{Kind, Message, MessageId};
use sqlx::Pool;

use crate::dialect::{sql, Dialect, PerDialect, Read, Stmt};
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

/// A claimed message: the delivery engine's [`Claimed`](ferry_delivery::Claimed)
/// (its position in the outbox, the attempts made before, and the message
/// or why the row cannot be turned into one).
pub use ferry_delivery::Claimed;

/// What became of one claimed message: the delivery engine's outcome.
pub use ferry_delivery::Outcome;

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

/// The outbox on a database without notifications (SQLite, MariaDB):
/// relays poll, and producers in this process can wake theirs with its
/// [`Waker`]. See [`mysql::MysqlOutbox`] and [`sqlite::SqliteOutbox`].
pub struct PollingOutbox<DB: sqlx::Database> {
    pool: Pool<DB>,
    retention: Retention,
    waker: Waker,
}

impl<DB: sqlx::Database> PollingOutbox<DB> {
    /// An outbox on `pool`.
    pub fn new(pool: Pool<DB>, retention: Retention) -> Self {
        Self {
            pool,
            retention,
            waker: Waker::default(),
        }
    }

    /// The handle producers in this process use to wake the relay.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }
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

/// What the outbox's SQL differs in beyond [`Dialect`]; claiming is
/// written per database in its own module.
pub(crate) trait OutboxDialect: Dialect {
    /// Deletes the delivered messages delivered before `$1`.
    const PURGE: &'static str;
}

impl OutboxDialect for sqlx::Postgres {
    const PURGE: &'static str =
        "DELETE FROM ferry_outbox WHERE status = 'delivered' AND delivered_at < $1";
}

impl OutboxDialect for sqlx::Sqlite {
    const PURGE: &'static str =
        "DELETE FROM ferry_outbox WHERE status = 'delivered' AND delivered_at < ?";
}

/// [`Outbox::purge_delivered`] on PostgreSQL and SQLite (MariaDB has its own).
pub(crate) async fn purge_delivered<DB: OutboxDialect>(
    pool: &Pool<DB>,
    older_than: Duration,
) -> Result<u64, StoreError> {
    let cutoff = DB::time(before_now(older_than));
    let mut conn = pool.acquire().await?;
    Ok(Stmt::<DB>::new(DB::PURGE)
        .bind(cutoff)
        .execute(&mut conn)
        .await?)
}

/// The outbox's columns written by an insert, in the order
/// [`bind_message`] binds them.
macro_rules! insert_columns {
    () => {
        "message_id, kind, topic, message_key, headers, content_type, payload, created_at"
    };
}
pub(crate) use insert_columns;

/// Binds `message`'s [`insert_columns`] (the payload in one column: not on
/// PostgreSQL, which splits it), its time as `created_at`.
pub(crate) fn bind_message<'q, DB: Dialect>(
    stmt: Stmt<'q, DB>,
    message: &'q Message,
    created_at: DB::Time,
) -> Stmt<'q, DB> {
    stmt.bind(DB::id(message.id.0))
        .bind(message.kind.as_str())
        .bind(message.topic.as_str())
        .bind(message.key.as_deref())
        .bind(headers_to_json(message).to_string())
        .bind(message.content_type.as_str())
        .bind(message.payload.as_ref())
        .bind(created_at)
}

/// The claimed messages of `rows`, selected with the columns `seq`,
/// `attempts`, `created_at`, the payload as [`Dialect::payload`] and the
/// others as text.
pub(crate) fn claimed<DB: Dialect>(rows: &[DB::Row]) -> Result<Vec<Claimed>, sqlx::Error> {
    rows.iter().map(claimed_from_row::<DB>).collect()
}

/// Binds `message` as the outbox keeps it: its time to the microsecond, as
/// every database keeps it, so that it reads the same whatever outbox
/// carried it.
pub(crate) fn bind_outbox_message<'q, DB: Dialect>(
    stmt: Stmt<'q, DB>,
    message: &'q Message,
) -> Stmt<'q, DB> {
    bind_message(stmt, message, DB::precise_time(message.created_at))
}

/// One claimed message; a row that cannot be turned into a message is
/// claimed with the reason (it is dead-lettered).
pub(crate) fn claimed_from_row<DB: Dialect>(row: &DB::Row) -> Result<Claimed, sqlx::Error> {
    let seq: i64 = row.read("seq")?;
    let attempts: i32 = row.read("attempts")?;
    let message = (|| {
        let text = |name: &str| Read::<String>::read(row, name).map_err(|e| format!("{name}: {e}"));
        let id = DB::read_uuid(row, "message_id").map_err(|e| format!("bad message_id: {e}"))?;
        let kind: Kind = text("kind")?
            .parse()
            .map_err(|e: ferry_core::ParseKindError| e.to_string())?;
        let headers = parse_headers(&text("headers")?)?;
        let payload = DB::read_payload(row).map_err(|e| format!("payload: {e}"))?;
        Ok(Message {
            id: MessageId(id),
            kind,
            topic: text("topic")?,
            key: row
                .read("message_key")
                .map_err(|e| format!("message_key: {e}"))?,
            headers,
            content_type: text("content_type")?,
            payload: Bytes::from(payload),
            created_at: DB::read_time(row, "created_at").map_err(|e| format!("created_at: {e}"))?,
        })
    })();
    Ok(Claimed {
        seq,
        attempts: attempts.max(0) as u32,
        message,
    })
}

/// The sequence numbers of the messages delivered.
pub(crate) fn delivered(messages: &[Claimed], outcomes: &[Outcome]) -> Vec<i64> {
    messages
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| **o == Outcome::Delivered)
        .map(|(c, _)| c.seq)
        .collect()
}

/// Records the failures among `outcomes`, one statement each: dead
/// without a retry time, otherwise pending until it.
pub(crate) async fn record_failures<DB: Dialect>(
    conn: &mut DB::Connection,
    messages: &[Claimed],
    outcomes: &[Outcome],
) -> Result<(), StoreError>
where
    Option<DB::Time>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    static SQL: PerDialect<String> = PerDialect::new();
    let update = SQL.get::<DB>(|| {
        // A message that dies keeps when (dead_at) and why (cause): the
        // dead-letter view's columns, in partial indexes on dead rows only.
        sql::<DB>(&format!(
            "UPDATE ferry_outbox SET attempts = attempts + 1,
                status = CASE WHEN $1 IS NULL THEN 'dead' ELSE 'pending' END,
                next_attempt_at = COALESCE($2, next_attempt_at),
                last_error = $3,
                dead_at = CASE WHEN $4 IS NULL THEN {} ELSE dead_at END,
                cause = COALESCE($5, cause)
             WHERE seq = $6",
            DB::NOW
        ))
    });
    for (claimed, outcome) in messages.iter().zip(outcomes) {
        if let Outcome::Failed { error, retry_at } = outcome {
            let cause = retry_at.is_none().then(|| crate::admin::cause_of(error));
            Stmt::<DB>::new(update)
                .bind(retry_at.map(DB::time))
                .bind(retry_at.map(DB::time))
                .bind(error.as_str())
                .bind(retry_at.map(DB::time))
                .bind(cause)
                .bind(claimed.seq)
                .execute(conn)
                .await?;
        }
    }
    Ok(())
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
