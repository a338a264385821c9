//! Ferry's RabbitMQ (AMQP 0.9.1) adapter: a sink with publisher confirms and
//! a subscriber with manual acks.
//!
//! * [`AmqpSink`] publishes each message to a durable topic exchange with
//!   its topic as routing key, persistent, `mandatory`, and waits for the
//!   broker's confirm.
//! * [`AmqpSubscriber`] gives each consumer group a durable (by default
//!   quorum) queue bound to that exchange by topic: every group gets every
//!   message, the consumers of a group share them.
//!
//! Both take an [`AmqpConfig`], from the configuration file or from a URL
//! such as `amqp://guest:guest@127.0.0.1:5672/%2f?exchange=ferry&timeout=5s`
//! ([`AmqpConfig::from_url`]).
//!
//! A message's CloudEvents attributes (`ce-id`, `ce-type`, `ce-source`,
//! `ce-time`, `ce-partitionkey`, `ce-ferrykind`, `content-type`) and its
//! own headers travel as AMQP headers (long strings), its payload as the
//! body, so any AMQP client can read a message Ferry published.

mod config;
mod connection;
mod headers;
mod sink;
mod subscriber;

pub use config::{AmqpConfig, ConfigError, QueueType, DEFAULT_SOURCE};
pub use sink::AmqpSink;
pub use subscriber::AmqpSubscriber;

/// [`AmqpSink::connect`] or [`AmqpSubscriber::connect`] failed: the settings
/// are wrong or the server refused them. A server that cannot be reached is
/// not this error (the adapter connects again later).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The server refused the setup, e.g. the exchange exists with another
    /// type or the user may not declare it; retrying will not help.
    #[error("rabbitmq refused the setup")]
    Refused(#[source] Box<dyn std::error::Error + Send + Sync>),
}
