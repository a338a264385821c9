use std::time::Duration;

use ferry_core::RetryPolicy;
use ferry_delivery::SinkBackoff;

/// What a forwarder does with an event it gave up on (retries spent, or a
/// permanent error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop with an error naming the event; the offset stays before it, so
    /// a restart tries it again. A handler gets nothing after it; a sink
    /// gets nothing more of its source, but may have accepted events of
    /// other sources that shared its wave (they go out again after the
    /// restart).
    #[default]
    Stop,
    /// Record it in the failure store (`ferry_event_failures`, see
    /// [`Database::event_failures`](ferry_store::Database::event_failures))
    /// and go on with the next event.
    Skip,
}

impl OnFailure {
    /// `stop` or `skip`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Stop => "stop",
            OnFailure::Skip => "skip",
        }
    }
}

impl std::str::FromStr for OnFailure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stop" => Ok(OnFailure::Stop),
            "skip" => Ok(OnFailure::Skip),
            other => Err(format!(
                "unknown failure policy `{other}` (expected `stop` or `skip`)"
            )),
        }
    }
}

/// How a forwarder runs.
#[derive(Clone, Debug)]
pub struct ForwarderConfig {
    /// The forwarder's name: the reader whose offset it keeps in
    /// `ferry_event_offsets`, and its name in logs. Run one forwarder per
    /// name at a time (two would deliver the same events).
    pub name: String,
    /// Most events read per page (1..=[`MAX_PAGE`](ferry_store::event_store::MAX_PAGE));
    /// the offset is saved after each page.
    pub batch_size: u32,
    /// Longest wait between two looks at the store when no wake-up comes
    /// (PostgreSQL wakes the forwarder by NOTIFY at once; units of work of
    /// an [`EventBus`](crate::unit_of_work::EventBus) wake the forwarder
    /// they built in the same process).
    pub poll_interval: Duration,
    /// Attempts and backoff for a failing event.
    pub retry: RetryPolicy,
    /// What happens once an event's attempts are spent.
    pub on_failure: OnFailure,
    /// Pause while the sink as a whole, or the database, is unavailable
    /// (no attempts are counted meanwhile).
    pub backoff: SinkBackoff,
    /// After shutdown is requested, how long a delivery in flight may
    /// finish before it is abandoned (and delivered again after restart).
    pub shutdown_grace: Duration,
}

impl ForwarderConfig {
    /// The defaults, named `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Checks the numbers; a forwarder refuses to run with a bad config.
    pub fn validate(&self) -> Result<(), InvalidForwarderConfig> {
        if self.name.is_empty() {
            return Err(InvalidForwarderConfig("name must not be empty".to_owned()));
        }
        if self.batch_size == 0 || self.batch_size > ferry_store::event_store::MAX_PAGE {
            return Err(InvalidForwarderConfig(format!(
                "batch_size must be between 1 and {}, got {}",
                ferry_store::event_store::MAX_PAGE,
                self.batch_size
            )));
        }
        if self.poll_interval < Duration::from_millis(1) {
            return Err(InvalidForwarderConfig(
                "poll_interval must be at least 1ms".to_owned(),
            ));
        }
        if self.backoff.initial < Duration::from_millis(1)
            || self.backoff.initial > self.backoff.max
        {
            return Err(InvalidForwarderConfig(
                "backoff: initial must be at least 1ms and at most max".to_owned(),
            ));
        }
        self.retry
            .validate()
            .map_err(|e| InvalidForwarderConfig(format!("retry: {e}")))
    }
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        Self {
            name: "forwarder".to_owned(),
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
            retry: RetryPolicy::default(),
            on_failure: OnFailure::Stop,
            backoff: SinkBackoff::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A forwarder configuration whose values make no sense; the message says
/// which.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid forwarder configuration: {0}")]
pub struct InvalidForwarderConfig(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        assert!(ForwarderConfig::default().validate().is_ok());
        for (config, says) in [
            (
                ForwarderConfig {
                    batch_size: 0,
                    ..Default::default()
                },
                "batch_size",
            ),
            (
                ForwarderConfig {
                    batch_size: 10_001,
                    ..Default::default()
                },
                "batch_size",
            ),
            (ForwarderConfig::named(""), "name"),
            (
                ForwarderConfig {
                    poll_interval: Duration::ZERO,
                    ..Default::default()
                },
                "poll_interval",
            ),
            (
                ForwarderConfig {
                    retry: RetryPolicy {
                        max_attempts: 0,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "max_attempts",
            ),
        ] {
            let e = config.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        assert_eq!("skip".parse::<OnFailure>(), Ok(OnFailure::Skip));
        assert!("later"
            .parse::<OnFailure>()
            .unwrap_err()
            .contains("`later`"));
    }
}
