//! The relay's span per message of a batch
//! ([`ferry_core::trace::Deliveries`]), a child of the producer's span
//! through the message's `traceparent`.
//!
//! A span covers the batch's sink calls (the engine delivers a batch at
//! once) and records what became of its message. Without a global tracer
//! provider nothing is built, not even a header read.

use ferry_core::trace::{Deliveries, DeliverySpan};
use ferry_delivery::{BatchResult, Claimed};
use ferry_store::outbox::Outcome;

/// One span per message of `claimed` that could be read, or none when
/// spans are not recorded.
pub(crate) fn delivery_spans(relay: &str, claimed: &[Claimed]) -> Vec<Option<DeliverySpan>> {
    let Some(deliveries) = Deliveries::start("relay", relay) else {
        return Vec::new();
    };
    claimed
        .iter()
        .map(|c| {
            let m = c.message.as_ref().ok()?;
            Some(deliveries.span(m, c.attempts + 1))
        })
        .collect()
}

/// Records each message's outcome on its span; the spans end here.
pub(crate) fn record_outcomes(spans: Vec<Option<DeliverySpan>>, result: &BatchResult) {
    for (span, outcome) in spans.into_iter().zip(&result.outcomes) {
        if let Some(mut span) = span {
            record(&mut span, outcome);
        }
    }
}

fn record(span: &mut DeliverySpan, outcome: &Outcome) {
    match outcome {
        Outcome::Delivered => span.outcome("delivered", false),
        Outcome::Failed {
            retry_at: Some(_), ..
        } => span.outcome("retry", true),
        Outcome::Failed { retry_at: None, .. } => span.outcome("given_up", true),
        Outcome::Released => span.outcome("released", false),
    }
}
