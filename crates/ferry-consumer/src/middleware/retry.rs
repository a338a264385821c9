//! Retry: try a failing message again in process with exponential backoff,
//! then hand it back to the broker with a delay, then dead-letter it.
//!
//! Within one delivery the handler is tried up to
//! [`RetryConfig::backoff`]`.max_attempts` times, waiting
//! [`RetryPolicy::delay`] between attempts (capped, with jitter). When they
//! all fail the message goes back to the broker with a nack whose delay
//! continues the same backoff (or the handler's `retry_after`, if longer).
//! On the [`RetryConfig::max_deliveries`]-th delivery, once its attempts
//! fail too, it gives up: the error becomes permanent and the message is
//! dead-lettered with the number of attempts made.
//!
//! Deliveries are counted by the broker ([`Context::delivery_count`]).
//! When the broker does not count, this layer counts the deliveries it has
//! seen of each message id itself, in a bounded memory: best effort, since
//! a redelivery to another process or after a restart starts again at 1.
//! Permanent errors are never retried.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_core::{BoxFuture, HandlerFuture, Message, MessageId, RetryPolicy};

use crate::{ConfigError, Context, Handler, HandlerError, Layer};

/// How often, and how far apart, a failing message is tried.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per delivery (`max_attempts`) and the waits between
    /// attempts, which continue across deliveries as the nack's delay.
    pub backoff: RetryPolicy,
    /// Deliveries of a message before it is dead-lettered (at least 1);
    /// each makes `backoff.max_attempts` attempts.
    pub max_deliveries: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            backoff: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(60),
                multiplier: 2.0,
                jitter: 0.2,
            },
            max_deliveries: 5,
        }
    }
}

impl RetryConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.backoff
            .validate()
            .map_err(|source| ConfigError::Policy {
                field: "retry.backoff",
                source,
            })?;
        if self.max_deliveries == 0 {
            return Err(ConfigError::invalid(
                "retry.max_deliveries",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The retry layer; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Retry {
    config: RetryConfig,
}

impl Retry {
    /// Retries per `config`.
    pub fn new(config: RetryConfig) -> Self {
        Self { config }
    }
}

impl Layer for Retry {
    fn layer(&self, inner: Arc<dyn Handler>) -> Arc<dyn Handler> {
        Arc::new(RetryHandler {
            inner,
            config: self.config.clone(),
            deliveries: Mutex::default(),
        })
    }
}

/// Most message ids whose deliveries are counted in memory.
const COUNTED_IDS: usize = 10_000;

/// Deliveries seen per message id, for brokers that do not count.
#[derive(Default)]
struct Deliveries {
    counts: HashMap<MessageId, u32>,
    /// Ids in the order first seen, for eviction; may hold forgotten ids.
    order: VecDeque<MessageId>,
}

impl Deliveries {
    fn bump(&mut self, id: MessageId) -> u32 {
        let count = self.counts.entry(id).or_insert(0);
        *count += 1;
        let count = *count;
        if count == 1 {
            self.order.push_back(id);
            while self.counts.len() > COUNTED_IDS {
                match self.order.pop_front() {
                    Some(old) => {
                        self.counts.remove(&old);
                    }
                    None => break,
                }
            }
            if self.order.len() > 2 * COUNTED_IDS {
                let counts = &self.counts;
                self.order.retain(|id| counts.contains_key(id));
            }
        }
        count
    }

    fn forget(&mut self, id: MessageId) {
        self.counts.remove(&id);
    }
}

struct RetryHandler {
    inner: Arc<dyn Handler>,
    config: RetryConfig,
    deliveries: Mutex<Deliveries>,
}

impl RetryHandler {
    fn deliveries(&self) -> MutexGuard<'_, Deliveries> {
        self.deliveries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Handler for RetryHandler {
    fn handle<'a>(&'a self, message: &'a Message, cx: &'a Context) -> HandlerFuture<'a> {
        Box::pin(async move {
            let counted_here = cx.delivery_count().is_none();
            let delivery = match cx.delivery_count() {
                Some(n) => n.max(1),
                None => self.deliveries().bump(message.id),
            };
            let per_delivery = self.config.backoff.max_attempts.max(1);
            // Earlier deliveries each made their full round of attempts.
            let earlier = (delivery - 1).saturating_mul(per_delivery);
            let last_delivery = delivery >= self.config.max_deliveries;
            let mut attempt = 0;
            let result = loop {
                attempt += 1;
                let mut error = match self.inner.handle(message, cx).await {
                    Ok(()) => break Ok(()),
                    Err(e) => e,
                };
                let attempts = earlier.saturating_add(attempt);
                error.attempts.get_or_insert(attempts);
                if !error.is_transient() {
                    break Err(error);
                }
                let backoff = self.config.backoff.delay(attempts);
                let asked = error.retry_after.unwrap_or_default();
                // Longer than this layer waits in process: the broker waits.
                let too_long = asked > self.config.backoff.max_backoff;
                if attempt >= per_delivery || too_long {
                    if last_delivery {
                        let mut gave_up =
                            HandlerError::permanent(format!("gave up after {attempts} attempts"));
                        gave_up.attempts = Some(attempts);
                        break Err(gave_up.with_source(error));
                    }
                    // Back to the broker, still backing off.
                    error.retry_after = Some(backoff.max(asked));
                    return Err(error);
                }
                cx.count_retry();
                tokio::time::sleep(backoff.max(asked)).await;
            };
            if counted_here {
                self.deliveries().forget(message.id);
            }
            result
        })
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        self.inner.ready()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::middleware::testing::{flaky, handle, scripted};
    use crate::{HandlerErrorKind, HandlerExt};

    fn config(per_delivery: u32, max_deliveries: u32) -> RetryConfig {
        RetryConfig {
            backoff: RetryPolicy {
                max_attempts: per_delivery,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(10),
                multiplier: 2.0,
                jitter: 0.0,
            },
            max_deliveries,
        }
    }

    #[tokio::test]
    async fn succeeds_within_one_delivery() {
        let calls = Arc::new(AtomicU32::new(0));
        let h = flaky(2, calls.clone(), "flaky").with(Retry::new(config(3, 1)));
        let m = Message::event("t", "{}");
        let cx = Context::new("g", &m, Some(1));
        h.handle(&m, &cx).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(cx.report.retries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn hands_back_then_gives_up_on_the_last_delivery() {
        let calls = Arc::new(AtomicU32::new(0));
        let h = flaky(u32::MAX, calls.clone(), "flaky").with(Retry::new(config(2, 3)));
        let m = Message::event("t", "{}");
        let err = handle(&h, &m, Some(1)).await.unwrap_err();
        assert_eq!(err.kind, HandlerErrorKind::Transient);
        assert_eq!(err.attempts, Some(2));
        // Waits 1ms in process, then asks the broker to wait the next step.
        assert_eq!(err.retry_after, Some(Duration::from_millis(2)));
        let err = handle(&h, &m, Some(3)).await.unwrap_err();
        assert_eq!(err.kind, HandlerErrorKind::Permanent);
        assert_eq!(err.attempts, Some(6));
        assert_eq!(err.describe(), "gave up after 6 attempts: flaky");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn counts_deliveries_itself_when_the_broker_does_not() {
        let calls = Arc::new(AtomicU32::new(0));
        let h = flaky(u32::MAX, calls.clone(), "flaky").with(Retry::new(config(1, 2)));
        let m = Message::event("t", "{}");
        let first = handle(&h, &m, None).await.unwrap_err();
        assert!(first.is_transient());
        let second = handle(&h, &m, None).await.unwrap_err();
        assert_eq!(second.kind, HandlerErrorKind::Permanent);
        assert_eq!(second.attempts, Some(2));
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = Arc::new(AtomicU32::new(0));
        let h = scripted(calls.clone(), |_| {
            Err(HandlerError::permanent("bad payload"))
        })
        .with(Retry::new(config(5, 5)));
        let m = Message::event("t", "{}");
        let err = handle(&h, &m, Some(2)).await.unwrap_err();
        assert_eq!(err.kind, HandlerErrorKind::Permanent);
        assert_eq!(err.attempts, Some(6));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_long_retry_after_goes_to_the_broker() {
        let calls = Arc::new(AtomicU32::new(0));
        let h = scripted(calls.clone(), |_| {
            Err(HandlerError::transient("busy").with_retry_after(Duration::from_secs(30)))
        })
        .with(Retry::new(config(5, 5)));
        let m = Message::event("t", "{}");
        let err = handle(&h, &m, Some(1)).await.unwrap_err();
        assert_eq!(err.retry_after, Some(Duration::from_secs(30)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
