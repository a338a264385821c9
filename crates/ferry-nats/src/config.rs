//! Configuration of the NATS JetStream sink.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use async_nats::ConnectOptions;
use url::Url;

/// The default CloudEvents `source` attribute (`ce-source`).
pub const DEFAULT_SOURCE: &str = "/ferry";

/// Where and how [`NatsSink`](crate::NatsSink) publishes messages, and
/// where [`NatsSubscriber`](crate::NatsSubscriber) consumes them.
///
/// ```toml
/// type = "nats"
/// url = "nats://127.0.0.1:4222"
/// subject_prefix = "ferry."
/// stream = "FERRY"
/// ack_timeout = "5s"
/// ```
#[derive(Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// The server, `nats://host:port` (or `tls://host:port`). Credentials
    /// may be given as `nats://user:password@host:port` or
    /// `nats://token@host:port`, percent-encoded.
    pub url: Url,
    /// Put before a message's topic to make its subject: with `ferry.`, a
    /// message on `order.placed` goes to `ferry.order.placed`. Empty by
    /// default; otherwise it must end with `.`.
    #[serde(default)]
    pub subject_prefix: String,
    /// A JetStream stream that must exist. When set, the sink creates it at
    /// start-up if it is missing (with `stream_subjects`, file storage and
    /// the server's defaults otherwise) and leaves an existing one as it is.
    /// When NATS cannot be reached at start-up, this is tried again before
    /// the first delivery. Unset by default: some stream must then already
    /// capture the subjects.
    ///
    /// The stream's duplicate window (two minutes unless configured)
    /// decides how long a redelivered message is recognised by its
    /// `Nats-Msg-Id` and dropped.
    #[serde(default)]
    pub stream: Option<String>,
    /// The subjects of `stream` when the sink creates it. Defaults to
    /// `["<subject_prefix>>"]`, all subjects under the prefix; required when
    /// `stream` is set and `subject_prefix` is empty.
    #[serde(default)]
    pub stream_subjects: Vec<String>,
    /// How long to wait for the server to acknowledge a publish, and for
    /// any other JetStream request, e.g. `"5s"`.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// The CloudEvents `source` attribute, sent as the `ce-source` header.
    #[serde(default = "default_source")]
    pub source: String,
    /// Subscriber only: how long a delivered message may stay
    /// unacknowledged before JetStream delivers it again (the durable
    /// consumer's `ack_wait`), e.g. `"30s"`. A handler that runs longer than
    /// this sees its message redelivered meanwhile.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_source() -> String {
    DEFAULT_SOURCE.to_owned()
}

impl NatsSinkConfig {
    /// The defaults, with the server at `url`.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            subject_prefix: String::new(),
            stream: None,
            stream_subjects: Vec::new(),
            ack_timeout: default_ack_timeout(),
            source: default_source(),
            ack_wait: default_ack_wait(),
        }
    }

    /// Reads a URL such as
    /// `nats://host:port?subject_prefix=ferry.&stream=FERRY`: the query
    /// holds the settings (`subject_prefix`, `stream`, `stream_subjects`
    /// comma-separated, `ack_timeout` and `ack_wait` as durations such as
    /// `5s`, `source`), the rest is the server's address. The result is not
    /// validated yet: call [`NatsSinkConfig::validate`].
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let mut url = Url::parse(url).map_err(ConfigError::Url)?;
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        url.set_query(None);
        url.set_fragment(None);
        let mut config = NatsSinkConfig::new(url);
        let mut seen = HashSet::new();
        let duration = |field, value: &str, example| {
            humantime::parse_duration(value).map_err(|e| ConfigError::Invalid {
                field,
                reason: format!("`{value}` is not a duration such as `{example}`"),
                source: Some(Box::new(e)),
            })
        };
        for (name, value) in query {
            if !seen.insert(name.clone()) {
                return Err(ConfigError::RepeatedParameter(name));
            }
            match name.as_str() {
                "subject_prefix" => config.subject_prefix = value,
                "stream" => config.stream = Some(value),
                "stream_subjects" => {
                    config.stream_subjects = value.split(',').map(str::to_owned).collect();
                }
                "ack_timeout" => config.ack_timeout = duration("ack_timeout", &value, "5s")?,
                "ack_wait" => config.ack_wait = duration("ack_wait", &value, "30s")?,
                "source" => config.source = value,
                _ => return Err(ConfigError::UnknownParameter(name)),
            }
        }
        Ok(config)
    }

    /// Checks the settings; [`NatsSink::connect`](crate::NatsSink::connect)
    /// and [`NatsSubscriber::connect`](crate::NatsSubscriber::connect) call
    /// it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
            source: None,
        };
        if !matches!(self.url.scheme(), "nats" | "tls") {
            return Err(invalid("url", "the scheme must be nats or tls"));
        }
        if self.url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("url", "a host is required"));
        }
        if self.url.query().is_some() || self.url.fragment().is_some() {
            return Err(invalid("url", "must not have a query or fragment"));
        }
        let prefix_ok = self.subject_prefix.is_empty()
            || self
                .subject_prefix
                .strip_suffix('.')
                .is_some_and(is_subject);
        if !prefix_ok {
            return Err(invalid(
                "subject_prefix",
                "must be subject tokens followed by `.`, such as `ferry.`",
            ));
        }
        if self.ack_timeout.is_zero() {
            return Err(invalid("ack_timeout", "must be more than zero"));
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err(invalid("ack_wait", "must be at least one second"));
        }
        if self.source.is_empty() {
            return Err(invalid("source", "must not be empty"));
        }
        if let Some(stream) = &self.stream {
            if !is_stream_name(stream) {
                return Err(invalid(
                    "stream",
                    "must be non-empty, without whitespace, `.`, `*`, `>`, `/` or `\\`",
                ));
            }
            if self.stream_subjects.is_empty() && self.subject_prefix.is_empty() {
                return Err(invalid(
                    "stream_subjects",
                    "required when `stream` is set and `subject_prefix` is empty",
                ));
            }
        }
        if !self.stream_subjects.iter().all(|s| is_subject_filter(s)) {
            return Err(invalid(
                "stream_subjects",
                "each must be a subject, wildcards allowed",
            ));
        }
        Ok(())
    }

    /// The longest one call of [`Sink::deliver`](ferry_core::Sink::deliver)
    /// can take: one `ack_timeout` (the batch is published at once and its
    /// acknowledgements awaited together). The relay's batch budget must
    /// exceed it.
    pub fn longest_call(&self) -> Duration {
        self.ack_timeout
    }

    /// The subjects of the stream the sink creates.
    pub(crate) fn subjects(&self) -> Vec<String> {
        if self.stream_subjects.is_empty() {
            vec![format!("{}>", self.subject_prefix)]
        } else {
            self.stream_subjects.clone()
        }
    }

    /// The server's address without credentials, and the options that
    /// carry them instead (async-nats does not read them from the URL).
    pub(crate) fn server_and_credentials(&self) -> (Url, ConnectOptions) {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let options = match (self.url.username(), self.url.password()) {
            ("", None) => ConnectOptions::new(),
            (user, Some(password)) => {
                ConnectOptions::with_user_and_password(decode(user), decode(password))
            }
            (token, None) => ConnectOptions::with_token(decode(token)),
        };
        let mut server = self.url.clone();
        let _ = server.set_username("");
        let _ = server.set_password(None);
        (server, options)
    }
}

/// The URL's credentials stay out of logs.
impl fmt::Debug for NatsSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSinkConfig")
            .field("url", &redacted(&self.url))
            .field("subject_prefix", &self.subject_prefix)
            .field("stream", &self.stream)
            .field("stream_subjects", &self.stream_subjects)
            .field("ack_timeout", &self.ack_timeout)
            .field("source", &self.source)
            .finish()
    }
}

/// A literal subject one can publish to: dot-separated non-empty tokens,
/// no whitespace or control characters, no wildcards.
pub(crate) fn is_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject
            .split('.')
            .all(|token| is_token(token) && token != "*" && token != ">")
}

/// A subject that may contain `*` tokens and a final `>` token.
fn is_subject_filter(subject: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    tokens
        .iter()
        .enumerate()
        .all(|(i, token)| is_token(token) && (*token != ">" || i == last))
}

fn is_token(token: &str) -> bool {
    !token.is_empty() && !token.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn is_stream_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c))
}

/// `url` for debug output and logs, by [`ferry_core::redact_url`] (a user
/// name without a password, a NATS token, is masked too).
fn redacted(url: &Url) -> String {
    ferry_core::redact_url(url.as_str())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The NATS settings are wrong; fixing them, not retrying, helps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL does not parse.
    #[error("invalid nats url")]
    Url(#[source] url::ParseError),
    /// The URL has a query parameter that is not a setting.
    #[error("unknown parameter `{0}` in nats sink url")]
    UnknownParameter(String),
    /// The URL gives a query parameter more than once.
    #[error("parameter `{0}` given more than once in nats sink url")]
    RepeatedParameter(String),
    /// A setting has a value that cannot be used.
    #[error("invalid `{field}` for nats sink: {reason}")]
    Invalid {
        /// The setting, e.g. `subject_prefix`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert!(is_subject("a"));
        assert!(is_subject("order.placed"));
        assert!(is_subject("a-b_c.dé"));
        for bad in ["", ".a", "a.", "a..b", "a b", "a\r\nb", "a.*", "a.>", "*"] {
            assert!(!is_subject(bad), "{bad:?}");
        }
        assert!(is_subject_filter("ferry.>"));
        assert!(is_subject_filter("a.*.c"));
        assert!(!is_subject_filter("a.>.c"));
        assert!(!is_subject_filter("a..c"));
    }

    #[test]
    fn debug_output_hides_credentials() {
        for url in ["nats://s3cret@h:4222", "nats://user:s3cret@h:4222"] {
            let config = NatsSinkConfig::new(url.parse().unwrap());
            let debug = format!("{config:?}");
            assert!(
                !debug.contains("s3cret") && debug.contains("***"),
                "{debug}"
            );
        }
    }

    #[test]
    fn stream_subjects_default_to_the_prefix() {
        let mut config = NatsSinkConfig::new("nats://localhost:4222".parse().unwrap());
        config.subject_prefix = "ferry.".into();
        config.stream = Some("FERRY".into());
        config.validate().unwrap();
        assert_eq!(config.subjects(), ["ferry.>"]);

        config.subject_prefix.clear();
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("stream_subjects"), "{err}");
        config.stream_subjects = vec!["a.>".into(), "b.*".into()];
        config.validate().unwrap();
        assert_eq!(config.subjects(), ["a.>", "b.*"]);

        config.subject_prefix = "ferry".into();
        assert!(config.validate().is_err());
    }
}
