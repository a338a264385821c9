//! Ferry's Amazon SQS adapter: a sink for standard and FIFO queues and a
//! subscriber with visibility timeouts.
//!
//! * [`SqsSink`] sends each message to the queue of its topic with
//!   `SendMessageBatch`.
//! * [`SqsSubscriber`] long-polls a queue; ack deletes, nack changes the
//!   visibility timeout.
//!
//! Both are configured by one [`SqsConfig`], from the configuration file or
//! a URL ([`SqsConfig::from_url`]): `sqs://?region=eu-west-1` for AWS,
//! `sqs+http://127.0.0.1:19325` for a local server.
//!
//! # Message encoding
//!
//! SQS allows at most 10 message attributes and text bodies. The CloudEvents
//! attributes (`ce-id`, `ce-type`, `ce-source`, `ce-time`,
//! `ce-partitionkey`, `ce-ferrykind`, `ce-specversion`, `content-type`) are
//! String message attributes of those names, and so are the W3C trace
//! context headers `traceparent` and `tracestate` while they fit; the
//! message's other headers travel as one JSON object in the attribute
//! `ferry-headers`. A payload
//! that is not text SQS accepts (bytes that are not UTF-8, control
//! characters) is sent in base64 with the attribute
//! `ferry-encoding: base64`, an empty one as `-` with
//! `ferry-encoding: empty`. A message whose attributes do not decode
//! arrives as `Err(Malformed)`.

mod codec;
mod config;
mod error;
mod queue;
mod sink;
mod subscriber;

pub use config::{SqsConfig, SqsConfigError};
pub use sink::SqsSink;
pub use subscriber::SqsSubscriber;

/// The default CloudEvents `source` attribute (`ce-source`).
pub const DEFAULT_SOURCE: &str = "/ferry";
