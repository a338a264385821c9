//! A sink wrapper that stamps the moment the relay hands messages over:
//! the instant [`Sink::deliver`] is called, before the inner sink does
//! anything. That is the "handler start" of the bench-peers harness.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ferry_core::{BoxFuture, Delivery, Message, Sink};

use crate::workload::seq_of;

/// A moment, on both clocks: monotonic for in-process intervals, and Unix
/// epoch milliseconds for comparison with another process (the harness's
/// clock is `time.time()` / `performance.timeOrigin + now()`, the same
/// system real-time clock).
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    /// Monotonic.
    pub at: Instant,
    /// Milliseconds since the Unix epoch, sub-millisecond precision.
    pub epoch_ms: f64,
}

impl Stamp {
    /// Now.
    pub fn now() -> Self {
        let at = Instant::now();
        let epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or_default();
        Self { at, epoch_ms }
    }
}

type OnFirst = Box<dyn Fn(Stamp) + Send + Sync>;

/// Wraps a sink and records hand-off times: always the first one, and,
/// when asked, one per message keyed by the sequence number in its payload.
pub struct HandOffRecorder {
    inner: Arc<dyn Sink>,
    first: OnceLock<Stamp>,
    each: Option<Mutex<Vec<(u64, Stamp)>>>,
    on_first: Option<OnFirst>,
}

impl HandOffRecorder {
    /// Records the first hand-off only.
    pub fn new(inner: Arc<dyn Sink>) -> Self {
        Self {
            inner,
            first: OnceLock::new(),
            each: None,
            on_first: None,
        }
    }

    /// Also records every message's hand-off (`capacity`: expected count).
    pub fn recording_each(mut self, capacity: usize) -> Self {
        self.each = Some(Mutex::new(Vec::with_capacity(capacity)));
        self
    }

    /// Calls `f` once, at the first hand-off (after it is stamped).
    pub fn on_first(mut self, f: impl Fn(Stamp) + Send + Sync + 'static) -> Self {
        self.on_first = Some(Box::new(f));
        self
    }

    /// The first hand-off, if any.
    pub fn first(&self) -> Option<Stamp> {
        self.first.get().copied()
    }

    /// How many distinct messages (by sequence number) were handed off; a
    /// message handed off again (a redelivery) counts once.
    pub fn distinct(&self) -> usize {
        self.each.as_ref().map_or(0, |m| {
            let each = m.lock().unwrap_or_else(|p| p.into_inner());
            each.iter()
                .map(|(seq, _)| *seq)
                .collect::<std::collections::HashSet<_>>()
                .len()
        })
    }

    /// The per-message hand-offs so far, `(seq, when)`, in hand-off order.
    pub fn each(&self) -> Vec<(u64, Stamp)> {
        self.each.as_ref().map_or_else(Vec::new, |m| {
            m.lock().unwrap_or_else(|p| p.into_inner()).clone()
        })
    }

    fn record(&self, batch: &[Message]) {
        let now = Stamp::now();
        if self.first.set(now).is_ok() {
            if let Some(f) = &self.on_first {
                f(now);
            }
        }
        if let Some(each) = &self.each {
            let seqs: Vec<u64> = batch.iter().filter_map(|m| seq_of(&m.payload)).collect();
            each.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(seqs.into_iter().map(|s| (s, now)));
        }
    }
}

impl Sink for HandOffRecorder {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>> {
        self.record(batch);
        self.inner.deliver(batch)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ferry_adapters::NullSink;

    use super::*;
    use crate::workload::{payload, PayloadShape, TOPIC};

    #[tokio::test]
    async fn stamps_first_and_each() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let r = HandOffRecorder::new(Arc::new(NullSink::new()))
            .recording_each(4)
            .on_first(move |_| {
                c.fetch_add(1, Ordering::Relaxed);
            });
        assert!(r.first().is_none());
        let batch: Vec<Message> = (0..3)
            .map(|i| Message::event(TOPIC, payload(i, PayloadShape::Tiny)))
            .collect();
        assert_eq!(r.deliver(&batch[..2]).await.len(), 2);
        r.deliver(&batch[2..]).await;
        r.deliver(&batch[2..]).await;
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(r.each().len(), 4);
        assert_eq!(r.distinct(), 3);
        let seqs: Vec<u64> = r.each().iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [0, 1, 2, 2]);
        assert!(r.first().unwrap().epoch_ms > 1.6e12);
    }
}
