//! What goes wrong when choosing or starting an adapter.

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A sink's or broker's settings are wrong, or it could not start.
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
    UnknownSubscriberScheme(String),
    /// The URL or the `type` names an adapter whose cargo feature was off
    /// when this program was built.
    #[error("ferry was built without the `{0}` feature")]
    Disabled(&'static str),
    /// A setting has a value the sink cannot use.
    #[error("invalid `{field}` for {sink} sink: {reason}")]
    Invalid {
        /// The sink, e.g. `null`.
        sink: &'static str,
        /// The setting, e.g. `url`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The webhook sink refused its settings or could not start. Its
    /// messages already name the sink (`invalid `timeout` for http sink`).
    #[cfg(feature = "http")]
    #[error(transparent)]
    Http(#[from] ferry_http::SetupError),
    /// NATS refused its settings or could not start. Its messages already
    /// name NATS (`unknown parameter `x` in nats sink url`).
    #[cfg(feature = "nats")]
    #[error(transparent)]
    Nats(#[from] ferry_nats::ConnectError),
    /// A broker adapter refused its settings or could not start.
    #[error("{sink}")]
    Adapter {
        /// The adapter, e.g. `amqp`.
        sink: &'static str,
        /// The adapter's error.
        #[source]
        source: BoxError,
    },
}

impl SinkConfigError {
    /// An adapter crate's own error, kept as the source.
    #[cfg(any(
        feature = "amqp",
        feature = "redis",
        feature = "kafka",
        feature = "sqs"
    ))]
    pub(crate) fn adapter<T, E>(sink: &'static str, result: Result<T, E>) -> Result<T, Self>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        result.map_err(|e| SinkConfigError::Adapter {
            sink,
            source: Box::new(e),
        })
    }
}
