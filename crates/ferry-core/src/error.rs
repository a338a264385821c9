//! One vocabulary for failures: what the caller should do next.
//!
//! Sinks ([`SinkError`](crate::SinkError)), subscribers
//! ([`SubscribeError`](crate::SubscribeError)) and handlers
//! ([`HandlerError`]) all say what happened with one [`ErrorKind`]. The
//! three kinds mean the same wherever they appear:
//!
//! | kind | what failed | what the caller does |
//! |---|---|---|
//! | [`Transient`](ErrorKind::Transient) | this message (or call) | retries it with backoff, counting an attempt |
//! | [`Permanent`](ErrorKind::Permanent) | this message, for good | stops trying it at once: dead letter, skip or stop |
//! | [`Unavailable`](ErrorKind::Unavailable) | the other side as a whole | pauses and tries again with backoff; the message is not at fault |
//!
//! Where the caller sees many messages at once (the delivery engine behind
//! the relay and the forwarder), an unavailable destination costs no
//! attempt: it pauses and probes the destination until it answers. Where
//! the caller holds one message at a time (a consumer's handler chain, a
//! forwarder's handler), it cannot tell the message from the destination,
//! and retries an unavailable failure as it retries a transient one.

use std::time::Duration;

/// What to do after a failure; see the [module docs](self).
///
/// New kinds may be added: match with a `_` arm, or use
/// [`is_retryable`](Self::is_retryable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// This message or call failed and a later try may succeed (a timeout,
    /// a 5xx or 429 for this message, a deadlock): retry with backoff,
    /// counting an attempt.
    Transient,
    /// This message will never succeed (HTTP 400, a payload the
    /// destination or handler rejects, a name the broker refuses): no more
    /// attempts.
    Permanent,
    /// The other side as a whole cannot be reached (connection refused, a
    /// 503 for everything, a broker disconnected): pause and try again;
    /// not the message's fault.
    Unavailable,
}

impl ErrorKind {
    /// Whether trying again may help (anything but
    /// [`Permanent`](Self::Permanent)).
    pub fn is_retryable(self) -> bool {
        self != ErrorKind::Permanent
    }

    /// Its name in logs: `transient`, `permanent` or `unavailable`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Unavailable => "unavailable",
        }
    }
}

/// A failed handler call (a consumer's handler, a forwarder's event
/// handler): a [`Failure`].
pub type HandlerError = Failure;

/// What a handler returns: a boxed future of its result, so that handlers
/// can be chosen at run time (`dyn Handler`) and the signature stays short.
pub type HandlerFuture<'a> = crate::BoxFuture<'a, Result<(), HandlerError>>;

/// A failure, with what to do next: the one error type of the contracts.
/// A sink's refusal ([`SinkError`](crate::SinkError)), a subscriber's
/// failure ([`SubscribeError`](crate::SubscribeError)) and a handler's
/// ([`HandlerError`]) are all a `Failure`, so they say the same things the
/// same way and pass from one contract to the next unchanged.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Whether and how to retry.
    pub kind: ErrorKind,
    /// What went wrong, short and lowercase; becomes the dead letter's,
    /// failure record's or outbox row's last error.
    pub message: String,
    /// The earliest time to try again, when the failing side knows (a
    /// destination's `Retry-After`).
    pub retry_after: Option<Duration>,
    /// How many times the message has been tried in all, when the failure
    /// comes from something that counted (a retry layer giving up).
    pub attempts: Option<u32>,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
            attempts: None,
            source: None,
        }
    }
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    /// A failure no retry will fix: the message is poison.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }
    /// Something the handler depends on is down as a whole.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
    /// Attaches an underlying error that is already boxed.
    pub fn with_boxed_source(mut self, source: Box<dyn std::error::Error + Send + Sync>) -> Self {
        self.source = Some(source);
        self
    }
    /// Asks not to be retried before `wait` has passed.
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }
    /// Whether trying again may help: [`Transient`](ErrorKind::Transient)
    /// or [`Unavailable`](ErrorKind::Unavailable).
    pub fn is_transient(&self) -> bool {
        self.kind.is_retryable()
    }
    /// Whether trying again may help; the same as
    /// [`is_transient`](Self::is_transient).
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
    /// The message followed by its chain of causes, for logs, dead letters
    /// and failure records.
    pub fn describe(&self) -> String {
        crate::error_chain(self)
    }
}

/// A payload that does not decode never will.
impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        HandlerError::permanent("malformed payload").with_source(e)
    }
}

/// A database error is worth retrying (a deadlock, a lost connection).
#[cfg(feature = "sqlx")]
impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::transient("database error").with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_keep_the_kind_and_the_cause() {
        let e = HandlerError::transient("cannot store the coupon")
            .with_source(std::io::Error::other("disk full"));
        assert_eq!(e.describe(), "cannot store the coupon: disk full");
        let bad: Result<u8, _> = serde_json::from_str("{");
        assert_eq!(
            HandlerError::from(bad.unwrap_err()).kind,
            ErrorKind::Permanent
        );
    }

    #[test]
    fn only_permanent_is_final() {
        assert!(ErrorKind::Transient.is_retryable());
        assert!(ErrorKind::Unavailable.is_retryable());
        assert!(!ErrorKind::Permanent.is_retryable());
        assert!(!HandlerError::permanent("x").is_transient());
        assert!(HandlerError::unavailable("x").is_transient());
    }
}
