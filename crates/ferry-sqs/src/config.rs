//! Configuration of the SQS sink and subscriber.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use url::Url;

use crate::queue::{is_queue_name, MAX_QUEUE_NAME};

/// Where and how [`SqsSink`](crate::SqsSink) sends and
/// [`SqsSubscriber`](crate::SqsSubscriber) receives.
///
/// ```toml
/// type = "sqs"
/// region = "eu-west-1"
/// queue_prefix = "ferry-"
/// fifo = true
/// dead_letter_queue = "ferry-dead"
/// max_receive_count = 5
/// visibility_timeout = "30s"
/// ```
#[derive(Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    /// The SQS endpoint, e.g. `http://127.0.0.1:19325` for a local server.
    /// Unset (the default), AWS's endpoint for `region`.
    #[serde(default)]
    pub endpoint: Option<Url>,
    /// The AWS region, e.g. `eu-west-1`. Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// The access key id. Unset, the `AWS_ACCESS_KEY_ID` environment
    /// variable's (with `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`);
    /// instance roles and profiles are not read.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret access key, with `access_key_id`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Put before a message's topic to make its queue's name: with
    /// `ferry-`, a message on `order.placed` goes to the queue
    /// `ferry-order_placed`. Characters SQS does not allow in a queue name
    /// (anything but ASCII letters, digits, `_` and `-`) become `_`, so
    /// topics that differ only there share a queue; FIFO queues get their
    /// `.fifo` suffix. The whole name must fit in 80 characters.
    #[serde(default)]
    pub queue_prefix: String,
    /// FIFO queues: messages of one key are received in order, one key's
    /// messages after another's acknowledgement, and a message sent twice
    /// with the same id within five minutes is received once. Standard
    /// queues (the default) do neither, and scale further.
    #[serde(default)]
    pub fifo: bool,
    /// Whether the sink and the subscriber create a missing queue (and the
    /// dead-letter queue). On by default; when off, queues must exist.
    #[serde(default = "yes")]
    pub create_queues: bool,
    /// The dead-letter queue of the queues Ferry creates, by its full name
    /// (`queue_prefix` is not applied; `.fifo` is, for FIFO queues). A
    /// message received `max_receive_count` times without being
    /// acknowledged moves there. Unset by default: no dead-letter queue.
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
    /// How many receives a message gets before it moves to
    /// `dead_letter_queue`. Default 5.
    #[serde(default = "default_max_receive_count")]
    pub max_receive_count: u32,
    /// How long a received message stays hidden from other consumers before
    /// it is delivered again, unless acknowledged (deleted) first; whole
    /// seconds, at most 12 hours. Set on the queues Ferry creates and on
    /// every receive. Default 30 s.
    #[serde(default = "default_visibility_timeout", with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// How long a receive waits for messages (long polling), at most 20 s.
    /// Default 20 s.
    #[serde(default = "default_wait_time", with = "humantime_serde")]
    pub wait_time: Duration,
    /// The limit of one request to SQS, retries included (a receive gets
    /// `wait_time` on top). Default 10 s.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The CloudEvents `source` attribute, sent as the `ce-source` message
    /// attribute.
    #[serde(default = "default_source")]
    pub source: String,
}

fn yes() -> bool {
    true
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn default_max_receive_count() -> u32 {
    5
}

fn default_visibility_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_wait_time() -> Duration {
    Duration::from_secs(20)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_source() -> String {
    crate::DEFAULT_SOURCE.to_owned()
}

/// The most sequential requests one `deliver` call makes: look up or create
/// the dead-letter queue, read its ARN, create the queue, send.
const REQUESTS_PER_CALL: u32 = 4;

impl Default for SqsConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: default_region(),
            access_key_id: None,
            secret_access_key: None,
            queue_prefix: String::new(),
            fifo: false,
            create_queues: true,
            dead_letter_queue: None,
            max_receive_count: default_max_receive_count(),
            visibility_timeout: default_visibility_timeout(),
            wait_time: default_wait_time(),
            request_timeout: default_request_timeout(),
            source: default_source(),
        }
    }
}

impl SqsConfig {
    /// Reads a URL:
    ///
    /// * `sqs://?region=eu-west-1&...`: AWS's endpoint for the region.
    /// * `sqs://host[:port]?...`: another endpoint, over HTTPS.
    /// * `sqs+http://host:port?...`: another endpoint over plain HTTP, such
    ///   as a local test server.
    ///
    /// Credentials may be given as `user:password@` (access key id and
    /// secret, percent-encoded). The query may set `region`,
    /// `queue_prefix`, `fifo` and `create_queues` (`true`/`false`),
    /// `dead_letter_queue`, `max_receive_count`, `visibility_timeout`,
    /// `wait_time` and `request_timeout` (e.g. `30s`) and `source`. The
    /// result is validated.
    pub fn from_url(url: &str) -> Result<Self, SqsConfigError> {
        let url = Url::parse(url).map_err(SqsConfigError::Url)?;
        let scheme = match url.scheme() {
            "sqs" => "https",
            "sqs+http" => "http",
            _ => return Err(SqsConfigError::Scheme),
        };
        if !matches!(url.path(), "" | "/") || url.fragment().is_some() {
            return Err(invalid("url", "must not have a path or fragment"));
        }
        let mut config = SqsConfig::default();
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        if !url.username().is_empty() {
            config.access_key_id = Some(decode(url.username()));
            config.secret_access_key = url.password().map(decode);
        }
        match url.host_str().filter(|h| !h.is_empty()) {
            Some(host) => {
                let mut endpoint = format!("{scheme}://{host}");
                if let Some(port) = url.port() {
                    endpoint.push_str(&format!(":{port}"));
                }
                config.endpoint = Some(
                    Url::parse(&endpoint)
                        .map_err(|_| invalid("url", "the host does not make an endpoint"))?,
                );
            }
            None if scheme == "http" => {
                return Err(invalid("url", "sqs+http:// needs a host"));
            }
            None => {}
        }
        let mut seen = HashSet::new();
        for (name, value) in url.query_pairs() {
            let (name, value) = (name.into_owned(), value.into_owned());
            if !seen.insert(name.clone()) {
                return Err(SqsConfigError::RepeatedParameter(name));
            }
            match name.as_str() {
                "region" => config.region = value,
                "queue_prefix" => config.queue_prefix = value,
                "fifo" => config.fifo = boolean("fifo", &value)?,
                "create_queues" => config.create_queues = boolean("create_queues", &value)?,
                "dead_letter_queue" => config.dead_letter_queue = Some(value),
                "max_receive_count" => {
                    config.max_receive_count = value
                        .parse()
                        .map_err(|_| invalid("max_receive_count", "must be a number"))?;
                }
                "visibility_timeout" => {
                    config.visibility_timeout = duration("visibility_timeout", &value)?;
                }
                "wait_time" => config.wait_time = duration("wait_time", &value)?,
                "request_timeout" => config.request_timeout = duration("request_timeout", &value)?,
                "source" => config.source = value,
                _ => return Err(SqsConfigError::UnknownParameter(name)),
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings; [`SqsSink::connect`](crate::SqsSink::connect)
    /// and [`SqsSubscriber::connect`](crate::SqsSubscriber::connect) call it.
    pub fn validate(&self) -> Result<(), SqsConfigError> {
        if let Some(endpoint) = &self.endpoint {
            if !matches!(endpoint.scheme(), "http" | "https")
                || endpoint.host_str().is_none_or(str::is_empty)
            {
                return Err(invalid(
                    "endpoint",
                    "must be an http or https url with a host",
                ));
            }
        }
        if self.region.is_empty()
            || !self
                .region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(invalid("region", "must be a region name such as eu-west-1"));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(invalid(
                "secret_access_key",
                "access_key_id and secret_access_key go together",
            ));
        }
        // Room for at least one character of topic and `.fifo`.
        if !self.queue_prefix.is_empty() && !is_queue_name(&self.queue_prefix)
            || self.queue_prefix.len() + 1 + 5 > MAX_QUEUE_NAME
        {
            return Err(invalid(
                "queue_prefix",
                "may hold only ASCII letters, digits, `_` and `-`, and leave room for the topic",
            ));
        }
        if let Some(dlq) = &self.dead_letter_queue {
            let name = dlq.strip_suffix(".fifo").unwrap_or(dlq);
            if !is_queue_name(name) || name.len() + if self.fifo { 5 } else { 0 } > MAX_QUEUE_NAME {
                return Err(invalid(
                    "dead_letter_queue",
                    "must be a queue name: at most 80 ASCII letters, digits, `_` and `-`",
                ));
            }
            if dlq.ends_with(".fifo") && !self.fifo {
                return Err(invalid(
                    "dead_letter_queue",
                    "a standard queue's dead-letter queue must be a standard queue",
                ));
            }
        }
        if !(1..=1000).contains(&self.max_receive_count) {
            return Err(invalid("max_receive_count", "must be between 1 and 1000"));
        }
        if self.visibility_timeout > Duration::from_secs(12 * 3600)
            || self.visibility_timeout.subsec_nanos() != 0
        {
            return Err(invalid(
                "visibility_timeout",
                "must be whole seconds, at most 12 hours",
            ));
        }
        if self.wait_time > Duration::from_secs(20) || self.wait_time.subsec_nanos() != 0 {
            return Err(invalid("wait_time", "must be whole seconds, at most 20"));
        }
        if self.request_timeout.is_zero() {
            return Err(invalid("request_timeout", "must be more than zero"));
        }
        if self.source.is_empty() {
            return Err(invalid("source", "must not be empty"));
        }
        Ok(())
    }

    /// The longest one [`Sink::deliver`](ferry_core::Sink::deliver) call can
    /// take: up to four requests in a row (the dead-letter queue, its ARN,
    /// the queue, the send), each within `request_timeout`. The relay's
    /// batch budget must exceed it.
    pub fn longest_call(&self) -> Duration {
        self.request_timeout.saturating_mul(REQUESTS_PER_CALL)
    }
}

/// The secret stays out of logs.
impl fmt::Debug for SqsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsConfig")
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("queue_prefix", &self.queue_prefix)
            .field("fifo", &self.fifo)
            .field("create_queues", &self.create_queues)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("max_receive_count", &self.max_receive_count)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("wait_time", &self.wait_time)
            .field("request_timeout", &self.request_timeout)
            .field("source", &self.source)
            .finish()
    }
}

fn boolean(field: &'static str, value: &str) -> Result<bool, SqsConfigError> {
    value
        .parse()
        .map_err(|_| invalid(field, "must be true or false"))
}

fn duration(field: &'static str, value: &str) -> Result<Duration, SqsConfigError> {
    humantime::parse_duration(value).map_err(|e| SqsConfigError::Invalid {
        field,
        reason: format!("`{value}` is not a duration such as `30s`"),
        source: Some(Box::new(e)),
    })
}

fn invalid(field: &'static str, reason: &str) -> SqsConfigError {
    SqsConfigError::Invalid {
        field,
        reason: reason.to_owned(),
        source: None,
    }
}

/// The SQS settings are wrong, or credentials are missing. Trying again
/// with the same settings does not help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqsConfigError {
    /// The URL does not parse.
    #[error("invalid sqs url")]
    Url(#[source] url::ParseError),
    /// The URL's scheme is neither `sqs` nor `sqs+http`.
    #[error("an sqs url starts with sqs:// or sqs+http://")]
    Scheme,
    /// The URL has a query parameter the adapter does not know.
    #[error("unknown parameter `{0}` in sqs url")]
    UnknownParameter(String),
    /// The URL gives a query parameter more than once.
    #[error("parameter `{0}` given more than once in sqs url")]
    RepeatedParameter(String),
    /// A setting has a value the adapter cannot use.
    #[error("invalid `{field}` for sqs: {reason}")]
    Invalid {
        /// The setting, e.g. `wait_time`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// No credentials in the settings nor in the environment.
    #[error("no aws credentials: set access_key_id and secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")]
    NoCredentials,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_url_reads_endpoints_and_settings() {
        let config = SqsConfig::from_url(
            "sqs+http://key:s%2Fecret@127.0.0.1:19325?region=eu-west-1&fifo=true&queue_prefix=ferry-&dead_letter_queue=dead&max_receive_count=3&visibility_timeout=5s",
        )
        .unwrap();
        assert_eq!(
            config.endpoint.as_ref().map(Url::as_str),
            Some("http://127.0.0.1:19325/")
        );
        assert_eq!(config.region, "eu-west-1");
        assert_eq!(config.access_key_id.as_deref(), Some("key"));
        assert_eq!(config.secret_access_key.as_deref(), Some("s/ecret"));
        assert!(config.fifo);
        assert_eq!(config.queue_prefix, "ferry-");
        assert_eq!(config.dead_letter_queue.as_deref(), Some("dead"));
        assert_eq!(config.max_receive_count, 3);
        assert_eq!(config.visibility_timeout, Duration::from_secs(5));
        assert!(!format!("{config:?}").contains("s/ecret"));

        let aws = SqsConfig::from_url("sqs://?region=ap-south-1").unwrap();
        assert_eq!(aws.endpoint, None);
        assert_eq!(aws.region, "ap-south-1");
        assert_eq!(aws.longest_call(), Duration::from_secs(40));
        let other = SqsConfig::from_url("sqs://sqs.example.com").unwrap();
        assert_eq!(
            other.endpoint.as_ref().map(Url::as_str),
            Some("https://sqs.example.com/")
        );
    }

    #[test]
    fn from_url_refuses_bad_input() {
        for (url, says) in [
            ("kafka://a", "sqs://"),
            ("sqs+http://", "needs a host"),
            ("sqs://h/path", "path"),
            ("sqs://?nope=1", "unknown parameter `nope`"),
            ("sqs://?fifo=yes", "true or false"),
            ("sqs://?fifo=true&fifo=false", "more than once"),
            ("sqs://?queue_prefix=a.b", "queue_prefix"),
            ("sqs://?dead_letter_queue=a.fifo", "standard queue"),
            ("sqs://?wait_time=21s", "at most 20"),
            ("sqs://?visibility_timeout=1500ms", "whole seconds"),
            ("sqs://?region=", "region"),
            ("sqs://key@h", "go together"),
        ] {
            let err = SqsConfig::from_url(url).unwrap_err();
            assert!(err.to_string().contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn deserializes_with_defaults_and_refuses_unknown_fields() {
        let config: SqsConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, SqsConfig::default());
        config.validate().unwrap();
        let err = serde_json::from_str::<SqsConfig>(r#"{"nope":1}"#).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
