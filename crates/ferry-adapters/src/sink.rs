//! Choosing a sink: from the configuration file or from a URL.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::Sink;
use url::Url;

use crate::adapter::Adapter;
use crate::adapters::{
    AmqpConfig, HttpSinkConfig, KafkaConfig, NatsSinkConfig, RedisConfig, SqsConfig,
};
use crate::{NullSink, NullSinkConfig, SinkConfigError};

/// Which sink the relay delivers to, and its settings.
///
/// In the configuration file it is a table whose `type` names the sink:
///
/// ```toml
/// [sink]
/// type = "http"            # or "nats", "amqp", "redis", "kafka", "sqs", "null"
/// url = "https://example.com/hooks/ferry"
/// ```
///
/// On the command line it is a URL, see [`SinkConfig::from_url`].
///
/// Every variant exists whatever the cargo features; one whose adapter was
/// left out of the build cannot be made, and asking for it (by `type` or
/// by URL) is an error: "ferry was built without the `kafka` feature".
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// POST each message to a webhook (`HttpSink`, feature `http`).
    Http(HttpSinkConfig),
    /// Publish each message to NATS JetStream (`NatsSink`, feature `nats`).
    Nats(NatsSinkConfig),
    /// Publish each message to RabbitMQ with publisher confirms
    /// (`AmqpSink`, feature `amqp`).
    Amqp(AmqpConfig),
    /// Append each message to a Redis stream (`RedisSink`, feature `redis`).
    Redis(RedisConfig),
    /// Produce each message to Kafka, idempotently (`KafkaSink`, feature
    /// `kafka`).
    Kafka(KafkaConfig),
    /// Send each message to an Amazon SQS queue (`SqsSink`, feature `sqs`).
    Sqs(SqsConfig),
    /// Accept and drop every message ([`NullSink`]).
    Null(NullSinkConfig),
}

impl SinkConfig {
    /// The `type` of every variant, as the configuration file spells it.
    pub const KINDS: &'static [&'static str] =
        &["http", "nats", "amqp", "redis", "kafka", "sqs", "null"];

    /// Reads a sink URL, as given on the command line:
    ///
    /// * `http://…` or `https://…`: a webhook; the whole URL, query
    ///   included, is the endpoint, other settings take their defaults.
    /// * `nats://host:port?subject_prefix=ferry.&stream=FERRY`: NATS
    ///   JetStream. The query may set `subject_prefix`, `stream`,
    ///   `stream_subjects` (comma-separated), `ack_timeout` (e.g. `5s`),
    ///   `ack_wait` (subscribers only) and `source`; see `NatsSinkConfig`.
    /// * `amqp://user:password@host:port/vhost?exchange=ferry&…`: RabbitMQ,
    ///   see `AmqpConfig::from_url`.
    /// * `redis://host:port/db?stream_prefix=ferry.&…`: Redis Streams, see
    ///   `RedisConfig::from_url`.
    /// * `kafka://host:port,host:port?topic_prefix=…&…`: Kafka, see
    ///   `KafkaConfig::from_url`.
    /// * `sqs://?region=…`, `sqs+http://host:port?…`: Amazon SQS (or a local
    ///   endpoint), see `SqsConfig::from_url`.
    /// * `null://`: the null sink.
    ///
    /// The result is validated.
    pub fn from_url(url: &str) -> Result<Self, SinkConfigError> {
        let url = Url::parse(url).map_err(SinkConfigError::Url)?;
        let config = match url.scheme() {
            "http" | "https" => SinkConfig::Http(Adapter::read_url(&url)?),
            "nats" => SinkConfig::Nats(Adapter::read_url(&url)?),
            "amqp" | "amqps" => SinkConfig::Amqp(Adapter::read_url(&url)?),
            "redis" | "rediss" => SinkConfig::Redis(Adapter::read_url(&url)?),
            "kafka" => SinkConfig::Kafka(Adapter::read_url(&url)?),
            "sqs" | "sqs+http" => SinkConfig::Sqs(Adapter::read_url(&url)?),
            "null" => SinkConfig::Null(NullSinkConfig::from_url(&url)?),
            other => return Err(SinkConfigError::UnknownScheme(other.to_owned())),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings; [`SinkConfig::build`] calls it.
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        match self {
            SinkConfig::Http(config) => config.check(),
            SinkConfig::Nats(config) => config.check(),
            SinkConfig::Amqp(config) => config.check(),
            SinkConfig::Redis(config) => config.check(),
            SinkConfig::Kafka(config) => config.check(),
            SinkConfig::Sqs(config) => config.check(),
            SinkConfig::Null(_) => Ok(()),
        }
    }

    /// The longest one call of [`Sink::deliver`] can take with these
    /// settings: for HTTP, four rounds of `concurrency` requests (see
    /// [`Sink::max_per_call`]), each within `timeout`; for NATS, one
    /// `ack_timeout` (the batch is published at once and its
    /// acknowledgements awaited together); for the other brokers, their
    /// `longest_call`; nothing for the null sink. The relay's batch budget,
    /// half its lease, must exceed it, or calls that succeed are cut short
    /// and recorded as failed.
    pub fn longest_call(&self) -> Duration {
        match self {
            SinkConfig::Http(config) => Adapter::longest_call(config),
            SinkConfig::Nats(config) => Adapter::longest_call(config),
            SinkConfig::Amqp(config) => Adapter::longest_call(config),
            SinkConfig::Redis(config) => Adapter::longest_call(config),
            SinkConfig::Kafka(config) => Adapter::longest_call(config),
            SinkConfig::Sqs(config) => Adapter::longest_call(config),
            SinkConfig::Null(_) => Duration::ZERO,
        }
    }

    /// The sink's name, as in the `type` key: one of [`SinkConfig::KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Http(_) => "http",
            SinkConfig::Nats(_) => "nats",
            SinkConfig::Amqp(_) => "amqp",
            SinkConfig::Redis(_) => "redis",
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Sqs(_) => "sqs",
            SinkConfig::Null(_) => "null",
        }
    }

    /// Starts the sink: builds the HTTP client, or connects to the broker
    /// (see each adapter's `connect` for what happens when the server is
    /// down).
    pub async fn build(&self) -> Result<Arc<dyn Sink>, SinkConfigError> {
        match self {
            SinkConfig::Http(config) => config.sink().await,
            SinkConfig::Nats(config) => config.sink().await,
            SinkConfig::Amqp(config) => config.sink().await,
            SinkConfig::Redis(config) => config.sink().await,
            SinkConfig::Kafka(config) => config.sink().await,
            SinkConfig::Sqs(config) => config.sink().await,
            SinkConfig::Null(_) => Ok(Arc::new(NullSink::new())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `KINDS` is what serde accepts: each kind is a known variant, and
    /// serde's list of variants is `KINDS`.
    #[test]
    fn kinds_are_the_variants() {
        crate::assert_kinds_are_the_variants::<SinkConfig>(SinkConfig::KINDS, "pigeon");
    }

    /// The enum's doc comment, the user's reference, names every kind.
    #[test]
    fn the_doc_comment_lists_every_kind() {
        crate::assert_doc_lists_every_kind(
            include_str!("sink.rs"),
            "pub enum SinkConfig",
            SinkConfig::KINDS,
        );
    }
}
