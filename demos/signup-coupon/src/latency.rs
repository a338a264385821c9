//! Latency percentiles of a set of timed calls.

use std::fmt;
use std::time::Duration;

/// Nearest-rank percentiles of a set of durations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// How many samples.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

impl Latency {
    /// The percentiles of `samples`; all zero when there are none.
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            if samples.is_empty() {
                return Duration::ZERO;
            }
            let rank = (q * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Self {
            count: samples.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

/// A duration in milliseconds, to a precision that suits its size.
pub struct Millis(pub Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_secs_f64() * 1000.0;
        if ms < 10.0 {
            write!(f, "{ms:.1} ms")
        } else {
            write!(f, "{ms:.0} ms")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let ms = |n| Duration::from_millis(n);
        let l = Latency::of((1..=100).rev().map(ms).collect());
        assert_eq!(
            (l.p50, l.p95, l.p99, l.max),
            (ms(50), ms(95), ms(99), ms(100))
        );
        assert_eq!(Latency::of(vec![ms(7)]).p50, ms(7));
        assert_eq!(Latency::of(Vec::new()), Latency::default());
    }

    #[test]
    fn millis_formatting() {
        assert_eq!(Millis(Duration::from_micros(1_234)).to_string(), "1.2 ms");
        assert_eq!(Millis(Duration::from_micros(221_600)).to_string(), "222 ms");
    }
}
