//! Configuration of the RabbitMQ sink and subscriber.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use url::Url;

/// The CloudEvents `source` attribute when none is configured, as for
/// Ferry's other sinks.
pub const DEFAULT_SOURCE: &str = "/ferry";

/// Where and how [`AmqpSink`](crate::AmqpSink) publishes and
/// [`AmqpSubscriber`](crate::AmqpSubscriber) consumes.
///
/// ```toml
/// type = "amqp"
/// url = "amqp://guest:guest@127.0.0.1:5672/%2f"
/// exchange = "ferry"
/// timeout = "5s"
/// queue_type = "quorum"
/// ```
///
/// On the command line the same settings go in the URL's query, see
/// [`AmqpConfig::from_url`].
#[derive(Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// The server, `amqp://user:password@host:port/vhost` (or `amqps://…`
    /// for TLS). The virtual host is percent-encoded: `%2f` is the default
    /// vhost `/`. Credentials are percent-encoded too.
    pub url: Url,
    /// The exchange messages are published to, with the topic as routing
    /// key. The sink and the subscriber declare it as a durable topic
    /// exchange when it is missing; an existing exchange of another type is
    /// an error. Defaults to `ferry`.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// How long to wait for the server: to connect, to declare exchanges
    /// and queues, and for the publisher confirms of one batch, e.g.
    /// `"5s"`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The CloudEvents `source` attribute, sent as the `ce-source` header.
    /// Defaults to `/ferry`.
    #[serde(default = "default_source")]
    pub source: String,
    /// The type of the queues the subscriber declares for its groups:
    /// `quorum` (the default: replicated, and it counts deliveries, which
    /// gives [`Received::delivery_count`](ferry_core::Received)) or
    /// `classic`. A queue that already exists keeps its type; declaring it
    /// with another type is an error.
    #[serde(default)]
    pub queue_type: QueueType,
}

/// The kind of queue a consumer group gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// A quorum queue: durable, replicated, with a delivery count.
    #[default]
    Quorum,
    /// A classic durable queue.
    Classic,
}

impl QueueType {
    /// The `x-queue-type` argument's value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

fn default_exchange() -> String {
    "ferry".to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_source() -> String {
    DEFAULT_SOURCE.to_owned()
}

impl AmqpConfig {
    /// The defaults, with the server at `url`.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            exchange: default_exchange(),
            timeout: default_timeout(),
            source: default_source(),
            queue_type: QueueType::default(),
        }
    }

    /// Reads a URL such as
    /// `amqp://guest:guest@127.0.0.1:5672/%2f?exchange=ferry&timeout=5s`:
    /// the query may set `exchange`, `timeout`, `source` and `queue_type`
    /// (see the fields); the rest is the server's URL. The result is
    /// validated.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let mut url = Url::parse(url).map_err(ConfigError::Url)?;
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        url.set_query(None);
        let mut config = Self::new(url);
        let mut seen = HashSet::new();
        for (name, value) in query {
            if !seen.insert(name.clone()) {
                return Err(ConfigError::RepeatedParameter(name));
            }
            match name.as_str() {
                "exchange" => config.exchange = value,
                "timeout" => {
                    config.timeout = humantime::parse_duration(&value).map_err(|e| {
                        ConfigError::invalid(
                            "timeout",
                            format!("`{value}` is not a duration such as `5s`"),
                        )
                        .with_source(e)
                    })?;
                }
                "source" => config.source = value,
                "queue_type" => {
                    config.queue_type = match value.as_str() {
                        "quorum" => QueueType::Quorum,
                        "classic" => QueueType::Classic,
                        _ => {
                            return Err(ConfigError::invalid(
                                "queue_type",
                                format!("`{value}` is neither `quorum` nor `classic`"),
                            ))
                        }
                    }
                }
                _ => return Err(ConfigError::UnknownParameter(name)),
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings; [`AmqpSink::connect`](crate::AmqpSink::connect)
    /// and [`AmqpSubscriber::connect`](crate::AmqpSubscriber::connect) call
    /// it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.url.scheme(), "amqp" | "amqps") {
            return Err(ConfigError::invalid(
                "url",
                "the scheme must be amqp or amqps",
            ));
        }
        if self.url.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::invalid("url", "a host is required"));
        }
        if self.url.query().is_some() || self.url.fragment().is_some() {
            return Err(ConfigError::invalid(
                "url",
                "must not have a query or fragment",
            ));
        }
        if let Err(e) = self.url.as_str().parse::<lapin::uri::AMQPUri>() {
            return Err(ConfigError::invalid("url", format!("not an amqp uri: {e}")));
        }
        // The default exchange (empty name) routes by queue name, not topic,
        // and `amq.` names are reserved by the server.
        if self.exchange.is_empty()
            || self.exchange.starts_with("amq.")
            || self.exchange.len() > 255
        {
            return Err(ConfigError::invalid(
                "exchange",
                "must be a name of 1 to 255 bytes not starting with `amq.`",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::invalid("timeout", "must be more than zero"));
        }
        if self.source.is_empty() {
            return Err(ConfigError::invalid("source", "must not be empty"));
        }
        Ok(())
    }

    /// The longest one call of [`Sink::deliver`](ferry_core::Sink::deliver)
    /// can take: one [`AmqpConfig::timeout`], which bounds reconnecting,
    /// publishing the batch and waiting for its confirms together. The
    /// relay's batch budget must exceed it.
    pub fn longest_call(&self) -> Duration {
        self.timeout
    }

    /// The server URL for logs ([`ferry_core::redact_url`]).
    pub(crate) fn redacted_url(&self) -> String {
        ferry_core::redact_url(self.url.as_str())
    }
}

/// The URL's password stays out of logs.
impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.redacted_url())
            .field("exchange", &self.exchange)
            .field("timeout", &self.timeout)
            .field("source", &self.source)
            .field("queue_type", &self.queue_type)
            .finish()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The settings are wrong; fixing them, not retrying, helps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL does not parse.
    #[error("invalid amqp url")]
    Url(#[source] url::ParseError),
    /// The URL has a query parameter that is not a setting.
    #[error("unknown parameter `{0}` in amqp url")]
    UnknownParameter(String),
    /// The URL gives a query parameter more than once.
    #[error("parameter `{0}` given more than once in amqp url")]
    RepeatedParameter(String),
    /// A setting has a value that cannot be used.
    #[error("invalid `{field}` for amqp: {reason}")]
    Invalid {
        /// The setting, e.g. `exchange`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

impl ConfigError {
    fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field,
            reason: reason.into(),
            source: None,
        }
    }

    fn with_source(self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        match self {
            ConfigError::Invalid { field, reason, .. } => ConfigError::Invalid {
                field,
                reason,
                source: Some(Box::new(e)),
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_url_splits_settings_from_the_server() {
        let config = AmqpConfig::from_url(
            "amqp://guest:s%40cret@127.0.0.1:5672/%2f?exchange=orders&timeout=2s&source=/shop&queue_type=classic",
        )
        .unwrap();
        assert_eq!(
            config.url.as_str(),
            "amqp://guest:s%40cret@127.0.0.1:5672/%2f"
        );
        assert_eq!(config.exchange, "orders");
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert_eq!(config.source, "/shop");
        assert_eq!(config.queue_type, QueueType::Classic);
        assert_eq!(config.longest_call(), Duration::from_secs(2));
        let debug = format!("{config:?}");
        assert!(!debug.contains("s%40cret"), "{debug}");
        assert!(debug.contains("***"), "{debug}");

        let config = AmqpConfig::from_url("amqp://127.0.0.1").unwrap();
        assert_eq!(config, AmqpConfig::new("amqp://127.0.0.1".parse().unwrap()));
        assert_eq!(config.exchange, "ferry");
        assert_eq!(config.queue_type, QueueType::Quorum);
    }

    #[test]
    fn from_url_names_what_is_wrong() {
        let err = |url: &str| AmqpConfig::from_url(url).unwrap_err().to_string();
        assert!(err("amqp://h?bogus=1").contains("`bogus`"));
        assert!(err("amqp://h?exchange=a&exchange=b").contains("more than once"));
        assert!(err("amqp://h?timeout=soon").contains("`timeout`"));
        assert!(err("amqp://h?timeout=0s").contains("`timeout`"));
        assert!(err("amqp://h?queue_type=stream").contains("`queue_type`"));
        assert!(err("amqp://h?exchange=amq.topic").contains("`exchange`"));
        assert!(err("amqp://h?exchange=").contains("`exchange`"));
        assert!(err("amqp://h?source=").contains("`source`"));
        assert!(err("http://h").contains("scheme"));
        assert!(err("amqp://h#x").contains("fragment"));
    }

    #[test]
    fn deserializes_with_defaults_and_rejects_unknown_fields() {
        #[derive(serde::Deserialize)]
        struct Wrapper {
            amqp: AmqpConfig,
        }
        let parsed: Wrapper =
            serde_json::from_str(r#"{"amqp":{"url":"amqp://h","timeout":"3s"}}"#).unwrap();
        assert_eq!(parsed.amqp.timeout, Duration::from_secs(3));
        assert_eq!(parsed.amqp.exchange, "ferry");
        parsed.amqp.validate().unwrap();
        assert!(
            serde_json::from_str::<Wrapper>(r#"{"amqp":{"url":"amqp://h","bogus":1}}"#).is_err()
        );
    }
}
