//! A sink that accepts everything.

use std::sync::atomic::{AtomicU64, Ordering};

use ferry_core::{BoxFuture, Delivery, Message, Sink};
use url::Url;

use crate::SinkConfigError;

/// The null sink has no settings.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullSinkConfig {}

impl NullSinkConfig {
    /// Reads `null://`, the only null sink URL.
    pub(crate) fn from_url(url: &Url) -> Result<Self, SinkConfigError> {
        if url.host_str().is_some_and(|host| !host.is_empty())
            || !url.path().is_empty()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(SinkConfigError::Invalid {
                sink: "null",
                field: "url",
                reason: "must be just `null://`".to_owned(),
                source: None,
            });
        }
        Ok(NullSinkConfig {})
    }
}

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
