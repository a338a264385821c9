//! Tracks whether the sink and the store are up, so that failures are
//! logged once per change of state rather than once per attempt.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::SinkBackoff;

#[derive(Default)]
struct State {
    failures: u32,
    since: Option<Instant>,
    paused_until: Option<Instant>,
}

/// Up/down state of one dependency (the sink, or the store).
pub(crate) struct Health {
    what: &'static str,
    relay: String,
    backoff: SinkBackoff,
    state: Mutex<State>,
}

impl Health {
    pub fn new(what: &'static str, relay: String, backoff: SinkBackoff) -> Self {
        Self {
            what,
            relay,
            backoff,
            state: Mutex::new(State::default()),
        }
    }

    /// Records a failure and returns how long to pause.
    pub fn failed(&self, error: &str) -> Duration {
        let mut s = self.state.lock().unwrap();
        s.failures += 1;
        if s.failures == 1 {
            s.since = Some(Instant::now());
            tracing::warn!(relay = %self.relay, error, "{} unavailable; pausing and retrying with backoff", self.what);
        } else {
            tracing::debug!(relay = %self.relay, error, failures = s.failures, "{} still unavailable", self.what);
        }
        let exp = (s.failures - 1).min(30) as i32;
        let base = (self.backoff.initial.as_secs_f64() * 2f64.powi(exp))
            .min(self.backoff.max.as_secs_f64());
        let pause = Duration::from_secs_f64(base * rand::thread_rng().gen_range(0.8..=1.0));
        s.paused_until = Some(Instant::now() + pause);
        pause
    }

    /// Records a success.
    pub fn succeeded(&self) {
        let mut s = self.state.lock().unwrap();
        if s.failures > 0 {
            let down = s.since.map(|t| t.elapsed()).unwrap_or_default();
            tracing::info!(relay = %self.relay, failures = s.failures, down_for = ?down, "{} available again", self.what);
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
