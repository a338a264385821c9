//! A sink that accepts everything.

use std::sync::atomic::{AtomicU64, Ordering};

use ferry_core::{BoxFuture, Delivery, Message, Sink};

/// Accepts every message at once and counts it; measures the relay without a
/// destination's cost.
#[derive(Debug, Default)]
pub struct NullSink {
    delivered: AtomicU64,
}

impl NullSink {
    /// A sink that has delivered nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many messages this sink has accepted so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

impl Sink for NullSink {
    fn name(&self) -> &str {
        "null"
    }

    fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>> {
        Box::pin(async move {
            self.delivered
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.iter().map(|_| Ok(())).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_and_counts() {
        let sink = NullSink::new();
        let batch = [Message::event("a", "{}"), Message::event("b", "{}")];
        let results = sink.deliver(&batch).await;
        assert_eq!(results.len(), 2);
        assert!(results.iter().all(Result::is_ok));
        sink.deliver(&batch[..1]).await;
        assert_eq!(sink.delivered(), 3);
    }
}
