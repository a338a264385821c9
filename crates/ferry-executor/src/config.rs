//! The executor's configuration.

use std::time::Duration;

use ferry_core::{retry::InvalidRetryPolicy, RetryPolicy};
use serde::{Deserialize, Serialize};

/// The largest `concurrency` and `queue_capacity` accepted.
const MAX_SLOTS: usize = 1_000_000;

/// How the executor runs tasks: how many at once, how many may wait, what a
/// submission does when the queue is full, how failures are retried and
/// how long a shutdown may drain.
///
/// ```toml
/// concurrency = 16
/// queue_capacity = 1024
/// overload = "wait"
/// shutdown_deadline = "30s"
///
/// [retry]
/// max_attempts = 5
/// initial_backoff = "500ms"
/// max_backoff = "30s"
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// Tasks run at once, from 1 to 1000000. A task waiting between two
    /// attempts keeps its slot, so a failing task slows the executor down
    /// instead of letting work pile up in memory.
    pub concurrency: usize,
    /// Tasks that may wait for a slot, from 1 to 1000000. A submission that
    /// finds the queue full follows `overload`.
    pub queue_capacity: usize,
    /// What a submission does when the queue is full: `"wait"` for room,
    /// `"reject"` with an error, or `"run_in_caller"` (run the task inline
    /// in the submitting task, which slows the submitter down).
    pub overload: OverloadPolicy,
    /// Attempts per task and the waits between them (backoff with jitter,
    /// capped): `max_attempts` (default 5), `initial_backoff` (`"500ms"`),
    /// `max_backoff` (`"30s"`), `multiplier` (2) and `jitter` (0.2); a field
    /// left out takes its default. Keep `max_backoff` short: a task keeps
    /// its slot while it waits to retry.
    #[serde(deserialize_with = "retry_with_executor_defaults")]
    pub retry: RetryPolicy,
    /// How long a shutdown lets queued and running tasks finish before it
    /// cancels them (and records them in the failure log), e.g. `"30s"`.
    /// [`crate::Executor::shutdown`] takes the deadline as an argument;
    /// this is the value to pass it when the executor was configured here.
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
}

/// What a submission does when the executor's queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverloadPolicy {
    /// The submitter waits until there is room (back-pressure).
    #[default]
    Wait,
    /// The submission fails at once with [`crate::SubmitError::Full`].
    Reject,
    /// The submitter runs the task itself, inline, with the same retries;
    /// its submission returns once the task has ended.
    RunInCaller,
}

fn default_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(500),
        max_backoff: Duration::from_secs(30),
        multiplier: 2.0,
        jitter: 0.2,
    }
}

/// The `retry` table as written: the fields given.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryFields {
    max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    initial_backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_backoff: Option<Duration>,
    multiplier: Option<f64>,
    jitter: Option<f64>,
}

/// A `retry` table whose missing fields take the executor's defaults (not
/// [`RetryPolicy::default`], whose 5-minute backoff suits a relay, not a
/// task holding a slot).
fn retry_with_executor_defaults<'de, D>(deserializer: D) -> Result<RetryPolicy, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let given = RetryFields::deserialize(deserializer)?;
    let base = default_retry();
    Ok(RetryPolicy {
        max_attempts: given.max_attempts.unwrap_or(base.max_attempts),
        initial_backoff: given.initial_backoff.unwrap_or(base.initial_backoff),
        max_backoff: given.max_backoff.unwrap_or(base.max_backoff),
        multiplier: given.multiplier.unwrap_or(base.multiplier),
        jitter: given.jitter.unwrap_or(base.jitter),
    })
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            queue_capacity: 1024,
            overload: OverloadPolicy::Wait,
            retry: default_retry(),
            shutdown_deadline: Duration::from_secs(30),
        }
    }
}

/// An executor configuration whose numbers make no sense.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidExecutorConfig {
    /// `concurrency` is 0 or too large.
    #[error("concurrency must be between 1 and {MAX_SLOTS}, got {0}")]
    Concurrency(usize),
    /// `queue_capacity` is 0 or too large.
    #[error("queue_capacity must be between 1 and {MAX_SLOTS}, got {0}")]
    QueueCapacity(usize),
    /// The retry policy is invalid.
    #[error("invalid retry policy")]
    Retry(#[source] InvalidRetryPolicy),
}

impl ExecutorConfig {
    /// Checks the numbers; [`crate::Executor::new`] calls it too.
    pub fn validate(&self) -> Result<(), InvalidExecutorConfig> {
        if !(1..=MAX_SLOTS).contains(&self.concurrency) {
            return Err(InvalidExecutorConfig::Concurrency(self.concurrency));
        }
        if !(1..=MAX_SLOTS).contains(&self.queue_capacity) {
            return Err(InvalidExecutorConfig::QueueCapacity(self.queue_capacity));
        }
        self.retry.validate().map_err(InvalidExecutorConfig::Retry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(ExecutorConfig::default().validate().is_ok());
    }

    #[test]
    fn reads_toml_with_humantime_and_snake_case_policy() {
        let c: ExecutorConfig = toml::from_str(
            r#"
            concurrency = 2
            queue_capacity = 3
            overload = "run_in_caller"
            shutdown_deadline = "1m 5s"
            [retry]
            max_attempts = 4
            initial_backoff = "10ms"
            max_backoff = "1s"
            "#,
        )
        .unwrap();
        assert_eq!(c.concurrency, 2);
        assert_eq!(c.queue_capacity, 3);
        assert_eq!(c.overload, OverloadPolicy::RunInCaller);
        assert_eq!(c.shutdown_deadline, Duration::from_secs(65));
        assert_eq!(c.retry.max_attempts, 4);
        assert_eq!(c.retry.initial_backoff, Duration::from_millis(10));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn retry_fields_left_out_take_the_executor_defaults() {
        let c: ExecutorConfig = toml::from_str("[retry]\nmax_attempts = 2").unwrap();
        assert_eq!(
            c.retry,
            RetryPolicy {
                max_attempts: 2,
                ..default_retry()
            }
        );
        let e = toml::from_str::<ExecutorConfig>("[retry]\nmax_attempt = 2").unwrap_err();
        assert!(e.to_string().contains("max_attempt"), "{e}");
    }

    #[test]
    fn an_empty_table_gives_the_defaults() {
        let c: ExecutorConfig = toml::from_str("").unwrap();
        assert_eq!(c, ExecutorConfig::default());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = toml::from_str::<ExecutorConfig>("concurency = 2").unwrap_err();
        assert!(e.to_string().contains("concurency"), "{e}");
    }

    #[test]
    fn validation_names_the_problem() {
        let zero = ExecutorConfig {
            concurrency: 0,
            ..ExecutorConfig::default()
        };
        assert_eq!(zero.validate(), Err(InvalidExecutorConfig::Concurrency(0)));
        let zero = ExecutorConfig {
            queue_capacity: 0,
            ..ExecutorConfig::default()
        };
        assert_eq!(
            zero.validate(),
            Err(InvalidExecutorConfig::QueueCapacity(0))
        );
        let mut bad_retry = ExecutorConfig::default();
        bad_retry.retry.max_attempts = 0;
        assert_eq!(
            bad_retry.validate(),
            Err(InvalidExecutorConfig::Retry(InvalidRetryPolicy::NoAttempts))
        );
    }
}
