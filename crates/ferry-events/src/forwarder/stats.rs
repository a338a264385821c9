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

/// A getter per counter: its value now (relaxed: a reading, not a
/// synchronisation point).
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {$(
        $(#[$doc])*
        pub fn $name(&self) -> $ty {
            self.$name.load(Ordering::Relaxed)
        }
    )*};
}

impl ForwarderStats {
    counters! {
        /// Events delivered so far.
        delivered: u64;
        /// Failed attempts so far.
        failed: u64;
        /// Events skipped so far.
        skipped: u64;
        /// Times it went idle so far.
        idle: u64;
        /// The current offset.
        offset: i64;
        /// The head of the store as last seen.
        head: i64;
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
