//! Ferry's destinations: implementations of [`ferry_core::Sink`].
//!
//! * [`HttpSink`] POSTs each message to a webhook as a CloudEvents 1.0
//!   binary-mode event.
//! * [`NatsSink`] publishes each message to NATS JetStream.
//! * [`NullSink`] accepts everything and counts it, for benchmarks.
//!
//! [`SinkConfig`] chooses one of them from the configuration file (a table
//! tagged with `type`) or from a URL given on the command line
//! ([`SinkConfig::from_url`]), and [`SinkConfig::build`] turns it into a
//! running sink. [`SourceConfig`] does the same for the brokers a consumer
//! takes messages from.
//!
//! Every sink passes the message id to the receiver (`ce-id`,
//! `Idempotency-Key`, `Nats-Msg-Id`) so that it can drop the duplicates that
//! at-least-once delivery produces.

mod config;
mod http;
mod nats;
mod null;
mod source;

pub use config::{NullSinkConfig, SinkConfig, SinkConfigError};
pub use http::{HttpSink, HttpSinkConfig};
pub use nats::{NatsSink, NatsSinkConfig, NatsSubscriber};
pub use null::NullSink;
pub use source::SourceConfig;

/// The default CloudEvents `source` attribute (`ce-source`).
pub const DEFAULT_SOURCE: &str = "/ferry";
