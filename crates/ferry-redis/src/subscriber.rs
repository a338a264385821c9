//! The Redis Streams subscriber: consumer groups, XREADGROUP, XACK and
//! reclaiming what crashed consumers left pending.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_core::{
    Acker, BoxFuture, Capabilities, Lag, LagFuture, MessageStream, Received, SubscribeError,
    SubscribeFuture, Subscriber, Subscription,
};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, RedisError, Value};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::entry::{entries, id_millis, string, Entry};
use crate::{ConnectError, RedisConfig};

/// The longest one `XREADGROUP` blocks, so that reclaiming runs on time.
const MAX_BLOCK: Duration = Duration::from_secs(1);

/// The most entry ids one `XACK` carries.
const MAX_ACK_BATCH: usize = 1024;

/// Reads from Redis streams through consumer groups.
///
/// The group of a [`Subscription`] is a Redis consumer group of that name
/// on the topic's stream, created (with the stream, if missing) at the
/// first [`subscribe`](Subscriber::subscribe) at the stream's end (`$`): a
/// new group gets the entries appended after it was created. Every group
/// reads every entry; within a group each entry goes to one consumer.
/// Each subscription reads as a consumer of its own name
/// (`ferry-<uuid>-<n>`), on a connection of its own, with
/// `XREADGROUP … COUNT <free prefetch slots> BLOCK …`: at most
/// [`Subscription::prefetch`] of its messages are unsettled at once.
///
/// * [`Received::ack`] is `XACK`, and returns once Redis has answered it.
///   The acknowledgements that come in while one `XACK` is on its way go
///   out together in the next (`XACK key group id id …`), so that many
///   share a round trip. The entry stays in the stream (other groups may
///   not have read it) until [`RedisConfig::maxlen`] trims it.
/// * An entry left pending longer than [`RedisConfig::claim_idle`], by a
///   consumer that crashed or a message dropped unsettled, is taken over by
///   a live consumer of the group: each subscription runs `XAUTOCLAIM`
///   when it starts and every half `claim_idle`.
/// * [`Received::nack`] makes the entry claimable again after the delay
///   (none: at once): `XCLAIM … IDLE <claim_idle − delay> JUSTID` sets its
///   idle time so that it reaches `claim_idle` when the delay has passed,
///   and the subscription reclaims it then. A delay longer than
///   `claim_idle` is kept by the nacking process, which holds the entry
///   (resetting its idle time) until the rest fits; should that process
///   die, the entry is reclaimed after `claim_idle`, earlier than asked
///   but not lost.
/// * [`Received::delivery_count`] is 1 for a new entry, and Redis' count
///   from the pending entries list for a reclaimed one.
/// * An entry whose fields do not decode is yielded as `Err(Malformed)`.
///
/// A lost connection ends the stream with an
/// [`Unavailable`](ferry_core::SubscribeErrorKind::Unavailable) error;
/// subscribing again reclaims what the old subscription held once
/// `claim_idle` has passed. Consumer names are not removed from the group
/// (removing one would drop its pending entries); they are visible in
/// `XINFO CONSUMERS` and harmless.
pub struct RedisSubscriber {
    config: RedisConfig,
    client: redis::Client,
    manager: ConnectionManager,
    /// This instance's part of its consumer names.
    instance: String,
    next_consumer: AtomicU64,
}

impl RedisSubscriber {
    /// Checks the settings and sets up the connection, which is made on
    /// first use and made again whenever it is lost. A server that is down
    /// does not fail this call; subscribing fails as
    /// [`Unavailable`](ferry_core::SubscribeErrorKind::Unavailable) until it
    /// answers.
    pub async fn connect(config: RedisConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let client = crate::client(&config)?;
        let manager = crate::manager(&config)?;
        Ok(Self {
            config,
            client,
            manager,
            instance: format!("ferry-{}", uuid::Uuid::now_v7().simple()),
            next_consumer: AtomicU64::new(0),
        })
    }

    /// Runs `cmd` on the shared connection within the timeout.
    async fn query(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        query(&self.manager, cmd, self.config.timeout).await
    }

    async fn start(&self, subscription: &Subscription) -> Result<MessageStream, SubscribeError> {
        if subscription.group.is_empty() || subscription.topic.is_empty() {
            return Err(SubscribeError::permanent(
                "the topic and the group must not be empty",
            ));
        }
        let key = self.config.stream_key(&subscription.topic);
        let created = self
            .query(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&key)
                    .arg(&subscription.group)
                    .arg("$")
                    .arg("MKSTREAM"),
            )
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(command_error("could not create the consumer group", e)),
        }
        let block = MAX_BLOCK.min(claim_every(&self.config));
        let reader = self
            .client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.config.timeout))
                    .set_response_timeout(Some(self.config.timeout + block)),
            )
            .await
            .map_err(|e| command_error("could not connect to redis", e))?;
        let n = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        let prefetch = subscription.prefetch.clamp(1, Semaphore::MAX_PERMITS);
        let (acks, pending_acks) = mpsc::unbounded_channel();
        tokio::spawn(acknowledge(
            self.manager.clone(),
            key.clone(),
            subscription.group.clone(),
            self.config.timeout,
            pending_acks,
        ));
        let shared = Arc::new(Shared {
            manager: self.manager.clone(),
            key,
            group: subscription.group.clone(),
            consumer: format!("{}-{n}", self.instance),
            claim_idle: self.config.claim_idle,
            timeout: self.config.timeout,
            claim_now: AtomicBool::new(false),
            acks,
        });
        let reader = Reader {
            reader,
            shared,
            permits: Arc::new(Semaphore::new(prefetch)),
            prefetch,
            block,
            claim_every: claim_every(&self.config),
            // A new subscription first takes over what crashed ones left.
            next_claim: Instant::now(),
            cursor: "0-0".to_owned(),
            buffer: VecDeque::new(),
        };
        let stream = futures::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(received) => Some((Ok(received), Some(reader))),
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(Box::pin(stream))
    }

    async fn group_lag(&self, subscription: &Subscription) -> Result<Lag, SubscribeError> {
        let key = self.config.stream_key(&subscription.topic);
        let groups = match self
            .query(redis::cmd("XINFO").arg("GROUPS").arg(&key))
            .await
        {
            Ok(groups) => groups,
            // No stream yet, so no group either.
            Err(e)
                if e.code() == Some("ERR")
                    && e.detail().is_some_and(|d| d.contains("no such key")) =>
            {
                return Ok(Lag::default())
            }
            Err(e) => return Err(command_error("could not read the consumer groups", e)),
        };
        let Some(group) = find_group(groups, &subscription.group) else {
            return Ok(Lag::default());
        };
        let int = |name: &str| match group.get(name) {
            Some(Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        let waiting = int("lag");
        let pending = int("pending");
        // The oldest unacknowledged entry: the first pending one, else the
        // first one the group has not been handed yet.
        let oldest = if pending.unwrap_or(0) > 0 {
            let summary = self
                .query(redis::cmd("XPENDING").arg(&key).arg(&subscription.group))
                .await
                .map_err(|e| command_error("could not read the pending entries", e))?;
            match summary {
                Value::Array(parts) => parts.into_iter().nth(1).and_then(|v| string(v).ok()),
                _ => None,
            }
        } else if waiting.unwrap_or(0) > 0 {
            let last = group
                .get("last-delivered-id")
                .cloned()
                .and_then(|v| string(v).ok());
            match last {
                Some(last) => {
                    let first = self
                        .query(
                            redis::cmd("XRANGE")
                                .arg(&key)
                                .arg(format!("({last}"))
                                .arg("+")
                                .arg("COUNT")
                                .arg(1),
                        )
                        .await
                        .map_err(|e| command_error("could not read the stream", e))?;
                    entries(first)
                        .ok()
                        .and_then(|e| e.into_iter().next())
                        .map(|e| e.id)
                }
                None => None,
            }
        } else {
            None
        };
        let oldest_age = oldest.as_deref().and_then(id_millis).map(|ms| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            Duration::from_millis(now.saturating_sub(ms))
        });
        Ok(Lag {
            waiting,
            in_flight: pending,
            oldest_age,
        })
    }
}

impl Subscriber for RedisSubscriber {
    fn name(&self) -> &str {
        "redis"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_per_key: false,
            // As durable as the server's persistence (appendonly); a harness
            // on a server without it clears this flag.
            persistent: true,
            consumer_groups: true,
            redelivers_unacked: true,
            dedups_by_id: false,
            delayed_nack: true,
        }
    }

    fn subscribe<'a>(&'a self, subscription: &'a Subscription) -> SubscribeFuture<'a> {
        Box::pin(self.start(subscription))
    }

    fn lag<'a>(&'a self, subscription: &'a Subscription) -> LagFuture<'a> {
        Box::pin(self.group_lag(subscription))
    }
}

ferry_core::impl_debug!(
    RedisSubscriber,
    |subscriber| server: subscriber.config.redacted_url(),
    stream_prefix: subscriber.config.stream_prefix,
    instance: subscriber.instance
);

/// What a subscription's stream and its messages' ackers share.
struct Shared {
    manager: ConnectionManager,
    key: String,
    group: String,
    consumer: String,
    claim_idle: Duration,
    timeout: Duration,
    /// Set by a nack whose entry is claimable now: reclaim before the next
    /// read instead of at the next period.
    claim_now: AtomicBool,
    /// Where ackers send their entry ids, for [`acknowledge`].
    acks: mpsc::UnboundedSender<PendingAck>,
}

/// An entry id to acknowledge, and where to say how that went.
type PendingAck = (String, oneshot::Sender<Result<(), SubscribeError>>);

/// Sends the acknowledgements of one subscription: every id that has come
/// in goes out in one `XACK`, and each acker hears that command's outcome.
/// One `XACK` is on its way at a time; the ids that arrive meanwhile make
/// the next. Ends when the subscription's stream and every acker are gone.
async fn acknowledge(
    manager: ConnectionManager,
    key: String,
    group: String,
    timeout: Duration,
    mut pending: mpsc::UnboundedReceiver<PendingAck>,
) {
    let mut batch = Vec::with_capacity(64);
    while pending.recv_many(&mut batch, MAX_ACK_BATCH).await > 0 {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&key).arg(&group);
        for (id, _) in &batch {
            cmd.arg(id);
        }
        // The count acknowledged may be lower than the ids sent: another
        // consumer reclaimed and acknowledged some already. Not an error.
        match query(&manager, &cmd, timeout).await {
            Ok(_) => {
                for (_, done) in batch.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                let unreachable = crate::is_unreachable(&e);
                let e = Arc::new(e);
                for (_, done) in batch.drain(..) {
                    let what = "could not acknowledge the entry";
                    let error = if unreachable {
                        SubscribeError::unavailable(what)
                    } else {
                        SubscribeError::permanent(what)
                    };
                    let _ = done.send(Err(error.with_source(e.clone())));
                }
            }
        }
    }
}

/// One subscription's reading state.
struct Reader {
    reader: MultiplexedConnection,
    shared: Arc<Shared>,
    /// One permit per message handed out and not yet settled.
    permits: Arc<Semaphore>,
    prefetch: usize,
    block: Duration,
    claim_every: Duration,
    next_claim: Instant,
    /// Where the current `XAUTOCLAIM` scan goes on; `0-0` starts a new one.
    cursor: String,
    buffer: VecDeque<Received>,
}

impl Reader {
    async fn next(&mut self) -> Result<Received, SubscribeError> {
        loop {
            if let Some(received) = self.buffer.pop_front() {
                return Ok(received);
            }
            let mut permits = vec![self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| SubscribeError::unavailable("subscription closed"))?];
            while permits.len() < self.prefetch {
                match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let claim = Instant::now() >= self.next_claim
                || self.shared.claim_now.swap(false, Ordering::Relaxed);
            let batch = if claim {
                self.reclaim(permits.len()).await?
            } else {
                self.read(permits.len()).await?
            };
            for ((entry, delivery_count), permit) in batch.into_iter().zip(permits) {
                let id = entry.id.clone();
                self.buffer.push_back(Received::new(
                    entry.message(),
                    delivery_count,
                    RedisAcker {
                        shared: self.shared.clone(),
                        id,
                        _permit: permit,
                    },
                ));
            }
        }
    }

    /// New entries for this consumer, waiting up to `block` for some.
    async fn read(&mut self, count: usize) -> Result<Vec<(Entry, Option<u32>)>, SubscribeError> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.shared.group)
            .arg(&self.shared.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(self.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.shared.key)
            .arg(">")
            .query_async(&mut self.reader)
            .await
            .map_err(|e| read_error("could not read the stream", e))?;
        // `[[key, entries]]` (a map in RESP3), or nil when nothing came.
        let per_stream = match reply {
            Value::Nil => return Ok(Vec::new()),
            Value::Array(streams) => streams
                .into_iter()
                .filter_map(|s| match s {
                    Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
            other => return Err(malformed_reply(format!("{other:?}"))),
        };
        let mut out = Vec::new();
        for value in per_stream {
            out.extend(
                entries(value)
                    .map_err(malformed_reply)?
                    .into_iter()
                    .map(|e| (e, Some(1))),
            );
        }
        Ok(out)
    }

    /// Entries pending longer than `claim_idle` with any consumer of the
    /// group, taken over by this one, with their delivery counts.
    async fn reclaim(&mut self, count: usize) -> Result<Vec<(Entry, Option<u32>)>, SubscribeError> {
        let shared = &self.shared;
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&shared.key)
            .arg(&shared.group)
            .arg(&shared.consumer)
            .arg(shared.claim_idle.as_millis() as u64)
            .arg(&self.cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.reader)
            .await
            .map_err(|e| read_error("could not reclaim pending entries", e))?;
        let Value::Array(parts) = reply else {
            return Err(malformed_reply(format!("{reply:?}")));
        };
        let mut parts = parts.into_iter();
        let cursor = parts
            .next()
            .map(string)
            .transpose()
            .map_err(malformed_reply)?;
        let claimed = entries(parts.next().unwrap_or(Value::Nil)).map_err(malformed_reply)?;
        self.cursor = cursor.unwrap_or_else(|| "0-0".to_owned());
        if self.cursor == "0-0" {
            // The scan is through: the next one in a period.
            self.next_claim = Instant::now() + self.claim_every;
        }
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let counts = self.delivery_counts(&claimed).await?;
        Ok(claimed
            .into_iter()
            .map(|e| {
                let count = counts.get(&e.id).copied();
                (e, count)
            })
            .collect())
    }

    /// How often each of `claimed` (now this consumer's) was delivered, from
    /// the pending entries list.
    async fn delivery_counts(
        &mut self,
        claimed: &[Entry],
    ) -> Result<HashMap<String, u32>, SubscribeError> {
        let (Some(first), Some(last)) = (claimed.first(), claimed.last()) else {
            return Ok(HashMap::new());
        };
        let reply: Value = redis::cmd("XPENDING")
            .arg(&self.shared.key)
            .arg(&self.shared.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(claimed.len())
            .arg(&self.shared.consumer)
            .query_async(&mut self.reader)
            .await
            .map_err(|e| read_error("could not read the pending entries", e))?;
        let mut counts = HashMap::new();
        if let Value::Array(rows) = reply {
            for row in rows {
                if let Value::Array(fields) = row {
                    if let (Some(id), Some(Value::Int(n))) = (fields.first(), fields.get(3)) {
                        if let (Ok(id), Ok(n)) = (string(id.clone()), u32::try_from(*n)) {
                            counts.insert(id, n);
                        }
                    }
                }
            }
        }
        Ok(counts)
    }
}

/// Settles one entry of a group.
struct RedisAcker {
    shared: Arc<Shared>,
    id: String,
    /// The subscription's prefetch slot, free again once this is settled
    /// or dropped.
    _permit: OwnedSemaphorePermit,
}

impl RedisAcker {
    /// Sets the entry's idle time (as this consumer's) to `idle`.
    async fn set_idle(&self, idle: Duration) -> Result<(), SubscribeError> {
        set_idle(&self.shared, &self.id, idle).await
    }
}

/// Sets entry `id`'s idle time (as this consumer's) to `idle`.
async fn set_idle(shared: &Shared, id: &str, idle: Duration) -> Result<(), SubscribeError> {
    query(
        &shared.manager,
        redis::cmd("XCLAIM")
            .arg(&shared.key)
            .arg(&shared.group)
            .arg(&shared.consumer)
            .arg(0)
            .arg(id)
            .arg("IDLE")
            .arg(idle.as_millis() as u64)
            .arg("JUSTID"),
        shared.timeout,
    )
    .await
    .map(drop)
    .map_err(|e| command_error("could not give the entry back", e))
}

impl Acker for RedisAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), SubscribeError>> {
        Box::pin(async move {
            let RedisAcker {
                shared,
                id,
                _permit,
            } = *self;
            let (done, outcome) = oneshot::channel();
            let gone = || SubscribeError::unavailable("the acknowledging task has stopped");
            shared.acks.send((id, done)).map_err(|_| gone())?;
            // The prefetch slot stays taken until Redis has answered.
            let outcome = outcome.await.unwrap_or_else(|_| Err(gone()));
            drop(_permit);
            outcome
        })
    }

    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), SubscribeError>> {
        Box::pin(async move {
            let delay = delay.unwrap_or_default();
            let claim_idle = self.shared.claim_idle;
            if delay < claim_idle {
                self.set_idle(claim_idle - delay).await?;
                nudge_after(self.shared.clone(), delay);
                return Ok(());
            }
            // Longer than Redis can be told: hold the entry, keeping it
            // fresh, until the rest of the delay fits. The prefetch slot is
            // free meanwhile: the entry is not in this consumer's hands.
            self.set_idle(Duration::ZERO).await?;
            let until = Instant::now() + delay;
            let RedisAcker {
                shared,
                id,
                _permit,
            } = *self;
            drop(_permit);
            tokio::spawn(async move {
                loop {
                    let rest = until.saturating_duration_since(Instant::now());
                    if rest < claim_idle {
                        if let Err(e) = set_idle(&shared, &id, claim_idle - rest).await {
                            tracing::debug!(error = %e.describe(), "delayed redis nack failed");
                        }
                        nudge_after(shared.clone(), rest);
                        return;
                    }
                    tokio::time::sleep((rest - claim_idle).min(claim_idle / 2)).await;
                    if rest - claim_idle >= claim_idle / 2 {
                        let _ = set_idle(&shared, &id, Duration::ZERO).await;
                    }
                }
            });
            Ok(())
        })
    }
}

/// Has the subscription reclaim after `delay`, when a nacked entry becomes
/// claimable, rather than at its next period.
fn nudge_after(shared: Arc<Shared>, delay: Duration) {
    if delay.is_zero() {
        shared.claim_now.store(true, Ordering::Relaxed);
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        shared.claim_now.store(true, Ordering::Relaxed);
    });
}

/// How often a subscription looks for entries to reclaim.
fn claim_every(config: &RedisConfig) -> Duration {
    config.claim_idle / 2
}

async fn query(
    manager: &ConnectionManager,
    cmd: &Cmd,
    timeout: Duration,
) -> Result<Value, RedisError> {
    let mut connection = manager.clone();
    match tokio::time::timeout(timeout, cmd.query_async(&mut connection)).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis did not answer in time",
        ))),
    }
}

/// The fields of `group` in an `XINFO GROUPS` reply.
fn find_group(groups: Value, group: &str) -> Option<HashMap<String, Value>> {
    let Value::Array(groups) = groups else {
        return None;
    };
    groups.into_iter().find_map(|g| {
        let pairs: Vec<(Value, Value)> = match g {
            Value::Map(pairs) => pairs,
            Value::Array(flat) => {
                let mut flat = flat.into_iter();
                std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
            }
            _ => return None,
        };
        let fields: HashMap<String, Value> = pairs
            .into_iter()
            .filter_map(|(k, v)| Some((string(k).ok()?, v)))
            .collect();
        let name = fields.get("name").cloned().and_then(|v| string(v).ok());
        (name.as_deref() == Some(group)).then_some(fields)
    })
}

fn command_error(what: &'static str, e: RedisError) -> SubscribeError {
    if crate::is_unreachable(&e) {
        SubscribeError::unavailable(what).with_source(e)
    } else {
        SubscribeError::permanent(what).with_source(e)
    }
}

/// Reading failed: the stream ends and the consumer subscribes again, which
/// also recreates a group that was deleted (`NOGROUP`).
fn read_error(what: &'static str, e: RedisError) -> SubscribeError {
    SubscribeError::unavailable(what).with_source(e)
}

fn malformed_reply(what: String) -> SubscribeError {
    SubscribeError::unavailable(format!("unexpected reply from redis: {what}"))
}
