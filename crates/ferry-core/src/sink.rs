//! The sink contract: where the relay hands messages over.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::Message;

/// A boxed future, so that sinks can be chosen at run time (`dyn Sink`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The outcome of handing one message to a sink.
pub type Delivery = Result<(), SinkError>;

/// A destination for messages: a webhook, a broker, a null sink.
///
/// # Delivery contract
///
/// * **At least once.** The relay marks a message delivered only after
///   [`Sink::deliver`] returned `Ok` for it. A crash between the sink's
///   acceptance and that mark makes the relay deliver the message again, so
///   a sink must pass the message id to the receiver (`ce-id`, `Nats-Msg-Id`,
///   `Idempotency-Key`, …) for it to drop the duplicate.
/// * **Batches.** `deliver` gets a batch whose messages all have *different*
///   keys (or none): the relay never puts two messages of one key in the same
///   call, so a sink may send a batch's messages concurrently and in any order
///   without breaking per-key order.
/// * **One result per message**, in the batch's order. `Ok` means the
///   destination has durably accepted the message (a 2xx, a broker ack).
/// * A sink must not panic on a bad message; it returns a
///   [`SinkErrorKind::Permanent`] error instead.
/// * Implementations are shared between the relay's workers (`Send + Sync`).
pub trait Sink: Send + Sync + 'static {
    /// Short name for logs and metrics, e.g. `http` or `nats`.
    fn name(&self) -> &str;

    /// Delivers each message of `batch`, returning one result per message
    /// in the same order.
    fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>>;

    /// The most messages this sink wants per [`Sink::deliver`] call, if it
    /// has a limit. The relay settles each call before the next, so a slow
    /// sink with small calls still makes progress within a batch's time
    /// budget; a pipelining sink (a broker) is fastest with no limit.
    fn max_per_call(&self) -> Option<usize> {
        None
    }
}

impl<S: Sink + ?Sized> Sink for std::sync::Arc<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>> {
        (**self).deliver(batch)
    }
    fn max_per_call(&self) -> Option<usize> {
        (**self).max_per_call()
    }
}

/// What the relay should do after a failed delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// This message failed and may succeed later (timeout, 5xx, 429): retry
    /// it with backoff, counting the attempt.
    Transient,
    /// This message will never be accepted (HTTP 400, a payload the broker
    /// rejects): dead-letter it now, without burning retries.
    Permanent,
    /// The destination as a whole cannot be reached (connection refused,
    /// 503, broker disconnected): do not count an attempt against the
    /// message; the relay pauses and probes the sink until it answers. When
    /// other messages of the same call were accepted, the relay treats this
    /// one as [`SinkErrorKind::Transient`] instead.
    Unavailable,
}

/// A failed delivery, with what to do next.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// Whether and how to retry.
    pub kind: SinkErrorKind,
    /// What went wrong, short and lowercase; stored as the message's last error.
    pub message: String,
    /// The earliest time the destination asked to be retried (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    fn new(kind: SinkErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(SinkErrorKind::Transient, message)
    }
    /// A failure no retry will fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(SinkErrorKind::Permanent, message)
    }
    /// The destination is down as a whole.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(SinkErrorKind::Unavailable, message)
    }
    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
    /// Attaches the destination's requested wait.
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }
    /// The message followed by its chain of causes, for the `last_error` column and logs.
    pub fn describe(&self) -> String {
        crate::error_chain(self)
    }
}
