//! The forwarder's span per event delivered to a sink
//! ([`ferry_core::trace::Deliveries`], pipeline `forwarder`): a child of
//! the producer's span when the event's message carries a `traceparent`,
//! a root otherwise.

use ferry_core::trace::{Deliveries, DeliverySpan};
use ferry_delivery::{BatchResult, Entry, Outcome};

/// One span per entry of a round, or none when spans are not recorded.
pub(super) fn delivery_spans<T>(forwarder: &str, entries: &[&Entry<T>]) -> Vec<DeliverySpan> {
    let Some(deliveries) = Deliveries::start("forwarder", forwarder) else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|entry| deliveries.span(&entry.message, entry.attempts + 1))
        .collect()
}

/// Records each event's outcome on its span; the spans end here.
pub(super) fn record_outcomes(spans: Vec<DeliverySpan>, result: &BatchResult) {
    for (mut span, outcome) in spans.into_iter().zip(&result.outcomes) {
        match outcome {
            Outcome::Delivered => span.outcome("delivered", false),
            Outcome::Failed {
                retry_at: Some(_), ..
            } => span.outcome("retry", true),
            Outcome::Failed { retry_at: None, .. } => span.outcome("given_up", true),
            Outcome::Released => span.outcome("released", false),
        }
    }
}
