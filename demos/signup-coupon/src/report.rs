//! What a run showed, and how it reads.

use std::fmt;
use std::time::Duration;

use crate::{Latency, Millis};

/// The relay's counters at the end of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct RelaySummary {
    /// Messages the coupon service accepted (2xx).
    pub delivered: u64,
    /// Failed attempts scheduled for a retry (500s, timeouts).
    pub retried: u64,
    /// Messages dead-lettered.
    pub dead: u64,
    /// Times the relay paused because the coupon service answered 503.
    pub sink_paused: u64,
}

/// The outcome of [`run`](crate::run).
#[derive(Clone, Debug)]
pub struct Report {
    /// Where the data lived, for the header line.
    pub database: String,
    /// Signups sent.
    pub signups_sent: u64,
    /// Signups in flight at once.
    pub concurrency: usize,
    /// Seed of the coupon service's latencies and failures.
    pub seed: u64,
    /// Time to send all signups.
    pub load_time: Duration,
    /// Signups not answered 201.
    pub signups_failed: u64,
    /// The first signup failure, if any.
    pub first_signup_error: Option<String>,
    /// Signup latency as the client saw it (201s only).
    pub signup_latency: Latency,
    /// The coupon service's time per call, as it saw it.
    pub coupon_latency: Latency,
    /// Calls the coupon service received: every delivery attempt.
    pub coupon_calls: u64,
    /// Calls it did not answer 2xx.
    pub coupon_failed_calls: u64,
    /// Of those, calls that failed before issuing anything.
    pub coupon_failed_before: u64,
    /// Of those, calls that did their work, then answered 500.
    pub coupon_lost_responses: u64,
    /// Users in the database.
    pub users: u64,
    /// Coupons issued in all.
    pub coupons_issued: u64,
    /// Users holding exactly one coupon.
    pub users_with_one_coupon: u64,
    /// Users holding none.
    pub users_without_coupon: u64,
    /// Redeliveries the coupon service recognised by `ce-id` and dropped.
    pub duplicates_suppressed: u64,
    /// The relay's counters.
    pub relay: RelaySummary,
    /// Outbox messages still pending once the relay stopped.
    pub pending_left: u64,
    /// Outbox messages dead-lettered.
    pub dead_left: u64,
    /// From the last signup until every user had a coupon; `None` if that
    /// never happened.
    pub coupons_complete_after: Option<Duration>,
    /// From the last signup until the outbox was empty; `None` on timeout.
    pub drained_after: Option<Duration>,
    /// How long the run was willing to wait.
    pub timeout: Duration,
}

impl Report {
    /// Whether every signup succeeded and every user got exactly one coupon.
    pub fn success(&self) -> bool {
        self.signups_failed == 0
            && self.users == self.signups_sent
            && self.users_with_one_coupon == self.users
            && self.coupons_issued == self.users
            && self.drained_after.is_some()
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.signup_latency;
        let c = &self.coupon_latency;
        writeln!(
            f,
            "signup-coupon demo: {} signups, {} at a time, on {} (coupon seed {})",
            self.signups_sent, self.concurrency, self.database, self.seed
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "signup service (user + outbox message in one transaction, no coupon call)"
        )?;
        writeln!(
            f,
            "  {}/{} answered 201 in {}; latency p50 {}, p95 {}, p99 {}, max {}",
            s.count,
            self.signups_sent,
            seconds(self.load_time),
            Millis(s.p50),
            Millis(s.p95),
            Millis(s.p99),
            Millis(s.max)
        )?;
        if let Some(e) = &self.first_signup_error {
            writeln!(f, "  first failure: {e}")?;
        }
        writeln!(f, "coupon service (called only by the relay)")?;
        writeln!(
            f,
            "  {} calls; latency p50 {}, p99 {}; {} failed ({:.0}%): {} before issuing, {} after",
            self.coupon_calls,
            Millis(c.p50),
            Millis(c.p99),
            self.coupon_failed_calls,
            percent(self.coupon_failed_calls, self.coupon_calls),
            self.coupon_failed_before,
            self.coupon_lost_responses
        )?;
        writeln!(
            f,
            "  called inside the signup, it would add {} (p99 {}) to every signup and fail {:.0}% of them",
            Millis(c.p50),
            Millis(c.p99),
            percent(self.coupon_failed_calls, self.coupon_calls)
        )?;
        writeln!(f)?;
        writeln!(f, "  users                        {:>6}", self.users)?;
        writeln!(
            f,
            "  coupons issued               {:>6}",
            self.coupons_issued
        )?;
        writeln!(
            f,
            "  users with exactly one coupon {:>5}",
            self.users_with_one_coupon
        )?;
        if self.users_without_coupon > 0 {
            writeln!(
                f,
                "  users without a coupon       {:>6}",
                self.users_without_coupon
            )?;
        }
        writeln!(
            f,
            "  duplicates suppressed        {:>6}  (redeliveries after a lost response)",
            self.duplicates_suppressed
        )?;
        writeln!(
            f,
            "  deliveries attempted         {:>6}  ({} accepted, {} retried, {} dead; relay paused on 503 {} time{})",
            self.coupon_calls,
            self.relay.delivered,
            self.relay.retried,
            self.relay.dead,
            self.relay.sink_paused,
            if self.relay.sink_paused == 1 { "" } else { "s" }
        )?;
        match (self.drained_after, self.coupons_complete_after) {
            (Some(drained), Some(coupons)) => writeln!(
                f,
                "  backlog drained {} after the last signup (every user had a coupon after {})",
                seconds(drained),
                seconds(coupons)
            )?,
            (Some(drained), None) => writeln!(
                f,
                "  outbox settled {} after the last signup, but not every user got a coupon",
                seconds(drained)
            )?,
            (None, _) => writeln!(
                f,
                "  backlog NOT drained within {}: {} messages still pending when the relay stopped",
                seconds(self.timeout),
                self.pending_left
            )?,
        }
        writeln!(f)?;
        if self.success() {
            write!(f, "OK: every user has exactly one coupon")
        } else {
            write!(
                f,
                "FAILED: {} of {} users have exactly one coupon ({} dead messages, {} pending)",
                self.users_with_one_coupon, self.signups_sent, self.dead_left, self.pending_left
            )
        }
    }
}
