//! Choosing a sink: from the configuration file or from a URL.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::Sink;
use url::Url;

use ferry_amqp::{AmqpConfig, AmqpSink};
use ferry_kafka::{KafkaConfig, KafkaSink};
use ferry_redis::{RedisConfig, RedisSink};
use ferry_sqs::{SqsConfig, SqsSink};

use crate::{HttpSink, HttpSinkConfig, NatsSink, NatsSinkConfig, NullSink};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which sink the relay delivers to, and its settings.
///
/// In the configuration file it is a table whose `type` names the sink:
///
/// ```toml
/// [sink]
/// type = "http"            # or "nats", "amqp", "redis", "kafka", "sqs", "null"
/// url = "https://example.com/hooks/ferry"
/// ```
///
/// On the command line it is a URL, see [`SinkConfig::from_url`].
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// POST each message to a webhook ([`HttpSink`]).
    Http(HttpSinkConfig),
    /// Publish each message to NATS JetStream ([`NatsSink`]).
    Nats(NatsSinkConfig),
    /// Publish each message to RabbitMQ with publisher confirms ([`AmqpSink`]).
    Amqp(AmqpConfig),
    /// Append each message to a Redis stream ([`RedisSink`]).
    Redis(RedisConfig),
    /// Produce each message to Kafka, idempotently ([`KafkaSink`]).
    Kafka(KafkaConfig),
    /// Send each message to an Amazon SQS queue ([`SqsSink`]).
    Sqs(SqsConfig),
    /// Accept and drop every message ([`NullSink`]).
    Null(NullSinkConfig),
}

/// The null sink has no settings.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullSinkConfig {}

impl SinkConfig {
    /// Reads a sink URL, as given on the command line:
    ///
    /// * `http://…` or `https://…`: a webhook; the whole URL, query
    ///   included, is the endpoint, other settings take their defaults.
    /// * `nats://host:port?subject_prefix=ferry.&stream=FERRY`: NATS
    ///   JetStream. The query may set `subject_prefix`, `stream`,
    ///   `stream_subjects` (comma-separated), `ack_timeout` (e.g. `5s`),
    ///   `ack_wait` (subscribers only) and `source`; see [`NatsSinkConfig`].
    /// * `amqp://user:password@host:port/vhost?exchange=ferry&…`: RabbitMQ,
    ///   see [`AmqpConfig::from_url`].
    /// * `redis://host:port/db?stream_prefix=ferry.&…`: Redis Streams, see
    ///   [`RedisConfig::from_url`].
    /// * `kafka://host:port,host:port?topic_prefix=…&…`: Kafka, see
    ///   [`KafkaConfig::from_url`].
    /// * `sqs://?region=…`, `sqs+http://host:port?…`: Amazon SQS (or a local
    ///   endpoint), see [`SqsConfig::from_url`].
    /// * `null://`: the null sink.
    ///
    /// The result is validated.
    pub fn from_url(url: &str) -> Result<Self, SinkConfigError> {
        let url = Url::parse(url).map_err(SinkConfigError::Url)?;
        let config = match url.scheme() {
            "http" | "https" => SinkConfig::Http(HttpSinkConfig::new(url)),
            "nats" => SinkConfig::Nats(nats_from_url(url)?),
            "amqp" | "amqps" => {
                SinkConfig::Amqp(adapter("amqp", AmqpConfig::from_url(url.as_str()))?)
            }
            "redis" | "rediss" => {
                SinkConfig::Redis(adapter("redis", RedisConfig::from_url(url.as_str()))?)
            }
            "kafka" => SinkConfig::Kafka(adapter("kafka", KafkaConfig::from_url(url.as_str()))?),
            "sqs" | "sqs+http" => {
                SinkConfig::Sqs(adapter("sqs", SqsConfig::from_url(url.as_str()))?)
            }
            "null" => {
                if url.host_str().is_some_and(|host| !host.is_empty())
                    || !url.path().is_empty()
                    || url.query().is_some()
                    || url.fragment().is_some()
                {
                    return Err(SinkConfigError::Invalid {
                        sink: "null",
                        field: "url",
                        reason: "must be just `null://`".to_owned(),
                        source: None,
                    });
                }
                SinkConfig::Null(NullSinkConfig {})
            }
            other => return Err(SinkConfigError::UnknownScheme(other.to_owned())),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings; [`SinkConfig::build`] calls it.
    pub fn validate(&self) -> Result<(), SinkConfigError> {
        match self {
            SinkConfig::Http(config) => config.validate(),
            SinkConfig::Nats(config) => config.validate(),
            SinkConfig::Amqp(config) => adapter("amqp", config.validate()),
            SinkConfig::Redis(config) => adapter("redis", config.validate()),
            SinkConfig::Kafka(config) => adapter("kafka", config.validate()),
            SinkConfig::Sqs(config) => adapter("sqs", config.validate()),
            SinkConfig::Null(_) => Ok(()),
        }
    }

    /// The longest one call of [`Sink::deliver`] can take with these
    /// settings: for HTTP, four rounds of `concurrency` requests (see
    /// [`Sink::max_per_call`]), each within `timeout`; for NATS, one
    /// `ack_timeout` (the batch is published at once and its
    /// acknowledgements awaited together); nothing for the null sink. The
    /// relay's batch budget, half its lease, must exceed it, or calls that
    /// succeed are cut short and recorded as failed.
    pub fn longest_call(&self) -> Duration {
        match self {
            SinkConfig::Http(config) => config.timeout.saturating_mul(crate::http::ROUNDS_PER_CALL),
            SinkConfig::Nats(config) => config.ack_timeout,
            SinkConfig::Amqp(config) => config.longest_call(),
            SinkConfig::Redis(config) => config.longest_call(),
            SinkConfig::Kafka(config) => config.longest_call(),
            SinkConfig::Sqs(config) => config.longest_call(),
            SinkConfig::Null(_) => Duration::ZERO,
        }
    }

    /// The sink's name, as in the `type` key: `http`, `nats` or `null`.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Http(_) => "http",
            SinkConfig::Nats(_) => "nats",
            SinkConfig::Amqp(_) => "amqp",
            SinkConfig::Redis(_) => "redis",
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Sqs(_) => "sqs",
            SinkConfig::Null(_) => "null",
        }
    }

    /// Starts the sink: builds the HTTP client, or connects to NATS (see
    /// [`NatsSink::connect`] for what happens when the server is down).
    pub async fn build(&self) -> Result<Arc<dyn Sink>, SinkConfigError> {
        Ok(match self {
            SinkConfig::Http(config) => Arc::new(HttpSink::new(config.clone())?),
            SinkConfig::Nats(config) => Arc::new(NatsSink::connect(config.clone()).await?),
            SinkConfig::Amqp(config) => {
                Arc::new(adapter("amqp", AmqpSink::connect(config.clone()).await)?)
            }
            SinkConfig::Redis(config) => {
                Arc::new(adapter("redis", RedisSink::connect(config.clone()).await)?)
            }
            SinkConfig::Kafka(config) => {
                Arc::new(adapter("kafka", KafkaSink::connect(config.clone()).await)?)
            }
            SinkConfig::Sqs(config) => {
                Arc::new(adapter("sqs", SqsSink::connect(config.clone()).await)?)
            }
            SinkConfig::Null(_) => Arc::new(NullSink::new()),
        })
    }
}

/// The NATS settings of a `nats://` URL: the query holds the sink's
/// settings, the rest is the server's address.
pub(crate) fn nats_from_url(mut url: Url) -> Result<NatsSinkConfig, SinkConfigError> {
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    url.set_query(None);
    url.set_fragment(None);
    let mut config = NatsSinkConfig::new(url);
    let mut seen = HashSet::new();
    for (name, value) in query {
        if !seen.insert(name.clone()) {
            return Err(SinkConfigError::RepeatedParameter { sink: "nats", name });
        }
        match name.as_str() {
            "subject_prefix" => config.subject_prefix = value,
            "stream" => config.stream = Some(value),
            "stream_subjects" => {
                config.stream_subjects = value.split(',').map(str::to_owned).collect();
            }
            "ack_timeout" => {
                config.ack_timeout =
                    humantime::parse_duration(&value).map_err(|e| SinkConfigError::Invalid {
                        sink: "nats",
                        field: "ack_timeout",
                        reason: format!("`{value}` is not a duration such as `5s`"),
                        source: Some(Box::new(e)),
                    })?;
            }
            "ack_wait" => {
                config.ack_wait =
                    humantime::parse_duration(&value).map_err(|e| SinkConfigError::Invalid {
                        sink: "nats",
                        field: "ack_wait",
                        reason: format!("`{value}` is not a duration such as `30s`"),
                        source: Some(Box::new(e)),
                    })?;
            }
            "source" => config.source = value,
            _ => return Err(SinkConfigError::UnknownParameter { sink: "nats", name }),
        }
    }
    Ok(config)
}

/// An adapter crate's own error, kept as the source.
pub(crate) fn adapter<T, E>(sink: &'static str, result: Result<T, E>) -> Result<T, SinkConfigError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    result.map_err(|e| SinkConfigError::Adapter {
        sink,
        source: Box::new(e),
    })
}

/// `url` with its user, password and every query value masked, for debug
/// output and logs: webhook URLs often carry a token in the query.
pub(crate) fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    if !url.username().is_empty() {
        let _ = url.set_username("***");
    }
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let names: Vec<String> = url
            .query_pairs()
            .map(|(name, _)| name.into_owned())
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(names.iter().map(|name| (name, "***")));
    }
    url.into()
}

/// The CloudEvents `source` attribute when none is configured.
pub(crate) fn default_source() -> String {
    crate::DEFAULT_SOURCE.to_owned()
}

/// A configured `source` must be a non-empty CloudEvents source.
pub(crate) fn check_source(sink: &'static str, source: &str) -> Result<(), SinkConfigError> {
    if source.is_empty() {
        return Err(SinkConfigError::Invalid {
            sink,
            field: "source",
            reason: "must not be empty".to_owned(),
            source: None,
        });
    }
    Ok(())
}

/// A sink's settings are wrong, or the sink could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkConfigError {
    /// The sink URL does not parse.
    #[error("invalid sink url")]
    Url(#[source] url::ParseError),
    /// The sink URL's scheme names no sink.
    #[error(
        "unknown sink url scheme `{0}` (expected http, https, nats, amqp, redis, kafka, sqs, sqs+http or null)"
    )]
    UnknownScheme(String),
    /// The URL's scheme names no broker to consume from.
    #[error(
        "unknown broker url scheme `{0}` (expected nats, amqp, redis, kafka, sqs or sqs+http)"
    )]
    UnknownSourceScheme(String),
    /// The sink URL has a query parameter the sink does not know.
    #[error("unknown parameter `{name}` in {sink} sink url")]
    UnknownParameter {
        /// The sink, e.g. `nats`.
        sink: &'static str,
        /// The parameter.
        name: String,
    },
    /// The sink URL gives a query parameter more than once.
    #[error("parameter `{name}` given more than once in {sink} sink url")]
    RepeatedParameter {
        /// The sink, e.g. `nats`.
        sink: &'static str,
        /// The parameter.
        name: String,
    },
    /// A setting has a value the sink cannot use.
    #[error("invalid `{field}` for {sink} sink: {reason}")]
    Invalid {
        /// The sink, e.g. `http`.
        sink: &'static str,
        /// The setting, e.g. `concurrency`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// A broker adapter refused its settings or could not start.
    #[error("{sink}")]
    Adapter {
        /// The adapter, e.g. `amqp`.
        sink: &'static str,
        /// The adapter's error.
        #[source]
        source: BoxError,
    },
    /// The HTTP client could not be set up (TLS, for one).
    #[error("could not set up the http client")]
    HttpClient(#[source] BoxError),
    /// The NATS client could not be set up.
    #[error("could not set up the nats client")]
    NatsConnect(#[source] BoxError),
    /// JetStream refused to create the configured stream.
    #[error("could not ensure jetstream stream `{stream}`")]
    NatsStream {
        /// The stream's name.
        stream: String,
        /// Why.
        #[source]
        source: BoxError,
    },
}
