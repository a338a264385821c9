//! The Kafka sink: an idempotent producer.

use ferry_core::cloudevents::binary_headers;
use ferry_core::{Delivery, Message, SinkError};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::admin::Topics;
use crate::quiet::Quiet;
use crate::topic::kafka_topic;
use crate::{KafkaConfig, KafkaConfigError};

/// Publishes each message to a Kafka topic with an idempotent producer.
///
/// * **Topic**: [`KafkaConfig::topic_prefix`] followed by the message's
///   topic, characters Kafka does not allow replaced with `_`. A missing
///   topic is created with the admin API (not by the broker's
///   auto-creation, which a cluster may turn off) when
///   [`KafkaConfig::create_topics`] is on, once per topic and process.
/// * **Record key**: the message's key, so that a key always lands on one
///   partition and keeps its order; no key, no record key (the partitioner
///   spreads those).
/// * **Headers**: the CloudEvents attributes of [`binary_headers`] (`ce-id`,
///   `ce-type`, …, `content-type`) and the message's own headers.
/// * **Value**: the payload.
///
/// The producer runs with `enable.idempotence=true` and `acks=all`: the
/// broker drops the duplicates of its own retries and keeps a partition's
/// order, and a message counts as delivered once every in-sync replica has
/// it. A batch is handed to the producer at once and its delivery reports
/// awaited together.
///
/// | outcome | result |
/// |---|---|
/// | acknowledged | delivered |
/// | broker transport failure, all brokers down, no acknowledgement within `delivery_timeout`, topic creation timed out | [`Unavailable`](ferry_core::SinkErrorKind::Unavailable) |
/// | too large, invalid or corrupt record, a topic name Kafka cannot take, not authorized | [`Permanent`](ferry_core::SinkErrorKind::Permanent) |
/// | anything else (local queue full, leader election, not enough replicas, …) | [`Transient`](ferry_core::SinkErrorKind::Transient) |
pub struct KafkaSink {
    producer: FutureProducer<Quiet>,
    topics: Topics,
    config: KafkaConfig,
}

impl KafkaSink {
    /// Creates the producer. It connects in the background: brokers that
    /// are down do not fail this call, deliveries fail as
    /// [`Unavailable`](ferry_core::SinkErrorKind::Unavailable) until they
    /// answer. Invalid settings fail it.
    pub async fn connect(config: KafkaConfig) -> Result<Self, KafkaConfigError> {
        config.validate()?;
        let producer = config
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            )
            .create_with_context(Quiet)
            .map_err(KafkaConfigError::Client)?;
        Ok(Self {
            producer,
            topics: Topics::new(&config)?,
            config,
        })
    }

    async fn deliver_batch(&self, batch: &[Message]) -> Vec<Delivery> {
        let mut results: Vec<Option<Delivery>> = (0..batch.len()).map(|_| None).collect();
        let mut pending = Vec::with_capacity(batch.len());
        // A batch is mostly one topic: its name is mapped and ensured once
        // per run of messages with the same topic, not once per message.
        let mut current: Option<(&str, String)> = None;
        for (i, message) in batch.iter().enumerate() {
            let topic = match &current {
                Some((name, topic)) if *name == message.topic => topic,
                _ => {
                    let Some(topic) = kafka_topic(&self.config.topic_prefix, &message.topic) else {
                        results[i] = Some(Err(SinkError::permanent(format!(
                            "topic `{}` does not make a kafka topic name",
                            message.topic
                        ))));
                        continue;
                    };
                    if let Err(e) = self.topics.ensure(&topic).await {
                        results[i] = Some(Err(error(e, "could not create the kafka topic")));
                        continue;
                    }
                    &current.insert((message.topic.as_str(), topic)).1
                }
            };
            let mut headers = OwnedHeaders::new_with_capacity(8 + message.headers.len());
            let mut refused = None;
            for (name, value) in binary_headers(message, &self.config.source) {
                // Kafka carries any bytes, but librdkafka reads a received
                // header name as a C string: a NUL would cut it.
                if name.contains('\0') {
                    refused = Some(SinkError::permanent(format!(
                        "header name `{}` holds a NUL, which kafka clients cut the name at",
                        name.escape_debug()
                    )));
                    break;
                }
                headers = headers.insert(Header {
                    key: &name,
                    value: Some(&value),
                });
            }
            if let Some(refused) = refused {
                results[i] = Some(Err(refused));
                continue;
            }
            let mut record = FutureRecord::<str, [u8]>::to(topic)
                .payload(&message.payload)
                .headers(headers);
            if let Some(key) = &message.key {
                record = record.key(key);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => pending.push((i, delivery)),
                Err((e, _)) => results[i] = Some(Err(error(e, "kafka refused the record"))),
            }
        }
        let reports = futures::future::join_all(
            pending
                .into_iter()
                .map(|(i, delivery)| async move { (i, delivery.await) }),
        )
        .await;
        for (i, report) in reports {
            results[i] = Some(match report {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(error(e, "kafka did not accept the message")),
                // The producer dropped the report: it is shutting down.
                Err(_) => Err(SinkError::unavailable("the kafka producer stopped")),
            });
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(SinkError::transient("no delivery report"))))
            .collect()
    }
}

ferry_core::impl_sink!(KafkaSink, "kafka", deliver_batch);

ferry_core::impl_debug!(
    KafkaSink,
    |sink| brokers: sink.config.brokers,
    topic_prefix: sink.config.topic_prefix
);

/// Classifies a failed publish or topic creation.
fn error(e: KafkaError, what: &str) -> SinkError {
    let sink_error = match crate::admin::error_code(&e) {
        Some(code) if is_unavailable(code) => {
            SinkError::unavailable(format!("{what}: kafka is unreachable"))
        }
        Some(code) if is_permanent(code) => SinkError::permanent(what),
        _ => SinkError::transient(what),
    };
    // The cause is kept whole; the source chain prints it.
    sink_error.with_source(e)
}

/// Codes that say the cluster, not this message, is the problem.
pub(crate) fn is_unavailable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        BrokerTransportFailure
            | AllBrokersDown
            | MessageTimedOut
            | Resolve
            | OperationTimedOut
            | RequestTimedOut
            | NetworkException
            | BrokerNotAvailable
    )
}

/// Codes that no retry of the same message fixes.
fn is_permanent(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        MessageSizeTooLarge
            | InvalidMessageSize
            | InvalidMessage
            | BadMessage
            | MessageBatchTooLarge
            | InvalidTopic
            | InvalidRecord
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | InvalidPartitions
            | InvalidReplicationFactor
            | PolicyViolation
            | InvalidConfig
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::SinkErrorKind;

    #[test]
    fn classifies_errors() {
        let kind = |e| error(e, "x").kind;
        assert_eq!(
            kind(KafkaError::MessageProduction(
                RDKafkaErrorCode::AllBrokersDown
            )),
            SinkErrorKind::Unavailable
        );
        assert_eq!(
            kind(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge
            )),
            SinkErrorKind::Permanent
        );
        assert_eq!(
            kind(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
            SinkErrorKind::Transient
        );
        assert_eq!(
            kind(KafkaError::AdminOp(
                RDKafkaErrorCode::InvalidReplicationFactor
            )),
            SinkErrorKind::Permanent
        );
    }
}
