use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// What a forwarder has done since it started, readable while it runs.
#[derive(Debug, Default)]
pub struct ForwarderStats {
    /// Events handled (or accepted by the sink).
    pub delivered: AtomicU64,
    /// Failed attempts (each retry of an event counts).
    pub failed: AtomicU64,
    /// Events given up on and recorded in the failure store.
    pub skipped: AtomicU64,
    /// Times the sink as a whole was found unavailable.
    pub sink_unavailable: AtomicU64,
    /// Times it found no new event and began to wait (for a wake-up or
    /// the poll interval).
    pub idle: AtomicU64,
    /// The offset: every event up to it is delivered or skipped.
    pub offset: AtomicI64,
    /// The newest committed sequence number the forwarder has seen.
    pub head: AtomicI64,
}

impl ForwarderStats {
    /// Events delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Failed attempts so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Events skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Times it went idle so far.
    pub fn idle(&self) -> u64 {
        self.idle.load(Ordering::Relaxed)
    }

    /// The current offset.
    pub fn offset(&self) -> i64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// The head of the store as last seen.
    pub fn head(&self) -> i64 {
        self.head.load(Ordering::Relaxed)
    }

    /// How far behind the forwarder is: head minus offset (sequence
    /// numbers, so an approximation of events on PostgreSQL, where a
    /// rolled-back append leaves a gap).
    pub fn lag(&self) -> i64 {
        (self.head() - self.offset()).max(0)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_offset(&self, offset: i64) {
        self.offset.fetch_max(offset, Ordering::Relaxed);
        self.head.fetch_max(offset, Ordering::Relaxed);
    }

    pub(crate) fn set_head(&self, head: i64) {
        self.head.fetch_max(head, Ordering::Relaxed);
    }
}
