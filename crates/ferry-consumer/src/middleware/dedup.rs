//! Dedup: skip a message whose id this process handled a moment ago.
//!
//! **Best effort.** The memory is per process and per subscription, bounded
//! by count and by age, and lost on restart: a duplicate that arrives after
//! a restart, on another instance, or after its id was forgotten is handled
//! again. It saves work on the common case (a broker's redelivery shortly
//! after a lost ack, a relay's re-send); use the
//! [inbox](crate::inbox) when a duplicate must never be applied.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_core::{BoxFuture, HandlerFuture, Message, MessageId};
use tokio::time::Instant;

use crate::{ConfigError, Context, Handler, Layer};

/// How much the dedup memory holds.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// Most message ids remembered per subscription; the oldest is
    /// forgotten first.
    pub capacity: usize,
    /// How long an id is remembered after its message was handled, e.g. `"10m"`.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            max_age: Duration::from_secs(600),
        }
    }
}

impl DedupConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.capacity == 0 {
            return Err(ConfigError::invalid("dedup.capacity", "must be at least 1"));
        }
        if self.max_age.is_zero() {
            return Err(ConfigError::invalid("dedup.max_age", "must be above zero"));
        }
        Ok(())
    }
}

/// Skips messages whose id was handled successfully within the window
/// (acknowledging them), per subscription. See the [module docs](self) for
/// what it does not promise.
#[derive(Clone, Debug)]
pub struct Dedup {
    config: DedupConfig,
}

impl Dedup {
    /// A dedup layer with this memory.
    pub fn new(config: DedupConfig) -> Self {
        Self { config }
    }
}

impl Layer for Dedup {
    fn layer(&self, inner: Arc<dyn Handler>) -> Arc<dyn Handler> {
        Arc::new(DedupHandler {
            inner,
            config: self.config.clone(),
            seen: Mutex::default(),
        })
    }
}

#[derive(Default)]
struct Seen {
    ids: HashSet<MessageId>,
    /// Ids in the order they were handled, with when.
    order: VecDeque<(MessageId, Instant)>,
}

struct DedupHandler {
    inner: Arc<dyn Handler>,
    config: DedupConfig,
    seen: Mutex<Seen>,
}

impl DedupHandler {
    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `id` was handled within the window, forgetting what aged out.
    fn contains(&self, id: MessageId) -> bool {
        let mut seen = self.seen();
        let now = Instant::now();
        while let Some(&(old, at)) = seen.order.front() {
            if now.saturating_duration_since(at) < self.config.max_age {
                break;
            }
            seen.order.pop_front();
            seen.ids.remove(&old);
        }
        seen.ids.contains(&id)
    }

    fn remember(&self, id: MessageId) {
        let mut seen = self.seen();
        if !seen.ids.insert(id) {
            return;
        }
        seen.order.push_back((id, Instant::now()));
        while seen.order.len() > self.config.capacity {
            if let Some((old, _)) = seen.order.pop_front() {
                seen.ids.remove(&old);
            }
        }
    }
}

impl Handler for DedupHandler {
    fn handle<'a>(&'a self, message: &'a Message, cx: &'a Context) -> HandlerFuture<'a> {
        Box::pin(async move {
            if self.contains(message.id) {
                tracing::debug!(message_id = %message.id, topic = %message.topic, "duplicate skipped");
                return Ok(());
            }
            self.inner.handle(message, cx).await?;
            self.remember(message.id);
            Ok(())
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
    use crate::HandlerExt;

    #[tokio::test]
    async fn forgets_by_count() {
        let calls = Arc::new(AtomicU32::new(0));
        let h = scripted(calls.clone(), |_| Ok(())).with(Dedup::new(DedupConfig {
            capacity: 2,
            max_age: Duration::from_secs(60),
        }));
        let [a, b, c] = [0, 1, 2].map(|_| Message::event("t", "{}"));
        for m in [&a, &a, &b, &c, &a] {
            handle(&h, m, None).await.unwrap();
        }
        // a, b, c handled; the second a skipped; a forgotten after c.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn forgets_by_age() {
        let calls = Arc::new(AtomicU32::new(0));
        let h = scripted(calls.clone(), |_| Ok(())).with(Dedup::new(DedupConfig {
            capacity: 10,
            max_age: Duration::from_secs(60),
        }));
        let a = Message::event("t", "{}");
        handle(&h, &a, None).await.unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        handle(&h, &a, None).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(31)).await;
        handle(&h, &a, None).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_message_is_not_remembered() {
        let calls = Arc::new(AtomicU32::new(0));
        let h = flaky(1, calls.clone(), "first fails").with(Dedup::new(DedupConfig::default()));
        let a = Message::event("t", "{}");
        assert!(handle(&h, &a, None).await.is_err());
        handle(&h, &a, None).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
