//! The forwarder's span per event delivered to a sink
//! ([`ferry_core::trace::delivery_span`], pipeline `forwarder`): a child
//! of the producer's span when the event's message carries a
//! `traceparent`, a root otherwise.

use ferry_core::trace::{delivery_span, record_delivery};
use ferry_delivery::{BatchResult, Entry, Outcome};
use tracing::Span;

/// One span per entry of a round, or none when such spans are not
/// recorded.
pub(super) fn delivery_spans<T>(forwarder: &str, entries: &[&Entry<T>]) -> Vec<Span> {
    let mut spans = Vec::with_capacity(entries.len());
    for entry in entries {
        let span = delivery_span("forwarder", forwarder, &entry.message, entry.attempts + 1);
        if span.is_disabled() {
            return Vec::new();
        }
        spans.push(span);
    }
    spans
}

/// Records each event's outcome on its span; the spans end here.
pub(super) fn record_outcomes(spans: Vec<Span>, result: &BatchResult) {
    for (span, outcome) in spans.iter().zip(&result.outcomes) {
        match outcome {
            Outcome::Delivered => record_delivery(span, "delivered", false),
            Outcome::Failed {
                retry_at: Some(_), ..
            } => record_delivery(span, "retry", true),
            Outcome::Failed { retry_at: None, .. } => record_delivery(span, "given_up", true),
            Outcome::Released => record_delivery(span, "released", false),
        }
    }
}
