//! Configuration of the NATS JetStream sink.

use std::fmt;
use std::time::Duration;

use url::Url;

use crate::SinkConfigError;

/// Where and how [`NatsSink`](super::NatsSink) publishes messages.
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
    #[serde(default = "crate::config::default_source")]
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

impl NatsSinkConfig {
    /// The defaults, with the server at `url`.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            subject_prefix: String::new(),
            stream: None,
            stream_subjects: Vec::new(),
            ack_timeout: default_ack_timeout(),
            source: crate::config::default_source(),
            ack_wait: default_ack_wait(),
        }
    }

    /// Checks the settings; [`NatsSink::connect`](super::NatsSink::connect)
    /// calls it.
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        let invalid = |field, reason: &str| SinkConfigError::Invalid {
            sink: "nats",
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
        crate::config::check_source("nats", &self.source)?;
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

    /// The subjects of the stream the sink creates.
    pub(super) fn subjects(&self) -> Vec<String> {
        if self.stream_subjects.is_empty() {
            vec![format!("{}>", self.subject_prefix)]
        } else {
            self.stream_subjects.clone()
        }
    }
}

/// The URL's credentials stay out of logs.
impl fmt::Debug for NatsSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSinkConfig")
            .field("url", &crate::config::redacted(&self.url))
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
pub(super) fn is_subject(subject: &str) -> bool {
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
