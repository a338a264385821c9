//! The Kafka subscriber: one consumer-group member per subscription.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use ferry_core::cloudevents::from_binary_headers;
use ferry_core::{
    Acker, BoxFuture, Capabilities, Lag, LagFuture, Malformed, Message, MessageStream, Received,
    SubscribeError, SubscribeFuture, Subscriber, Subscription,
};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::admin::Topics;
use crate::offsets::{Commit, Partitions, Position, Sequence};
use crate::quiet::{self, Quiet};
use crate::topic::kafka_topic;
use crate::{KafkaConfig, KafkaConfigError};

/// Consumes a topic as a member of a Kafka consumer group.
///
/// Each [`subscribe`](Subscriber::subscribe) starts one consumer (a
/// `StreamConsumer` with `group.id` = the subscription's group): the
/// group's members share the topic's partitions, and every group gets
/// every message. The topic is [`KafkaConfig::topic_prefix`] + the
/// subscription's topic, mapped as the [`KafkaSink`](crate::KafkaSink) maps
/// it, and is created when missing (see [`KafkaConfig::create_topics`]).
///
/// * **Start**: `subscribe` returns once the group coordinator has assigned
///   this consumer its partitions (none, when the group already has as many
///   members as the topic has partitions), within
///   [`KafkaConfig::join_timeout`]. A **new group starts at the earliest
///   offset**, so it also gets what was published before it existed (the
///   contract lets an adapter say so): at its first assignment the consumer
///   commits the partitions' low watermarks, so that the group and its
///   backlog exist on the broker from then on.
/// * **Ack** records the message as handled; the group's position is
///   committed (`enable.auto.commit=false`; Ferry commits) every
///   [`KafkaConfig::commit_interval`] (1 s by default), when a partition is
///   revoked (before the next owner reads) and when the consumer closes,
///   and it only ever moves up to the lowest offset of the partition handed
///   out and not yet acknowledged: acks may come in any order, the commit
///   never passes an unacknowledged message. A consumer that stops leaves
///   its unacknowledged messages to the next owner of the partition, which
///   reads on from the committed offset; that is how unacknowledged
///   messages are redelivered. A consumer that is killed also redelivers
///   what it acknowledged since its last commit (at least once; consumers
///   dedup). With `commit_interval = "0s"` each ack commits before it
///   returns (one commit for all the acks that arrive while one is in
///   flight), and an ack that returned `Ok` is never redelivered.
/// * **Nack** seeks the partition back to the nacked offset, so the message
///   and the partition's later ones are delivered again in order (the later
///   ones are duplicates when they were handled already: at least once). A
///   nack delay is waited out in this process before the seek; a consumer
///   that stops meanwhile leaves the message to the next owner at once, so
///   [`Capabilities::delayed_nack`] is not claimed.
/// * **Prefetch**: at most [`Subscription::prefetch`] messages are handed
///   out unsettled; while that many are out the consumer does not poll, and
///   librdkafka's `max.poll.interval.ms` (5 min by default, see
///   [`KafkaConfig::properties`]) bounds how long that may last before the
///   consumer leaves its group.
/// * Kafka does not count deliveries: `delivery_count` is `None`.
/// * A record whose headers are not UTF-8, or do not make a Ferry message
///   (no `ce-id`, …), arrives as [`Received::message`] `Err(Malformed)`; it
///   is settled like any other.
/// * [`lag`](Subscriber::lag) reads the group's committed offsets and the
///   partitions' high watermarks without joining the group.
pub struct KafkaSubscriber {
    config: KafkaConfig,
    topics: Topics,
}

impl KafkaSubscriber {
    /// Checks the settings and prepares the admin client; consumers connect
    /// at [`subscribe`](Subscriber::subscribe).
    pub async fn connect(config: KafkaConfig) -> Result<Self, KafkaConfigError> {
        config.validate()?;
        Ok(Self {
            topics: Topics::new(&config)?,
            config,
        })
    }

    fn topic(&self, subscription: &Subscription) -> Result<String, SubscribeError> {
        kafka_topic(&self.config.topic_prefix, &subscription.topic).ok_or_else(|| {
            SubscribeError::permanent(format!(
                "topic `{}` does not make a kafka topic name",
                subscription.topic
            ))
        })
    }

    async fn start(&self, subscription: &Subscription) -> Result<MessageStream, SubscribeError> {
        let topic = self.topic(subscription)?;
        if subscription.group.is_empty() {
            return Err(SubscribeError::permanent(
                "the group name must not be empty",
            ));
        }
        self.topics
            .ensure(&topic)
            .await
            .map_err(|e| subscribe_error(e, "could not create the kafka topic"))?;
        let (assigned_tx, mut assigned) = watch::channel(false);
        let shared = Arc::new(Shared {
            partitions: Mutex::new(Partitions::default()),
            commit: tokio::sync::Mutex::new(()),
            committing: Mutex::new(()),
            topic: topic.clone(),
        });
        let context = GroupContext {
            shared: shared.clone(),
            assigned: assigned_tx,
        };
        let consumer: StreamConsumer<GroupContext> = self
            .config
            .client_config()
            .set("group.id", &subscription.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create_with_context(context)
            .map_err(|e| {
                SubscribeError::permanent("could not create the kafka consumer").with_source(e)
            })?;
        consumer.subscribe(&[&topic]).map_err(|e| {
            SubscribeError::permanent("kafka refused the subscription").with_source(e)
        })?;
        let consumer = Arc::new(consumer);
        let (tx, rx) = mpsc::channel(subscription.prefetch.max(1));
        let (seeks_tx, seeks) = mpsc::unbounded_channel();
        let member = Member {
            consumer: Arc::downgrade(&consumer),
            shared,
            topic: topic.clone(),
            seeks: seeks_tx,
            timeout: self.config.delivery_timeout,
            commit_interval: self.config.commit_interval,
        };
        if !self.config.commit_interval.is_zero() {
            tokio::spawn(commit_periodically(member.clone()));
        }
        tokio::spawn(forward(
            consumer.clone(),
            member.clone(),
            tx,
            seeks,
            Arc::new(Semaphore::new(subscription.prefetch.max(1))),
        ));

        let joined = tokio::time::timeout(
            self.config.join_timeout,
            assigned.wait_for(|assigned| *assigned),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !joined {
            // Closing waits for the consumer to leave the group.
            drop(tokio::task::spawn_blocking(move || drop(consumer)));
            return Err(SubscribeError::unavailable(format!(
                "kafka group `{}` assigned no partitions within {:?}",
                subscription.group, self.config.join_timeout
            )));
        }
        pin_start(consumer, member).await?;
        let mut rx = rx;
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }
}

impl Subscriber for KafkaSubscriber {
    fn name(&self) -> &str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_per_key: true,
            persistent: true,
            consumer_groups: true,
            redelivers_unacked: true,
            dedups_by_id: false,
            delayed_nack: false,
        }
    }

    fn subscribe<'a>(&'a self, subscription: &'a Subscription) -> SubscribeFuture<'a> {
        Box::pin(self.start(subscription))
    }

    fn lag<'a>(&'a self, subscription: &'a Subscription) -> LagFuture<'a> {
        Box::pin(async move {
            let topic = self.topic(subscription)?;
            let config = self.config.clone();
            let group = subscription.group.clone();
            tokio::task::spawn_blocking(move || lag(&config, &topic, &group))
                .await
                .map_err(|e| {
                    SubscribeError::unavailable("kafka lag lookup failed").with_source(e)
                })?
        })
    }
}

ferry_core::impl_debug!(
    KafkaSubscriber,
    |subscriber| brokers: subscriber.config.brokers,
    topic_prefix: subscriber.config.topic_prefix
);

/// What a consumer, its rebalance callbacks and its ackers share.
struct Shared {
    partitions: Mutex<Partitions>,
    /// Awaited by the tasks that commit, so that they take turns without
    /// holding a thread while they wait.
    commit: tokio::sync::Mutex<()>,
    /// Held from choosing positions to commit until the broker answered
    /// (by those tasks, and by a revocation, which commits in the
    /// rebalance callback), so that commits reach the broker in the order
    /// their positions were chosen and never move a position back.
    committing: Mutex<()>,
    topic: String,
}

impl Shared {
    fn partitions(&self) -> MutexGuard<'_, Partitions> {
        // Bookkeeping only; a panic elsewhere leaves it consistent enough to
        // go on (at worst a message is delivered again).
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn committing(&self) -> MutexGuard<'_, ()> {
        self.committing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits the positions `choose` picks while this holds the commit
    /// order, then records them. Blocks until the broker answered.
    fn commit_chosen(
        &self,
        consumer: &impl Consumer<GroupContext>,
        choose: impl FnOnce(&mut Partitions) -> Result<Vec<Commit>, ()>,
    ) -> Result<(), SubscribeError> {
        let _order = self.committing();
        let commits = choose(&mut self.partitions()).map_err(|()| reassigned())?;
        if commits.is_empty() {
            return Ok(());
        }
        commit_offsets(consumer, &self.topic, &commits)
            .map_err(|e| subscribe_error(e, "kafka offset commit failed"))?;
        let mut partitions = self.partitions();
        for commit in commits {
            partitions.committed(commit);
        }
        Ok(())
    }
}

/// Commits `commits` synchronously.
fn commit_offsets(
    consumer: &impl Consumer<GroupContext>,
    topic: &str,
    commits: &[Commit],
) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for commit in commits {
        tpl.add_partition_offset(topic, commit.partition, Offset::Offset(commit.offset))?;
    }
    let result = consumer.commit(&tpl, CommitMode::Sync);
    match &result {
        Ok(()) => tracing::trace!(?commits, "kafka offsets committed"),
        Err(e) => tracing::debug!(?commits, error = %e, "kafka offset commit failed"),
    }
    result
}

/// Tracks the assignment: each partition assigned or revoked starts its
/// offset tracking afresh, and the first assignment lets `subscribe` return.
struct GroupContext {
    shared: Arc<Shared>,
    assigned: watch::Sender<bool>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        quiet::log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        quiet::error(error, reason);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) | Rebalance::Revoke(tpl) => {
                let assign = matches!(rebalance, Rebalance::Assign(_));
                let ids: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::debug!(
                    kind = if assign { "assign" } else { "revoke" },
                    partitions = ?ids,
                    "kafka rebalance"
                );
                if assign {
                    let mut partitions = self.shared.partitions();
                    for &id in &ids {
                        partitions.reset(id);
                    }
                    return;
                }
                // What was acknowledged on the revoked partitions is
                // committed before the next owner reads from the group's
                // position (a failure leaves it to be delivered again);
                // settles from now on are refused.
                let _ = self.shared.commit_chosen(consumer, |partitions| {
                    let left = partitions.uncommitted(Some(&ids));
                    for &id in &ids {
                        partitions.reset(id);
                    }
                    Ok(left)
                });
            }
            Rebalance::Error(e) => {
                // librdkafka drops the whole assignment.
                tracing::warn!(error = %e, "kafka rebalance failed");
                drop(self.shared.partitions().close());
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::debug!(partitions = tpl.count(), "kafka partitions assigned");
            self.assigned.send_replace(true);
        }
    }
}

type GroupConsumer = StreamConsumer<GroupContext>;

/// A consumer's handle for its ackers. It holds the consumer weakly: once
/// the stream is dropped the consumer leaves its group, and settling its
/// messages fails.
#[derive(Clone)]
struct Member {
    consumer: Weak<GroupConsumer>,
    shared: Arc<Shared>,
    topic: String,
    seeks: mpsc::UnboundedSender<Position>,
    timeout: Duration,
    /// [`KafkaConfig::commit_interval`]: zero commits on each ack.
    commit_interval: Duration,
}

impl Member {
    /// Commits the positions `choose` picks once it is this task's turn.
    async fn commit(
        &self,
        choose: impl FnOnce(&mut Partitions) -> Result<Vec<Commit>, ()> + Send + 'static,
    ) -> Result<(), SubscribeError> {
        let Some(consumer) = self.consumer.upgrade() else {
            return Err(closed());
        };
        let _turn = self.shared.commit.lock().await;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.commit_chosen(&*consumer, choose))
            .await
            .map_err(|e| SubscribeError::unavailable("kafka offset commit failed").with_source(e))?
    }
}

/// Commits what was acknowledged every [`KafkaConfig::commit_interval`]
/// until the consumer is gone; a failed commit is retried at the next tick
/// and logged once when commits start failing and once when they succeed
/// again.
async fn commit_periodically(member: Member) {
    let mut tick = tokio::time::interval(member.commit_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut failing = false;
    loop {
        tick.tick().await;
        if member.consumer.strong_count() == 0 {
            return;
        }
        match member
            .commit(|partitions| Ok(partitions.uncommitted(None)))
            .await
        {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(topic = %member.topic, "kafka offset commits succeed again");
            }
            Ok(()) => {}
            Err(_) if member.consumer.strong_count() == 0 => return,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(topic = %member.topic, error = %e.describe(), "kafka offset commit failed; retrying");
            }
            Err(_) => {}
        }
    }
}

/// Receives from the consumer and hands messages to the stream, one
/// prefetch permit each, and performs the seeks that nacks ask for. Ends
/// when the stream is dropped; the consumer then leaves its group.
async fn forward(
    consumer: Arc<GroupConsumer>,
    member: Member,
    tx: mpsc::Sender<Result<Received, SubscribeError>>,
    mut seeks: mpsc::UnboundedReceiver<Position>,
    permits: Arc<Semaphore>,
) {
    let mut failing = false;
    loop {
        let received = async {
            let permit = permits.clone().acquire_owned().await;
            (permit, consumer.recv().await)
        };
        tokio::select! {
            biased;
            _ = tx.closed() => break,
            Some(position) = seeks.recv() => seek(&consumer, &member, position),
            (permit, received) = received => {
                let Ok(permit) = permit else { break };
                match received {
                    Ok(message) => {
                        if failing {
                            failing = false;
                            tracing::info!(topic = %member.topic, "kafka consumer receiving again");
                        }
                        let item = hand_out(&message, &member, permit);
                        if tx.send(Ok(item)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) if is_fatal(&e) => {
                        let _ = tx.send(Err(subscribe_error(e, "kafka consumer failed"))).await;
                        break;
                    }
                    // librdkafka reconnects and rejoins by itself.
                    Err(e) => {
                        if !failing {
                            failing = true;
                            tracing::warn!(topic = %member.topic, error = %e, "kafka consumer error; retrying");
                        }
                    }
                }
            }
        }
    }
    // What was acknowledged is committed before the consumer leaves its
    // group (a failure leaves it to be delivered again); closing waits for
    // the broker: not on the runtime's threads.
    drop(tokio::task::spawn_blocking(move || {
        let _ = member
            .shared
            .commit_chosen(&*consumer, |partitions| Ok(partitions.close()));
        drop(consumer);
    }));
}

fn seek(consumer: &GroupConsumer, member: &Member, position: Position) {
    if !member.shared.partitions().rewind(position) {
        return;
    }
    tracing::debug!(
        partition = position.partition,
        offset = position.offset,
        epoch = position.epoch,
        "kafka seek back for a nack"
    );
    // A zero timeout seeks asynchronously; librdkafka drops the messages
    // fetched before the seek.
    if let Err(e) = consumer.seek(
        &member.topic,
        position.partition,
        Offset::Offset(position.offset),
        Duration::ZERO,
    ) {
        // The message stays unacknowledged: the next owner of the partition
        // gets it again.
        tracing::warn!(topic = %member.topic, partition = position.partition, error = %e, "kafka seek for a nack failed");
    }
}

fn hand_out(
    message: &BorrowedMessage<'_>,
    member: &Member,
    permit: OwnedSemaphorePermit,
) -> Received {
    let (position, sequence) = member
        .shared
        .partitions()
        .handed_out(message.partition(), message.offset());
    match sequence {
        Sequence::First => tracing::debug!(
            partition = position.partition,
            offset = position.offset,
            epoch = position.epoch,
            "kafka partition: first message since its assignment"
        ),
        Sequence::Skipped { from } => tracing::debug!(
            partition = position.partition,
            from,
            to = position.offset,
            epoch = position.epoch,
            "kafka partition: offsets skipped"
        ),
        Sequence::Next => {}
    }
    let decoded = decode(message);
    tracing::trace!(
        partition = position.partition,
        offset = position.offset,
        epoch = position.epoch,
        id = ?decoded.as_ref().map(|m| m.id).ok(),
        "kafka message handed out"
    );
    Received::new(
        decoded,
        None,
        KafkaAcker {
            member: member.clone(),
            position,
            _permit: permit,
        },
    )
}

/// The Ferry message of a Kafka record.
pub(crate) fn decode(message: &BorrowedMessage<'_>) -> Result<Message, Malformed> {
    let payload = Bytes::copy_from_slice(message.payload().unwrap_or_default());
    let mut headers = Vec::new();
    let mut problem = None;
    if let Some(raw) = message.headers() {
        for header in raw.iter() {
            let value = match header.value.map(std::str::from_utf8) {
                Some(Ok(value)) => value.to_owned(),
                Some(Err(_)) => {
                    problem.get_or_insert_with(|| format!("header `{}` is not utf-8", header.key));
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned()
                }
                None => {
                    problem.get_or_insert_with(|| format!("header `{}` has no value", header.key));
                    String::new()
                }
            };
            headers.push((header.key.to_owned(), value));
        }
    }
    match problem {
        Some(reason) => Err(Malformed {
            reason,
            headers: headers.into_iter().collect::<BTreeMap<_, _>>(),
            payload,
        }),
        None => from_binary_headers(headers, payload),
    }
}

/// Commits on ack, seeks back on nack; holds a prefetch permit until it is
/// settled or dropped.
struct KafkaAcker {
    member: Member,
    position: Position,
    _permit: OwnedSemaphorePermit,
}

impl Acker for KafkaAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), SubscribeError>> {
        Box::pin(async move {
            let shared = self.member.shared.clone();
            // The position this acknowledgement needs committed is fixed
            // when it is recorded, before waiting for the commit lock:
            // whichever commit first covers it settles it, so the acks that
            // arrive while one commit is in flight share the next one.
            let needed = match shared.partitions().acked(self.position) {
                Err(()) => {
                    tracing::debug!(
                        partition = self.position.partition,
                        offset = self.position.offset,
                        epoch = self.position.epoch,
                        "kafka ack refused: the partition was reassigned or the consumer closed"
                    );
                    return Err(reassigned());
                }
                // Committed with the next periodic commit (or the one when
                // the partition is revoked or the consumer closes).
                Ok(_) if !self.member.commit_interval.is_zero() => return Ok(()),
                // An earlier offset is still unacknowledged (the commit
                // that follows its ack covers this one too), or a commit
                // already covers this one.
                Ok(None) => return Ok(()),
                Ok(Some(needed)) => needed,
            };
            let position = self.position;
            self.member
                .commit(move |partitions| {
                    Ok(partitions
                        .commit_target(position, needed)?
                        .map(|offset| Commit {
                            partition: position.partition,
                            offset,
                            epoch: position.epoch,
                        })
                        .into_iter()
                        .collect())
                })
                .await
        })
    }

    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), SubscribeError>> {
        Box::pin(async move {
            let KafkaAcker {
                member, position, ..
            } = *self;
            // When the consumer is gone the seek is moot: the message is
            // unacknowledged and goes to the partition's next owner.
            match delay.filter(|d| !d.is_zero()) {
                None => {
                    let _ = member.seeks.send(position);
                }
                Some(delay) => {
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = member.seeks.send(position);
                    });
                }
            }
            Ok(())
        })
    }
}

/// Pins a new group's start: commits the low watermark of each assigned
/// partition that has no committed offset yet.
async fn pin_start(consumer: Arc<GroupConsumer>, member: Member) -> Result<(), SubscribeError> {
    let _turn = member.shared.commit.lock().await;
    let timeout = member.timeout;
    let topic = member.topic.clone();
    let shared = member.shared.clone();
    tokio::task::spawn_blocking(move || -> Result<(), KafkaError> {
        let _order = shared.committing();
        let assignment = consumer.assignment()?;
        if assignment.count() == 0 {
            return Ok(());
        }
        let committed = consumer.committed_offsets(assignment, timeout)?;
        let mut start = TopicPartitionList::new();
        for element in committed.elements() {
            if !matches!(element.offset(), Offset::Offset(_)) {
                let (low, _) = consumer.fetch_watermarks(&topic, element.partition(), timeout)?;
                start.add_partition_offset(&topic, element.partition(), Offset::Offset(low))?;
            }
        }
        if start.count() > 0 {
            consumer.commit(&start, CommitMode::Sync)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| SubscribeError::unavailable("kafka group start failed").with_source(e))?
    .map_err(|e| subscribe_error(e, "could not commit the new kafka group's start"))
}

/// The group's backlog, from a consumer that reads offsets without joining.
fn lag(config: &KafkaConfig, topic: &str, group: &str) -> Result<Lag, SubscribeError> {
    let timeout = config.delivery_timeout;
    let consumer: BaseConsumer<Quiet> = config
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create_with_context(Quiet)
        .map_err(|e| {
            SubscribeError::permanent("could not create the kafka client").with_source(e)
        })?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| subscribe_error(e, "kafka metadata lookup failed"))?;
    let Some(partitions) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
    else {
        return Ok(Lag::default());
    };
    let mut tpl = TopicPartitionList::new();
    for &partition in &partitions {
        tpl.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .map_err(|e| subscribe_error(e, "kafka offset lookup failed"))?;
    let committed: Vec<(i32, Option<i64>)> = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(offset) => (e.partition(), Some(offset)),
            _ => (e.partition(), None),
        })
        .collect();
    // A group that never committed does not exist, as far as Kafka tells.
    if committed.iter().all(|(_, offset)| offset.is_none()) {
        return Ok(Lag::default());
    }
    let mut waiting = 0u64;
    for (partition, offset) in committed {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| subscribe_error(e, "kafka watermark lookup failed"))?;
        // A partition the group has no offset for starts at the earliest.
        let from = offset.unwrap_or(low).max(low);
        waiting += u64::try_from(high - from).unwrap_or(0);
    }
    Ok(Lag {
        waiting: Some(waiting),
        in_flight: None,
        oldest_age: None,
    })
}

fn reassigned() -> SubscribeError {
    SubscribeError::unavailable(
        "the kafka partition was reassigned or the consumer closed; the message will be delivered again",
    )
}

fn closed() -> SubscribeError {
    SubscribeError::unavailable(
        "the kafka consumer has closed; the message will be delivered again",
    )
}

/// Errors after which the consumer cannot go on by itself.
fn is_fatal(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(e, KafkaError::MessageConsumptionFatal(_))
        || matches!(
            e.rdkafka_error_code(),
            Some(
                Fatal
                    | TopicAuthorizationFailed
                    | GroupAuthorizationFailed
                    | ClusterAuthorizationFailed
                    | InvalidGroupId
            )
        )
}

fn subscribe_error(e: KafkaError, what: &str) -> SubscribeError {
    let retry = match crate::admin::error_code(&e) {
        Some(code) => !is_fatal(&e) && !matches!(code, RDKafkaErrorCode::InvalidTopic),
        None => true,
    };
    let error = if retry {
        SubscribeError::unavailable(what)
    } else {
        SubscribeError::permanent(what)
    };
    error.with_source(e)
}
