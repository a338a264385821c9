//! Runs one forwarder: the event store's events, in order, from the
//! forwarder's saved offset to a sink (a webhook, a broker). `ferry
//! forward` and the `[[forwarder]]` tables of `ferry run`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_adapters::SinkConfig;
use ferry_core::{RetryPolicy, Sink};
use ferry_events::forwarder::{Forwarder, ForwarderConfig, ForwarderStats, OnFailure};
use ferry_relay::{CancellationToken, SinkBackoff};
use serde::Deserialize;

use crate::startup::{open_retrying, started, valid_retry, valid_sink, Names};

/// A `[[forwarder]]` table: from one event store to one sink.
///
/// ```toml
/// [[forwarder]]
/// name = "orders-to-billing"
/// database = "postgres://ferry@127.0.0.1/app"
/// on_failure = "skip"
/// [forwarder.retry]
/// max_attempts = 5
/// [forwarder.sink]
/// type = "http"
/// url = "http://127.0.0.1:8080/events"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwarderFileConfig {
    /// The forwarder's name, unique in the file: the reader whose offset it
    /// keeps in `ferry_event_offsets` (keep it stable: a new name starts
    /// from the first event), and its name in logs and metrics.
    pub name: toml::Spanned<String>,
    /// The event store's database: `postgres://…`, `mysql://…` (MariaDB)
    /// or `sqlite://path/to/file.db`.
    pub database: String,
    /// Apply Ferry's migrations at startup (default `false`).
    #[serde(default)]
    pub migrate: bool,
    /// What happens once an event's attempts are spent: `"stop"` (default)
    /// stops the forwarder, and the daemon, with an error naming the event;
    /// its offset stays before it, so a restart tries it again. `"skip"`
    /// records it in `ferry_event_failures` and goes on.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Events read per page, at most 10000 (default 100). The offset is
    /// saved after each page: after a crash, at most one page is delivered
    /// again.
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroU32,
    /// Longest wait between two looks at the store (default `"500ms"`).
    /// PostgreSQL wakes the forwarder by NOTIFY at once.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// After SIGINT/SIGTERM, how long a delivery in flight may finish
    /// (default `"10s"`).
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Retries of a failing event; see `[forwarder.retry]`.
    #[serde(default, deserialize_with = "valid_retry")]
    pub retry: RetryPolicy,
    /// Pause while the sink as a whole (or the database) is unreachable,
    /// without counting attempts: `initial` (default `"100ms"`) doubling
    /// up to `max` (default `"30s"`).
    #[serde(default)]
    pub sink_backoff: SinkBackoff,
    /// Where events go: `type = "http"`, `"nats"`, `"amqp"`, `"redis"`,
    /// `"kafka"`, `"sqs"` or `"null"`, and that sink's settings. Each event
    /// is a message whose id is the event id (the receiver's dedup key),
    /// topic the event type, key `<source_type>:<source_id>`.
    #[serde(deserialize_with = "valid_sink")]
    pub sink: SinkConfig,
}

fn default_batch_size() -> NonZeroU32 {
    NonZeroU32::new(ForwarderConfig::default().batch_size).unwrap_or(NonZeroU32::MIN)
}
fn default_poll() -> Duration {
    ForwarderConfig::default().poll_interval
}
fn default_grace() -> Duration {
    ForwarderConfig::default().shutdown_grace
}

impl ForwarderFileConfig {
    /// The library's configuration of this forwarder.
    pub fn forwarder(&self) -> ForwarderConfig {
        ForwarderConfig {
            name: self.name.get_ref().clone(),
            batch_size: self.batch_size.get(),
            poll_interval: self.poll_interval,
            retry: self.retry.clone(),
            on_failure: self.on_failure,
            backoff: self.sink_backoff.clone(),
            shutdown_grace: self.shutdown_grace,
        }
    }
}

/// Checks the `[[forwarder]]` tables of a file whose text is `text`: unique
/// names, a database URL Ferry knows, sensible numbers. The error starts
/// with the line of the forwarder's name and names the key.
pub fn check(text: &str, forwarders: &[ForwarderFileConfig]) -> Result<(), String> {
    let mut names = Names::new("forwarder", text);
    for f in forwarders {
        let line = names.line(&f.name)?;
        let name = f.name.get_ref();
        names.database(line, name, &f.database)?;
        if let Err(e) = f.forwarder().validate() {
            // "batch_size must be …", "backoff: initial must be …"
            let (key, problem) = match e.0.split_once(": ") {
                Some(("backoff", rest)) => ("sink_backoff", rest),
                _ => e.0.split_once(' ').unwrap_or((e.0.as_str(), "")),
            };
            return Err(format!(
                "line {line}: forwarder `{name}`: key `{key}`: {problem}"
            ));
        }
    }
    Ok(())
}

/// Everything a forwarder needs, from the file or from `ferry forward`.
pub struct Forward {
    pub database: String,
    pub migrate: bool,
    pub sink: SinkConfig,
    pub config: ForwarderConfig,
}

impl From<&ForwarderFileConfig> for Forward {
    fn from(f: &ForwarderFileConfig) -> Self {
        Forward {
            database: f.database.clone(),
            migrate: f.migrate,
            sink: f.sink.clone(),
            config: f.forwarder(),
        }
    }
}

impl Forward {
    /// Connects (retrying while the database is unreachable), migrates or
    /// checks the schema, starts the sink and forwards until `shutdown`.
    /// An error means it could not start, or stopped at an event under
    /// `on_failure = "stop"`. `on_stats` gets the forwarder's counters
    /// once it runs.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        on_stats: impl FnOnce(Arc<ForwarderStats>),
    ) -> anyhow::Result<()> {
        let name = self.config.name.clone();
        let what = format!("forwarder `{name}`");
        let options = ferry_store::ConnectOptions {
            max_connections: 4,
            lease: None,
        };
        let Some(db) = open_retrying(
            &self.database,
            &options,
            self.migrate,
            &what,
            &name,
            &self.config.backoff,
            &shutdown,
        )
        .await?
        else {
            return Ok(());
        };
        let sink: Arc<dyn Sink> = started(self.sink.build().await, &what, "sink")?;
        let forwarder = Forwarder::to_sink(&db, sink, self.config);
        on_stats(forwarder.stats());
        let result = forwarder.run(shutdown).await;
        db.close().await;
        result.with_context(|| format!("{what} stopped"))
    }
}
