//! What the daemon runs, and how it fared lately.
//!
//! [`Overview`] is the daemon's answer at one instant; [`History`] keeps
//! the last samples of it (taken every
//! [`AdminConfig::sample_every`](crate::AdminConfig::sample_every)) so the
//! console can draw backlog and lag sparklines and show throughput as a
//! rate.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Everything the daemon runs, at one instant.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overview {
    /// One entry per relay, consumer, forwarder, capture and batch job.
    pub components: Vec<Component>,
}

/// One thing the daemon runs.
#[derive(Clone, Debug, Serialize)]
pub struct Component {
    /// What it is.
    pub kind: ComponentKind,
    /// Its name in the configuration file.
    pub name: String,
    /// How it is doing.
    pub state: ComponentState,
    /// The store (a [`NamedStore`](crate::NamedStore)'s name) it works on,
    /// where it has one: a relay's outbox, a consumer's inbox and dead
    /// letters, a forwarder's event store.
    pub store: Option<String>,
    /// Messages, events, changes or rows it handed on since the process
    /// started (the basis of its throughput).
    pub done_total: u64,
    /// Failed attempts since the process started.
    pub failed_total: u64,
    /// Work waiting: a relay's pending messages, a consumer's waiting
    /// messages, a forwarder's events behind the head.
    pub backlog: Option<i64>,
    /// How far behind it is, in its own unit (see `detail`).
    pub lag: Option<i64>,
    /// Kind-specific facts: a capture's retained WAL bytes, an export's
    /// last window, a forwarder's offset…
    pub detail: BTreeMap<String, serde_json::Value>,
}

/// What a component is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    /// An outbox relay (`[[pipeline]]`).
    Relay,
    /// A broker consumer (`[[consumer]]`).
    Consumer,
    /// An event store forwarder (`[[forwarder]]`).
    Forwarder,
    /// A change data capture (`[[cdc]]`).
    Capture,
    /// A batch export job (`[[export]]`).
    Export,
    /// A batch import job (`[[import]]`).
    Import,
}

/// How a component is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    /// Working normally.
    Running,
    /// Paused by an operator.
    Paused,
    /// Its sink (or source) is unavailable; it retries with backoff.
    SinkDown,
    /// Stopped on a message or event it cannot get past (ordered mode).
    Stopped,
    /// Its last run failed (batch jobs).
    Failed,
}

/// One sample of a component.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// Backlog then.
    pub backlog: Option<i64>,
    /// Lag then.
    pub lag: Option<i64>,
    /// Items per second since the previous sample.
    pub rate: Option<f64>,
}

/// The last samples of every component, oldest first; clones share them.
#[derive(Clone, Debug)]
pub struct History {
    keep: usize,
    series: Arc<Mutex<Series>>,
}

#[derive(Debug, Default)]
struct Series {
    by_component: BTreeMap<(ComponentKind, String), Track>,
}

#[derive(Debug, Default)]
struct Track {
    last_total: Option<(DateTime<Utc>, u64)>,
    samples: VecDeque<Sample>,
}

impl History {
    /// Keeps the last `keep` samples of each component.
    pub fn new(keep: usize) -> Self {
        Self {
            keep: keep.max(2),
            series: Arc::default(),
        }
    }

    /// Records `overview` as seen at `at`.
    pub fn record(&self, overview: &Overview, at: DateTime<Utc>) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for c in &overview.components {
            let track = series
                .by_component
                .entry((c.kind, c.name.clone()))
                .or_default();
            let rate = track.last_total.and_then(|(then, total)| {
                let secs = (at - then).num_milliseconds() as f64 / 1000.0;
                (secs > 0.0).then(|| c.done_total.saturating_sub(total) as f64 / secs)
            });
            track.last_total = Some((at, c.done_total));
            track.samples.push_back(Sample {
                at,
                backlog: c.backlog,
                lag: c.lag,
                rate,
            });
            while track.samples.len() > self.keep {
                track.samples.pop_front();
            }
        }
    }

    /// The samples of one component, oldest first.
    pub fn samples(&self, kind: ComponentKind, name: &str) -> Vec<Sample> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series
            .by_component
            .get(&(kind, name.to_owned()))
            .map(|t| t.samples.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The latest rate of one component, items per second.
    pub fn rate(&self, kind: ComponentKind, name: &str) -> Option<f64> {
        self.samples(kind, name).last().and_then(|s| s.rate)
    }
}

/// An error with its sources, `a: b: c`, for logs.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(done: u64, backlog: i64) -> Overview {
        Overview {
            components: vec![Component {
                kind: ComponentKind::Relay,
                name: "orders".to_owned(),
                state: ComponentState::Running,
                store: Some("orders".to_owned()),
                done_total: done,
                failed_total: 0,
                backlog: Some(backlog),
                lag: None,
                detail: BTreeMap::new(),
            }],
        }
    }

    #[test]
    fn history_keeps_the_last_samples_and_turns_totals_into_rates() {
        let history = History::new(3);
        let t0 = Utc::now();
        for i in 0..5i64 {
            let at = t0 + chrono::Duration::seconds(5 * i);
            history.record(&relay(100 * i as u64, 50 - i), at);
        }
        let samples = history.samples(ComponentKind::Relay, "orders");
        assert_eq!(samples.len(), 3);
        assert_eq!(
            samples.iter().map(|s| s.backlog).collect::<Vec<_>>(),
            [Some(48), Some(47), Some(46)]
        );
        // 100 more every 5 s.
        assert_eq!(history.rate(ComponentKind::Relay, "orders"), Some(20.0));
        assert!(history
            .samples(ComponentKind::Consumer, "orders")
            .is_empty());
    }
}
