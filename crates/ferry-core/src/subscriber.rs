//! The subscriber contract: where a consumer takes messages from a broker.
//!
//! A [`Subscriber`] yields [`Received`] messages on a stream; the consumer
//! acknowledges each one ([`Received::ack`]) once it has been handled, or
//! gives it back ([`Received::nack`]) to be delivered again. This is the
//! broker-side half of Ferry's messaging; the [`Sink`](crate::Sink) is the
//! publishing half.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;

use crate::cloudevents::Malformed;
use crate::{BoxFuture, ErrorKind, Failure, Message};

/// What a consumer asks a broker for: the messages of one topic, shared
/// among the consumers of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The topic, exactly as producers set [`Message::topic`]. Adapters map
    /// it to their own names (subject prefix, stream key, queue name).
    pub topic: String,
    /// The consumer group. Every group that subscribes to an event topic
    /// gets every message; within a group each message goes to one
    /// consumer. Names a durable consumer, queue or group on the broker, so
    /// it must stay the same across restarts.
    pub group: String,
    /// How many unacknowledged messages the broker may hand this consumer
    /// at once (prefetch, `max_ack_pending`, batch size).
    pub prefetch: usize,
}

impl Subscription {
    /// A subscription with a prefetch of 64.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            prefetch: 64,
        }
    }

    /// Sets the prefetch.
    pub fn with_prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }
}

/// What a broker adapter guarantees beyond the contract every
/// [`Subscriber`] keeps. The conformance suite checks each flag that is set
/// and skips the checks of each flag that is not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Messages with the same [`Message::key`] reach one group in the order
    /// they were published, one at a time (the next only after the previous
    /// was acknowledged, or in order within a prefetch window).
    pub ordered_per_key: bool,
    /// Published messages survive a restart of the broker.
    pub persistent: bool,
    /// Several groups can subscribe to one topic and each gets every
    /// message, while the consumers of one group share them.
    pub consumer_groups: bool,
    /// A message received but neither acknowledged nor nacked (its consumer
    /// crashed) is delivered again after a while.
    pub redelivers_unacked: bool,
    /// The broker drops a message published twice with the same
    /// [`Message::id`] within its window, so a relay's re-send after a crash
    /// reaches consumers once.
    pub dedups_by_id: bool,
    /// [`Received::nack`] with a delay is honoured by the broker: the
    /// message is not delivered again before the delay has passed.
    pub delayed_nack: bool,
}

/// A message taken from a broker, to be acknowledged or given back.
///
/// Dropping it without either leaves it unacknowledged: a broker that
/// [redelivers unacked messages](Capabilities::redelivers_unacked) hands it
/// out again after its visibility timeout or once the consumer's connection
/// closes.
pub struct Received {
    /// The message, or why the bytes on the broker are not a Ferry message
    /// (missing id, bad header); a consumer dead-letters a malformed one.
    pub message: Result<Message, Malformed>,
    /// How many times the broker has delivered this message, this time
    /// included (1 on first delivery), when the broker counts.
    pub delivery_count: Option<u32>,
    acker: Box<dyn Acker>,
}

impl Received {
    /// Wraps a message and the way to settle it.
    pub fn new(
        message: Result<Message, Malformed>,
        delivery_count: Option<u32>,
        acker: impl Acker,
    ) -> Self {
        Self {
            message,
            delivery_count,
            acker: Box::new(acker),
        }
    }

    /// Tells the broker the message is handled; it will not be delivered
    /// again to this group. An error means the acknowledgement may not have
    /// reached the broker and the message may come again: consumers dedup.
    pub async fn ack(self) -> Result<(), SubscribeError> {
        self.acker.ack().await
    }

    /// Gives the message back to be delivered again, after `delay` where
    /// the broker supports it ([`Capabilities::delayed_nack`]), else as soon
    /// as the broker redelivers.
    pub async fn nack(self, delay: Option<Duration>) -> Result<(), SubscribeError> {
        self.acker.nack(delay).await
    }
}

impl fmt::Debug for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("message", &self.message)
            .field("delivery_count", &self.delivery_count)
            .finish_non_exhaustive()
    }
}

/// How a [`Received`] message is settled with its broker; implemented by
/// each adapter.
pub trait Acker: Send + Sync + 'static {
    /// Acknowledges the message.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), SubscribeError>>;
    /// Gives the message back, to be redelivered after `delay` if supported.
    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), SubscribeError>>;
}

/// What [`Subscriber::subscribe`] returns.
pub type SubscribeFuture<'a> = BoxFuture<'a, Result<MessageStream, SubscribeError>>;

/// What [`Subscriber::lag`] returns.
pub type LagFuture<'a> = BoxFuture<'a, Result<Lag, SubscribeError>>;

/// The messages of a subscription as they arrive.
pub type MessageStream = Pin<Box<dyn Stream<Item = Result<Received, SubscribeError>> + Send>>;

/// A source of messages: a broker's consumer side.
///
/// # Delivery contract
///
/// * **At least once.** A message is delivered until a consumer of the
///   group acknowledges it. Redelivery after a crash, a lost ack, or a
///   relay's re-send means a consumer can see a message more than once:
///   handlers dedup by [`Message::id`] (Ferry's inbox does).
/// * **The stream** yields messages as they arrive and does not end while
///   the subscription is healthy. When the connection fails in a way the
///   adapter does not recover from by itself, the stream yields that error
///   and ends; the consumer subscribes again, with backoff. Messages
///   received before the failure and not yet settled are redelivered by the
///   broker; settling them may fail.
/// * **Groups.** What a group shares and what it fans out is given by
///   [`Capabilities::consumer_groups`]; the subscription's group name is
///   durable on the broker.
/// * Implementations are shared between tasks (`Send + Sync`); each
///   [`Received`] may be settled from any task, in any order.
/// * **Errors** use the core [`ErrorKind`]: unavailable (the broker cannot
///   be reached: subscribe again with backoff), transient (this call
///   failed), permanent (the request is wrong: retrying will not help).
/// * **Close.** The caller calls [`Subscriber::close`] once when it stops.
pub trait Subscriber: Send + Sync + 'static {
    /// Short name for logs and metrics, e.g. `amqp` or `redis`.
    fn name(&self) -> &str;

    /// What this adapter guarantees beyond the contract.
    fn capabilities(&self) -> Capabilities;

    /// Starts receiving the messages of `subscription`. Creates the durable
    /// group (queue, consumer, stream group) when it does not exist yet; a
    /// new group starts with the messages published after it was created,
    /// unless the adapter documents otherwise.
    fn subscribe<'a>(&'a self, subscription: &'a Subscription) -> SubscribeFuture<'a>;

    /// How far the group of `subscription` is behind, as the broker reports
    /// it; fields the broker cannot tell are `None`. Does not create the
    /// group: a group that does not exist yet reports `None`s.
    fn lag<'a>(&'a self, subscription: &'a Subscription) -> LagFuture<'a>;

    /// Releases the connection once the caller is done with every stream
    /// it subscribed and has settled what it will settle: flushes pending
    /// acknowledgements where the adapter buffers them. Messages not
    /// acknowledged by then are redelivered, as after a crash. The
    /// default does nothing (the connection closes when dropped).
    fn close(&self) -> BoxFuture<'_, Result<(), SubscribeError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A consumer group's backlog on its broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lag {
    /// Messages published to the topic that the group has not yet been
    /// handed (or, for brokers that count so, not yet acknowledged).
    pub waiting: Option<u64>,
    /// Messages handed to the group's consumers and not yet acknowledged.
    pub in_flight: Option<u64>,
    /// Age of the oldest message the group has not acknowledged, where
    /// the broker can tell.
    pub oldest_age: Option<Duration>,
}

impl<S: Subscriber + ?Sized> Subscriber for std::sync::Arc<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    fn subscribe<'a>(&'a self, subscription: &'a Subscription) -> SubscribeFuture<'a> {
        (**self).subscribe(subscription)
    }
    fn lag<'a>(&'a self, subscription: &'a Subscription) -> LagFuture<'a> {
        (**self).lag(subscription)
    }
    fn close(&self) -> BoxFuture<'_, Result<(), SubscribeError>> {
        (**self).close()
    }
}

/// Whether trying again can help after a [`SubscribeError`]: the core
/// [`ErrorKind`]. [`Unavailable`](ErrorKind::Unavailable): the broker cannot
/// be reached or the connection broke, subscribe again with backoff;
/// [`Permanent`](ErrorKind::Permanent): the request is wrong (a topic or
/// group name the broker refuses, a missing permission), trying again will
/// not help; [`Transient`](ErrorKind::Transient): this one call failed (a
/// settle that timed out), the next may succeed.
pub type SubscribeErrorKind = ErrorKind;

/// A failed subscribe, receive or settle: the core [`Failure`], whose
/// [`kind`](Failure::kind) says whether subscribing again may help
/// ([`Failure::is_retryable`]).
pub type SubscribeError = Failure;
