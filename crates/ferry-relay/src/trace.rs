//! The relay's span per message of a batch ([`ferry_core::trace::delivery_span`]),
//! a child of the producer's span through the message's `traceparent`.
//!
//! A span covers the batch's sink calls (the engine delivers a batch at
//! once) and records what became of its message. Without a subscriber
//! that records these spans nothing is built, not even a header read.

use ferry_core::trace::{delivery_span, record_delivery};
use ferry_delivery::{BatchResult, Claimed};
use ferry_store::outbox::Outcome;
use tracing::Span;

/// One span per message of `claimed` (a disabled one for a message that
/// could not be read), or none when such spans are not recorded.
pub(crate) fn delivery_spans(relay: &str, claimed: &[Claimed]) -> Vec<Span> {
    let mut spans = Vec::with_capacity(claimed.len());
    for c in claimed {
        let Ok(m) = &c.message else {
            spans.push(Span::none());
            continue;
        };
        let span = delivery_span("relay", relay, m, c.attempts + 1);
        if span.is_disabled() {
            return Vec::new();
        }
        spans.push(span);
    }
    spans
}

/// Records each message's outcome on its span; the spans end here.
pub(crate) fn record_outcomes(spans: Vec<Span>, result: &BatchResult) {
    for (span, outcome) in spans.iter().zip(&result.outcomes) {
        record(span, outcome);
    }
}

fn record(span: &Span, outcome: &Outcome) {
    match outcome {
        Outcome::Delivered => record_delivery(span, "delivered", false),
        Outcome::Failed {
            retry_at: Some(_), ..
        } => record_delivery(span, "retry", true),
        Outcome::Failed { retry_at: None, .. } => record_delivery(span, "given_up", true),
        Outcome::Released => record_delivery(span, "released", false),
    }
}
