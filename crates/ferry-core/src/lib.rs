//! Ferry's core: the [`Message`] that travels from an outbox to another
//! system, the [`RetryPolicy`] that spaces out attempts, and the [`Sink`]
//! contract every destination (webhook, broker, null) implements.
//!
//! Nothing here talks to a database or a network; stores, the relay and the
//! sinks build on these types.

pub mod cloudevents;
pub mod message;
pub mod retry;
pub mod sink;

pub use message::{Kind, Message, MessageId, ParseKindError};
pub use retry::RetryPolicy;
pub use sink::{BoxFuture, Delivery, Sink, SinkError, SinkErrorKind};
