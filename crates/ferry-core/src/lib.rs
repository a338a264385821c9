//! Ferry's core: the [`Message`] that travels from an outbox to another
//! system, the [`RetryPolicy`] that spaces out attempts, and the [`Sink`]
//! contract every destination (webhook, broker, null) implements, and the
//! [`Subscriber`] contract of a broker's consumer side, the one
//! [`ErrorKind`] vocabulary that sinks, subscribers and handlers ([`HandlerError`])
//! share, [`redact_url`], the one way a URL is shown in logs, and [`trace`],
//! the W3C trace context a message carries from its producer to its handler.
//!
//! Nothing here talks to a database or a network; stores, the relay and the
//! sinks build on these types.

pub mod adapter;
pub mod cloudevents;
pub mod error;
pub mod message;
mod redact;
pub mod retry;
pub mod sink;
pub mod subscriber;
pub mod trace;

pub use cloudevents::Malformed;
pub use error::{ErrorKind, Failure, HandlerError, HandlerFuture};
pub use message::{Kind, Message, MessageId, ParseKindError, REPLAY_HEADER};
pub use redact::redact_url;
pub use retry::RetryPolicy;
pub use sink::{BoxFuture, Delivery, Sink, SinkError, SinkErrorKind};
pub use subscriber::{
    Acker, Capabilities, Lag, LagFuture, MessageStream, Received, SubscribeError,
    SubscribeErrorKind, SubscribeFuture, Subscriber, Subscription,
};

/// An error followed by its chain of causes, `outer: inner: root`, for logs
/// and stored error columns.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cur = error.source();
    while let Some(cause) = cur {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        cur = cause.source();
    }
    out
}
