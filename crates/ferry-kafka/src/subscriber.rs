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
use crate::offsets::{Partitions, Position};
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
/// * **Ack** commits offsets (`enable.auto.commit=false`), only after the
///   handler acknowledged, and only up to the lowest offset of the
///   partition handed out and not yet acknowledged: acks may come in any
///   order, the commit never passes an unacknowledged message. A consumer
///   that stops leaves its unacknowledged messages to the next owner of the
///   partition, which reads on from the committed offset; that is how
///   unacknowledged messages are redelivered.
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
        };
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
    /// Held while committing, so that commits reach the broker in the
    /// order their positions were chosen and never move a position back.
    commit: tokio::sync::Mutex<()>,
}

impl Shared {
    fn partitions(&self) -> MutexGuard<'_, Partitions> {
        // Bookkeeping only; a panic elsewhere leaves it consistent enough to
        // go on (at worst a message is delivered again).
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }
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
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) | Rebalance::Revoke(tpl) => {
                let mut partitions = self.shared.partitions();
                for element in tpl.elements() {
                    partitions.reset(element.partition());
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance failed"),
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
}

impl Member {
    /// Commits `offset` as the position of `position`'s partition.
    async fn commit(&self, position: Position, offset: i64) -> Result<(), SubscribeError> {
        let Some(consumer) = self.consumer.upgrade() else {
            return Err(closed());
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, position.partition, Offset::Offset(offset))
            .map_err(|e| SubscribeError::permanent("invalid offset").with_source(e))?;
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| SubscribeError::unavailable("kafka offset commit failed").with_source(e))?
            .map_err(|e| subscribe_error(e, "kafka offset commit failed"))?;
        self.shared.partitions().committed(position, offset);
        Ok(())
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
    // Closing the consumer waits for it to leave the group: not on the
    // runtime's threads.
    drop(tokio::task::spawn_blocking(move || drop(consumer)));
}

fn seek(consumer: &GroupConsumer, member: &Member, position: Position) {
    if !member.shared.partitions().rewind(position) {
        return;
    }
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
    let position = member
        .shared
        .partitions()
        .handed_out(message.partition(), message.offset());
    Received::new(
        decode(message),
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
            let reassigned = || {
                SubscribeError::unavailable(
                    "the kafka partition was reassigned; the message will be delivered again",
                )
            };
            // Recorded before waiting for the commit lock, so that the
            // commit in flight's successor covers this acknowledgement and
            // every other that arrived meanwhile: one commit for many.
            let recorded = shared.partitions().acked(self.position);
            if recorded.is_err() {
                return Err(reassigned());
            }
            let _commit = shared.commit.lock().await;
            let target = shared.partitions().commit_target(self.position);
            match target {
                Err(()) => Err(reassigned()),
                Ok(None) => Ok(()),
                Ok(Some(offset)) => self.member.commit(self.position, offset).await,
            }
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
    let _commit = member.shared.commit.lock().await;
    let timeout = member.timeout;
    let topic = member.topic.clone();
    tokio::task::spawn_blocking(move || -> Result<(), KafkaError> {
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
