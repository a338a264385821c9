//! The RabbitMQ sink: publishes with publisher confirms.

use std::sync::Arc;

use ferry_core::{Delivery, Message, SinkError};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Confirmation, Connection, PublisherConfirm};
use tokio::sync::Mutex;
use tokio::time::{timeout_at, Instant};

use crate::connection::Connector;
use crate::headers::{properties, routing_key};
use crate::{AmqpConfig, ConnectError};

/// Publishes each message to a RabbitMQ topic exchange and waits for the
/// broker's publisher confirm.
///
/// A message goes to [`AmqpConfig::exchange`] with its topic as routing key,
/// as a persistent message (delivery mode 2) whose `message_id` is the
/// message id and whose `content_type` is the message's. Its headers are the
/// CloudEvents attributes of
/// [`binary_headers`](ferry_core::cloudevents::binary_headers) (`ce-id`,
/// `ce-type`, …, `content-type`) and the message's own headers, all as long
/// strings.
///
/// Publishes are `mandatory`: a message that no queue is bound to receive
/// comes back from the broker and fails as
/// [`Transient`](ferry_core::SinkErrorKind::Transient), not silently
/// dropped. Transient rather than permanent because the usual cause is
/// deployment order (the consumers that declare the queues have not started
/// yet): the relay retries with backoff, and only a message that stays
/// unroutable for all its attempts is dead-lettered.
///
/// A batch is published in one go on one confirm-mode channel (pipelined),
/// then its confirms are awaited together.
///
/// | outcome of a publish | result |
/// |---|---|
/// | confirmed (ack) and routed to a queue | delivered |
/// | returned as unroutable; nacked by the broker; the channel closed by the broker while the connection stays up | [`Transient`](ferry_core::SinkErrorKind::Transient) |
/// | not connected (the connection is made again on a later call), connection lost, no confirm within [`AmqpConfig::timeout`] | [`Unavailable`](ferry_core::SinkErrorKind::Unavailable) |
/// | a topic, content type or header name longer than AMQP's 255 bytes | [`Permanent`](ferry_core::SinkErrorKind::Permanent) |
pub struct AmqpSink {
    connector: Connector,
    /// The confirm-mode channel all deliveries publish on, while it is open.
    publisher: Mutex<Option<(Arc<Connection>, Channel)>>,
}

impl AmqpSink {
    /// Checks the settings, connects and declares the exchange.
    ///
    /// A server that cannot be reached does not fail this call: it is
    /// logged, and deliveries fail as
    /// [`Unavailable`](ferry_core::SinkErrorKind::Unavailable) and try to
    /// connect again until it answers. Invalid settings, or a server that
    /// refuses the exchange (another type, no permission), fail it.
    pub async fn connect(config: AmqpConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let sink = Self {
            connector: Connector::new(config, "sink"),
            publisher: Mutex::new(None),
        };
        match sink.publisher().await {
            Ok(_) => Ok(sink),
            Err(e) if e.is_unreachable() => Ok(sink),
            Err(e) => Err(ConnectError::Refused(Box::new(e))),
        }
    }

    /// The publishing channel, opened (and put in confirm mode) when there
    /// is none or it was closed.
    async fn publisher(
        &self,
    ) -> Result<(Arc<Connection>, Channel), crate::connection::ChannelError> {
        let mut publisher = self.publisher.lock().await;
        if let Some((connection, channel)) = &*publisher {
            if connection.status().connected() && channel.status().connected() {
                return Ok((connection.clone(), channel.clone()));
            }
        }
        *publisher = None;
        let (connection, channel) = self.connector.channel().await?;
        let timeout = self.connector.config.timeout;
        match tokio::time::timeout(
            timeout,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(crate::connection::ChannelError::Open(e)),
            Err(_) => return Err(crate::connection::ChannelError::TimedOut(timeout)),
        }
        *publisher = Some((connection.clone(), channel.clone()));
        Ok((connection, channel))
    }

    async fn deliver_batch(&self, batch: &[Message]) -> Vec<Delivery> {
        let (connection, channel) = match self.publisher().await {
            Ok(publisher) => publisher,
            Err(e) => {
                let e = Arc::new(e);
                return batch
                    .iter()
                    .map(|_| {
                        Err(SinkError::unavailable("rabbitmq is not reachable")
                            .with_source(e.clone()))
                    })
                    .collect();
            }
        };
        let config = &self.connector.config;
        let deadline = Instant::now() + config.timeout;

        // Publish everything first, then wait for the confirms.
        let mut pending: Vec<Result<PublisherConfirm, SinkError>> = Vec::with_capacity(batch.len());
        for message in batch {
            let prepared = routing_key(message)
                .and_then(|key| Ok((key, properties(message, &config.source)?)));
            let (key, properties) = match prepared {
                Ok(prepared) => prepared,
                Err(e) => {
                    pending.push(Err(e));
                    continue;
                }
            };
            let published = timeout_at(
                deadline,
                channel.basic_publish(
                    config.exchange.as_str().into(),
                    key,
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &message.payload,
                    properties,
                ),
            )
            .await;
            pending.push(match published {
                Ok(Ok(confirm)) => Ok(confirm),
                Ok(Err(e)) => Err(lapin_error(&connection, "rabbitmq publish failed", e)),
                Err(_) => Err(timed_out(config)),
            });
        }

        let mut results = Vec::with_capacity(batch.len());
        for confirm in pending {
            results.push(match confirm {
                Err(e) => Err(e),
                Ok(confirm) => match timeout_at(deadline, confirm).await {
                    Err(_) => Err(timed_out(config)),
                    Ok(Err(e)) => Err(lapin_error(
                        &connection,
                        "rabbitmq publisher confirm failed",
                        e,
                    )),
                    Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                    Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                        Err(SinkError::transient(format!(
                            "unroutable: no queue is bound to exchange `{}` for this topic ({} {})",
                            config.exchange, returned.reply_code, returned.reply_text
                        )))
                    }
                    Ok(Ok(Confirmation::Nack(_))) => {
                        Err(SinkError::transient("rabbitmq nacked the message"))
                    }
                    Ok(Ok(Confirmation::NotRequested)) => Err(SinkError::transient(
                        "rabbitmq channel is not in confirm mode",
                    )),
                },
            });
        }
        results
    }
}

/// A lost connection makes the broker unavailable; a channel the broker
/// closed on a live connection fails this message only (the next call opens
/// a new channel).
fn lapin_error(connection: &Connection, what: &'static str, e: lapin::Error) -> SinkError {
    if connection.status().connected() && !e.is_io_error() && !e.is_amqp_hard_error() {
        SinkError::transient(what).with_source(e)
    } else {
        SinkError::unavailable(what).with_source(e)
    }
}

fn timed_out(config: &AmqpConfig) -> SinkError {
    SinkError::unavailable(format!(
        "no publisher confirm from rabbitmq within {:?}",
        config.timeout
    ))
}

ferry_core::impl_sink!(AmqpSink, "amqp", deliver_batch);

ferry_core::impl_debug!(
    AmqpSink,
    |sink| server: sink.connector.server(),
    exchange: sink.connector.config.exchange
);
