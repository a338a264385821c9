//! The adapters compiled in, each implementing [`Adapter`](crate::adapter::Adapter),
//! and the settings type of every adapter: the adapter crate's own, or a
//! stand-in from [`crate::disabled`] when its feature is off.
//!
//! The broker crates whose sink and subscriber both `connect` from their
//! settings (RabbitMQ, Redis Streams, Kafka, Amazon SQS) are adapted by
//! `broker!`, their errors kept as the source of
//! [`SinkConfigError::Adapter`](crate::SinkConfigError::Adapter); NATS and
//! the webhook keep error variants of their own, in their own files.

#[cfg(feature = "http")]
mod http;
#[cfg(feature = "nats")]
mod nats;

/// Re-exports, for each adapter's feature, its crate's settings type when
/// the feature is on and the stand-in of [`crate::disabled`] when it is off.
macro_rules! settings {
    ($($feature:literal => $krate:ident::$config:ident),+ $(,)?) => {
        $(
            #[cfg(feature = $feature)]
            pub use $krate::$config;
            #[cfg(not(feature = $feature))]
            pub use crate::disabled::$config;
        )+
    };
}

settings! {
    "amqp" => ferry_amqp::AmqpConfig,
    "http" => ferry_http::HttpSinkConfig,
    "kafka" => ferry_kafka::KafkaConfig,
    "nats" => ferry_nats::NatsSinkConfig,
    "redis" => ferry_redis::RedisConfig,
    "sqs" => ferry_sqs::SqsConfig,
}

/// Implements [`Adapter`](crate::adapter::Adapter) and
/// [`SubscriberAdapter`](crate::adapter::SubscriberAdapter), when `$feature` is
/// on, for the settings `$config` of the broker crate `$krate`: its
/// `from_url`, `validate` and `longest_call`, and its `$sink::connect` and
/// `$subscriber::connect`, each error kept as the source of
/// [`SinkConfigError::Adapter`](crate::SinkConfigError::Adapter) under the
/// feature's name.
macro_rules! broker {
    ($feature:literal, $krate:ident::{$config:ident, $sink:ident, $subscriber:ident}) => {
        #[cfg(feature = $feature)]
        impl crate::adapter::Adapter for $krate::$config {
            fn read_url(url: &url::Url) -> Result<Self, crate::SinkConfigError> {
                crate::SinkConfigError::adapter($feature, Self::from_url(url.as_str()))
            }

            fn check(&self) -> Result<(), crate::SinkConfigError> {
                crate::SinkConfigError::adapter($feature, self.validate())
            }

            fn longest_call(&self) -> std::time::Duration {
                $krate::$config::longest_call(self)
            }

            async fn sink(
                &self,
            ) -> Result<std::sync::Arc<dyn ferry_core::Sink>, crate::SinkConfigError> {
                Ok(start($feature, $krate::$sink::connect(self.clone())).await?)
            }
        }

        #[cfg(feature = $feature)]
        impl crate::adapter::SubscriberAdapter for $krate::$config {
            async fn subscriber(
                &self,
            ) -> Result<std::sync::Arc<dyn ferry_core::Subscriber>, crate::SinkConfigError> {
                Ok(start($feature, $krate::$subscriber::connect(self.clone())).await?)
            }
        }
    };
}

/// Starts a broker adapter's sink or subscriber from its `connect`, the
/// error kept as the source of
/// [`SinkConfigError::Adapter`](crate::SinkConfigError::Adapter) under the
/// name `feature`.
#[cfg(any(
    feature = "amqp",
    feature = "redis",
    feature = "kafka",
    feature = "sqs"
))]
async fn start<T, E>(
    feature: &'static str,
    connect: impl std::future::Future<Output = Result<T, E>>,
) -> Result<std::sync::Arc<T>, crate::SinkConfigError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let started = crate::SinkConfigError::adapter(feature, connect.await)?;
    Ok(std::sync::Arc::new(started))
}

broker!("amqp", ferry_amqp::{AmqpConfig, AmqpSink, AmqpSubscriber});
broker!("redis", ferry_redis::{RedisConfig, RedisSink, RedisSubscriber});
broker!("kafka", ferry_kafka::{KafkaConfig, KafkaSink, KafkaSubscriber});
broker!("sqs", ferry_sqs::{SqsConfig, SqsSink, SqsSubscriber});
