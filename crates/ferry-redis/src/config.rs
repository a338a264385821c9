//! Configuration of the Redis Streams sink and subscriber.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use url::Url;

/// The CloudEvents `source` attribute when none is configured, as for
/// Ferry's other sinks.
pub const DEFAULT_SOURCE: &str = "/ferry";

/// Where and how [`RedisSink`](crate::RedisSink) appends and
/// [`RedisSubscriber`](crate::RedisSubscriber) reads.
///
/// ```toml
/// type = "redis"
/// url = "redis://127.0.0.1:6379/0"
/// stream_prefix = "ferry."
/// claim_idle = "30s"
/// maxlen = 1000000
/// ```
///
/// On the command line the same settings go in the URL's query, see
/// [`RedisConfig::from_url`].
#[derive(Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The server, `redis://[user:password@]host:port/db` (or `rediss://`
    /// for TLS), percent-encoded.
    pub url: Url,
    /// Put before a message's topic to make its stream's key: with
    /// `ferry.`, a message on `order.placed` is appended to the stream
    /// `ferry.order.placed`. Defaults to `ferry.`.
    #[serde(default = "default_prefix")]
    pub stream_prefix: String,
    /// How long an entry may stay delivered and unacknowledged with one
    /// consumer (which may have crashed) before another consumer of the
    /// group reclaims it, e.g. `"30s"`. Consumers look for such entries every
    /// half of this.
    #[serde(default = "default_claim_idle", with = "humantime_serde")]
    pub claim_idle: Duration,
    /// When set, the sink trims each stream it appends to to about this
    /// many entries (`XADD … MAXLEN ~ n`). Trimming drops the oldest
    /// entries whether or not every group has read them: set it well above
    /// the largest backlog a group may have, or leave it unset (the
    /// default) and trim otherwise.
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// How long to wait for the server to connect or to answer a command,
    /// e.g. `"5s"`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The CloudEvents `source` attribute, stored as the header
    /// `ce-source`. Defaults to `/ferry`.
    #[serde(default = "default_source")]
    pub source: String,
    /// When true, the sink writes each header as a field of its own,
    /// `h:<name>`, as Ferry did before the `headers` field (see the
    /// [entry format](crate#entry-format)): for readers that know only that
    /// layout, such as Ferry subscribers older than the `headers` field
    /// during a rolling upgrade. It costs Redis and the readers more per
    /// entry. The subscriber reads both layouts whatever this says.
    /// Defaults to false.
    #[serde(default)]
    pub header_fields: bool,
}

fn default_prefix() -> String {
    "ferry.".to_owned()
}

fn default_claim_idle() -> Duration {
    Duration::from_secs(30)
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_source() -> String {
    DEFAULT_SOURCE.to_owned()
}

impl RedisConfig {
    /// The defaults, with the server at `url`.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            stream_prefix: default_prefix(),
            claim_idle: default_claim_idle(),
            maxlen: None,
            timeout: default_timeout(),
            source: default_source(),
            header_fields: false,
        }
    }

    /// Reads a URL such as
    /// `redis://127.0.0.1:6379/0?stream_prefix=ferry.&claim_idle=30s&maxlen=100000`:
    /// the query may set `stream_prefix`, `claim_idle`, `maxlen`, `timeout`,
    /// `source` and `header_fields` (`true` or `false`; see the fields); the
    /// rest is the server's URL. The result is validated.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let mut url = Url::parse(url).map_err(ConfigError::Url)?;
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        url.set_query(None);
        let mut config = Self::new(url);
        let mut seen = HashSet::new();
        let duration = |field: &'static str, value: &str| {
            humantime::parse_duration(value).map_err(|e| ConfigError::Invalid {
                field,
                reason: format!("`{value}` is not a duration such as `30s`"),
                source: Some(Box::new(e)),
            })
        };
        for (name, value) in query {
            if !seen.insert(name.clone()) {
                return Err(ConfigError::RepeatedParameter(name));
            }
            match name.as_str() {
                "stream_prefix" => config.stream_prefix = value,
                "claim_idle" => config.claim_idle = duration("claim_idle", &value)?,
                "timeout" => config.timeout = duration("timeout", &value)?,
                "maxlen" => {
                    config.maxlen = Some(value.parse().map_err(|e| ConfigError::Invalid {
                        field: "maxlen",
                        reason: format!("`{value}` is not a whole number"),
                        source: Some(Box::new(e)),
                    })?);
                }
                "source" => config.source = value,
                "header_fields" => {
                    config.header_fields = value.parse().map_err(|e| ConfigError::Invalid {
                        field: "header_fields",
                        reason: format!("`{value}` is not `true` or `false`"),
                        source: Some(Box::new(e)),
                    })?;
                }
                _ => return Err(ConfigError::UnknownParameter(name)),
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings; [`RedisSink::connect`](crate::RedisSink::connect)
    /// and [`RedisSubscriber::connect`](crate::RedisSubscriber::connect)
    /// call it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
            source: None,
        };
        if !matches!(self.url.scheme(), "redis" | "rediss") {
            return Err(invalid("url", "the scheme must be redis or rediss"));
        }
        if self.url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("url", "a host is required"));
        }
        if self.url.query().is_some() || self.url.fragment().is_some() {
            return Err(invalid("url", "must not have a query or fragment"));
        }
        if let Err(e) = redis::Client::open(self.url.as_str()) {
            return Err(ConfigError::Invalid {
                field: "url",
                reason: "not a redis url".to_owned(),
                source: Some(Box::new(e)),
            });
        }
        if self.claim_idle < Duration::from_millis(100) {
            return Err(invalid("claim_idle", "must be at least 100ms"));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be more than zero"));
        }
        if self.maxlen == Some(0) {
            return Err(invalid("maxlen", "must be more than zero"));
        }
        if self.source.is_empty() {
            return Err(invalid("source", "must not be empty"));
        }
        Ok(())
    }

    /// The longest one call of [`Sink::deliver`](ferry_core::Sink::deliver)
    /// can take: one [`RedisConfig::timeout`] (the batch is sent as one
    /// pipeline). The relay's batch budget must exceed it.
    pub fn longest_call(&self) -> Duration {
        self.timeout
    }

    /// The stream of `topic`.
    pub fn stream_key(&self, topic: &str) -> String {
        format!("{}{topic}", self.stream_prefix)
    }

    /// The server URL for logs ([`ferry_core::redact_url`]).
    pub(crate) fn redacted_url(&self) -> String {
        ferry_core::redact_url(self.url.as_str())
    }
}

/// The URL's credentials stay out of logs.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("stream_prefix", &self.stream_prefix)
            .field("claim_idle", &self.claim_idle)
            .field("maxlen", &self.maxlen)
            .field("timeout", &self.timeout)
            .field("source", &self.source)
            .field("header_fields", &self.header_fields)
            .finish()
    }
}

/// The settings are wrong; fixing them, not retrying, helps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL does not parse.
    #[error("invalid redis url")]
    Url(#[source] url::ParseError),
    /// The URL has a query parameter that is not a setting.
    #[error("unknown parameter `{0}` in redis url")]
    UnknownParameter(String),
    /// The URL gives a query parameter more than once.
    #[error("parameter `{0}` given more than once in redis url")]
    RepeatedParameter(String),
    /// A setting has a value that cannot be used.
    #[error("invalid `{field}` for redis: {reason}")]
    Invalid {
        /// The setting, e.g. `claim_idle`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_url_splits_settings_from_the_server() {
        let config = RedisConfig::from_url(
            "redis://:s3cret@127.0.0.1:6379/2?stream_prefix=app.&claim_idle=10s&maxlen=5000&timeout=1s&source=/shop&header_fields=true",
        )
        .unwrap();
        assert_eq!(config.url.as_str(), "redis://:s3cret@127.0.0.1:6379/2");
        assert_eq!(config.stream_key("a.b"), "app.a.b");
        assert_eq!(config.claim_idle, Duration::from_secs(10));
        assert_eq!(config.maxlen, Some(5000));
        assert_eq!(config.longest_call(), Duration::from_secs(1));
        assert_eq!(config.source, "/shop");
        assert!(config.header_fields);
        assert!(!format!("{config:?}").contains("s3cret"));
        let config = RedisConfig::from_url("redis://127.0.0.1").unwrap();
        assert_eq!(
            config,
            RedisConfig::new("redis://127.0.0.1".parse().unwrap())
        );
        assert_eq!(config.stream_key("t"), "ferry.t");
    }

    #[test]
    fn from_url_names_what_is_wrong() {
        let err = |url: &str| RedisConfig::from_url(url).unwrap_err().to_string();
        assert!(err("redis://h?bogus=1").contains("`bogus`"));
        assert!(err("redis://h?maxlen=1&maxlen=2").contains("more than once"));
        assert!(err("redis://h?maxlen=lots").contains("`maxlen`"));
        assert!(err("redis://h?maxlen=0").contains("`maxlen`"));
        assert!(err("redis://h?claim_idle=1ms").contains("`claim_idle`"));
        assert!(err("redis://h?timeout=0s").contains("`timeout`"));
        assert!(err("redis://h?source=").contains("`source`"));
        assert!(err("redis://h?header_fields=yes").contains("`header_fields`"));
        assert!(err("nats://h").contains("scheme"));
    }

    #[test]
    fn deserializes_with_defaults_and_rejects_unknown_fields() {
        let config: RedisConfig =
            serde_json::from_str(r#"{"url":"redis://h","maxlen":10,"claim_idle":"2s"}"#).unwrap();
        assert_eq!(config.maxlen, Some(10));
        assert_eq!(config.claim_idle, Duration::from_secs(2));
        assert_eq!(config.stream_prefix, "ferry.");
        assert!(!config.header_fields);
        assert!(serde_json::from_str::<RedisConfig>(r#"{"url":"redis://h","bogus":1}"#).is_err());
    }
}
