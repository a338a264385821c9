//! Runs one change data capture: a database's committed row changes to a
//! sink. `ferry cdc` and the `[[cdc]]` tables of `ferry run`.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_adapters::SinkConfig;
use ferry_cdc::mariadb::{BinlogConfig, MariaDbCapture};
use ferry_cdc::postgres::{PgCapture, PgLogConfig};
use ferry_cdc::{
    apply, ship, ApplyConfig, Capture, ColumnMapping, Filter, Format, OnFailure, PullCapture,
    PullConfig, ShipConfig, ShipStats, TableId, TriggerCapture, TriggerConfig,
};
use ferry_core::{RetryPolicy, Sink};
use ferry_relay::{CancellationToken, SinkBackoff};
use ferry_store::{ConnectOptions, Database, DatabaseKind};
use serde::Deserialize;

use crate::output::outln;
use crate::startup::{connect_retrying, started, valid_retry, valid_sink, Names};

/// How changes are captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The database's own log: PostgreSQL's logical replication
    /// (`pgoutput`), MariaDB's row-based binary log. The default on both.
    Log,
    /// Triggers write each change into a change table in the writing
    /// transaction (SQLite's default; also PostgreSQL and MariaDB without
    /// log access).
    Triggers,
    /// Polling by an `updated_at` column: no log, no triggers, any of the
    /// three databases; hard deletes are not seen.
    Pull,
}

impl Mode {
    /// The mode used when none is named: the log on PostgreSQL and
    /// MariaDB, triggers on SQLite (the embedded default).
    pub fn default_for(kind: DatabaseKind) -> Self {
        match kind {
            DatabaseKind::Sqlite => Mode::Triggers,
            DatabaseKind::Postgres | DatabaseKind::Mysql => Mode::Log,
        }
    }

    /// `self` on a database of `kind`, or why it cannot be.
    fn on(self, kind: DatabaseKind) -> Result<Self, String> {
        match (self, kind) {
            (Mode::Log, DatabaseKind::Sqlite) => Err(
                "SQLite has no log Ferry can read: use mode = \"triggers\" (the default there)"
                    .to_owned(),
            ),
            _ => Ok(self),
        }
    }
}

/// The capture modes' settings for one database and capture.
fn pg_config(url: &str, name: &str, filter: &Filter, snapshot: bool) -> PgLogConfig {
    PgLogConfig {
        tables: filter.clone(),
        snapshot: ferry_cdc::capture::SnapshotMode::from_flag(snapshot),
        ..PgLogConfig::new(url, name)
    }
}

fn binlog_config(
    url: &str,
    name: &str,
    filter: &Filter,
    snapshot: bool,
    offsets: Option<&str>,
) -> BinlogConfig {
    BinlogConfig {
        tables: filter.clone(),
        offsets: offsets.map(str::to_owned),
        snapshot: ferry_cdc::capture::SnapshotMode::from_flag(snapshot),
        ..BinlogConfig::new(url, name)
    }
}

/// A `[[cdc]]` table: one database's changes to one sink.
///
/// ```toml
/// [[cdc]]
/// name = "shop"
/// from = "sqlite://shop.db"
/// tables = ["orders", "customers"]
/// exclude_columns = ["customers.email"]
/// [cdc.sink]
/// type = "http"
/// url = "http://127.0.0.1:8080/changes"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcFileConfig {
    /// The capture's name, unique in the file (letters, digits, `_`): it
    /// names the triggers, is part of every change id (keep it stable), and
    /// labels logs, metrics and dead letters (`cdc:<name>`).
    pub name: toml::Spanned<String>,
    /// The database whose changes are captured: `sqlite://path.db`,
    /// `postgres://…` or `mysql://…` (MariaDB).
    pub from: String,
    /// How changes are captured: `"log"` (PostgreSQL's logical
    /// replication, MariaDB's binary log; the default there) or
    /// `"triggers"` (the default, and only mode, on SQLite).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Tables captured: `table` or `schema.table`, `*` as a wildcard
    /// (default: every table but Ferry's own). On MariaDB a schema is a
    /// database: when `from` names one, a bare `table` (here, in `exclude`
    /// and in `exclude_columns`) is that database's, `db.table` another's,
    /// `*.table` every database's, and the default is that database's
    /// tables. On PostgreSQL a bare `table` matches it in any schema of
    /// the `from` database.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Tables never captured, even when `tables` names them.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Columns that never leave the database: `table.column` or
    /// `schema.table.column` (`table` as in `tables`).
    #[serde(default)]
    pub exclude_columns: Vec<String>,
    /// Topic prefix: a change of `public.orders` goes to
    /// `{topic_prefix}.public.orders` (default: the name).
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// The body: `"ferry"` (default, compact) or `"debezium"` (Debezium's
    /// change event value, for existing Debezium consumers).
    #[serde(default)]
    pub format: Format,
    /// A change whose attempts are spent: `"dead-letter"` (default; it is
    /// parked and the stream goes on) or `"stop"` (the capture, and the
    /// daemon, stop with an error naming it).
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Where dead letters are kept: a database URL (migrated at start).
    /// Default: the captured database itself.
    #[serde(default)]
    pub state: Option<String>,
    /// Send each table's current rows as `r` changes when its capture
    /// begins (default `true`).
    #[serde(default = "yes")]
    pub snapshot: bool,
    /// Changes read at a time (default 1000).
    #[serde(default = "default_batch")]
    pub batch_size: NonZeroUsize,
    /// Changes in flight past the acknowledged position at most (default
    /// 8000): the memory bound, and what a crash sends again.
    #[serde(default = "default_window")]
    pub window: NonZeroUsize,
    /// Trigger mode: how often an empty change table is read again
    /// (default `"100ms"`).
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Retries of a change the sink refused; see `[cdc.retry]`.
    #[serde(default, deserialize_with = "valid_retry")]
    pub retry: RetryPolicy,
    /// Pause while the sink or the database is unreachable: `initial`
    /// doubling up to `max`.
    #[serde(default)]
    pub sink_backoff: SinkBackoff,
    /// Where changes go: `type = "http"`, `"nats"`, `"amqp"`, `"redis"`,
    /// `"kafka"`, `"sqs"` or `"null"`, and that sink's settings. Each change
    /// is a message whose id derives from its position (the receiver's
    /// dedup key) and whose key is the table and primary key.
    #[serde(default, deserialize_with = "valid_sink_opt")]
    pub sink: Option<SinkConfig>,
    /// Instead of a sink: another database the changes are applied to
    /// (`[cdc.target]`), exactly once.
    #[serde(default)]
    pub target: Option<TargetFileConfig>,
    /// Pull mode's settings (`[cdc.pull]`).
    #[serde(default)]
    pub pull: PullSettings,
    /// PostgreSQL log mode: log a warning when the slot makes the server
    /// keep more WAL than this many MiB (and once more when it is back
    /// under); the figure is `ferry_cdc_retained_wal_bytes` on `/metrics`.
    /// Default 1024.
    #[serde(default = "default_retained_wal_warning_mb")]
    pub retained_wal_warning_mb: u64,
    /// PostgreSQL log mode: write a heartbeat (a logical decoding message)
    /// into the captured database's log this often, e.g. `"1m"`, so that
    /// its slot moves on even when nothing else is written there. Default:
    /// none.
    #[serde(default, with = "humantime_serde")]
    pub heartbeat: Option<Duration>,
}

/// The default of `retained_wal_warning_mb`.
pub const DEFAULT_RETAINED_WAL_WARNING_MB: u64 = 1024;

fn default_retained_wal_warning_mb() -> u64 {
    DEFAULT_RETAINED_WAL_WARNING_MB
}

fn valid_sink_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SinkConfig>, D::Error> {
    valid_sink(d).map(Some)
}

fn yes() -> bool {
    true
}
fn default_batch() -> NonZeroUsize {
    NonZeroUsize::new(1000).unwrap_or(NonZeroUsize::MIN)
}
fn default_window() -> NonZeroUsize {
    NonZeroUsize::new(8000).unwrap_or(NonZeroUsize::MIN)
}
fn default_poll() -> Duration {
    Duration::from_millis(100)
}

/// Checks the `[[cdc]]` tables of a file whose text is `text`: unique
/// names that can name triggers, database URLs Ferry knows, a mode the
/// database has. The error starts with the line of the capture's name.
pub fn check(text: &str, cdcs: &[CdcFileConfig]) -> Result<(), String> {
    let mut names = Names::new("cdc", text);
    for c in cdcs {
        let line = names.line(&c.name)?;
        let name = c.name.get_ref();
        names.database(line, name, &c.from)?;
        if let Some(state) = &c.state {
            names.database(line, name, state)?;
        }
        let valid_name = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !valid_name {
            return Err(format!(
                "line {line}: cdc `{name}`: key `name`: use 1 to 32 letters, digits or '_' (it names triggers)"
            ));
        }
        if let (Some(mode), Ok(kind)) = (c.mode, DatabaseKind::of(&c.from)) {
            mode.on(kind)
                .map_err(|e| format!("line {line}: cdc `{name}`: key `mode`: {e}"))?;
        }
        match (&c.sink, &c.target) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "line {line}: cdc `{name}`: keys `sink` and `target`: name one, not both"
                ))
            }
            (None, None) => {
                return Err(format!(
                    "line {line}: cdc `{name}`: missing `[cdc.sink]` (a sink) or `[cdc.target]` (a database)"
                ))
            }
            (None, Some(t)) => names.database(line, name, &t.url)?,
            (Some(_), None) => {}
        }
        if c.window < c.batch_size {
            return Err(format!(
                "line {line}: cdc `{name}`: key `window`: must be at least batch_size ({})",
                c.batch_size
            ));
        }
    }
    Ok(())
}

/// Everything a capture needs, from the file or from `ferry cdc`.
#[derive(Clone, Debug)]
pub struct Cdc {
    pub from: String,
    pub mode: Option<Mode>,
    pub filter: Filter,
    pub state: Option<String>,
    pub snapshot: bool,
    pub poll_interval: Duration,
    pub pull: PullSettings,
    pub slot: SlotSettings,
    pub to: To,
    pub ship: ShipConfig,
}

/// How a PostgreSQL capture's slot is watched.
#[derive(Clone, Debug)]
pub struct SlotSettings {
    /// Warn above this much retained WAL, in MiB.
    pub retained_wal_warning_mb: u64,
    /// Write a heartbeat this often.
    pub heartbeat: Option<Duration>,
}

/// How often the slot is looked at.
const SLOT_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Where changes go.
#[derive(Clone, Debug)]
pub enum To {
    /// A message sink (webhook, broker, null).
    Sink(SinkConfig),
    /// Another database, where each change is applied as an upsert or a
    /// delete, exactly once.
    Database {
        /// Its URL.
        url: String,
        /// Table and column mapping.
        config: ApplyConfig,
    },
}

/// Pull mode's settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullSettings {
    /// The column each table's writes set to the time (default
    /// `updated_at`).
    #[serde(default)]
    pub updated_at: Option<String>,
    /// How far behind the newest time read each poll looks again, for
    /// transactions that commit late (default `"5s"`).
    #[serde(default, with = "humantime_serde")]
    pub overlap: Option<Duration>,
    /// Time between two polls of a table that has nothing new (default `"1s"`).
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
}

/// `[cdc.target]`: another database the changes are applied to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFileConfig {
    /// The target database: `postgres://…`, `mysql://…` or `sqlite://…`.
    /// Its tables must exist; Ferry adds `ferry_cdc_applied`.
    pub url: String,
    /// Target table per source table, e.g. `{ "public.orders" =
    /// "orders_copy" }` (default: the same name).
    #[serde(default)]
    pub tables: std::collections::BTreeMap<String, String>,
    /// Per source table, columns renamed (`rename = { a = "b" }`) or left
    /// out (`drop = ["c"]`).
    #[serde(default)]
    pub columns: std::collections::BTreeMap<String, ColumnMapping>,
    /// Changes written per target transaction at most (a source
    /// transaction is never split; default 500).
    #[serde(default)]
    pub batch_size: Option<usize>,
}

impl From<&CdcFileConfig> for Cdc {
    fn from(c: &CdcFileConfig) -> Self {
        let name = c.name.get_ref().clone();
        Cdc {
            from: c.from.clone(),
            mode: c.mode,
            filter: Filter {
                include: c.tables.clone(),
                exclude: c.exclude.clone(),
                exclude_columns: c.exclude_columns.clone(),
            },
            state: c.state.clone(),
            snapshot: c.snapshot,
            poll_interval: c.poll_interval,
            pull: c.pull.clone(),
            slot: SlotSettings {
                retained_wal_warning_mb: c.retained_wal_warning_mb,
                heartbeat: c.heartbeat,
            },
            to: match (&c.sink, &c.target) {
                (Some(sink), _) => To::Sink(sink.clone()),
                (None, Some(t)) => To::Database {
                    url: t.url.clone(),
                    config: ApplyConfig {
                        tables: t.tables.clone(),
                        columns: t.columns.clone(),
                        batch_size: t.batch_size.unwrap_or(ApplyConfig::new("x").batch_size),
                        backoff: c.sink_backoff.clone(),
                        ..ApplyConfig::new(name.clone())
                    },
                },
                (None, None) => To::Sink(SinkConfig::Null(ferry_adapters::NullSinkConfig {})),
            },
            ship: ShipConfig {
                topic_prefix: c.topic_prefix.clone().unwrap_or_else(|| name.clone()),
                format: c.format,
                batch_size: c.batch_size.get(),
                window: c.window.get(),
                retry: c.retry.clone(),
                backoff: c.sink_backoff.clone(),
                on_failure: c.on_failure,
                ..ShipConfig::new(name)
            },
        }
    }
}

impl Cdc {
    fn name(&self) -> &str {
        &self.ship.name
    }

    /// Connects to the captured database (and the state database),
    /// retrying while unreachable; starts the capture and the sink, and
    /// ships until `shutdown`. An error means it could not start, the
    /// capture refused to go on, or it stopped at a change.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        on_stats: impl FnOnce(Arc<ShipStats>),
    ) -> anyhow::Result<()> {
        let name = self.name().to_owned();
        let what = format!("cdc `{name}`");
        let options = ConnectOptions {
            max_connections: 4,
            lease: None,
        };
        let backoff = &self.ship.backoff;
        let Some(source) =
            connect_retrying(&self.from, &options, &what, &name, backoff, &shutdown).await?
        else {
            return Ok(());
        };
        let state = match &self.state {
            None => source.clone(),
            Some(url) => {
                match connect_retrying(url, &options, &what, &name, backoff, &shutdown).await? {
                    Some(db) => db,
                    None => return Ok(()),
                }
            }
        };
        state
            .migrate()
            .await
            .with_context(|| format!("{what}: migrating the state database failed"))?;
        let mode = self
            .mode
            .unwrap_or(Mode::default_for(source.kind()))
            .on(source.kind())
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        let stats = Arc::new(ShipStats::default());
        on_stats(stats.clone());
        let watched = stats.clone();
        let refused = |e: ferry_cdc::CaptureError| anyhow::anyhow!("{what}: {}", e.describe());
        let out = Out {
            to: self.to.clone(),
            ship: self.ship.clone(),
            state: state.clone(),
            stats,
            shutdown: shutdown.clone(),
            what: what.clone(),
        };
        let result = match (mode, source.kind()) {
            (Mode::Triggers, _) => {
                let capture = TriggerCapture::start(
                    source.clone(),
                    TriggerConfig {
                        name: name.clone(),
                        filter: self.filter.clone(),
                        snapshot: self.snapshot,
                        poll_interval: self.poll_interval,
                    },
                )
                .await
                .map_err(refused)?;
                let tables: Vec<String> =
                    capture.tables().iter().map(ToString::to_string).collect();
                tracing::info!(capture = %name, mode = "triggers", ?tables, "capturing");
                out.deliver(capture).await
            }
            (Mode::Pull, _) => {
                let mut config = PullConfig {
                    tables: self.filter.clone(),
                    snapshot: self.snapshot,
                    offsets: self.state.clone(),
                    ..PullConfig::new(name.clone())
                };
                if let Some(column) = &self.pull.updated_at {
                    config.updated_at = column.clone();
                }
                if let Some(overlap) = self.pull.overlap {
                    config.overlap = overlap;
                }
                if let Some(every) = self.pull.poll_interval {
                    config.poll_interval = every;
                }
                let capture = retry_start(&what, &name, backoff, &shutdown, || {
                    PullCapture::start(source.clone(), config.clone())
                })
                .await?;
                let Some(capture) = capture else {
                    return Ok(());
                };
                let tables: Vec<String> =
                    capture.tables().iter().map(ToString::to_string).collect();
                tracing::info!(capture = %name, mode = "pull", ?tables, "capturing");
                out.deliver(capture).await
            }
            (Mode::Log, DatabaseKind::Postgres) => {
                let config = pg_config(&self.from, &name, &self.filter, self.snapshot);
                let capture = retry_start(&what, &name, backoff, &shutdown, || {
                    PgCapture::connect(config.clone())
                })
                .await?;
                let Some(capture) = capture else {
                    return Ok(());
                };
                tracing::info!(capture = %name, mode = "log", slot = %config.slot_name(), "capturing");
                let watch = tokio::spawn(watch_slot(
                    config.clone(),
                    self.slot.clone(),
                    watched,
                    shutdown.clone(),
                ));
                let result = out.deliver(capture).await;
                watch.abort();
                result
            }
            (Mode::Log, _) => {
                let config = binlog_config(
                    &self.from,
                    &name,
                    &self.filter,
                    self.snapshot,
                    self.state.as_deref(),
                );
                let capture = retry_start(&what, &name, backoff, &shutdown, || {
                    MariaDbCapture::start(config.clone())
                })
                .await?;
                let Some(capture) = capture else {
                    return Ok(());
                };
                tracing::info!(capture = %name, mode = "log", "capturing");
                out.deliver(capture).await
            }
        };
        source.close().await;
        state.close().await;
        result
    }
}

/// Where a capture's changes go, and what it needs to send them there.
struct Out {
    to: To,
    ship: ShipConfig,
    state: Database,
    stats: Arc<ShipStats>,
    shutdown: CancellationToken,
    what: String,
}

impl Out {
    /// Ships `capture`'s changes to the sink, or applies them to the
    /// target database, until shutdown or an error.
    async fn deliver<C: Capture>(self, capture: C) -> anyhow::Result<()> {
        let what = self.what.clone();
        let progress = capture.progress();
        if let (Some(p), Ok(mut slot)) = (&progress, self.stats.snapshot.lock()) {
            *slot = Some(p.clone());
        }
        let bar = progress.and_then(|p| {
            use std::io::IsTerminal;
            std::io::stderr()
                .is_terminal()
                .then(|| tokio::spawn(draw_progress(p, self.shutdown.clone())))
        });
        let result = self.deliver_to(capture, what).await;
        if let Some(bar) = bar {
            bar.abort();
        }
        result
    }

    async fn deliver_to<C: Capture>(self, capture: C, what: String) -> anyhow::Result<()> {
        match self.to {
            To::Sink(sink) => {
                let sink: Arc<dyn Sink> = started(sink.build().await, &what, "sink")?;
                ship(
                    capture,
                    sink,
                    self.ship,
                    Some(self.state),
                    self.stats,
                    self.shutdown,
                )
                .await
                .map_err(anyhow::Error::from)
            }
            To::Database { url, config } => {
                let options = ConnectOptions {
                    max_connections: 2,
                    lease: None,
                };
                let Some(target) = connect_retrying(
                    &url,
                    &options,
                    &what,
                    &self.ship.name,
                    &self.ship.backoff,
                    &self.shutdown,
                )
                .await?
                else {
                    return Ok(());
                };
                let result =
                    apply(capture, target.clone(), config, self.stats, self.shutdown).await;
                target.close().await;
                result.map_err(anyhow::Error::from)
            }
        }
    }
}

/// On a terminal: a progress bar on stderr while a snapshot or backfill is
/// read (rows of the current table against the catalog's estimate, rate,
/// time left), gone once it is done.
async fn draw_progress(progress: Arc<ferry_cdc::SnapshotProgress>, shutdown: CancellationToken) {
    use indicatif::{ProgressBar, ProgressStyle};
    let rate = |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{:.0} rows/s", state.per_sec());
    };
    let known = ProgressStyle::with_template(
        "snapshot {msg} [{bar:30}] {pos}/{len} rows, {rate}, {eta} left",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key("rate", rate)
    .progress_chars("=> ");
    let unknown = ProgressStyle::with_template("snapshot {msg}: {pos} rows, {rate}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .with_key("rate", rate);
    let mut bar: Option<(ProgressBar, Option<ferry_cdc::TableId>)> = None;
    loop {
        let now = progress.get();
        match (&mut bar, now.running) {
            (None, true) => {
                let b = ProgressBar::new(0);
                bar = Some((b, None));
                continue;
            }
            (Some((b, table)), true) => {
                if *table != now.table {
                    // A new table: a bar of its own.
                    b.reset();
                    *table = now.table.clone();
                    b.set_message(table.as_ref().map(ToString::to_string).unwrap_or_default());
                }
                match now.table_total.filter(|t| *t >= now.table_rows && *t > 0) {
                    Some(total) => {
                        b.set_style(known.clone());
                        b.set_length(total);
                    }
                    None => b.set_style(unknown.clone()),
                }
                b.set_position(now.table_rows);
            }
            (Some((b, _)), false) => {
                b.finish_and_clear();
                bar = None;
            }
            (None, false) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.cancelled() => {
                if let Some((b, _)) = bar {
                    b.finish_and_clear();
                }
                return;
            }
        }
    }
}

/// Reads the slot every few seconds until `shutdown`: its retained WAL into
/// `stats` (a warning logged when it passes the threshold), a heartbeat
/// written when one is due. A failed look is logged at debug level: the
/// capture itself reports an unreachable database.
async fn watch_slot(
    config: PgLogConfig,
    settings: SlotSettings,
    stats: Arc<ShipStats>,
    shutdown: CancellationToken,
) {
    let warn = settings.retained_wal_warning_mb.saturating_mul(1024 * 1024);
    let mut monitor = None;
    loop {
        if monitor.is_none() {
            match ferry_cdc::postgres::SlotMonitor::connect(&config, warn, settings.heartbeat).await
            {
                Ok(m) => monitor = Some(m),
                Err(e) => {
                    tracing::debug!(error = %e.describe(), "cdc slot monitor: cannot connect")
                }
            }
        }
        if let Some(m) = monitor.as_mut() {
            match m.check().await {
                Ok(status) => {
                    if let Ok(mut r) = stats.retained_wal_bytes.lock() {
                        *r = status.and_then(|s| s.retained_wal_bytes);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e.describe(), "cdc slot monitor: cannot read the slot");
                    monitor = None;
                }
            }
        }
        let every = settings
            .heartbeat
            .map_or(SLOT_CHECK_EVERY, |h| h.min(SLOT_CHECK_EVERY));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Starts a capture, retrying with capped backoff while the database is
/// unavailable (logged once per change of state); a refusal (a server not
/// set up for the mode, a table without a key) is an error at once.
/// `None` when shut down first.
async fn retry_start<
    C: Capture,
    F: std::future::Future<Output = Result<C, ferry_cdc::CaptureError>>,
>(
    what: &str,
    name: &str,
    backoff: &SinkBackoff,
    shutdown: &CancellationToken,
    mut start: impl FnMut() -> F,
) -> anyhow::Result<Option<C>> {
    let health = ferry_relay::Health::new("database", name, backoff);
    loop {
        match start().await {
            Ok(c) => {
                health.succeeded();
                return Ok(Some(c));
            }
            Err(e) if e.is_retryable() => health.failed(&e.describe()),
            Err(e) => anyhow::bail!("{what}: {}", e.describe()),
        }
        let pause = health.pause_left().unwrap_or(Duration::from_millis(100));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
    }
}

/// The captured database of `ferry cdc status|backfill|drop`, and the
/// mode its capture runs in (the database's default unless given).
async fn open_source(from: &str, mode: Option<Mode>) -> anyhow::Result<(Database, Mode)> {
    let db = Database::connect(from)
        .await
        .with_context(|| format!("cannot open {}", ferry_store::redact(from)))?;
    let mode = mode
        .unwrap_or(Mode::default_for(db.kind()))
        .on(db.kind())
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok((db, mode))
}

/// `ferry cdc status`: what the capture has not yet shipped.
pub async fn status(from: &str, name: &str, mode: Option<Mode>) -> anyhow::Result<()> {
    let (db, mode) = open_source(from, mode).await?;
    let describe = |e: ferry_cdc::CaptureError| anyhow::anyhow!(e.describe());
    match (mode, db.kind()) {
        (Mode::Triggers, _) => {
            let (backlog, age) = TriggerCapture::backlog(&db, name).await.map_err(describe)?;
            outln!("capture {name} (triggers)");
            outln!("changes waiting: {backlog}");
            match age {
                Some(a) => outln!("oldest waiting: {a:.1}s"),
                None => outln!("oldest waiting: -"),
            }
        }
        (Mode::Pull, _) => {
            let offsets = ferry_cdc::offsets::Offsets::open(db.clone()).await?;
            outln!("capture {name} (pull)");
            match offsets.load(name).await? {
                Some(_) => outln!("saved cursor: yes (resumes from it)"),
                None => outln!("saved cursor: none (starts with a first pass)"),
            }
        }
        (Mode::Log, DatabaseKind::Postgres) => {
            let config = pg_config(from, name, &Filter::default(), false);
            outln!("capture {name} (log, slot {})", config.slot_name());
            match ferry_cdc::postgres::status(&config)
                .await
                .map_err(describe)?
            {
                None => outln!("slot: absent"),
                Some(s) => {
                    let lsn =
                        |v: Option<u64>| v.map_or("-".to_owned(), ferry_cdc::change::lsn_text);
                    let bytes = |v: Option<u64>| v.map_or("-".to_owned(), |b| b.to_string());
                    outln!("slot active: {}", s.active);
                    outln!("confirmed position: {}", lsn(s.confirmed_flush_lsn));
                    outln!("lag bytes: {}", bytes(s.lag_bytes));
                    outln!(
                        "lag seconds: {}",
                        s.lag_seconds.map_or("-".to_owned(), |l| format!("{l:.3}"))
                    );
                    outln!("retained WAL bytes: {}", bytes(s.retained_wal_bytes));
                    outln!("WAL status: {}", s.wal_status.as_deref().unwrap_or("-"));
                    let jobs = ferry_cdc::postgres::backfill_jobs(&config)
                        .await
                        .map_err(describe)?;
                    print_backfills(&jobs);
                }
            }
        }
        (Mode::Log, _) => {
            let config = binlog_config(from, name, &Filter::default(), false, None);
            let s = MariaDbCapture::status(&config).await.map_err(describe)?;
            outln!("capture {name} (log, binlog)");
            match &s.saved {
                Some(p) => outln!("saved position: {p:?}"),
                None => outln!("saved position: -"),
            }
            outln!("binlog end: {:?}", s.end);
            outln!(
                "lag bytes: {}",
                s.lag_bytes.map_or("-".to_owned(), |b| b.to_string())
            );
            outln!(
                "lag seconds: {}",
                s.lag_seconds.map_or("-".to_owned(), |l| format!("{l:.1}"))
            );
            if let Some(t) = &s.snapshot_table {
                outln!("snapshot in progress: {t}");
            }
            let jobs = MariaDbCapture::backfill_jobs(&config)
                .await
                .map_err(describe)?;
            print_backfills(&jobs);
        }
    }
    Ok(())
}

/// `ferry cdc backfill`: reads `tables` again while the capture streams.
pub async fn backfill(
    from: &str,
    name: &str,
    mode: Option<Mode>,
    tables: &[String],
    wait: bool,
) -> anyhow::Result<()> {
    let (db, mode) = open_source(from, mode).await?;
    let describe = |e: ferry_cdc::CaptureError| anyhow::anyhow!(e.describe());
    let default_schema = match db.kind() {
        DatabaseKind::Postgres => "public".to_owned(),
        DatabaseKind::Sqlite => "main".to_owned(),
        // The database the URL names: `mysql://host/shop?…` is `shop`
        // (none in `mysql://host`).
        DatabaseKind::Mysql => url::Url::parse(from)
            .map(|u| u.path().trim_start_matches('/').to_owned())
            .unwrap_or_default(),
    };
    let tables: Vec<TableId> = tables
        .iter()
        .map(|t| match t.split_once('.') {
            Some((schema, table)) => Ok(TableId::new(schema, table)),
            None if default_schema.is_empty() => Err(anyhow::anyhow!(
                "the source URL names no database: name the table as `database.{t}`"
            )),
            None => Ok(TableId::new(default_schema.clone(), t.clone())),
        })
        .collect::<anyhow::Result<_>>()?;
    match (mode, db.kind()) {
        (Mode::Triggers, _) => {
            for table in &tables {
                let rows = TriggerCapture::backfill(&db, name, table)
                    .await
                    .map_err(describe)?;
                outln!("backfill of {table}: {rows} rows queued as reads for capture {name}");
            }
        }
        (Mode::Log, kind) => {
            let pg = pg_config(from, name, &Filter::default(), false);
            let binlog = binlog_config(from, name, &Filter::default(), false, None);
            let request = match kind {
                DatabaseKind::Postgres => ferry_cdc::postgres::request_backfill(&pg, &tables).await,
                _ => MariaDbCapture::request_backfill(&binlog, &tables).await,
            }
            .map_err(describe)?;
            outln!(
                "backfill {} requested for capture {name}: {}",
                request.id,
                tables
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if wait {
                let mut last = None;
                loop {
                    let jobs = match kind {
                        DatabaseKind::Postgres => ferry_cdc::postgres::backfill_jobs(&pg).await,
                        _ => MariaDbCapture::backfill_jobs(&binlog).await,
                    }
                    .map_err(describe)?;
                    if jobs.done.contains(&request.id) {
                        outln!("backfill {} delivered", request.id);
                        break;
                    }
                    let now = jobs
                        .jobs
                        .iter()
                        .find(|j| j.id == request.id)
                        .map(|j| (j.table, j.rows));
                    if now != last {
                        if let Some((table, rows)) = now {
                            outln!(
                                "backfill {}: {rows} rows delivered, at {}",
                                request.id,
                                tables
                                    .get(table)
                                    .map(ToString::to_string)
                                    .unwrap_or_default()
                            );
                        }
                        last = now;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        (Mode::Pull, _) => anyhow::bail!(
            "backfill has no meaning in pull mode: every pass reads the rows as they are; \
             `ferry cdc drop --mode pull` makes the next start read everything again"
        ),
    }
    Ok(())
}

/// The unfinished backfills, one line each.
fn print_backfills(jobs: &ferry_cdc::backfill::Backfills) {
    for job in &jobs.jobs {
        outln!(
            "backfill {}: at {} (table {} of {}), {} rows delivered",
            job.id,
            job.tables
                .get(job.table)
                .map(ToString::to_string)
                .unwrap_or_default(),
            job.table + 1,
            job.tables.len(),
            job.rows
        );
    }
}

/// `ferry cdc drop`: removes what the capture installed.
pub async fn drop_capture(from: &str, name: &str, mode: Option<Mode>) -> anyhow::Result<()> {
    let (db, mode) = open_source(from, mode).await?;
    let describe = |e: ferry_cdc::CaptureError| anyhow::anyhow!(e.describe());
    match (mode, db.kind()) {
        (Mode::Triggers, _) => TriggerCapture::drop_capture(&db, name)
            .await
            .map_err(describe)?,
        (Mode::Pull, _) => {
            PullCapture::drop_capture(&db, &PullConfig::new(name))
                .await
                .map_err(describe)?;
        }
        (Mode::Log, DatabaseKind::Postgres) => {
            ferry_cdc::postgres::drop(&pg_config(from, name, &Filter::default(), false))
                .await
                .map_err(describe)?
        }
        (Mode::Log, _) => {
            MariaDbCapture::drop(&binlog_config(from, name, &Filter::default(), false, None))
                .await
                .map_err(describe)?;
        }
    }
    outln!("dropped capture {name}");
    Ok(())
}
