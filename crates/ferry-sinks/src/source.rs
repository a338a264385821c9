//! Choosing a broker to consume from: from the configuration file or from a
//! URL.

use std::sync::Arc;

use ferry_core::Subscriber;
use url::Url;

use ferry_amqp::{AmqpConfig, AmqpSubscriber};
use ferry_kafka::{KafkaConfig, KafkaSubscriber};
use ferry_redis::{RedisConfig, RedisSubscriber};
use ferry_sqs::{SqsConfig, SqsSubscriber};

use crate::config::{adapter, nats_from_url};
use crate::{NatsSinkConfig, NatsSubscriber, SinkConfigError};

/// Which broker a consumer takes its messages from, and its settings.
///
/// In the configuration file it is a table whose `type` names the broker,
/// with the same settings as the broker's sink:
///
/// ```toml
/// [consumers.from]
/// type = "nats"
/// url = "nats://127.0.0.1:4222"
/// subject_prefix = "ferry."
/// stream = "FERRY"
/// ```
///
/// On the command line it is a URL, see [`SourceConfig::from_url`].
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    /// A NATS JetStream durable consumer per group ([`NatsSubscriber`]).
    Nats(NatsSinkConfig),
    /// A RabbitMQ queue per group, bound to the topic ([`AmqpSubscriber`]).
    Amqp(AmqpConfig),
    /// A Redis stream consumer group per group ([`RedisSubscriber`]).
    Redis(RedisConfig),
    /// A Kafka consumer group ([`KafkaSubscriber`]).
    Kafka(KafkaConfig),
    /// An SQS queue per topic, shared by its consumers ([`SqsSubscriber`]).
    Sqs(SqsConfig),
}

impl SourceConfig {
    /// Reads a broker URL, as given to `ferry consume --from`: the same URLs
    /// as [`SinkConfig::from_url`](crate::SinkConfig::from_url) takes for
    /// brokers (`nats://host:port?subject_prefix=…&stream=…&ack_wait=30s`,
    /// `amqp://…`, `redis://…`, `kafka://…`, `sqs://…`, `sqs+http://…`).
    /// The result is validated.
    pub fn from_url(url: &str) -> Result<Self, SinkConfigError> {
        let url = Url::parse(url).map_err(SinkConfigError::Url)?;
        let config = match url.scheme() {
            "nats" => SourceConfig::Nats(nats_from_url(url)?),
            "amqp" | "amqps" => {
                SourceConfig::Amqp(adapter("amqp", AmqpConfig::from_url(url.as_str()))?)
            }
            "redis" | "rediss" => {
                SourceConfig::Redis(adapter("redis", RedisConfig::from_url(url.as_str()))?)
            }
            "kafka" => SourceConfig::Kafka(adapter("kafka", KafkaConfig::from_url(url.as_str()))?),
            "sqs" | "sqs+http" => {
                SourceConfig::Sqs(adapter("sqs", SqsConfig::from_url(url.as_str()))?)
            }
            other => return Err(SinkConfigError::UnknownSourceScheme(other.to_owned())),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings; [`SourceConfig::build`] calls it.
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        match self {
            SourceConfig::Nats(config) => config.validate(),
            SourceConfig::Amqp(config) => adapter("amqp", config.validate()),
            SourceConfig::Redis(config) => adapter("redis", config.validate()),
            SourceConfig::Kafka(config) => adapter("kafka", config.validate()),
            SourceConfig::Sqs(config) => adapter("sqs", config.validate()),
        }
    }

    /// The broker's name, as in the `type` key.
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
        Ok(match self {
            SourceConfig::Nats(config) => Arc::new(NatsSubscriber::connect(config.clone()).await?),
            SourceConfig::Amqp(config) => Arc::new(adapter(
                "amqp",
                AmqpSubscriber::connect(config.clone()).await,
            )?),
            SourceConfig::Redis(config) => Arc::new(adapter(
                "redis",
                RedisSubscriber::connect(config.clone()).await,
            )?),
            SourceConfig::Kafka(config) => Arc::new(adapter(
                "kafka",
                KafkaSubscriber::connect(config.clone()).await,
            )?),
            SourceConfig::Sqs(config) => Arc::new(adapter(
                "sqs",
                SqsSubscriber::connect(config.clone()).await,
            )?),
        })
    }
}
