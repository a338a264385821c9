//! Runs one relay pipeline: connect (retrying while the database is down),
//! migrate or check the schema, start the sink, relay until shutdown.
//! `ferry relay` and the `[[pipeline]]` tables of `ferry run`.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_adapters::SinkConfig;
use ferry_core::{RetryPolicy, Sink};
use ferry_relay::{CancellationToken, OrderPolicy, RelayConfig, Retention, SinkBackoff};
use ferry_store::Database;
use serde::Deserialize;

use crate::startup::{
    error_chain, line_of, open_retrying, started, valid_retry, valid_sink, Names,
};

/// A relay from one outbox to one sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name in logs; unique in the file.
    pub name: toml::Spanned<String>,
    /// The outbox's database: `postgres://user@host:port/db`,
    /// `mysql://user@host:port/db` (MariaDB 10.10 or newer) or
    /// `sqlite://path/to/file.db`.
    pub database: String,
    /// Apply Ferry's migrations at startup (default `false`: run
    /// `ferry migrate` yourself).
    #[serde(default)]
    pub migrate: bool,
    /// Only deliver these topics (default: all). Pipelines on one database
    /// compete for its messages, so each must list its topics, with no topic
    /// in common (checked at load).
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    /// `"ordered"` (default): a failing message holds back the later
    /// messages of its key until it is delivered or dead. `"unordered"`:
    /// they go ahead while it waits for its retry.
    #[serde(default)]
    pub order: OrderPolicy,
    /// Most messages claimed and sent per batch (default 1000).
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroU32,
    /// Batches in flight at once (default 1; SQLite always uses 1). Raise it
    /// for a slow sink or an unkeyed stream; with ordering keys, batches in
    /// flight hold back each other's keys.
    #[serde(default = "default_concurrency")]
    pub concurrency: NonZeroU32,
    /// Longest wait between two looks at the outbox when no wake-up arrives
    /// (default `"500ms"`). PostgreSQL wakes the relay by NOTIFY at once; the
    /// poll covers poolers that drop notifications.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a claimed batch may stay unsettled (default `"60s"`; at
    /// most 2147483647ms, about 24.8 days). On PostgreSQL the server then
    /// ends the relay's session and frees the messages for another relay. A
    /// batch gets half of it to be delivered, so half of it must exceed the
    /// sink's longest call ([`SinkConfig::longest_call`]: HTTP 4 x `timeout`,
    /// NATS `ack_timeout`), checked at load; otherwise a call still running
    /// is cut short and requests that succeeded count as failed.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// How long delivered messages are kept (status `delivered`), e.g.
    /// `"7d"`; `"0s"` (default) deletes them on delivery.
    #[serde(default, with = "humantime_serde")]
    pub retention: Duration,
    /// After SIGINT/SIGTERM, how long batches in flight may finish before
    /// they are abandoned (and later delivered again). Default `"10s"`.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Retries of a failing message; see `[pipeline.retry]`.
    #[serde(default, deserialize_with = "valid_retry")]
    pub retry: RetryPolicy,
    /// Pause while the sink as a whole is unreachable: `initial` (default
    /// `"100ms"`) doubling up to `max` (default `"30s"`).
    #[serde(default)]
    pub sink_backoff: SinkBackoff,
    /// Where messages go: `type = "http"`, `"nats"`, `"amqp"`, `"redis"`,
    /// `"kafka"`, `"sqs"` or `"null"`, and that sink's settings
    /// (docs/config.md).
    #[serde(deserialize_with = "valid_sink")]
    pub sink: SinkConfig,
}

// Defaults come from the relay's own, so that the file, `ferry relay` and
// the library agree.
fn default_batch_size() -> NonZeroU32 {
    NonZeroU32::new(RelayConfig::default().batch_size).unwrap_or(NonZeroU32::MIN)
}
fn default_concurrency() -> NonZeroU32 {
    NonZeroU32::new(RelayConfig::default().concurrency as u32).unwrap_or(NonZeroU32::MIN)
}
fn default_poll() -> Duration {
    RelayConfig::default().poll_interval
}
fn default_lease() -> Duration {
    RelayConfig::default().lease
}
fn default_grace() -> Duration {
    RelayConfig::default().shutdown_grace
}

/// PostgreSQL's `idle_in_transaction_session_timeout` is an int of
/// milliseconds; the lease is set there.
const MAX_LEASE: Duration = Duration::from_millis(i32::MAX as u64);

impl PipelineConfig {
    /// Durations that would spin, stall or overflow.
    fn check_durations(&self) -> Result<(), String> {
        let ms = Duration::from_millis;
        if self.poll_interval < ms(1) {
            return Err("key `poll_interval` must be at least 1ms".to_owned());
        }
        if self.lease < Duration::from_secs(1) {
            return Err("key `lease` must be at least 1s".to_owned());
        }
        if self.lease > MAX_LEASE {
            return Err(format!(
                "key `lease` must be at most {} ({}ms, PostgreSQL's largest \
                 idle_in_transaction_session_timeout)",
                humantime::format_duration(MAX_LEASE),
                MAX_LEASE.as_millis()
            ));
        }
        let (budget, longest) = (self.lease / 2, self.sink.longest_call());
        if budget <= longest {
            return Err(format!(
                "key `lease`: a batch gets half of it ({}) to be delivered, which must exceed \
                 the longest call to the {} sink ({}); raise `lease` or lower the sink's timeout",
                humantime::format_duration(budget),
                self.sink.kind(),
                humantime::format_duration(longest)
            ));
        }
        if self.sink_backoff.initial < ms(1) || self.sink_backoff.initial > self.sink_backoff.max {
            return Err(
                "key `sink_backoff`: `initial` must be at least 1ms and at most `max`".to_owned(),
            );
        }
        if self.retention > Duration::from_secs(100 * 365 * 86_400) {
            return Err("key `retention` must be at most 100 years".to_owned());
        }
        Ok(())
    }

    /// What delivered messages become.
    pub fn retention(&self) -> Retention {
        Retention::from_duration(self.retention)
    }
}

/// Checks the `[[pipeline]]` tables of a file whose text is `text`: unique
/// names, sensible durations, a database URL Ferry knows, and pipelines on
/// one outbox splitting its topics. The error starts with the line of the
/// pipeline's name and names the key.
pub fn check(text: &str, pipelines: &[PipelineConfig]) -> Result<(), String> {
    let mut names = Names::new("pipeline", text);
    for p in pipelines {
        let line = names.line(&p.name)?;
        let name = p.name.get_ref();
        if p.topics.as_ref().is_some_and(|t| t.is_empty()) {
            return Err(format!(
                "line {line}: pipeline `{name}`: key `topics` is empty; leave it out to deliver every topic"
            ));
        }
        if let Err(problem) = p.check_durations() {
            return Err(format!("line {line}: pipeline `{name}`: {problem}"));
        }
        names.database(line, name, &p.database)?;
    }
    // Pipelines on one outbox compete for its messages: each would get
    // an arbitrary share. They must split the topics between them.
    let outboxes: Vec<String> = pipelines
        .iter()
        .map(|p| same_outbox_key(&p.database))
        .collect();
    for (i, a) in pipelines.iter().enumerate() {
        for (j, b) in pipelines.iter().enumerate().skip(i + 1) {
            if outboxes[i] != outboxes[j] {
                continue;
            }
            let (x, y) = (a.name.get_ref(), b.name.get_ref());
            let line = line_of(text, b.name.span().start);
            match (&a.topics, &b.topics) {
                (Some(ta), Some(tb)) => {
                    if let Some(t) = ta.iter().find(|t| tb.contains(t)) {
                        return Err(format!(
                            "line {line}: pipelines `{x}` and `{y}` share a database and both take topic `{t}`: \
                             each would receive only some of its messages; give each topic to one pipeline"
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "line {line}: pipelines `{x}` and `{y}` share a database: each would receive only some of \
                         its messages; give both a `topics` list, without a topic in common"
                    ))
                }
            }
        }
    }
    Ok(())
}

/// What makes two database URLs the same outbox, whatever their spelling.
/// SQLite: the file's canonical path, without the query (`?mode=rwc`).
/// PostgreSQL: host, port and database name, without credentials or query.
/// Anything else: the URL as written.
fn same_outbox_key(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or_default();
    if let Some(path) = without_query.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() || path.starts_with(':') {
            // `sqlite::memory:` and the like: private to each connection.
            return url.to_owned();
        }
        return format!("sqlite:{}", canonical_path(Path::new(path)).display());
    }
    let rest = without_query
        .strip_prefix("postgres://")
        .or_else(|| without_query.strip_prefix("postgresql://"));
    let Some(rest) = rest else {
        return url.to_owned();
    };
    let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((credentials, host_port)) => (credentials.split(':').next().unwrap_or(""), host_port),
        None => ("", authority),
    };
    // `[::1]:5432`, `host:5432` or `host`.
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port),
        _ => (host_port, ""),
    };
    let host = if host.is_empty() { "localhost" } else { host };
    let port = if port.is_empty() { "5432" } else { port };
    // PostgreSQL's default database is the user's name.
    let database = if database.is_empty() { user } else { database };
    format!("postgres://{}:{port}/{database}", host.to_ascii_lowercase())
}

/// `path` made absolute with `.` and `..` resolved and symbolic links
/// followed as far as the path exists (the file may not exist yet).
fn canonical_path(path: &Path) -> std::path::PathBuf {
    if let Ok(path) = std::fs::canonicalize(path) {
        return path;
    }
    let absolute = std::env::current_dir().unwrap_or_default().join(path);
    let mut out = std::path::PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    match (out.parent(), out.file_name()) {
        (Some(dir), Some(file)) => std::fs::canonicalize(dir)
            .map(|dir| dir.join(file))
            .unwrap_or(out),
        _ => out,
    }
}

/// Everything a pipeline needs, from the file or from `ferry relay` flags.
pub struct Pipeline {
    pub database: String,
    pub migrate: bool,
    pub sink: SinkConfig,
    pub relay: RelayConfig,
}

impl From<&PipelineConfig> for Pipeline {
    fn from(p: &PipelineConfig) -> Self {
        Pipeline {
            database: p.database.clone(),
            migrate: p.migrate,
            sink: p.sink.clone(),
            relay: RelayConfig {
                name: p.name.get_ref().clone(),
                batch_size: p.batch_size.get(),
                concurrency: p.concurrency.get() as usize,
                order: p.order,
                topics: p.topics.clone(),
                poll_interval: p.poll_interval,
                retry: p.retry.clone(),
                sink_backoff: p.sink_backoff.clone(),
                retention: p.retention(),
                lease: p.lease,
                shutdown_grace: p.shutdown_grace,
                pause: Default::default(),
            },
        }
    }
}

impl Pipeline {
    /// A pipeline from `ferry relay` flags.
    #[allow(clippy::too_many_arguments)]
    pub fn quick(
        database: String,
        sink: SinkConfig,
        order: OrderPolicy,
        batch_size: u32,
        concurrency: usize,
        topics: Option<Vec<String>>,
        retry: RetryPolicy,
        retention: Duration,
        migrate: bool,
    ) -> Self {
        Pipeline {
            database,
            migrate,
            sink,
            relay: RelayConfig {
                batch_size,
                concurrency,
                order,
                topics,
                retry,
                retention: Retention::from_duration(retention),
                ..RelayConfig::default()
            },
        }
    }

    /// Runs until `shutdown`; an error means it could not start.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.run_with(shutdown, None).await
    }

    /// [`Pipeline::run`], and once the relay has started `metrics` shows its
    /// counters and its outbox's backlog (read every [`BACKLOG_EVERY`]).
    pub async fn run_shown(
        self,
        shutdown: CancellationToken,
        metrics: crate::metrics::Metrics,
    ) -> anyhow::Result<()> {
        self.run_with(shutdown, Some(metrics)).await
    }

    async fn run_with(
        self,
        shutdown: CancellationToken,
        metrics: Option<crate::metrics::Metrics>,
    ) -> anyhow::Result<()> {
        let name = self.relay.name.clone();
        let what = format!("pipeline `{name}`");
        // Retrying with the pipeline's `sink_backoff` while the database is
        // unreachable.
        let Some(db) = open_retrying(
            &self.database,
            &self.relay.connect_options(),
            self.migrate,
            &what,
            &name,
            &self.relay.sink_backoff,
            &shutdown,
        )
        .await?
        else {
            return Ok(());
        };
        let sink: Arc<dyn Sink> = started(self.sink.build().await, &what, "sink")?;
        let pauses = tokio::spawn(follow_pauses(
            db.clone(),
            name.clone(),
            self.relay.pause.clone(),
            shutdown.clone(),
        ));
        let running = ferry_relay::spawn_until(&db, sink, self.relay, &shutdown);
        let sampler = metrics.map(|metrics| {
            let backlog = Arc::new(Backlog::default());
            metrics.add_relay(&name, running.stats.clone(), backlog.clone());
            tokio::spawn(sample_backlog(db.clone(), backlog, shutdown.clone()))
        });
        let finished = running.finished().await;
        if let Some(sampler) = sampler {
            sampler.abort();
        }
        pauses.abort();
        finished?;
        Ok(())
    }
}

/// How often a relay looks whether an operator paused or resumed it.
pub const PAUSES_EVERY: Duration = Duration::from_secs(1);

/// Keeps `switch` in step with the pause flag of relay `name` in its
/// store (`ferry_pauses`, set by the admin API or console of any instance),
/// looked at every [`PAUSES_EVERY`]. A failed look changes nothing (the
/// relay's own reads say when the database is down).
async fn follow_pauses(
    db: ferry_store::Database,
    name: String,
    switch: ferry_relay::PauseSwitch,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        match db.paused().await {
            Ok(paused) => {
                if paused.iter().any(|p| p.name == name) {
                    switch.pause();
                } else {
                    switch.resume();
                }
            }
            Err(e) => tracing::debug!(relay = %name, error = %error_chain(&e),
                "cannot read the pause flags"),
        }
        tokio::select! {
            _ = tokio::time::sleep(PAUSES_EVERY) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// How often a pipeline shown on `/metrics` reads its outbox's backlog.
pub const BACKLOG_EVERY: Duration = Duration::from_secs(10);

/// The messages of a pipeline's outbox waiting to be delivered (retries
/// included), as last read; `None` before the first read and while the
/// outbox cannot be read.
#[derive(Debug, Default)]
pub struct Backlog(Mutex<Option<i64>>);

impl Backlog {
    /// The backlog as last read.
    pub fn get(&self) -> Option<i64> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a read.
    pub(crate) fn set(&self, value: Option<i64>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

/// Reads the backlog of `db`'s outbox into `backlog` at once and then every
/// [`BACKLOG_EVERY`], until `shutdown`: one count by status per read (the
/// query of `ferry status`).
async fn sample_backlog(db: Database, backlog: Arc<Backlog>, shutdown: CancellationToken) {
    loop {
        match db.outbox_stats().await {
            Ok(stats) => backlog.set(Some(stats.pending)),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the outbox's backlog");
                backlog.set(None);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(BACKLOG_EVERY) => {}
        }
    }
}
