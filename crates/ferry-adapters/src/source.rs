//! Choosing a broker to consume from: from the configuration file or from a
//! URL.

use std::sync::Arc;

use ferry_core::Subscriber;
use url::Url;

use crate::adapter::{Adapter, SourceAdapter};
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
/// On the command line it is a URL, see [`SourceConfig::from_url`]. As for
/// [`SinkConfig`](crate::SinkConfig), a broker whose cargo feature is off
/// is an error: "ferry was built without the `kafka` feature".
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
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

impl SourceConfig {
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
            "nats" => SourceConfig::Nats(Adapter::read_url(&url)?),
            "amqp" | "amqps" => SourceConfig::Amqp(Adapter::read_url(&url)?),
            "redis" | "rediss" => SourceConfig::Redis(Adapter::read_url(&url)?),
            "kafka" => SourceConfig::Kafka(Adapter::read_url(&url)?),
            "sqs" | "sqs+http" => SourceConfig::Sqs(Adapter::read_url(&url)?),
            other => return Err(SinkConfigError::UnknownSourceScheme(other.to_owned())),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings; [`SourceConfig::build`] calls it.
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        match self {
            SourceConfig::Nats(config) => config.check(),
            SourceConfig::Amqp(config) => config.check(),
            SourceConfig::Redis(config) => config.check(),
            SourceConfig::Kafka(config) => config.check(),
            SourceConfig::Sqs(config) => config.check(),
        }
    }

    /// The broker's name, as in the `type` key: one of
    /// [`SourceConfig::KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Nats(_) => "nats",
            SourceConfig::Amqp(_) => "amqp",
            SourceConfig::Redis(_) => "redis",
            SourceConfig::Kafka(_) => "kafka",
            SourceConfig::Sqs(_) => "sqs",
        }
    }

    /// Connects the subscriber. A broker that is down does not fail this
    /// call where the adapter can wait for it: subscribing fails as
    /// unavailable until it is up.
    pub async fn build(&self) -> Result<Arc<dyn Subscriber>, SinkConfigError> {
        match self {
            SourceConfig::Nats(config) => config.subscriber().await,
            SourceConfig::Amqp(config) => config.subscriber().await,
            SourceConfig::Redis(config) => config.subscriber().await,
            SourceConfig::Kafka(config) => config.subscriber().await,
            SourceConfig::Sqs(config) => config.subscriber().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `KINDS` is what serde accepts, as for `SinkConfig::KINDS`.
    #[test]
    fn kinds_are_the_variants() {
        crate::assert_kinds_are_the_variants::<SourceConfig>(SourceConfig::KINDS, "http");
    }

    /// The enum's doc comment, the user's reference, names every kind.
    #[test]
    fn the_doc_comment_lists_every_kind() {
        crate::assert_doc_lists_every_kind(
            include_str!("source.rs"),
            "pub enum SourceConfig",
            SourceConfig::KINDS,
        );
    }
}
