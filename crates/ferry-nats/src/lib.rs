//! Ferry's NATS JetStream adapter: a sink that publishes with
//! `Nats-Msg-Id` deduplication and a subscriber with durable pull
//! consumers.
//!
//! * [`NatsSink`] publishes each message to the subject
//!   `<subject_prefix><topic>`, and creates the configured stream if it is
//!   missing.
//! * [`NatsSubscriber`] gives each consumer group a durable pull consumer:
//!   every group gets every message, the consumers of a group share them.
//!
//! Both take a [`NatsSinkConfig`], from the configuration file or from a URL
//! such as `nats://127.0.0.1:4222?subject_prefix=ferry.&stream=FERRY`
//! ([`NatsSinkConfig::from_url`]).
//!
//! A message's CloudEvents attributes (`ce-id`, `ce-type`, `ce-source`, …)
//! and its own headers travel as NATS headers, its payload as the body, so
//! any NATS client can read a message Ferry published.

mod config;
mod sink;
mod subscriber;

pub use config::{ConfigError, NatsSinkConfig, DEFAULT_SOURCE};
pub use sink::NatsSink;
pub use subscriber::NatsSubscriber;

/// Logs a connection event of the NATS client at debug level.
///
/// async-nats reports every reconnect attempt that fails while the server
/// is down; the same outage reaches Ferry as failed deliveries or
/// subscriptions, which the relay and the consumer log once when the
/// server goes down and once when it is back.
fn log_event(event: &async_nats::Event) {
    tracing::debug!(%event, "nats client event");
}

/// [`NatsSink::connect`] or [`NatsSubscriber::connect`] failed: the settings
/// are wrong, the client could not be set up, or JetStream refused to
/// create the configured stream. A server that cannot be reached is not
/// this error (the client connects again in the background).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The NATS client could not be set up.
    #[error("could not set up the nats client")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// JetStream refused to create the configured stream.
    #[error("could not ensure jetstream stream `{stream}`")]
    Stream {
        /// The stream's name.
        stream: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
