//! Helpers for the broker adapters' tests (AMQP, Redis, Kafka, SQS): unique
//! names, reading a subscription's stream with a deadline, and delivering a
//! batch that must be accepted whole.

use std::time::Duration;

use ferry_core::{Message, MessageStream, Received, Sink};
use futures::StreamExt;

/// `prefix-<a fresh UUIDv7>`: a topic, group or exchange name no other test
/// uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// The next item of `stream`, failing the test if none comes within
/// `within`, if the stream ends or if it yields an error.
pub async fn next_within(stream: &mut MessageStream, within: Duration) -> Received {
    match tokio::time::timeout(within, stream.next()).await {
        Ok(Some(Ok(received))) => received,
        Ok(Some(Err(e))) => panic!("stream failed: {}", e.describe()),
        Ok(None) => panic!("stream ended"),
        Err(_) => panic!("no message within {within:?}"),
    }
}

/// Fails the test if anything arrives on `stream` within `quiet`.
pub async fn expect_nothing(stream: &mut MessageStream, quiet: Duration) {
    if let Ok(item) = tokio::time::timeout(quiet, stream.next()).await {
        panic!("expected nothing, got {item:?}");
    }
}

/// Delivers `batch` through `sink`, failing the test if any message is
/// refused.
pub async fn deliver_all(sink: &dyn Sink, batch: &[Message]) {
    for (m, r) in batch.iter().zip(sink.deliver(batch).await) {
        if let Err(e) = r {
            panic!("message {} refused: {}", m.id, e.describe());
        }
    }
}

/// The message `received` carries, failing the test if it is malformed.
pub fn message(received: &Received) -> Message {
    received.message.clone().expect("a well-formed message")
}

/// Delivers one event to `sink`, whose server cannot be reached, and fails
/// the test unless it fails as unavailable.
pub async fn assert_unavailable(sink: &dyn Sink) {
    let results = sink.deliver(&[Message::event("a.b", "{}")]).await;
    let err = results.into_iter().next().unwrap().unwrap_err();
    assert_eq!(
        err.kind,
        ferry_core::SinkErrorKind::Unavailable,
        "{}",
        err.describe()
    );
}
