//! The refund handler: the forwarder hands it each `order.cancelled` event,
//! after the cancellation committed, and it asks the payment service for
//! the refund.
//!
//! The forwarder delivers at least once (again after a failed call, and
//! after a crash for the events past its saved offset), so the handler
//! sends the event id as the `Idempotency-Key`: the payment service refunds
//! once per key, however often it is asked.

use std::time::Duration;

use ferry_core::HandlerFuture;
use ferry_events::forwarder::{EventHandler, HandlerError};
use ferry_store::event_store::StoredEvent;

use crate::orders::{OrderCancelled, ORDER_CANCELLED};
use crate::payment::{RefundRequest, IDEMPOTENCY_KEY};

/// Refunds cancelled orders through the payment service.
#[derive(Clone, Debug)]
pub struct RefundHandler {
    http: reqwest::Client,
    url: String,
}

impl RefundHandler {
    /// A handler that posts refunds to `url`, giving each call `timeout`.
    pub fn new(url: impl Into<String>, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            url: url.into(),
        })
    }
}

impl EventHandler for RefundHandler {
    fn handle<'a>(&'a self, event: &'a StoredEvent) -> HandlerFuture<'a> {
        Box::pin(async move {
            // A payload that does not decode is a permanent error.
            let cancelled: OrderCancelled = serde_json::from_slice(&event.payload)?;
            let request = RefundRequest {
                order_id: cancelled.order_id,
                amount_cents: cancelled.amount_cents,
            };
            let body = serde_json::to_vec(&request)?;
            let response = self
                .http
                .post(&self.url)
                .header(IDEMPOTENCY_KEY, event.id.to_string())
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| HandlerError::transient("refund call failed").with_source(e))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let message = format!("payment service answered {}", status.as_u16());
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                Err(HandlerError::transient(message))
            } else {
                Err(HandlerError::permanent(message))
            }
        })
    }

    fn wants(&self, event: &StoredEvent) -> bool {
        event.event_type == ORDER_CANCELLED
    }
}
