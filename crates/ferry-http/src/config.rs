//! Configuration of the webhook sink.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use ferry_core::redact_url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

/// The default CloudEvents `source` attribute (`ce-source`).
pub const DEFAULT_SOURCE: &str = "/ferry";

/// Rounds of [`HttpSinkConfig::concurrency`] requests in one call of
/// [`Sink::deliver`](ferry_core::Sink::deliver): a call takes at most this
/// many request timeouts.
pub(crate) const ROUNDS_PER_CALL: u32 = 4;

/// Where and how [`HttpSink`](super::HttpSink) POSTs messages.
///
/// ```toml
/// type = "http"
/// url = "https://example.com/hooks/ferry"
/// timeout = "5s"
/// concurrency = 32
/// source = "/ferry/orders"
/// headers = { Authorization = "Bearer secret" }
/// ```
#[derive(Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// The webhook endpoint, `http://` or `https://`. Every message is POSTed
    /// to this URL, query string included.
    pub url: Url,
    /// How long one request may take, from connecting to reading the
    /// response (default `"5s"`). Connecting may take at most half of it: a
    /// destination that cannot be reached by then counts as unavailable
    /// rather than slow. One call of the sink sends up to four rounds of
    /// `concurrency` requests, so it may take four times this; the relay's
    /// batch budget (half the pipeline's `lease`, 30 s by default) must
    /// exceed that.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most requests in flight at once for one batch (at least 1).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// The CloudEvents `source` attribute, sent as `ce-source`.
    #[serde(default = "default_source")]
    pub source: String,
    /// Headers added to every request, e.g. `Authorization`. They replace a
    /// message's own header of the same name, but not the CloudEvents
    /// attributes, `content-type` or `Idempotency-Key`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// 5 s: four rounds of it (20 s) stay within the default lease's budget of
/// 30 s with room for the claim and the settle.
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_concurrency() -> usize {
    32
}

fn default_source() -> String {
    DEFAULT_SOURCE.to_owned()
}

impl HttpSinkConfig {
    /// The defaults, posting to `url`.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            timeout: default_timeout(),
            concurrency: default_concurrency(),
            source: default_source(),
            headers: BTreeMap::new(),
        }
    }

    /// Checks the settings; [`HttpSink::new`](crate::HttpSink::new) calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.static_headers().map(drop)
    }

    /// The longest one call of [`Sink::deliver`](ferry_core::Sink::deliver)
    /// can take: [`ROUNDS_PER_CALL`] rounds of
    /// `concurrency` requests, each within `timeout`. The relay's batch
    /// budget must exceed it.
    pub fn longest_call(&self) -> Duration {
        self.timeout.saturating_mul(ROUNDS_PER_CALL)
    }

    /// The validated settings' extra headers, ready to send.
    pub(crate) fn static_headers(&self) -> Result<HeaderMap, ConfigError> {
        let invalid = |field, reason: String| ConfigError::Invalid {
            field,
            reason,
            source: None,
        };
        if !matches!(self.url.scheme(), "http" | "https") {
            return Err(invalid(
                "url",
                format!("scheme `{}` is not http or https", self.url.scheme()),
            ));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be more than zero".to_owned()));
        }
        if self.concurrency == 0 {
            return Err(invalid("concurrency", "must be at least 1".to_owned()));
        }
        if self.source.is_empty() {
            return Err(invalid("source", "must not be empty".to_owned()));
        }
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let header_name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| ConfigError::Invalid {
                    field: "headers",
                    reason: format!("`{name}` is not a header name"),
                    source: Some(Box::new(e)),
                })?;
            let header_value = HeaderValue::from_str(value).map_err(|e| ConfigError::Invalid {
                field: "headers",
                reason: format!("the value of `{name}` is not a header value"),
                source: Some(Box::new(e)),
            })?;
            headers.insert(header_name, header_value);
        }
        Ok(headers)
    }
}

/// Header values, the URL's password and secret-looking query values
/// ([`redact_url`]) stay out of logs: they are often credentials.
impl fmt::Debug for HttpSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSinkConfig")
            .field("url", &redact_url(self.url.as_str()))
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("source", &self.source)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The webhook settings are wrong; fixing them, not retrying, helps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting has a value the sink cannot use.
    #[error("invalid `{field}` for http sink: {reason}")]
    Invalid {
        /// The setting, e.g. `concurrency`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
}
