//! Ferry's webhook adapter: [`HttpSink`] POSTs each message to an HTTP
//! endpoint as a CloudEvents 1.0 event in binary content mode, with
//! `Idempotency-Key: <message id>` so that the receiver can drop the
//! duplicates that at-least-once delivery produces.
//!
//! It takes an [`HttpSinkConfig`], from the configuration file (a table
//! with `url`, `timeout`, `concurrency`, `source`, `headers`) or from a URL,
//! which is the endpoint itself ([`HttpSinkConfig::new`]).

mod config;
mod sink;

pub use config::{ConfigError, HttpSinkConfig, DEFAULT_SOURCE};
pub use sink::HttpSink;

/// [`HttpSink::new`] failed: the settings are wrong, or the HTTP client
/// could not be set up (TLS, for one).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client could not be set up.
    #[error("could not set up the http client")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
}
