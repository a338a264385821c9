//! Ferry's Kafka adapter: an idempotent producer sink and a consumer-group
//! subscriber.
//!
//! * [`KafkaSink`] publishes each message to `topic_prefix + topic`, keyed
//!   by the message's key, with the CloudEvents attributes as record
//!   headers ([`ferry_core::cloudevents::binary_headers`]).
//! * [`KafkaSubscriber`] consumes a topic as a member of a consumer group,
//!   committing offsets only up to the lowest unacknowledged message.
//!
//! Both are configured by one [`KafkaConfig`], from the configuration file
//! or a `kafka://` URL ([`KafkaConfig::from_url`]). librdkafka is built
//! from source with the crate (plaintext only: no TLS or SASL).

mod admin;
mod config;
mod offsets;
mod quiet;
mod sink;
mod subscriber;
mod topic;

pub use config::{KafkaConfig, KafkaConfigError};
pub use sink::KafkaSink;
pub use subscriber::KafkaSubscriber;

/// The default CloudEvents `source` attribute (`ce-source`).
pub const DEFAULT_SOURCE: &str = "/ferry";
