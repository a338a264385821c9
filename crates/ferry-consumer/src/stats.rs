//! Counters per subscription, and the lag last read from the broker.
//!
//! [`Stats`] is a cheap handle the router keeps updating while it runs;
//! [`Stats::snapshot`] reads it at any time (a `/metrics` endpoint renders
//! the snapshot). Counters only grow, except `in_flight`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_core::Lag;

/// The counters of every subscription of one router.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    subscriptions: Arc<Vec<Arc<Counters>>>,
}

/// One subscription's live counters.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) topic: String,
    pub(crate) group: String,
    pub(crate) handled: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) subscribed: AtomicBool,
    lag: Mutex<Option<(Lag, DateTime<Utc>)>>,
}

impl Counters {
    pub(crate) fn new(topic: &str, group: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
            handled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            lag: Mutex::new(None),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_lag(&self, lag: Lag) {
        *self.lag.lock().unwrap_or_else(|p| p.into_inner()) = Some((lag, Utc::now()));
    }

    fn snapshot(&self) -> SubscriptionStats {
        let lag = *self.lag.lock().unwrap_or_else(|p| p.into_inner());
        SubscriptionStats {
            topic: self.topic.clone(),
            group: self.group.clone(),
            handled: self.handled.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            subscribed: self.subscribed.load(Ordering::Relaxed),
            lag: lag.map(|(lag, _)| lag),
            lag_read_at: lag.map(|(_, at)| at),
        }
    }
}

/// One subscription's counters at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionStats {
    /// The topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// Messages handled and acknowledged (duplicates skipped included).
    pub handled: u64,
    /// Failed deliveries given back to the broker to be tried again
    /// (messages refused by an open circuit included).
    pub failed: u64,
    /// Messages dead-lettered (poison, retries exhausted, malformed).
    pub dead_lettered: u64,
    /// Attempts repeated in process by the retry middleware.
    pub retried: u64,
    /// Messages taken from the broker and not settled yet.
    pub in_flight: u64,
    /// Whether the subscription is currently established on its broker.
    pub subscribed: bool,
    /// The group's lag as last read from the broker.
    pub lag: Option<Lag>,
    /// When `lag` was read.
    pub lag_read_at: Option<DateTime<Utc>>,
}

impl Stats {
    pub(crate) fn new(subscriptions: Vec<Arc<Counters>>) -> Self {
        Self {
            subscriptions: Arc::new(subscriptions),
        }
    }

    /// Every subscription's counters now, in the order routes were added.
    pub fn snapshot(&self) -> Vec<SubscriptionStats> {
        self.subscriptions.iter().map(|c| c.snapshot()).collect()
    }

    /// The counters of the subscription of `topic` and `group`.
    pub fn get(&self, topic: &str, group: &str) -> Option<SubscriptionStats> {
        self.subscriptions
            .iter()
            .find(|c| c.topic == topic && c.group == group)
            .map(|c| c.snapshot())
    }
}

/// Whether a lag is above its thresholds.
pub(crate) fn lag_exceeds(
    lag: &Lag,
    warn_waiting: Option<u64>,
    warn_oldest_age: Option<Duration>,
) -> bool {
    let waiting = matches!((lag.waiting, warn_waiting), (Some(w), Some(max)) if w > max);
    let old = matches!((lag.oldest_age, warn_oldest_age), (Some(a), Some(max)) if a > max);
    waiting || old
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let lag = Lag {
            waiting: Some(10),
            in_flight: None,
            oldest_age: Some(Duration::from_secs(5)),
        };
        assert!(!lag_exceeds(&lag, None, None));
        assert!(lag_exceeds(&lag, Some(9), None));
        assert!(!lag_exceeds(&lag, Some(10), Some(Duration::from_secs(5))));
        assert!(lag_exceeds(&lag, None, Some(Duration::from_secs(4))));
        assert!(!lag_exceeds(&Lag::default(), Some(0), Some(Duration::ZERO)));
    }
}
