//! A router's settings as configuration: what `ferry consume` reads.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::retry::InvalidRetryPolicy;
use ferry_core::RetryPolicy;

use crate::middleware::{
    CircuitBreaker, CircuitBreakerConfig, Correlation, Dedup, DedupConfig, Retry, RetryConfig,
    Timeout,
};
use crate::Layer;

/// A setting that makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value out of range.
    #[error("{field} {reason}")]
    Invalid {
        /// The setting, as a dotted path.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A retry policy whose numbers make no sense.
    #[error("invalid {field}")]
    Policy {
        /// The setting, as a dotted path.
        field: &'static str,
        /// What is wrong with it.
        #[source]
        source: InvalidRetryPolicy,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: &'static str, reason: &'static str) -> Self {
        Self::Invalid { field, reason }
    }
}

/// How a router consumes: the settings shared by all its subscriptions and
/// the middleware every handler gets. Every field has a default.
///
/// The middleware is stacked, outermost first: correlation span, dedup,
/// circuit breaker, retry, timeout (each attempt), then the handler.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Messages each subscription holds at once, unacknowledged: the
    /// broker's prefetch and the bound on concurrent handlers. Messages of
    /// one key are still handled one after another.
    pub prefetch: usize,
    /// At shutdown, how long handlers already running may take to finish,
    /// e.g. `"30s"`; the messages not finished by then are given back to
    /// the broker.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Backoff between attempts to subscribe while the broker is
    /// unavailable. `max_attempts` consecutive failures stop the router
    /// (the default, 4294967295, keeps trying).
    pub resubscribe: RetryPolicy,
    /// Retry of failing messages: on by default (3 attempts per delivery,
    /// 5 deliveries). `backoff.max_attempts = 1` hands each failure straight
    /// back to the broker.
    pub retry: Option<RetryConfig>,
    /// Time limit of one handler attempt, e.g. `"30s"`; omit for none.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Circuit breaker per subscription; omit for none.
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    /// In-memory, best-effort dedup of message ids per subscription; omit
    /// for none (use the inbox for a guarantee).
    pub dedup: Option<DedupConfig>,
    /// Lag polling and warnings.
    pub lag: LagConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            prefetch: 64,
            shutdown_timeout: Duration::from_secs(30),
            resubscribe: default_resubscribe(),
            retry: Some(RetryConfig::default()),
            timeout: None,
            circuit_breaker: None,
            dedup: None,
            lag: LagConfig::default(),
        }
    }
}

fn default_resubscribe() -> RetryPolicy {
    RetryPolicy {
        max_attempts: u32::MAX,
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(30),
        multiplier: 2.0,
        jitter: 0.2,
    }
}

/// How often a subscription's lag is read from its broker, and when it is
/// worth a warning.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LagConfig {
    /// Interval between two reads of the lag, e.g. `"15s"`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Warn when more messages than this wait for the group; omit for no
    /// warning.
    pub warn_waiting: Option<u64>,
    /// Warn when the oldest unacknowledged message is older than this,
    /// e.g. `"5m"`; omit for no warning.
    #[serde(with = "humantime_serde")]
    pub warn_oldest_age: Option<Duration>,
}

impl Default for LagConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            warn_waiting: None,
            warn_oldest_age: None,
        }
    }
}

impl RouterConfig {
    /// Checks every setting; call once after loading.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prefetch == 0 {
            return Err(ConfigError::invalid("prefetch", "must be at least 1"));
        }
        self.resubscribe
            .validate()
            .map_err(|source| ConfigError::Policy {
                field: "resubscribe",
                source,
            })?;
        if let Some(retry) = &self.retry {
            retry.validate()?;
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::invalid("timeout", "must be above zero"));
        }
        if let Some(breaker) = &self.circuit_breaker {
            breaker.validate()?;
        }
        if let Some(dedup) = &self.dedup {
            dedup.validate()?;
        }
        if self.lag.interval.is_zero() {
            return Err(ConfigError::invalid("lag.interval", "must be above zero"));
        }
        Ok(())
    }

    /// The middleware these settings ask for, outermost first.
    pub fn layers(&self) -> Vec<Arc<dyn Layer>> {
        let mut layers: Vec<Arc<dyn Layer>> = vec![Arc::new(Correlation)];
        if let Some(dedup) = &self.dedup {
            layers.push(Arc::new(Dedup::new(dedup.clone())));
        }
        if let Some(breaker) = &self.circuit_breaker {
            layers.push(Arc::new(CircuitBreaker::new(breaker.clone())));
        }
        if let Some(retry) = &self.retry {
            layers.push(Arc::new(Retry::new(retry.clone())));
        }
        if let Some(limit) = self.timeout {
            layers.push(Arc::new(Timeout::new(limit)));
        }
        layers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_toml_and_rejects_unknown_keys() {
        let config: RouterConfig = toml::from_str(
            r#"
            prefetch = 8
            timeout = "5s"
            [retry]
            max_deliveries = 3
            [retry.backoff]
            max_attempts = 2
            [circuit_breaker]
            failures = 3
            cool_down = "10s"
            [lag]
            warn_waiting = 1000
            warn_oldest_age = "5m"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.prefetch, 8);
        assert_eq!(config.timeout, Some(Duration::from_secs(5)));
        assert_eq!(config.retry.as_ref().unwrap().backoff.max_attempts, 2);
        assert_eq!(config.lag.warn_oldest_age, Some(Duration::from_secs(300)));
        // correlation, breaker, retry, timeout
        assert_eq!(config.layers().len(), 4);
        let err = toml::from_str::<RouterConfig>("prefech = 8").unwrap_err();
        assert!(err.to_string().contains("prefech"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let config = RouterConfig {
            prefetch: 0,
            ..RouterConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "prefetch must be at least 1"
        );
        let config = RouterConfig {
            retry: Some(RetryConfig {
                max_deliveries: 0,
                ..RetryConfig::default()
            }),
            ..RouterConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "retry.max_deliveries must be at least 1"
        );
        RouterConfig::default().validate().unwrap();
    }
}
