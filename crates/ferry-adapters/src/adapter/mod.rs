//! What the registry needs of an adapter: reading its URL, checking its
//! settings, starting its sink and subscriber. Each adapter compiled in
//! implements it in its own file; an adapter left out is replaced by a
//! stand-in from [`crate::disabled`] that refuses to be chosen.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Sink, Subscriber};
use url::Url;

use crate::SinkConfigError;

#[cfg(feature = "amqp")]
mod amqp;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqs")]
mod sqs;

#[cfg(feature = "amqp")]
pub use ferry_amqp::AmqpConfig;
#[cfg(feature = "http")]
pub use ferry_http::HttpSinkConfig;
#[cfg(feature = "kafka")]
pub use ferry_kafka::KafkaConfig;
#[cfg(feature = "nats")]
pub use ferry_nats::NatsSinkConfig;
#[cfg(feature = "redis")]
pub use ferry_redis::RedisConfig;
#[cfg(feature = "sqs")]
pub use ferry_sqs::SqsConfig;

#[cfg(not(feature = "amqp"))]
pub use crate::disabled::AmqpConfig;
#[cfg(not(feature = "http"))]
pub use crate::disabled::HttpSinkConfig;
#[cfg(not(feature = "kafka"))]
pub use crate::disabled::KafkaConfig;
#[cfg(not(feature = "nats"))]
pub use crate::disabled::NatsSinkConfig;
#[cfg(not(feature = "redis"))]
pub use crate::disabled::RedisConfig;
#[cfg(not(feature = "sqs"))]
pub use crate::disabled::SqsConfig;

/// An adapter's settings, as the registry uses them.
pub(crate) trait Adapter: Sized {
    /// The settings of a URL whose scheme names this adapter; not yet
    /// validated.
    fn read_url(url: &Url) -> Result<Self, SinkConfigError>;

    /// Checks the settings.
    fn check(&self) -> Result<(), SinkConfigError>;

    /// The longest one call of [`Sink::deliver`] can take.
    fn longest_call(&self) -> Duration;

    /// Starts the adapter's sink.
    fn sink(&self) -> impl Future<Output = Result<Arc<dyn Sink>, SinkConfigError>> + Send;
}

/// An adapter that can also be consumed from.
pub(crate) trait SourceAdapter: Adapter {
    /// Connects the adapter's subscriber.
    fn subscriber(
        &self,
    ) -> impl Future<Output = Result<Arc<dyn Subscriber>, SinkConfigError>> + Send;
}
