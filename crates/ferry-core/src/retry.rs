//! Retry policy: how many attempts, and how long to wait between them.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter and a cap, plus an attempt limit.
///
/// The wait before attempt `n + 1` (after `n` failed attempts) is
/// `initial_backoff * multiplier^(n-1)`, capped at `max_backoff`, then moved
/// at random by up to `jitter` of itself in either direction so that many
/// failing messages do not retry in lockstep.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts before a message is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Wait after the first failure, e.g. `"500ms"`.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between two attempts, e.g. `"5m"`.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Growth factor of the wait from one attempt to the next (at least 1).
    pub multiplier: f64,
    /// Random spread as a fraction of the wait, from 0 (none) to 1.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

/// A retry policy whose numbers make no sense.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidRetryPolicy {
    /// `max_attempts` is zero.
    #[error("max_attempts must be at least 1")]
    NoAttempts,
    /// `multiplier` is below 1 or not finite.
    #[error("multiplier must be a finite number of at least 1, got {0}")]
    Multiplier(f64),
    /// `jitter` is outside 0..=1.
    #[error("jitter must be between 0 and 1, got {0}")]
    Jitter(f64),
    /// `initial_backoff` exceeds `max_backoff`.
    #[error("initial_backoff must not exceed max_backoff")]
    InitialAboveMax,
    /// `max_backoff` is longer than a year.
    #[error("max_backoff must be at most 365 days")]
    MaxTooLong,
}

impl RetryPolicy {
    /// Checks the numbers; call once after loading configuration.
    pub fn validate(&self) -> Result<(), InvalidRetryPolicy> {
        if self.max_attempts == 0 {
            return Err(InvalidRetryPolicy::NoAttempts);
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(InvalidRetryPolicy::Multiplier(self.multiplier));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(InvalidRetryPolicy::Jitter(self.jitter));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(InvalidRetryPolicy::InitialAboveMax);
        }
        if self.max_backoff > Duration::from_secs(365 * 86_400) {
            return Err(InvalidRetryPolicy::MaxTooLong);
        }
        Ok(())
    }

    /// The wait after `failed_attempts` failures, without jitter.
    pub fn base_delay(&self, failed_attempts: u32) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(64) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exp);
        let cap = self.max_backoff.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(cap) } else { cap })
    }

    /// The wait after `failed_attempts` failures, with jitter, never above
    /// `max_backoff`.
    pub fn delay(&self, failed_attempts: u32) -> Duration {
        let base = self.base_delay(failed_attempts).as_secs_f64();
        if self.jitter == 0.0 || base == 0.0 {
            return Duration::from_secs_f64(base);
        }
        let spread = base * self.jitter;
        let jittered = rand::thread_rng().gen_range((base - spread)..=(base + spread));
        Duration::from_secs_f64(jittered.clamp(0.0, self.max_backoff.as_secs_f64()))
    }

    /// Whether a message that has failed `failed_attempts` times may be tried again.
    pub fn allows_another(&self, failed_attempts: u32) -> bool {
        failed_attempts < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
        }
    }

    #[test]
    fn grows_exponentially_and_caps() {
        let p = policy();
        assert_eq!(p.base_delay(1), Duration::from_millis(100));
        assert_eq!(p.base_delay(2), Duration::from_millis(200));
        assert_eq!(p.base_delay(4), Duration::from_millis(800));
        assert_eq!(p.base_delay(5), Duration::from_secs(1));
        assert_eq!(p.base_delay(1000), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_bounds_and_cap() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..policy()
        };
        let mut seen_different = false;
        for _ in 0..200 {
            let d = p.delay(2);
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_millis(300),
                "{d:?}"
            );
            seen_different |= d != Duration::from_millis(200);
            assert!(p.delay(30) <= Duration::from_secs(1));
        }
        assert!(seen_different);
    }

    #[test]
    fn attempt_limit() {
        let p = policy();
        assert!(p.allows_another(4));
        assert!(!p.allows_another(5));
    }

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(
            RetryPolicy {
                max_attempts: 0,
                ..policy()
            }
            .validate(),
            Err(InvalidRetryPolicy::NoAttempts)
        );
        assert_eq!(
            RetryPolicy {
                jitter: 2.0,
                ..policy()
            }
            .validate(),
            Err(InvalidRetryPolicy::Jitter(2.0))
        );
        assert_eq!(
            RetryPolicy {
                multiplier: 0.5,
                ..policy()
            }
            .validate(),
            Err(InvalidRetryPolicy::Multiplier(0.5))
        );
        assert!(policy().validate().is_ok());
    }
}
