//! The adapters compiled in, each implementing [`Adapter`](crate::adapter::Adapter)
//! in its own file, and the settings type of every adapter: the adapter
//! crate's own, or a stand-in from [`crate::disabled`] when its feature is
//! off.

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
