//! Tracks whether a dependency (the sink, the database) is up, so that
//! failures are logged once per change of state rather than once per
//! attempt, and tries in between are paused with capped backoff.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_core::RetryPolicy;

#[derive(Default)]
struct State {
    failures: u32,
    since: Option<Instant>,
    paused_until: Option<Instant>,
}

/// Up/down state of one dependency of a pipeline (its sink, its database).
///
/// [`failed`](Self::failed) logs a warning on the first failure only and
/// pauses for a capped exponential backoff with a little jitter;
/// [`succeeded`](Self::succeeded) logs once that it is back. Safe to share
/// between tasks.
pub struct Health {
    what: &'static str,
    down: &'static str,
    up: &'static str,
    relay: String,
    backoff: RetryPolicy,
    state: Mutex<State>,
}

impl Health {
    /// The health of `what` (e.g. `"sink"`), for the pipeline (relay,
    /// forwarder) named `relay`, pausing as `backoff` says. It logs "`what`
    /// unavailable" and "`what` available again".
    pub fn new(what: &'static str, relay: impl Into<String>, backoff: &SinkBackoff) -> Self {
        Self {
            what,
            down: "unavailable",
            up: "available",
            relay: relay.into(),
            backoff: RetryPolicy {
                max_attempts: u32::MAX,
                initial_backoff: backoff.initial,
                max_backoff: backoff.max,
                multiplier: 2.0,
                jitter: 0.1,
            },
            state: Mutex::new(State::default()),
        }
    }

    /// Other words for the two states in the log, e.g. `"unreachable"` and
    /// `"reachable"`.
    pub fn with_words(mut self, down: &'static str, up: &'static str) -> Self {
        self.down = down;
        self.up = up;
        self
    }

    /// Records a failure and pauses: see [`pause_left`](Self::pause_left).
    pub fn failed(&self, error: &str) {
        let mut s = self.state.lock().unwrap();
        s.failures += 1;
        if s.failures == 1 {
            s.since = Some(Instant::now());
            tracing::warn!(relay = %self.relay, error, "{} {}; pausing and retrying with backoff", self.what, self.down);
        } else {
            tracing::debug!(relay = %self.relay, error, failures = s.failures, "{} still {}", self.what, self.down);
        }
        s.paused_until = Some(Instant::now() + self.backoff.delay(s.failures));
    }

    /// Records a success.
    pub fn succeeded(&self) {
        let mut s = self.state.lock().unwrap();
        if s.failures > 0 {
            let down = s.since.map(|t| t.elapsed()).unwrap_or_default();
            tracing::info!(relay = %self.relay, failures = s.failures, down_for = ?down, "{} {} again", self.what, self.up);
            *s = State::default();
        }
    }

    /// Consecutive failures so far; 0 when up.
    pub fn failures(&self) -> u32 {
        self.state.lock().unwrap().failures
    }

    /// How long to wait before the next try, if paused.
    pub fn pause_left(&self) -> Option<Duration> {
        let s = self.state.lock().unwrap();
        s.paused_until
            .and_then(|t| t.checked_duration_since(Instant::now()))
    }
}

/// Capped exponential pause while the sink (or the database) is unavailable.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkBackoff {
    /// First pause, e.g. `"100ms"`.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Longest pause, e.g. `"30s"`.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for SinkBackoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_the_cap_and_reset_on_success() {
        let h = Health::new(
            "sink",
            "t",
            &SinkBackoff {
                initial: Duration::from_secs(10),
                max: Duration::from_secs(40),
            },
        );
        assert_eq!(h.pause_left(), None);
        let mut pauses = Vec::new();
        for _ in 0..4 {
            h.failed("down");
            pauses.push(h.pause_left().unwrap().as_secs_f64());
        }
        // 10, 20, 40, 40 s, each within 10 % (and never above the cap).
        for (pause, base) in pauses.iter().zip([10.0, 20.0, 40.0, 40.0]) {
            assert!(*pause > base * 0.85 && *pause <= base * 1.1, "{pauses:?}");
        }
        assert!(pauses[3] <= 40.0);
        assert_eq!(h.failures(), 4);
        h.succeeded();
        assert_eq!((h.failures(), h.pause_left()), (0, None));
    }
}
