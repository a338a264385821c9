//! The consumer's spans: one per message handled, a child of the
//! producer's span through the message's `traceparent` (see
//! [`ferry_core::trace`]), so a handler's own spans join the message's
//! trace.

use ferry_core::Message;
use tracing::Span;

/// The span around one handling of `message` by `group`'s handler on
/// `topic`.
pub(crate) fn handling_span(
    message: &Message,
    topic: &str,
    group: &str,
    delivery_count: Option<u32>,
) -> Span {
    let span = tracing::info_span!(target: "ferry::consumer", "ferry.consume",
        otel.name = %format_args!("process {topic}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.message.id = %message.id,
        messaging.destination.name = %topic,
        messaging.consumer.group.name = %group,
        messaging.message.delivery_count = delivery_count,
        ferry.outcome = tracing::field::Empty);
    ferry_core::trace::follow(&span, message);
    span
}

/// Records what became of the message: `handled`, `dead_lettered`,
/// `failed` (given back for a retry) or `cancelled` (by shutdown).
pub(crate) fn record_outcome(span: &Span, outcome: &'static str) {
    span.record("ferry.outcome", outcome);
    if matches!(outcome, "failed" | "dead_lettered") {
        span.record("otel.status_code", "ERROR");
    }
}
