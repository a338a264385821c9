//! The RabbitMQ subscriber: one durable queue per group, manual acks.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::{
    Acker, BoxFuture, Capabilities, Lag, LagFuture, MessageStream, Received, SubscribeError,
    SubscribeFuture, Subscriber, Subscription,
};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection};

use crate::connection::{ChannelError, Connector};
use crate::ConnectError;

/// Consumes from RabbitMQ: each consumer group is a durable queue.
///
/// The queue of group `g` on topic `t` is named `g:t` (so a group name must
/// not contain `:`), has [`AmqpConfig::queue_type`](crate::AmqpConfig::queue_type), and is bound to
/// [`AmqpConfig::exchange`](crate::AmqpConfig::exchange) with `t` as binding key: every group's queue
/// gets a copy of each message, and the consumers of one group share their
/// queue. A new group receives the messages published after its first
/// [`subscribe`](Subscriber::subscribe) returned. Topic words `*` and `#`
/// are wildcards to RabbitMQ, so a topic containing them is refused.
///
/// Each subscription has its own channel with a prefetch (`basic.qos`) of
/// [`Subscription::prefetch`] (at most 65,535) and manual acknowledgements.
///
/// * [`Received::ack`] is `basic.ack`.
/// * [`Received::nack`] is `basic.nack` with requeue. AMQP has no delayed
///   requeue, so a delay is kept by the subscriber: the message stays
///   unacknowledged with this consumer (holding one prefetch slot) and is
///   requeued when the delay has passed; `nack` returns at once. Should
///   the process or its connection die meanwhile, the broker requeues the
///   message at that moment, earlier than asked but never lost.
/// * A message received and dropped unsettled is redelivered when its
///   channel closes: once the stream and every [`Received`] of it are
///   dropped, or the connection is lost.
/// * [`Received::delivery_count`] comes from the quorum queue's
///   `x-delivery-count` header (deliveries before this one); a message
///   without it counts 1 when the broker says it was not redelivered, and
///   unknown otherwise (a redelivery from a classic queue).
/// * A message whose headers do not decode is yielded as
///   `Err(Malformed)`, to be settled like any other.
///
/// A lost connection ends every stream with an
/// [`Unavailable`](ferry_core::SubscribeErrorKind::Unavailable) error; the
/// next [`subscribe`](Subscriber::subscribe) connects again, and the broker
/// hands out every message that was not acknowledged.
pub struct AmqpSubscriber {
    connector: Connector,
}

impl AmqpSubscriber {
    /// Checks the settings, connects and declares the exchange.
    ///
    /// A server that cannot be reached does not fail this call: it is
    /// logged, and [`subscribe`](Subscriber::subscribe) fails as
    /// [`Unavailable`](ferry_core::SubscribeErrorKind::Unavailable) until it
    /// answers. Invalid settings, or a server that refuses the exchange,
    /// fail it.
    pub async fn connect(config: crate::AmqpConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let subscriber = Self {
            connector: Connector::new(config, "subscriber"),
        };
        match subscriber.connector.channel().await {
            Ok(_) => Ok(subscriber),
            Err(e) if e.is_unreachable() => Ok(subscriber),
            Err(e) => Err(ConnectError::Refused(Box::new(e))),
        }
    }

    async fn start(&self, subscription: &Subscription) -> Result<MessageStream, SubscribeError> {
        let queue = queue_name(subscription)?;
        let topic = binding_key(&subscription.topic)?;
        let (connection, channel) = self.connector.channel().await.map_err(channel_error)?;
        let config = &self.connector.config;
        let setup = async {
            let prefetch = u16::try_from(subscription.prefetch.max(1)).unwrap_or(u16::MAX);
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from(config.queue_type.as_str())),
            );
            channel
                .queue_declare(
                    queue.clone(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    arguments,
                )
                .await?;
            channel
                .queue_bind(
                    queue.clone(),
                    config.exchange.as_str().into(),
                    topic,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channel
                .basic_consume(
                    queue.clone(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        };
        let consumer = match tokio::time::timeout(config.timeout, setup).await {
            Ok(Ok(consumer)) => consumer,
            Ok(Err(e)) => return Err(setup_error(queue.as_str(), e)),
            Err(_) => {
                return Err(SubscribeError::unavailable(format!(
                    "rabbitmq did not set up queue `{queue}` within {:?}",
                    config.timeout
                )))
            }
        };
        let live = Arc::new(Live {
            channel,
            _connection: connection,
        });
        let stream = futures::stream::unfold(Some((consumer, live)), |state| async move {
            let (mut consumer, live) = state?;
            match consumer.next().await {
                Some(Ok(delivery)) => {
                    let received = received(delivery, &live);
                    Some((Ok(received), Some((consumer, live))))
                }
                Some(Err(e)) => Some((
                    Err(SubscribeError::unavailable("rabbitmq consumer failed").with_source(e)),
                    None,
                )),
                None => Some((
                    Err(SubscribeError::unavailable(
                        "rabbitmq cancelled the consumer",
                    )),
                    None,
                )),
            }
        });
        Ok(Box::pin(stream))
    }

    async fn group_lag(&self, subscription: &Subscription) -> Result<Lag, SubscribeError> {
        let queue = queue_name(subscription)?;
        let (_connection, channel) = self.connector.channel().await.map_err(channel_error)?;
        let timeout = self.connector.config.timeout;
        let declared = tokio::time::timeout(
            timeout,
            channel.queue_declare(
                queue.clone(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .map_err(|_| {
            SubscribeError::unavailable(format!("rabbitmq did not answer within {timeout:?}"))
        })?;
        match declared {
            Ok(queue) => Ok(Lag {
                waiting: Some(queue.message_count().into()),
                in_flight: None,
                oldest_age: None,
            }),
            // A passive declare of a missing queue fails with 404 and closes
            // the channel, which is dropped here.
            Err(e) if is_not_found(&e) => Ok(Lag::default()),
            Err(e) => Err(setup_error(queue.as_str(), e)),
        }
    }
}

impl Subscriber for AmqpSubscriber {
    fn name(&self) -> &str {
        "amqp"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_per_key: false,
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
    AmqpSubscriber,
    |subscriber| server: subscriber.connector.server(),
    exchange: subscriber.connector.config.exchange
);

/// A subscription's channel, open while its stream or any of its messages
/// is alive: closing it gives the unsettled messages back to the queue.
struct Live {
    channel: Channel,
    _connection: Arc<Connection>,
}

fn received(delivery: lapin::message::Delivery, live: &Arc<Live>) -> Received {
    let (message, earlier) =
        crate::headers::decode(&delivery.properties, Bytes::from(delivery.data));
    let delivery_count = match earlier {
        Some(n) => u32::try_from(n.saturating_add(1)).ok(),
        None if !delivery.redelivered => Some(1),
        None => None,
    };
    Received::new(
        message,
        delivery_count,
        AmqpAcker {
            acker: delivery.acker,
            live: live.clone(),
        },
    )
}

/// Settles one delivery on its channel.
struct AmqpAcker {
    acker: lapin::Acker,
    live: Arc<Live>,
}

impl AmqpAcker {
    async fn nack_now(&self) -> Result<(), SubscribeError> {
        let nacked = self
            .acker
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await;
        settled(nacked)
    }
}

impl Acker for AmqpAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), SubscribeError>> {
        Box::pin(async move {
            let acked = self.acker.ack(BasicAckOptions::default()).await;
            settled(acked)
        })
    }

    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), SubscribeError>> {
        Box::pin(async move {
            match delay {
                Some(delay) if !delay.is_zero() => {
                    if !self.live.channel.status().connected() {
                        return Err(closed());
                    }
                    // The broker cannot delay a requeue: hold the message
                    // until the delay has passed. A failure then is not
                    // reported; the closed channel requeues the message.
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        if let Err(e) = self.nack_now().await {
                            tracing::debug!(error = %e.describe(), "delayed rabbitmq nack failed");
                        }
                    });
                    Ok(())
                }
                _ => self.nack_now().await,
            }
        })
    }
}

fn settled(result: lapin::Result<bool>) -> Result<(), SubscribeError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(closed()),
        Err(e) => {
            Err(SubscribeError::unavailable("rabbitmq did not take the settlement").with_source(e))
        }
    }
}

fn closed() -> SubscribeError {
    SubscribeError::unavailable(
        "the rabbitmq channel closed; the broker will deliver the message again",
    )
}

/// The group's queue: `group:topic`.
fn queue_name(subscription: &Subscription) -> Result<ShortString, SubscribeError> {
    if subscription.group.is_empty() || subscription.group.contains(':') {
        return Err(SubscribeError::permanent(
            "an amqp consumer group must be non-empty and without `:`",
        ));
    }
    if subscription.topic.is_empty() {
        return Err(SubscribeError::permanent("the topic must not be empty"));
    }
    ShortString::try_new(format!("{}:{}", subscription.group, subscription.topic)).map_err(|_| {
        SubscribeError::permanent("group and topic together exceed amqp's 255-byte queue name")
    })
}

/// The binding key of a topic: itself, when it has no wildcard words.
fn binding_key(topic: &str) -> Result<ShortString, SubscribeError> {
    if topic.split('.').any(|word| word == "*" || word == "#") {
        return Err(SubscribeError::permanent(
            "topic words `*` and `#` are wildcards to rabbitmq",
        ));
    }
    ShortString::try_new(topic)
        .map_err(|_| SubscribeError::permanent("the topic exceeds amqp's 255-byte routing key"))
}

fn channel_error(e: ChannelError) -> SubscribeError {
    if e.is_unreachable() {
        SubscribeError::unavailable("rabbitmq is not reachable").with_source(e)
    } else {
        SubscribeError::permanent("rabbitmq refused the subscription").with_source(e)
    }
}

/// A refusal of the server (precondition failed: a queue of another type;
/// access refused) will not change on retry; anything else is the
/// connection.
fn setup_error(queue: &str, e: lapin::Error) -> SubscribeError {
    if e.is_amqp_soft_error() {
        SubscribeError::permanent(format!("rabbitmq refused queue `{queue}`")).with_source(e)
    } else {
        SubscribeError::unavailable(format!("could not set up queue `{queue}`")).with_source(e)
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        let s = Subscription::new("order.placed", "billing");
        assert_eq!(queue_name(&s).unwrap().as_str(), "billing:order.placed");
        for bad in ["", "a:b"] {
            let err = queue_name(&Subscription::new("t", bad)).unwrap_err();
            assert!(!err.is_retryable());
        }
        assert!(queue_name(&Subscription::new("t".repeat(300), "g")).is_err());
        assert!(binding_key("order.*").is_err());
        assert!(binding_key("#").is_err());
        assert_eq!(binding_key("order.a*b").unwrap().as_str(), "order.a*b");
    }
}
