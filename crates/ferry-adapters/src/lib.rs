//! Ferry's adapter registry: turns a sink or broker URL, or a `type`-tagged
//! table of the configuration file, into the adapter crate that handles it.
//!
//! * [`SinkConfig`] chooses where the relay, the forwarder or a consumer
//!   delivers: from a table ([`SinkConfig`] is `serde`-deserializable) or
//!   from a URL ([`SinkConfig::from_url`]); [`SinkConfig::build`] starts
//!   the sink.
//! * [`SubscriberConfig`] does the same for the brokers a consumer takes
//!   messages from.
//! * [`NullSink`] accepts everything and counts it, for benchmarks.
//!
//! Each adapter is its own crate behind a cargo feature of the same name,
//! all on by default:
//!
//! | feature | crate | sink | subscriber |
//! |---|---|---|---|
//! | `http` | `ferry-http` | webhook, CloudEvents | — |
//! | `nats` | `ferry-nats` | NATS JetStream | durable pull consumers |
//! | `amqp` | `ferry-amqp` | RabbitMQ, publisher confirms | a queue per group |
//! | `redis` | `ferry-redis` | Redis Streams | consumer groups |
//! | `kafka` | `ferry-kafka` | Kafka, idempotent (builds librdkafka) | consumer groups |
//! | `sqs` | `ferry-sqs` | Amazon SQS | a queue per topic |
//!
//! A library that needs only some sets `default-features = false` and
//! names them (`features = ["http"]`). A URL or table asking for an adapter
//! left out is refused with "ferry was built without the `kafka` feature"
//! ([`SinkConfigError::Disabled`]); see [`disabled`].
//!
//! Every sink passes the message id to the receiver (`ce-id`,
//! `Idempotency-Key`, `Nats-Msg-Id`, …) so that it can drop the duplicates
//! that at-least-once delivery produces.

mod adapter;
mod adapters;
pub mod disabled;
mod error;
mod null;
mod sink;
mod subscriber;

pub use error::SinkConfigError;
pub use null::{NullSink, NullSinkConfig};
pub use sink::SinkConfig;
pub use subscriber::SubscriberConfig;

#[cfg(feature = "amqp")]
pub use ferry_amqp::{self as amqp, AmqpConfig, AmqpSink, AmqpSubscriber};
#[cfg(feature = "http")]
pub use ferry_http::{self as http, HttpSink, HttpSinkConfig};
#[cfg(feature = "kafka")]
pub use ferry_kafka::{self as kafka, KafkaConfig, KafkaSink, KafkaSubscriber};
#[cfg(feature = "nats")]
pub use ferry_nats::{self as nats, NatsSink, NatsSinkConfig, NatsSubscriber};
#[cfg(feature = "redis")]
pub use ferry_redis::{self as redis, RedisConfig, RedisSink, RedisSubscriber};
#[cfg(feature = "sqs")]
pub use ferry_sqs::{self as sqs, SqsConfig, SqsSink, SqsSubscriber};

/// The doc comment (`///` lines) right above the line of `text` that
/// starts with `item`, attributes in between skipped: what the tests check
/// against the variants.
#[cfg(test)]
pub(crate) fn doc_before(text: &str, item: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|line| line.trim_start().starts_with(item))
        .unwrap_or_else(|| panic!("no `{item}`"));
    let mut doc: Vec<&str> = lines[..at]
        .iter()
        .rev()
        .map(|line| line.trim_start())
        .skip_while(|line| line.starts_with("#["))
        .take_while(|line| line.starts_with("///"))
        .collect();
    doc.reverse();
    doc.join("\n")
}

/// Checks that `kinds` is what serde accepts as the `type` of a `T`: each
/// kind is a known variant, and the variants serde lists when the `type`
/// is `unknown` are `kinds`.
#[cfg(test)]
pub(crate) fn assert_kinds_are_the_variants<T>(kinds: &[&str], unknown: &str)
where
    T: serde::de::DeserializeOwned + std::fmt::Debug,
{
    for kind in kinds {
        let error = toml::from_str::<T>(&format!("type = \"{kind}\""))
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string());
        assert!(!error.contains("unknown variant"), "{kind}: {error}");
    }
    let error = toml::from_str::<T>(&format!("type = \"{unknown}\"")).unwrap_err();
    let expected = kinds
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    assert!(
        error
            .to_string()
            .contains(&format!("expected one of {expected}")),
        "{error}"
    );
}

/// Checks that the doc comment of `item` in `text` (the user's reference)
/// names every kind, quoted.
#[cfg(test)]
pub(crate) fn assert_doc_lists_every_kind(text: &str, item: &str, kinds: &[&str]) {
    let doc = doc_before(text, item);
    for kind in kinds {
        assert!(
            doc.contains(&format!("\"{kind}\"")),
            "{kind} missing in {doc}"
        );
    }
}
