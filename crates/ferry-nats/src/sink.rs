//! The NATS JetStream sink.

use std::sync::Arc;

use async_nats::connection::State;
use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, Publish, PublishAckFuture, PublishError,
    PublishErrorKind,
};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Event, HeaderMap, HeaderName, HeaderValue, Subject};
use ferry_core::cloudevents::binary_headers;
use ferry_core::{Delivery, Message, SinkError, SinkErrorKind};
use tokio::sync::{watch, OnceCell};

use crate::config::is_subject;
use crate::{ConnectError, NatsSinkConfig};

/// The JetStream header carrying the message id, counted in the size check.
const MSG_ID: &str = "Nats-Msg-Id";

/// Publishes each message to NATS JetStream.
///
/// The subject is [`NatsSinkConfig::subject_prefix`] followed by the topic;
/// the payload is the message's payload; the headers are the CloudEvents
/// attributes of [`binary_headers`] (`ce-id`, `ce-type`, …, `content-type`),
/// the message's own headers (but none named like an attribute, in any case,
/// nor any `Nats-*` header), and `Nats-Msg-Id: <message id>` (for an
/// operator's replay, [`Message::broker_dedup_id`]), by which the
/// stream drops a message it received again within its duplicate window.
///
/// A batch is published in one go (pipelined), then its acknowledgements
/// are awaited together.
///
/// | outcome of a publish | result |
/// |---|---|
/// | acknowledged, or dropped as a duplicate | delivered |
/// | not connected, configured stream not ensured yet, no stream captures the subject (no responders), no acknowledgement in time, connection lost | [`Unavailable`](ferry_core::SinkErrorKind::Unavailable) |
/// | rejected by JetStream (too large for the stream, wrong expected sequence, …); a topic or header NATS cannot carry; larger than the server's `max_payload` | [`Permanent`](ferry_core::SinkErrorKind::Permanent) |
/// | rejected because the stream is full or out of resources; anything else | [`Transient`](ferry_core::SinkErrorKind::Transient) |
pub struct NatsSink {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    config: NatsSinkConfig,
    /// Set once the configured stream is known to exist.
    stream_ready: OnceCell<()>,
}

impl NatsSink {
    /// Connects to NATS and, when [`NatsSinkConfig::stream`] is set, makes
    /// sure the stream exists.
    ///
    /// A server that is down (or refuses the credentials) does not fail
    /// this call: it stops waiting for the connection after
    /// [`NatsSinkConfig::ack_timeout`], the client keeps trying in the
    /// background, and deliveries fail as
    /// [`Unavailable`](ferry_core::SinkErrorKind::Unavailable) until the
    /// connection is up and the stream ensured. Invalid settings, or a
    /// stream JetStream refuses to create, fail it.
    pub async fn connect(config: NatsSinkConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let (connected_tx, mut connected_rx) = watch::channel(false);
        let (server, options) = config.server_and_credentials();
        let client = options
            .name("ferry")
            .retry_on_initial_connect()
            .event_callback(move |event| {
                crate::log_event(&event);
                let connected = match event {
                    Event::Connected => Some(true),
                    Event::Disconnected | Event::Closed => Some(false),
                    _ => None,
                };
                if let Some(connected) = connected {
                    connected_tx.send_replace(connected);
                }
                async {}
            })
            .connect(server.as_str())
            .await
            .map_err(|e| ConnectError::Connect(Box::new(e)))?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(config.ack_timeout);
        let sink = Self {
            client,
            jetstream,
            config,
            stream_ready: OnceCell::new(),
        };

        let connected = tokio::time::timeout(
            sink.config.ack_timeout,
            connected_rx.wait_for(|connected| *connected),
        )
        .await
        // Drop the watch guard here: it must not live across an await (Send).
        .is_ok_and(|r| r.is_ok());
        if !connected {
            tracing::warn!(
                server = %sink.config.url.host_str().unwrap_or_default(),
                "nats is not reachable yet; retrying in the background"
            );
            return Ok(sink);
        }
        if let Some(stream) = &sink.config.stream {
            match sink.ensure_stream().await {
                Ok(()) => {
                    let _ = sink.stream_ready.set(());
                }
                Err(e) if is_unreachable(&e) => tracing::warn!(
                    stream = %stream,
                    error = %e,
                    "jetstream stream not ensured yet; retrying before the first delivery"
                ),
                Err(e) => {
                    return Err(ConnectError::Stream {
                        stream: stream.clone(),
                        source: Box::new(e),
                    })
                }
            }
        }
        Ok(sink)
    }

    /// The configured stream, created if missing.
    async fn ensure_stream(&self) -> Result<(), CreateStreamError> {
        let Some(name) = &self.config.stream else {
            return Ok(());
        };
        self.jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: self.config.subjects(),
                ..Default::default()
            })
            .await
            .map(drop)
    }

    async fn deliver_batch(&self, batch: &[Message]) -> Vec<Delivery> {
        if self.client.connection_state() != State::Connected {
            return every(batch, || SinkError::unavailable("nats is not connected"));
        }
        if let Err(e) = self
            .stream_ready
            .get_or_try_init(|| self.ensure_stream())
            .await
        {
            let e = Arc::new(e);
            return every(batch, || {
                SinkError::unavailable("jetstream stream not ensured").with_source(e.clone())
            });
        }

        // Publish everything first, then wait for the acknowledgements.
        let max_payload = self.client.server_info().max_payload;
        let mut pending = Vec::with_capacity(batch.len());
        let mut down = false;
        let mut subjects = None;
        for message in batch {
            if down {
                pending.push(Err(SinkError::unavailable("nats is not connected")));
                continue;
            }
            let published = match self.publication(message, max_payload, &mut subjects) {
                Ok((subject, publish)) => self
                    .jetstream
                    .send_publish(subject, publish)
                    .await
                    // Only a closed or congested client fails here.
                    .map_err(|e| SinkError::unavailable("nats publish failed").with_source(e)),
                Err(e) => Err(e),
            };
            down = published
                .as_ref()
                .is_err_and(|e| e.kind == SinkErrorKind::Unavailable);
            pending.push(published);
        }
        futures::future::join_all(pending.into_iter().map(|published| async move {
            let ack: PublishAckFuture = published?;
            ack.await.map(drop).map_err(publish_error)
        }))
        .await
    }

    /// The subject and the publication of `message`, or why NATS cannot
    /// carry it. `max_payload` is the server's limit, 0 if unknown;
    /// `subjects` remembers the subject of the batch's last topic (a batch
    /// is mostly one topic), so it is built and checked once.
    fn publication(
        &self,
        message: &Message,
        max_payload: usize,
        subjects: &mut Option<(String, Subject)>,
    ) -> Result<(Subject, Publish), SinkError> {
        let subject = match subjects {
            Some((topic, subject)) if *topic == message.topic => subject.clone(),
            _ => {
                let subject = format!("{}{}", self.config.subject_prefix, message.topic);
                if !is_subject(&subject) {
                    return Err(SinkError::permanent(format!(
                        "topic `{}` does not make a valid nats subject",
                        message.topic.escape_debug()
                    )));
                }
                let subject = Subject::from(subject);
                *subjects = Some((message.topic.clone(), subject.clone()));
                subject
            }
        };
        let mut headers = HeaderMap::new();
        let mut header_bytes = 0;
        for (name, value) in binary_headers(message, &self.config.source) {
            // `Nats-*` headers steer JetStream (expected sequence, rollup,
            // TTL…); a producer's header must not, so such headers are dropped.
            if name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-") {
                continue;
            }
            let header_name = match attribute_name(&name) {
                Some(attribute) => attribute,
                None => name
                    .parse::<HeaderName>()
                    .ok()
                    .filter(|_| is_header_name(&name))
                    .ok_or_else(|| {
                        SinkError::permanent(format!(
                            "`{}` is not a valid nats header name",
                            name.escape_debug()
                        ))
                    })?,
            };
            // What `HeaderValue::from_str` refuses, without its copy.
            if value.contains(['\r', '\n']) {
                let error =
                    SinkError::permanent(format!("header `{name}` has a value nats cannot carry"));
                return Err(match value.parse::<HeaderValue>() {
                    Err(e) => error.with_source(e),
                    Ok(_) => error,
                });
            }
            // The client trims a received value: it would arrive changed.
            if value.trim() != value {
                return Err(SinkError::permanent(format!(
                    "header `{name}` has a value with leading or trailing whitespace, which nats clients trim"
                )));
            }
            header_bytes += name.len() + value.len() + 4;
            headers.insert(header_name, HeaderValue::from(value));
        }
        let id = message.broker_dedup_id();
        header_bytes += MSG_ID.len() + id.len() + 4;

        // The server closes the connection on an oversized message, failing
        // every message in flight; refuse it here instead.
        let size = "NATS/1.0\r\n\r\n".len() + header_bytes + message.payload.len();
        if max_payload > 0 && size > max_payload {
            return Err(SinkError::permanent(format!(
                "message of {size} bytes exceeds the nats server's max_payload of {max_payload}"
            )));
        }
        let publish = Publish::build()
            .payload(message.payload.clone())
            .headers(headers)
            .message_id(id);
        Ok((subject, publish))
    }
}

/// The header name of a CloudEvents attribute [`binary_headers`] writes,
/// without an allocation; `None` for any other name.
fn attribute_name(name: &str) -> Option<HeaderName> {
    static ATTRIBUTES: [HeaderName; 8] = [
        HeaderName::from_static("ce-specversion"),
        HeaderName::from_static("ce-id"),
        HeaderName::from_static("ce-type"),
        HeaderName::from_static("ce-source"),
        HeaderName::from_static("ce-time"),
        HeaderName::from_static("ce-partitionkey"),
        HeaderName::from_static("ce-ferrykind"),
        HeaderName::from_static("content-type"),
    ];
    ATTRIBUTES
        .iter()
        .find(|attribute| AsRef::<[u8]>::as_ref(*attribute) == name.as_bytes())
        .cloned()
}

ferry_core::impl_sink!(NatsSink, "nats", deliver_batch);

ferry_core::impl_debug!(
    NatsSink,
    |sink| server: sink.config.url.host_str(),
    subject_prefix: sink.config.subject_prefix,
    stream: sink.config.stream
);

fn every(batch: &[Message], error: impl Fn() -> SinkError) -> Vec<Delivery> {
    batch.iter().map(|_| Err(error())).collect()
}

/// Whether ensuring the stream failed because NATS or JetStream cannot be
/// reached, rather than because JetStream refused.
fn is_unreachable(error: &CreateStreamError) -> bool {
    matches!(
        error.kind(),
        CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable
    )
}

/// NATS header names are printable ASCII without `:`; async-nats checks
/// this only partly.
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Classifies a publish that was not acknowledged.
fn publish_error(error: PublishError) -> SinkError {
    let sink_error = match error.kind() {
        PublishErrorKind::TimedOut => SinkError::unavailable("jetstream ack timed out"),
        PublishErrorKind::StreamNotFound => {
            SinkError::unavailable("no jetstream stream captures the subject")
        }
        PublishErrorKind::BrokenPipe => SinkError::unavailable("nats connection lost"),
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            SinkError::permanent("jetstream rejected the message")
        }
        PublishErrorKind::Other => {
            match std::error::Error::source(&error)
                .and_then(|source| source.downcast_ref::<jetstream::Error>())
            {
                Some(api) => api_error(api.error_code()),
                None => SinkError::transient("jetstream publish failed"),
            }
        }
    };
    sink_error.with_source(error)
}

/// Classifies JetStream's refusal of a message by its error code.
fn api_error(code: ErrorCode) -> SinkError {
    match code {
        // Stream full with the `new` discard policy, or out of space: space
        // may free up.
        ErrorCode::STREAM_STORE_FAILED
        | ErrorCode::INSUFFICIENT_RESOURCES
        | ErrorCode::ACCOUNT_RESOURCES_EXCEEDED
        | ErrorCode::STORAGE_RESOURCES_EXCEEDED
        | ErrorCode::MEMORY_RESOURCES_EXCEEDED => {
            SinkError::transient("jetstream cannot store the message now")
        }
        ErrorCode::CLUSTER_NOT_AVAILABLE
        | ErrorCode::JETSTREAM_NOT_ENABLED
        | ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT => {
            SinkError::unavailable("jetstream is not available")
        }
        _ => SinkError::permanent("jetstream rejected the message"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_names_are_the_ones_written() {
        let message = Message::event("orders.created", "{}")
            .with_key("k")
            .with_header("x-trace", "t");
        let mut attributes = 0;
        for (name, _) in binary_headers(&message, "src") {
            match attribute_name(&name) {
                Some(header) => {
                    attributes += 1;
                    assert_eq!(AsRef::<[u8]>::as_ref(&header), name.as_bytes());
                    assert_eq!(header, name.parse::<HeaderName>().unwrap());
                }
                None => assert_eq!(name, "x-trace"),
            }
        }
        assert_eq!(attributes, 8);
        assert!(attribute_name("CE-ID").is_none());
    }

    #[test]
    fn header_names() {
        assert!(is_header_name("ce-id"));
        assert!(is_header_name("X-Trace"));
        for bad in ["", "a:b", "a b", "é", "\u{141}"] {
            assert!(!is_header_name(bad), "{bad:?}");
        }
    }
}
