//! Choosing a broker to consume from: from the configuration file or from a
//! URL.

use std::sync::Arc;

use ferry_core::Subscriber;
use url::Url;

use crate::adapter::{Adapter, SubscriberAdapter};
use crate::adapters::{AmqpConfig, KafkaConfig, NatsSinkConfig, RedisConfig, SqsConfig};
use crate::SinkConfigError;

/// Which broker a consumer takes its messages from, and its settings.
///
/// In the daemon's configuration file it is the `from` table of a
/// `[[consumer]]`, whose `type` names the broker (`"nats"`, `"amqp"`,
/// `"redis"`, `"kafka"` or `"sqs"`), with the same settings as the
/// broker's sink:
///
/// ```toml
/// [[consumer]]
/// # name, topics, database, to …
/// from = { type = "nats", url = "nats://127.0.0.1:4222", subject_prefix = "ferry.", stream = "FERRY" }
/// ```
///
/// On the command line it is a URL, see [`SubscriberConfig::from_url`]. As for
/// [`SinkConfig`](crate::SinkConfig), a broker whose cargo feature is off
/// is an error: "ferry was built without the `kafka` feature".
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SubscriberConfig {
    /// A NATS JetStream durable consumer per group (`NatsSubscriber`,
    /// feature `nats`).
    Nats(NatsSinkConfig),
    /// A RabbitMQ queue per group, bound to the topic (`AmqpSubscriber`,
    /// feature `amqp`).
    Amqp(AmqpConfig),
    /// A Redis stream consumer group per group (`RedisSubscriber`, feature
    /// `redis`).
    Redis(RedisConfig),
    /// A Kafka consumer group (`KafkaSubscriber`, feature `kafka`).
    Kafka(KafkaConfig),
    /// An SQS queue per topic, shared by its consumers (`SqsSubscriber`,
    /// feature `sqs`).
    Sqs(SqsConfig),
}

impl SubscriberConfig {
    /// The `type` of every variant, as the configuration file spells it.
    pub const KINDS: &'static [&'static str] = &["nats", "amqp", "redis", "kafka", "sqs"];

    /// Reads a broker URL, as given to `ferry consume --from`: the same URLs
    /// as [`SinkConfig::from_url`](crate::SinkConfig::from_url) takes for
    /// brokers (`nats://host:port?subject_prefix=…&stream=…&ack_wait=30s`,
    /// `amqp://…`, `redis://…`, `kafka://…`, `sqs://…`, `sqs+http://…`).
    /// The result is validated.
    pub fn from_url(url: &str) -> Result<Self, SinkConfigError> {
        let url = Url::parse(url).map_err(SinkConfigError::Url)?;
        let config = match url.scheme() {
            "nats" => SubscriberConfig::Nats(Adapter::read_url(&url)?),
            "amqp" | "amqps" => SubscriberConfig::Amqp(Adapter::read_url(&url)?),
            "redis" | "rediss" => SubscriberConfig::Redis(Adapter::read_url(&url)?),
            "kafka" => SubscriberConfig::Kafka(Adapter::read_url(&url)?),
            "sqs" | "sqs+http" => SubscriberConfig::Sqs(Adapter::read_url(&url)?),
            other => return Err(SinkConfigError::UnknownSubscriberScheme(other.to_owned())),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings; [`SubscriberConfig::build`] calls it.
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        match self {
            SubscriberConfig::Nats(config) => config.check(),
            SubscriberConfig::Amqp(config) => config.check(),
            SubscriberConfig::Redis(config) => config.check(),
            SubscriberConfig::Kafka(config) => config.check(),
            SubscriberConfig::Sqs(config) => config.check(),
        }
    }

    /// The broker's name, as in the `type` key: one of
    /// [`SubscriberConfig::KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            SubscriberConfig::Nats(_) => "nats",
            SubscriberConfig::Amqp(_) => "amqp",
            SubscriberConfig::Redis(_) => "redis",
            SubscriberConfig::Kafka(_) => "kafka",
            SubscriberConfig::Sqs(_) => "sqs",
        }
    }

    /// Connects the subscriber. A broker that is down does not fail this
    /// call where the adapter can wait for it: subscribing fails as
    /// unavailable until it is up.
    pub async fn build(&self) -> Result<Arc<dyn Subscriber>, SinkConfigError> {
        match self {
            SubscriberConfig::Nats(config) => config.subscriber().await,
            SubscriberConfig::Amqp(config) => config.subscriber().await,
            SubscriberConfig::Redis(config) => config.subscriber().await,
            SubscriberConfig::Kafka(config) => config.subscriber().await,
            SubscriberConfig::Sqs(config) => config.subscriber().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `KINDS` is what serde accepts, as for `SinkConfig::KINDS`.
    #[test]
    fn kinds_are_the_variants() {
        crate::assert_kinds_are_the_variants::<SubscriberConfig>(SubscriberConfig::KINDS, "http");
    }

    /// The enum's doc comment, the user's reference, names every kind.
    #[test]
    fn the_doc_comment_lists_every_kind() {
        crate::assert_doc_lists_every_kind(
            include_str!("subscriber.rs"),
            "pub enum SubscriberConfig",
            SubscriberConfig::KINDS,
        );
    }
}
