//! The outbox as a broker: consumers read `ferry_outbox` directly, with no
//! broker in between (watermill's SQL Pub/Sub).
//!
//! * [`OutboxSink`] publishes into the outbox, each message in a transaction
//!   of its own (for a producer without a transaction of its own; inside one,
//!   use the `enqueue` functions).
//! * [`OutboxSubscriber`] consumes a topic of the outbox. It claims batches
//!   with the relay's protocol ([`Outbox::claim`]) and *leases* them in the
//!   claim's transaction: each message is recorded as an attempt due again
//!   when the visibility timeout ends, and the transaction commits at once,
//!   so no transaction stays open while consumers work. Each message is then
//!   settled on its own: an ack deletes its row, a nack makes it due at once
//!   or after the delay, dropping it unsettled makes it due at once.
//!
//! # What it guarantees
//!
//! * **One group.** The outbox keeps one delivery state per message, so every
//!   consumer of a topic shares its messages, whatever group it names
//!   ([`Capabilities::consumer_groups`] is off). For fan-out to several
//!   groups, run the relay to a broker instead.
//! * **Every pending message.** A subscription gets the messages of its
//!   topic still pending, including those written before it subscribed.
//! * **Per-key order.** A leased message counts as a message waiting for a
//!   retry, so (as in the relay's ordered mode) it holds back the later
//!   messages of its key, for every consumer, until it is acknowledged; a
//!   batch holds a key's messages in sequence order.
//! * **Redelivery.** A message a crashed consumer held comes again when its
//!   lease ends ([`OutboxSubscriber::with_visibility_timeout`]); one dropped
//!   unsettled, at once. A handler running longer than the visibility
//!   timeout sees its message again (the inbox absorbs the duplicate); its
//!   late settle then fails and changes nothing.
//! * **Delivery counts** are the row's `attempts`: every lease counts.
//! * **Delayed nack.** [`Received::nack`] with a delay makes the message due
//!   at that time (by the consumer's clock).
//! * **Duplicates.** `message_id` is unique: the sink accepts a message
//!   published again while its row exists (pending or leased) and stores it
//!   once. An ack deletes the row, after which the same id would be stored
//!   anew: the window closes at the acknowledgement.
//! * **SQLite** claims take no locks. Within a process, the subscriptions of
//!   one database file take turns to claim and lease; run one consuming
//!   process per file, as for the relay.
//!
//! While a message is leased, `ferry status` counts it as retrying, with
//! `last_error` saying it is claimed by an outbox consumer. Do not run a
//! relay on the topics that consumers read this way: both would take the
//! same messages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_core::{
    Acker, BoxFuture, Capabilities, Delivery, Lag, LagFuture, Malformed, Message, MessageStream,
    Received, Sink, SinkError, SubscribeError, SubscribeFuture, Subscriber, Subscription,
};
use sqlx::Pool;
use tokio::sync::{mpsc, Notify};

use super::mysql::MysqlOutbox;
use super::postgres::PgOutbox;
use super::sqlite::SqliteOutbox;
use super::{ClaimFilter, Claimed, ClaimedBatch, OrderPolicy, Outbox, Outcome, Retention};
use crate::dialect::{sql, with_pool, Dialect, PerDialect, Read, Stmt};
use crate::{Database, StoreError};

/// The name of both halves, for logs and metrics.
const NAME: &str = "outbox";

/// Publishes messages into the outbox, each in a transaction of its own.
///
/// A message whose id is already in the outbox is accepted and not stored
/// again.
#[derive(Clone, Debug)]
pub struct OutboxSink {
    database: Database,
}

impl OutboxSink {
    /// A sink writing to the outbox of `database` (migrated).
    pub fn new(database: Database) -> Self {
        Self { database }
    }
}

impl Sink for OutboxSink {
    fn name(&self) -> &str {
        NAME
    }

    fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(batch.len());
            // One transaction per message, so that one refused message (or a
            // duplicate) does not take the others with it.
            for message in batch {
                let result = match self.database.enqueue(std::slice::from_ref(message)).await {
                    Ok(()) => Ok(()),
                    Err(StoreError::Database(sqlx::Error::Database(db)))
                        if db.is_unique_violation() =>
                    {
                        // The only unique column written is `message_id`: the
                        // message is there already.
                        Ok(())
                    }
                    Err(e) => Err(sink_error(e)),
                };
                results.push(result);
            }
            results
        })
    }
}

/// Classifies a failed insert for the relay.
fn sink_error(error: StoreError) -> SinkError {
    if error.is_retryable() {
        return SinkError::unavailable("the outbox database cannot be reached").with_source(error);
    }
    let refused = match &error {
        StoreError::Database(sqlx::Error::Database(db)) => {
            use sqlx::error::ErrorKind;
            let code = db.code().unwrap_or_default();
            matches!(
                db.kind(),
                ErrorKind::CheckViolation | ErrorKind::NotNullViolation
            ) || db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some()
                && code.starts_with("22")
                // MariaDB: data too long, incorrect value, check constraint.
                || db
                    .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    .is_some_and(|e| matches!(e.number(), 1366 | 1406 | 4025))
        }
        _ => false,
    };
    if refused {
        SinkError::permanent("the outbox refuses the message").with_source(error)
    } else {
        SinkError::transient("writing to the outbox failed").with_source(error)
    }
}

/// Consumes topics of the outbox directly; see the [module docs](self).
///
/// Cheap to clone; clones share the database pool.
#[derive(Clone, Debug)]
pub struct OutboxSubscriber {
    database: Database,
    poll_interval: Duration,
    visibility_timeout: Duration,
}

impl OutboxSubscriber {
    /// A subscriber on the outbox of `database` (migrated), polling every
    /// 500 ms when idle, with a visibility timeout of 30 s.
    pub fn new(database: Database) -> Self {
        Self {
            database,
            poll_interval: Duration::from_millis(500),
            visibility_timeout: Duration::from_secs(30),
        }
    }

    /// The longest an idle subscription waits before it looks for new
    /// messages again. PostgreSQL's insert notifications usually wake it
    /// sooner; SQLite and MariaDB have none, so this is how soon a new
    /// message is seen there.
    pub fn with_poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval.max(Duration::from_millis(1));
        self
    }

    /// How long a message handed to a consumer stays invisible to the
    /// others: a consumer that crashed without settling it gives it up
    /// after this long. A handler that runs longer sees its message
    /// delivered again meanwhile (the inbox absorbs the duplicate).
    pub fn with_visibility_timeout(mut self, visibility_timeout: Duration) -> Self {
        self.visibility_timeout = visibility_timeout.max(Duration::from_millis(1));
        self
    }
}

impl Subscriber for OutboxSubscriber {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_per_key: true,
            persistent: true,
            consumer_groups: false,
            redelivers_unacked: true,
            dedups_by_id: true,
            delayed_nack: true,
        }
    }

    fn subscribe<'a>(&'a self, subscription: &'a Subscription) -> SubscribeFuture<'a> {
        Box::pin(async move {
            if subscription.topic.is_empty() {
                return Err(SubscribeError::permanent("the topic is empty"));
            }
            self.database
                .check_schema()
                .await
                .map_err(|e| subscribe_error(e, "the outbox cannot be read"))?;
            let prefetch = subscription.prefetch.clamp(1, u32::MAX as usize);
            let drive_with = |turn| Drive {
                database: self.database.clone(),
                filter: ClaimFilter {
                    limit: 1,
                    order: OrderPolicy::Ordered,
                    topics: Some(vec![subscription.topic.clone()]),
                    one_per_key: false,
                },
                prefetch,
                poll_interval: self.poll_interval,
                visibility_timeout: self.visibility_timeout,
                turn,
            };
            // At most `prefetch` messages are out at once: sends never wait.
            let (out, mut rx) = mpsc::channel(prefetch);
            match &self.database {
                Database::Postgres(pool) => {
                    let outbox = PgOutbox::new(pool.clone(), Retention::Delete);
                    tokio::spawn(drive(outbox, drive_with(None), out));
                }
                Database::Mysql(pool) => {
                    let outbox = MysqlOutbox::new(pool.clone(), Retention::Delete);
                    tokio::spawn(drive(outbox, drive_with(None), out));
                }
                Database::Sqlite(pool) => {
                    let turn =
                        sqlite_turn(pool.connect_options().get_filename(), &subscription.topic);
                    let outbox = SqliteOutbox::new(pool.clone(), Retention::Delete);
                    tokio::spawn(drive(outbox, drive_with(Some(turn)), out));
                }
            }
            let stream: MessageStream =
                Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
            Ok(stream)
        })
    }

    fn lag<'a>(&'a self, subscription: &'a Subscription) -> LagFuture<'a> {
        Box::pin(async move {
            let topic = subscription.topic.as_str();
            let (waiting, oldest_secs) = with_pool!(&self.database, |pool| lag(pool, topic).await)
                .map_err(|e| subscribe_error(e, "reading the outbox's lag failed"))?;
            Ok(Lag {
                waiting: Some(u64::try_from(waiting).unwrap_or(0)),
                // Claimed messages are still pending: they count as waiting.
                in_flight: None,
                oldest_age: oldest_secs.map(super::seconds_until),
            })
        })
    }
}

/// How many messages of `topic` are pending, and for how many seconds the
/// oldest of them has been.
async fn lag<DB: Dialect>(pool: &Pool<DB>, topic: &str) -> Result<(i64, Option<f64>), StoreError> {
    static SQL: PerDialect<String> = PerDialect::new();
    let lag = SQL.get::<DB>(|| {
        sql::<DB>(&format!(
            "SELECT COUNT(*) AS waiting, {} AS oldest
             FROM ferry_outbox WHERE status = 'pending' AND topic = $1",
            DB::seconds_since("MIN(created_at)")
        ))
    });
    let row = Stmt::<DB>::new(lag)
        .bind(topic)
        .fetch_one(&mut *pool.acquire().await?)
        .await?;
    Ok((
        row.read("waiting").unwrap_or(0),
        row.read("oldest").ok().flatten(),
    ))
}

/// Whether subscribing again may help after a store error: not when the
/// schema is missing or the database refuses the query itself (permission,
/// unknown table), yes otherwise.
fn subscribe_error(error: StoreError, message: &str) -> SubscribeError {
    let permanent = match &error {
        StoreError::SchemaMissing
        | StoreError::SchemaTooNew { .. }
        | StoreError::SchemaTooOld { .. } => true,
        StoreError::Database(sqlx::Error::Database(db)) => {
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                // access denied (database, user, table), unknown database or table
                matches!(my.number(), 1044 | 1045 | 1049 | 1142 | 1146)
            } else if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                // syntax or access rule violation, invalid authorization, no such database
                db.code()
                    .is_some_and(|c| c.starts_with("42") || c.starts_with("28") || c == "3D000")
            } else {
                false
            }
        }
        _ => false,
    };
    if permanent {
        SubscribeError::permanent(message).with_source(error)
    } else {
        SubscribeError::unavailable(message).with_source(error)
    }
}

/// Per SQLite file and topic, the lock a subscription holds while it claims
/// and leases a batch: SQLite claims take no row locks, so without it two
/// subscriptions of the process could lease the same messages.
fn sqlite_turn(file: &Path, topic: &str) -> Arc<tokio::sync::Mutex<()>> {
    type Turns = Mutex<HashMap<(PathBuf, String), Weak<tokio::sync::Mutex<()>>>>;
    static TURNS: OnceLock<Turns> = OnceLock::new();
    let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    let mut turns = TURNS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Forget the turns of subscriptions that are gone.
    turns.retain(|_, turn| turn.strong_count() > 0);
    let key = (file, topic.to_owned());
    if let Some(turn) = turns.get(&key).and_then(Weak::upgrade) {
        return turn;
    }
    let turn = Arc::new(tokio::sync::Mutex::new(()));
    turns.insert(key, Arc::downgrade(&turn));
    turn
}

/// What `last_error` says of a message a consumer holds.
const LEASED: &str = "claimed by an outbox consumer";

/// How many messages a subscription has handed out and not yet settled.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    settled: Notify,
}

impl InFlight {
    fn done(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.settled.notify_one();
    }
}

/// What becomes of a leased message.
enum Settle {
    Ack,
    Retry(DateTime<Utc>),
    Release,
}

/// Settles one leased message. Dropped unsettled, it releases the message
/// (due again at once).
struct OutboxAcker {
    database: Database,
    seq: i64,
    /// The row's `attempts` after the lease: a later lease of the same row
    /// (after this one expired) has a higher count, and this acker no longer
    /// touches it.
    attempts: i32,
    in_flight: Arc<InFlight>,
    settled: bool,
}

impl OutboxAcker {
    fn finish(
        mut self: Box<Self>,
        settle: Settle,
    ) -> BoxFuture<'static, Result<(), SubscribeError>> {
        self.settled = true;
        let (database, seq, attempts) = (self.database.clone(), self.seq, self.attempts);
        let in_flight = self.in_flight.clone();
        drop(self);
        Box::pin(async move {
            let result = settle_leased(&database, seq, attempts, settle).await;
            in_flight.done();
            match result {
                Ok(true) => Ok(()),
                Ok(false) => Err(SubscribeError::unavailable(
                    "the message's claim expired before it was settled; it may be delivered again",
                )),
                Err(e) => Err(subscribe_error(
                    e,
                    "recording the outcome in the outbox failed; the message will be delivered again",
                )),
            }
        })
    }
}

impl Acker for OutboxAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), SubscribeError>> {
        self.finish(Settle::Ack)
    }

    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), SubscribeError>> {
        match delay {
            None => self.finish(Settle::Retry(Utc::now())),
            Some(delay) => {
                let now = Utc::now();
                let retry_at = chrono::Duration::from_std(delay)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                self.finish(Settle::Retry(retry_at))
            }
        }
    }
}

impl Drop for OutboxAcker {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (database, seq, attempts) = (self.database.clone(), self.seq, self.attempts);
        let in_flight = self.in_flight.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    // On failure the lease runs out and frees the message.
                    let _ = settle_leased(&database, seq, attempts, Settle::Release).await;
                    in_flight.done();
                });
            }
            // No runtime to release it on: its lease runs out instead.
            Err(_) => in_flight.done(),
        }
    }
}

/// Records what became of a leased message; `false` when the lease is no
/// longer this consumer's (it expired and the message was claimed again,
/// or is gone).
async fn settle_leased(
    database: &Database,
    seq: i64,
    attempts: i32,
    settle: Settle,
) -> Result<bool, StoreError> {
    with_pool!(database, |pool| settle_leased_in(
        pool, seq, attempts, settle
    )
    .await)
}

async fn settle_leased_in<DB: Dialect>(
    pool: &Pool<DB>,
    seq: i64,
    attempts: i32,
    settle: Settle,
) -> Result<bool, StoreError> {
    struct Statements {
        ack: String,
        retry: String,
        release: String,
    }
    static STATEMENTS: PerDialect<Statements> = PerDialect::new();
    let statements = STATEMENTS.get::<DB>(|| {
        let leased = "seq = $2 AND attempts = $3 AND status = 'pending'";
        Statements {
            ack: sql::<DB>("DELETE FROM ferry_outbox WHERE seq = $1 AND attempts = $2 AND status = 'pending'"),
            retry: sql::<DB>(&format!(
                "UPDATE ferry_outbox SET next_attempt_at = $1, last_error = 'nacked by the consumer'
                 WHERE {leased}"
            )),
            release: sql::<DB>(&format!(
                "UPDATE ferry_outbox SET next_attempt_at = {}, last_error = 'released by the consumer'
                 WHERE {}",
                DB::NOW,
                leased.replace("$2", "$1").replace("$3", "$2"),
            )),
        }
    });
    let stmt = match settle {
        Settle::Ack => Stmt::<DB>::new(&statements.ack),
        Settle::Retry(at) => Stmt::<DB>::new(&statements.retry).bind(DB::time(at)),
        Settle::Release => Stmt::<DB>::new(&statements.release),
    };
    let done = stmt
        .bind(seq)
        .bind(attempts)
        .execute(&mut *pool.acquire().await?)
        .await?;
    Ok(done > 0)
}

/// How a subscription's task runs.
struct Drive {
    database: Database,
    filter: ClaimFilter,
    prefetch: usize,
    poll_interval: Duration,
    visibility_timeout: Duration,
    turn: Option<Arc<tokio::sync::Mutex<()>>>,
}

/// A subscription's task: while fewer than `prefetch` messages are out,
/// claims a batch, leases it (recorded as a failed attempt due again at the
/// end of the lease, in the claim's own transaction), and hands its
/// messages to the stream. Each message is then settled on its own. Ends
/// when the stream is dropped, or after yielding a claim error.
async fn drive<O: Outbox>(
    outbox: O,
    d: Drive,
    out: mpsc::Sender<Result<Received, SubscribeError>>,
) {
    let in_flight = Arc::new(InFlight::default());
    let mut filter = d.filter;
    let mut idle_streak: u32 = 0;
    while !out.is_closed() {
        let out_now = in_flight.count.load(Ordering::Acquire);
        if out_now >= d.prefetch {
            tokio::select! {
                _ = in_flight.settled.notified() => {}
                _ = out.closed() => return,
            }
            continue;
        }
        filter.limit = u32::try_from(d.prefetch - out_now).unwrap_or(u32::MAX);
        let held = match &d.turn {
            Some(turn) => tokio::select! {
                held = turn.clone().lock_owned() => Some(held),
                _ = out.closed() => return,
            },
            None => None,
        };
        let leased = match lease(&outbox, &filter, d.visibility_timeout).await {
            Ok(leased) => leased,
            Err(e) => {
                let _ = out
                    .send(Err(subscribe_error(e, "claiming from the outbox failed")))
                    .await;
                return;
            }
        };
        drop(held);
        if leased.is_empty() {
            // As the relay: a due retry another consumer holds must not turn
            // into a busy loop, so the wait grows from 10 ms to the interval.
            let floor = Duration::from_millis(10).saturating_mul(1 << idle_streak.min(10));
            idle_streak = idle_streak.saturating_add(1);
            let wait = match outbox.next_retry_in(filter.topics.as_deref()).await {
                Ok(Some(due)) => due.max(floor),
                _ => d.poll_interval,
            }
            .min(d.poll_interval);
            tokio::select! {
                _ = outbox.wait_for_work(wait) => {}
                _ = in_flight.settled.notified() => {}
                _ = out.closed() => return,
            }
            continue;
        }
        idle_streak = 0;
        for claimed in leased {
            let attempts = i32::try_from(claimed.attempts.saturating_add(1)).unwrap_or(i32::MAX);
            let message = claimed.message.map_err(|reason| Malformed {
                reason,
                headers: Default::default(),
                payload: Default::default(),
            });
            in_flight.count.fetch_add(1, Ordering::AcqRel);
            let acker = OutboxAcker {
                database: d.database.clone(),
                seq: claimed.seq,
                attempts,
                in_flight: in_flight.clone(),
                settled: false,
            };
            let received = Received::new(message, u32::try_from(attempts).ok(), acker);
            // When the stream is gone, the message comes back in the error
            // and is dropped, which releases it.
            let _ = out.send(Ok(received)).await;
        }
    }
}

/// Claims a batch and leases its messages until `visibility_timeout` from
/// now, committing at once: no transaction stays open while consumers work.
async fn lease<O: Outbox>(
    outbox: &O,
    filter: &ClaimFilter,
    visibility_timeout: Duration,
) -> Result<Vec<Claimed>, StoreError> {
    let batch = outbox.claim(filter).await?;
    if batch.messages().is_empty() {
        return Ok(Vec::new());
    }
    let until = chrono::Duration::from_std(visibility_timeout)
        .ok()
        .and_then(|d| Utc::now().checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let claimed = batch.messages().to_vec();
    let outcomes = vec![
        Outcome::Failed {
            error: LEASED.to_owned(),
            retry_at: Some(until),
        };
        claimed.len()
    ];
    batch.settle(&outcomes).await?;
    Ok(claimed)
}
