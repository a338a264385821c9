//! Correlation: which conversation a message belongs to and which message
//! caused it, carried in headers from one message to the next.
//!
//! * `ferry-correlation-id`: the same for every message of one conversation;
//!   a message without it starts one, and its own id is the correlation id.
//! * `ferry-causation-id`: the id of the message whose handler produced
//!   this one.
//!
//! [`caused_by`] stamps both on an outgoing message; the [`Correlation`]
//! layer runs the handler in a tracing span carrying them, so that every
//! log line of one conversation can be found across services.

use std::sync::Arc;

use ferry_core::{BoxFuture, HandlerFuture, Message};
use tracing::Instrument;

use crate::{Context, Handler, Layer};

/// The header carrying a message's correlation id.
pub const CORRELATION_ID: &str = "ferry-correlation-id";
/// The header carrying the id of the message that caused this one.
pub const CAUSATION_ID: &str = "ferry-causation-id";

/// The correlation id of `message`: its header, or its own id when it
/// starts a conversation.
pub fn correlation_id(message: &Message) -> String {
    message
        .headers
        .get(CORRELATION_ID)
        .cloned()
        .unwrap_or_else(|| message.id.to_string())
}

/// `outgoing`, marked as caused by `incoming`: it joins `incoming`'s
/// conversation and names `incoming` as its cause.
pub fn caused_by(incoming: &Message, outgoing: Message) -> Message {
    outgoing
        .with_header(CORRELATION_ID, correlation_id(incoming))
        .with_header(CAUSATION_ID, incoming.id.to_string())
}

/// Runs the handler inside a `message` tracing span with the message id,
/// topic, group, correlation id and causation id as fields.
#[derive(Clone, Copy, Debug, Default)]
pub struct Correlation;

impl Layer for Correlation {
    fn layer(&self, inner: Arc<dyn Handler>) -> Arc<dyn Handler> {
        Arc::new(CorrelationHandler { inner })
    }
}

struct CorrelationHandler {
    inner: Arc<dyn Handler>,
}

impl Handler for CorrelationHandler {
    fn handle<'a>(&'a self, message: &'a Message, cx: &'a Context) -> HandlerFuture<'a> {
        let span = tracing::info_span!(
            "message",
            message_id = %message.id,
            topic = %message.topic,
            group = %cx.group(),
            correlation_id = %cx.correlation_id(),
            causation_id = cx.causation_id().unwrap_or_default(),
        );
        Box::pin(self.inner.handle(message, cx).instrument(span))
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        self.inner.ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_keeps_its_id_and_names_each_cause() {
        let first = Message::event("order.placed", "{}");
        let second = caused_by(&first, Message::command("invoice.create", "{}"));
        let third = caused_by(&second, Message::event("invoice.created", "{}"));
        let first_id = first.id.to_string();
        assert_eq!(correlation_id(&first), first_id);
        assert_eq!(second.headers[CORRELATION_ID], first_id);
        assert_eq!(second.headers[CAUSATION_ID], first_id);
        assert_eq!(third.headers[CORRELATION_ID], first_id);
        assert_eq!(third.headers[CAUSATION_ID], second.id.to_string());
        let cx = Context::new("g", &third, Some(1));
        assert_eq!(cx.correlation_id(), first_id);
        assert_eq!(cx.causation_id(), Some(second.id.to_string().as_str()));
    }
}
