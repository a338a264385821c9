//! The NATS JetStream subscriber.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamByNameErrorKind};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, AckKind};
use ferry_core::cloudevents::from_binary_headers;
use ferry_core::{
    Acker, BoxFuture, Capabilities, Lag, LagFuture, MessageStream, Received, SubscribeError,
    SubscribeFuture, Subscriber, Subscription,
};
use futures::StreamExt;

use crate::config::is_subject;
use crate::{ConnectError, NatsSinkConfig};

/// Consumes messages from NATS JetStream with one durable pull consumer per
/// group.
///
/// A subscription to topic `t` for group `g` reads the subject
/// `<subject_prefix>t` from the configured stream (or, when no stream is
/// configured, the stream that captures the subject) through the durable
/// consumer named after `g` and `t`. Every group has its own consumer, so an
/// event reaches every group; the subscribers of one group pull from the
/// same consumer and share its messages. A new group starts with the
/// messages published after it was created.
///
/// * [`Received::ack`] acknowledges to JetStream; the message is not
///   delivered to the group again.
/// * [`Received::nack`] asks for redelivery (`NAK`), after the delay if one
///   is given.
/// * A message neither acked nor nacked is redelivered after
///   [`NatsSinkConfig::ack_wait`].
/// * [`Received::delivery_count`] is JetStream's delivery count.
pub struct NatsSubscriber {
    jetstream: jetstream::Context,
    config: NatsSinkConfig,
}

impl NatsSubscriber {
    /// Connects to NATS. Like [`NatsSink::connect`](crate::NatsSink::connect),
    /// a server that is down does not fail this call: the client keeps
    /// trying and [`Subscriber::subscribe`] fails as unavailable until it
    /// is up.
    pub async fn connect(config: NatsSinkConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let (server, options) = config.server_and_credentials();
        let client = options
            .name("ferry-subscriber")
            .retry_on_initial_connect()
            .event_callback(|event| {
                crate::log_event(&event);
                async {}
            })
            .connect(server.as_str())
            .await
            .map_err(|e| ConnectError::Connect(Box::new(e)))?;
        let mut jetstream = jetstream::new(client);
        jetstream.set_timeout(config.ack_timeout);
        Ok(Self { jetstream, config })
    }

    fn subject(&self, topic: &str) -> String {
        format!("{}{}", self.config.subject_prefix, topic)
    }

    /// The stream holding `subject`: the configured one, created if
    /// missing, or the one that captures the subject.
    async fn stream(&self, subject: &str) -> Result<jetstream::stream::Stream, SubscribeError> {
        match &self.config.stream {
            Some(name) => self
                .jetstream
                .get_or_create_stream(jetstream::stream::Config {
                    name: name.clone(),
                    subjects: self.config.subjects(),
                    allow_direct: true,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable("jetstream stream not available", e)),
            None => {
                let name = self
                    .jetstream
                    .stream_by_subject(subject)
                    .await
                    .map_err(|e| {
                        // Only "no such stream" is the subscription's fault;
                        // a timeout or a lost connection is the server's.
                        let message = format!("no jetstream stream captures `{subject}`");
                        match e.kind() {
                            GetStreamByNameErrorKind::NotFound
                            | GetStreamByNameErrorKind::InvalidSubject => {
                                SubscribeError::permanent(message).with_source(e)
                            }
                            _ => unavailable("jetstream stream lookup failed", e),
                        }
                    })?;
                self.jetstream
                    .get_stream(&name)
                    .await
                    .map_err(|e| unavailable("jetstream stream not available", e))
            }
        }
    }
}

/// The durable consumer's name for a group and topic: JetStream names may
/// not hold `.`, `*`, `>` or whitespace, so those become `_`, and a hash of
/// the exact pair keeps two pairs that map alike apart.
fn durable_name(subscription: &Subscription) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
                _ => '_',
            })
            .collect()
    };
    // FNV-1a: a fixed function, so the name is the same in every build.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let pair = subscription
        .group
        .bytes()
        .chain([0])
        .chain(subscription.topic.bytes());
    for b in pair {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut name = format!(
        "{}__{}",
        clean(&subscription.group),
        clean(&subscription.topic)
    );
    name.truncate(200);
    format!("{name}__{hash:016x}")
}

fn unavailable(
    message: &str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> SubscribeError {
    SubscribeError::unavailable(message.to_owned()).with_source(error)
}

impl Subscriber for NatsSubscriber {
    fn name(&self) -> &str {
        "nats"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_per_key: true,
            persistent: true,
            consumer_groups: true,
            redelivers_unacked: true,
            dedups_by_id: true,
            delayed_nack: true,
        }
    }

    fn subscribe<'a>(&'a self, subscription: &'a Subscription) -> SubscribeFuture<'a> {
        Box::pin(async move {
            let subject = self.subject(&subscription.topic);
            if !is_subject(&subject) {
                return Err(SubscribeError::permanent(format!(
                    "topic `{}` does not make a valid nats subject",
                    subscription.topic.escape_debug()
                )));
            }
            let stream = self.stream(&subject).await?;
            let name = durable_name(subscription);
            let consumer: jetstream::consumer::Consumer<PullConfig> = stream
                .get_or_create_consumer(
                    &name,
                    PullConfig {
                        durable_name: Some(name.clone()),
                        filter_subject: subject,
                        deliver_policy: DeliverPolicy::New,
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: self.config.ack_wait,
                        max_ack_pending: i64::try_from(subscription.prefetch.max(1))
                            .unwrap_or(i64::MAX),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| unavailable("jetstream consumer not created", e))?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(subscription.prefetch.max(1))
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(|e| unavailable("jetstream pull failed", e))?;
            let stream = messages
                .map(|item| match item {
                    Ok(message) => Ok(received(message)),
                    Err(e) => Err(unavailable("jetstream pull failed", e)),
                })
                // The pull stream keeps retrying on its own; after the first
                // error the consumer resubscribes, per the contract.
                .scan(false, |failed, item| {
                    let stop = *failed;
                    *failed = item.is_err();
                    futures::future::ready((!stop).then_some(item))
                });
            Ok(Box::pin(stream) as MessageStream)
        })
    }

    fn lag<'a>(&'a self, subscription: &'a Subscription) -> LagFuture<'a> {
        Box::pin(async move {
            let subject = self.subject(&subscription.topic);
            let name = durable_name(subscription);
            let stream_name = match &self.config.stream {
                Some(name) => name.clone(),
                None => match self.jetstream.stream_by_subject(subject.as_str()).await {
                    Ok(name) => name,
                    Err(_) => return Ok(Lag::default()),
                },
            };
            let stream = match self.jetstream.get_stream_no_info(&stream_name).await {
                Ok(stream) => stream,
                Err(e) => return Err(unavailable("jetstream stream not available", e)),
            };
            let info = match stream.consumer_info(&name).await {
                Ok(info) => info,
                // A group that does not exist yet has no lag to report.
                Err(e)
                    if matches!(
                        e.kind(),
                        ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                    ) =>
                {
                    return Ok(Lag::default())
                }
                Err(e) => return Err(unavailable("jetstream consumer info failed", e)),
            };
            let in_flight = info.num_ack_pending as u64;
            let oldest_age = if info.num_pending + in_flight == 0 {
                None
            } else {
                // The first message of the subject after the ack floor is the
                // oldest the group has not acknowledged.
                stream
                    .direct_get_next_for_subject(&subject, Some(info.ack_floor.stream_sequence + 1))
                    .await
                    .ok()
                    .and_then(|m| StreamMessage::try_from(m.message).ok())
                    .map(|m| {
                        let age = time::OffsetDateTime::now_utc() - m.time;
                        Duration::try_from(age).unwrap_or_default()
                    })
            };
            Ok(Lag {
                waiting: Some(info.num_pending),
                in_flight: Some(in_flight),
                oldest_age,
            })
        })
    }
}

fn received(message: jetstream::Message) -> Received {
    let delivery_count = message
        .info()
        .ok()
        .and_then(|info| u32::try_from(info.delivered).ok());
    let headers: Vec<(String, String)> = message
        .headers
        .iter()
        .flat_map(|headers| headers.iter())
        .map(|(name, values)| (AsRef::<str>::as_ref(name), values))
        .filter(|(name, _)| !name.starts_with("Nats-"))
        .filter_map(|(name, values)| {
            values
                .first()
                .map(|v| (name.to_owned(), v.as_str().to_owned()))
        })
        .collect();
    let decoded = from_binary_headers(headers, message.payload.clone());
    Received::new(decoded, delivery_count, NatsAcker(message))
}

struct NatsAcker(jetstream::Message);

impl Acker for NatsAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), SubscribeError>> {
        Box::pin(async move {
            self.0.ack().await.map_err(|e| {
                SubscribeError::unavailable("jetstream ack failed").with_boxed_source(e)
            })
        })
    }

    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), SubscribeError>> {
        Box::pin(async move {
            self.0.ack_with(AckKind::Nak(delay)).await.map_err(|e| {
                SubscribeError::unavailable("jetstream nak failed").with_boxed_source(e)
            })
        })
    }
}
