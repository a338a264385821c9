//! `ferry`: the daemon and its command line.

mod admin;
mod batch;
mod cdc;
mod config;
mod consume;
mod events_api;
mod forward;
mod log_writer;
mod metrics;
mod output;
mod pipeline;
mod startup;
mod telemetry;

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_adapters::SinkConfig;
use ferry_core::RetryPolicy;
use ferry_relay::{CancellationToken, OrderPolicy, RelayConfig};
use ferry_store::outbox::MessageRef;
use ferry_store::{redact, Database, DeadLetter};
use serde::Deserialize;

use crate::config::FerryConfig;
use crate::output::outln;
use crate::pipeline::Pipeline;
use crate::startup::error_chain;

/// Ferry: reliable asynchronous hand-offs through a transactional outbox.
#[derive(Parser)]
#[command(name = "ferry", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing syntax), e.g. `info` or `ferry_relay=debug`;
    /// `RUST_LOG` works too.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipelines of a configuration file until SIGINT/SIGTERM.
    Run {
        /// The TOML file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and exit.
    Check {
        /// The TOML file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run one relay without a configuration file.
    Relay {
        /// Outbox database: `postgres://…`, `mysql://…` (MariaDB) or `sqlite://path.db`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
        /// Sink: `http(s)://…` webhook, `nats://host:port?subject_prefix=…&stream=…`, or `null://`.
        #[arg(long)]
        to: String,
        /// Apply Ferry's migrations first.
        #[arg(long)]
        migrate: bool,
        /// Per-key policy when a message fails, as `order` in the file.
        #[arg(
            long,
            default_value = "ordered",
            value_parser = PossibleValuesParser::new(["ordered", "unordered"]).try_map(order_policy)
        )]
        order: OrderPolicy,
        /// Messages per batch (at least 1).
        #[arg(long, default_value_t = default_batch_size())]
        batch_size: NonZeroU32,
        /// Batches in flight at once (at least 1; SQLite: 1). On an ordered relay
        /// the workers beyond the first sit out while batches carry ordering keys.
        #[arg(long, default_value_t = default_concurrency())]
        concurrency: NonZeroUsize,
        /// Only these topics (repeatable).
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// Attempts before a message is dead-lettered.
        #[arg(long, default_value_t = RetryPolicy::default().max_attempts)]
        max_attempts: u32,
        /// Keep delivered messages this long (`0s`: delete at once).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        retention: Duration,
    },
    /// Consume topics from a broker and hand each message to a sink (an
    /// HTTP endpoint as a CloudEvent, or another broker), with retries,
    /// dead letters and metrics; no configuration file.
    Consume {
        /// Broker: `nats://host:port?stream=…&subject_prefix=…`.
        #[arg(long)]
        from: String,
        /// Sink: `http(s)://…` endpoint, or a broker URL.
        #[arg(long)]
        to: String,
        /// A topic to consume (repeatable, at least one).
        #[arg(long = "topic", required = true)]
        topics: Vec<String>,
        /// The consumer group (events); also the name in logs and metrics.
        #[arg(long, default_value = "ferry-consume")]
        group: String,
        /// The topics are commands (one owner; the group is derived from the topic).
        #[arg(long)]
        command: bool,
        /// Where dead letters are recorded; migrated at start.
        #[arg(
            long,
            env = "FERRY_DATABASE",
            default_value = "sqlite://ferry-consume.db"
        )]
        database: String,
        /// Deliveries of a message before it is dead-lettered.
        #[arg(long, default_value_t = 5)]
        max_deliveries: u32,
        /// Time limit of one handler attempt (one POST), e.g. `30s`.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Messages in flight at once.
        #[arg(long, default_value_t = 64)]
        prefetch: usize,
        /// Serve `/metrics` and `/health` here, e.g. `127.0.0.1:9464`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Log a warning while more messages than this wait for the group.
        #[arg(long)]
        warn_waiting: Option<u64>,
        /// Drop a message id already handled within this window, e.g. `10m`
        /// (in memory, up to 100,000 ids: best effort; the endpoint still
        /// gets `ce-id` to dedup for sure).
        #[arg(long, value_parser = humantime::parse_duration)]
        dedup_window: Option<Duration>,
    },
    /// Forward the event store's events, in order, to a sink (a webhook as
    /// CloudEvents, or a broker), from the forwarder's saved offset, until
    /// SIGINT/SIGTERM. Each event id is the receiver's dedup key: after a
    /// crash, the events after the saved offset are delivered again.
    Forward {
        /// The event store: `postgres://…`, `mysql://…` (MariaDB) or `sqlite://path.db`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
        /// Sink: `http(s)://…` webhook, `nats://host:port?subject_prefix=…&stream=…`, or `null://`.
        #[arg(long)]
        to: String,
        /// The forwarder's name: its offset is kept under it (keep it stable).
        #[arg(long)]
        name: String,
        /// Apply Ferry's migrations first.
        #[arg(long)]
        migrate: bool,
        /// Once an event's attempts are spent: `stop` (exit non-zero, the
        /// offset before the event) or `skip` (record it in
        /// ferry_event_failures and go on).
        #[arg(
            long,
            default_value = "stop",
            value_parser = PossibleValuesParser::new(["stop", "skip"]).try_map(|s| s.parse::<ferry_events::forwarder::OnFailure>())
        )]
        on_failure: ferry_events::forwarder::OnFailure,
        /// Attempts at a failing event.
        #[arg(long, default_value_t = RetryPolicy::default().max_attempts)]
        max_attempts: u32,
        /// Events read per page (1 to 10000); the offset is saved after each.
        #[arg(long, default_value_t = ferry_events::forwarder::ForwarderConfig::default().batch_size)]
        batch_size: u32,
        /// Longest wait between two looks at the store, e.g. `500ms`
        /// (PostgreSQL wakes the forwarder at once).
        #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
        poll_interval: Duration,
    },
    /// Serve the event store's HTTP offset API (`GET /v1/events`,
    /// `/v1/events/head`) and `/health` until SIGINT/SIGTERM; with
    /// `--admin-token`, the admin API and the console over the same database.
    Serve {
        /// The event store: `postgres://…`, `mysql://…` (MariaDB) or `sqlite://path.db`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
        /// Address and port, e.g. `127.0.0.1:9465`. Anything but a loopback
        /// address needs a token.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The bearer token every request must carry; prefer the
        /// environment variable to the command line.
        #[arg(long, env = "FERRY_API_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The largest `limit` a request may ask for (1 to 10000).
        #[arg(long, default_value_t = ferry_events::api::DEFAULT_MAX_LIMIT)]
        max_limit: u32,
        /// The longest `wait` (long poll) a request may ask for, e.g. `30s`.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        max_wait: Duration,
        /// Apply Ferry's migrations first.
        #[arg(long)]
        migrate: bool,
        /// Serve the admin API (`/v1/admin`) and the console (`/ui`) too,
        /// to callers with this token (may see and change; named `admin`
        /// in the audit log). Prefer the environment variable.
        #[arg(long, env = "FERRY_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// A token that may only look at the admin API and console (named
        /// `read-only` in the audit log).
        #[arg(long, env = "FERRY_READ_ONLY_TOKEN", hide_env_values = true)]
        read_only_token: Option<String>,
    },
    /// Capture a database's committed row changes (insert, update, delete,
    /// in commit order) and send them to a sink, until SIGINT/SIGTERM.
    /// `ferry cdc status` and `ferry cdc drop` inspect and remove a capture.
    #[command(args_conflicts_with_subcommands = true)]
    Cdc {
        #[command(subcommand)]
        action: Option<CdcAction>,
        #[command(flatten)]
        args: CdcArgs,
    },
    /// Batch export jobs (`[[export]]` of a configuration file): `ferry
    /// export run JOB` runs a window by hand.
    Export {
        #[command(subcommand)]
        action: ExportAction,
    },
    /// Batch import jobs (`[[import]]` of a configuration file): `ferry
    /// import run JOB` processes what is waiting now.
    Import {
        #[command(subcommand)]
        action: ImportAction,
    },
    /// The batch jobs of a configuration file: `ferry batch status`.
    Batch {
        #[command(subcommand)]
        action: BatchAction,
    },
    /// Apply Ferry's migrations to a database.
    Migrate {
        /// `postgres://…`, `mysql://…` (MariaDB) or `sqlite://path.db`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
    },
    /// Counts of pending, retrying, delivered and dead messages.
    Status {
        /// `postgres://…`, `mysql://…` (MariaDB) or `sqlite://path.db`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
    },
    /// Inspect and act on dead-lettered messages.
    Dead {
        #[command(subcommand)]
        action: DeadAction,
    },
    /// Inspect, replay and discard the messages consumers gave up on
    /// (`ferry_dead_letters`: `ferry consume`, `ferry run` consumers, and the
    /// library's `StoreDeadLetters`).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(clap::Args)]
struct CdcArgs {
    /// The database whose changes are captured: `sqlite://path.db`,
    /// `postgres://…` or `mysql://…` (MariaDB).
    #[arg(long, env = "FERRY_DATABASE")]
    from: Option<String>,
    /// Sink: `http(s)://…` webhook, a broker URL, or `null://`; or a
    /// database (`postgres://…`, `mysql://…`, `sqlite://…`) whose tables
    /// of the same names receive each change, exactly once.
    #[arg(long)]
    to: Option<String>,
    /// How changes are captured.
    #[arg(long, value_enum)]
    mode: Option<cdc::Mode>,
    /// The capture's name (letters, digits, `_`): names its triggers and is
    /// part of every change id; keep it stable.
    #[arg(long, default_value = "ferry")]
    name: String,
    /// Tables to capture (`table`, `schema.table`, `*` wildcards; repeatable
    /// or comma-separated); default every table. On MariaDB a bare `table`
    /// (here, in --exclude and --exclude-columns) is the `--from` database's,
    /// `*.table` every database's.
    #[arg(long = "tables", value_delimiter = ',')]
    tables: Vec<String>,
    /// Tables never captured (repeatable or comma-separated).
    #[arg(long = "exclude", value_delimiter = ',')]
    exclude: Vec<String>,
    /// Columns that never leave, `table.column` (repeatable or comma-separated).
    #[arg(long = "exclude-columns", value_delimiter = ',')]
    exclude_columns: Vec<String>,
    /// Topic prefix (`{prefix}.{schema}.{table}`); default the name.
    #[arg(long)]
    topic_prefix: Option<String>,
    /// The body's form.
    #[arg(long, value_enum, default_value = "ferry")]
    format: CdcFormat,
    /// Do not send the tables' current rows first.
    #[arg(long)]
    no_snapshot: bool,
    /// Where dead letters are kept (migrated at start); default the captured database.
    #[arg(long)]
    state: Option<String>,
    /// Attempts at a change before it is dead-lettered.
    #[arg(long, default_value_t = RetryPolicy::default().max_attempts)]
    max_attempts: u32,
    /// Serve `/metrics` and `/health` here, e.g. `127.0.0.1:9464`.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// PostgreSQL log mode: warn when the slot retains more WAL than this
    /// many MiB.
    #[arg(long, default_value_t = cdc::DEFAULT_RETAINED_WAL_WARNING_MB)]
    retained_wal_warning_mb: u64,
    /// PostgreSQL log mode: write a heartbeat into the captured database's
    /// log this often (e.g. `1m`), so its slot moves on even when nothing
    /// else is written there.
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat: Option<Duration>,
}

#[derive(Subcommand)]
enum ExportAction {
    /// Run an export job once: the window holding `--window`, or else
    /// every window due now (missed and failed ones, per its `catch_up`).
    /// A re-run of a window writes the same file names and contents.
    Run {
        /// The job's name.
        job: String,
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// A time (RFC 3339) or date (`YYYY-MM-DD`) inside the window to
        /// run; for a watermark job, the start of a recorded window.
        #[arg(long)]
        window: Option<String>,
    },
}

#[derive(Subcommand)]
enum ImportAction {
    /// Process every complete batch waiting now (import, skip what was
    /// imported before, refuse what does not check out), then exit.
    Run {
        /// The job's name.
        job: String,
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum BatchAction {
    /// The latest runs of the export jobs, newest first.
    Status {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Runs shown per job.
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CdcFormat {
    /// Ferry's compact body.
    Ferry,
    /// Debezium's change event value.
    Debezium,
}

/// Which capture `ferry cdc status|backfill|drop` is about.
#[derive(clap::Args)]
struct CaptureRef {
    /// The captured database.
    #[arg(long, env = "FERRY_DATABASE")]
    from: String,
    /// The capture's name.
    #[arg(long, default_value = "ferry")]
    name: String,
    /// How it captures.
    #[arg(long, value_enum)]
    mode: Option<cdc::Mode>,
}

#[derive(Subcommand)]
enum CdcAction {
    /// What a capture has not shipped yet.
    Status(CaptureRef),
    /// Read tables again, as `r` changes, while the capture streams on:
    /// log mode writes a request into the log that the running capture
    /// reads between watermarks; trigger mode copies the rows into the
    /// change table under the triggers' lock.
    Backfill {
        #[command(flatten)]
        capture: CaptureRef,
        /// A table to backfill (`schema.table`, or `table` in the default
        /// schema: `public`, the database's own, `main`); repeatable.
        #[arg(long = "table", required = true)]
        tables: Vec<String>,
        /// Log mode: wait until the capture has delivered the backfill.
        #[arg(long)]
        wait: bool,
    },
    /// Remove what a capture installed (its triggers and waiting changes).
    Drop(CaptureRef),
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// List dead letters, oldest first.
    List {
        /// `sqlite://path.db`, `postgres://…` or `mysql://…`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
        /// Only this consumer's (its name or group).
        #[arg(long)]
        consumer: Option<String>,
        /// Most rows shown.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Publish a dead letter again (to its broker, or any sink), then
    /// delete it. At least once: a crash between the two publishes it again
    /// on the next replay, with the same message id.
    Replay {
        /// The dead letter's id (from `list`).
        id: uuid::Uuid,
        /// `sqlite://path.db`, `postgres://…` or `mysql://…`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
        /// Where to publish it: a broker URL (`nats://…`, `amqp://…`, …) or
        /// an `http(s)://` endpoint.
        #[arg(long)]
        to: String,
    },
    /// Delete a dead letter for good.
    Discard {
        /// The dead letter's id.
        id: uuid::Uuid,
        /// `sqlite://path.db`, `postgres://…` or `mysql://…`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
    },
}

/// `ordered` or `unordered`, read as the configuration file reads it.
fn order_policy(name: String) -> Result<OrderPolicy, serde::de::value::Error> {
    OrderPolicy::deserialize(serde::de::value::StringDeserializer::new(name))
}

fn default_batch_size() -> NonZeroU32 {
    NonZeroU32::new(RelayConfig::default().batch_size).unwrap_or(NonZeroU32::MIN)
}

fn default_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(RelayConfig::default().concurrency).unwrap_or(NonZeroUsize::MIN)
}

#[derive(Subcommand)]
enum DeadAction {
    /// List dead messages, oldest first.
    List {
        /// `postgres://…`, `mysql://…` (MariaDB) or `sqlite://path.db`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
        /// Most rows shown.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Make dead messages pending again with fresh attempts.
    Replay {
        /// Sequence number or message id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Replay every dead message.
        #[arg(long)]
        all: bool,
        /// `postgres://…`, `mysql://…` (MariaDB) or `sqlite://path.db`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
    },
    /// Delete a dead message for good.
    Discard {
        /// Sequence number or message id.
        id: String,
        /// `postgres://…`, `mysql://…` (MariaDB) or `sqlite://path.db`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
    },
}

/// Client libraries that log once per attempt while a dependency is down,
/// where Ferry's own line says once that it is down and once that it is
/// back. Unless the filter names the library, its lines are kept out:
///
/// * `pg_walstream` logs every statement at info level (each snapshot
///   `FETCH` among them), and every failed connection attempt at error
///   level from its retry loop: its info lines are kept out and its retry
///   loop's lines off.
/// * `async_nats` logs every connection event (each failed reconnect) at
///   info level and some failed attempts at error level: off. Ferry's NATS
///   adapters log the same events at debug level.
/// * rdkafka forwards each of librdkafka's log lines (target `librdkafka`)
///   and client errors (`rdkafka::client`), e.g. `BrokerTransportFailure`
///   and `AllBrokersDown` many times a second: off, and its other lines
///   kept out below warn. Ferry's Kafka adapters log them at debug level.
fn quieted(spec: &str) -> String {
    let verbose = spec
        .split(',')
        .map(str::trim)
        .any(|d| matches!(d.to_ascii_lowercase().as_str(), "info" | "debug" | "trace"));
    let mut out = spec.to_owned();
    if !spec.contains("pg_walstream") {
        if verbose {
            out.push_str(",pg_walstream=warn");
        }
        out.push_str(",pg_walstream::retry=off");
    }
    if !spec.contains("async_nats") {
        out.push_str(",async_nats=off");
    }
    // Also matches `librdkafka`.
    if !spec.contains("rdkafka") {
        if verbose {
            out.push_str(",rdkafka=warn");
        }
        out.push_str(",rdkafka::client=off,librdkafka=off");
    }
    out
}

fn init_logging(cli: &Cli, telemetry: Option<&telemetry::Telemetry>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| cli.log_level.clone());
    let filter = tracing_subscriber::EnvFilter::new(quieted(&spec));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(log_writer::LogWriter)
        .log_internal_errors(false);
    let fmt = match cli.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    // The exported spans have their own filter: `--log-level warn` keeps
    // the log short without losing the trace.
    let spans = telemetry.map(|t| {
        t.layer()
            .with_filter(tracing_subscriber::EnvFilter::new(quieted("info")))
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(spans)
        .init();
}

/// `[telemetry]` of `ferry run`'s file, started: the exporter is built
/// before logging, so that its layer is part of the subscriber from the
/// first span. A file that cannot be read is left to `run`, which says why.
async fn start_telemetry(command: &Command) -> anyhow::Result<Option<telemetry::Telemetry>> {
    let Command::Run { config } = command else {
        return Ok(None);
    };
    let Some(config) = FerryConfig::load(config).ok().and_then(|c| c.telemetry) else {
        return Ok(None);
    };
    // The exporter's HTTP client blocks: built and dropped off the runtime.
    let started = tokio::task::spawn_blocking(move || telemetry::Telemetry::start(&config)).await?;
    Ok(Some(started.context("[telemetry]")?))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    install_signal_handlers();
    let telemetry = match start_telemetry(&cli.command).await {
        Ok(t) => t,
        Err(e) => {
            log_writer::eprint_line(&format!("error: {}", error_chain(e.as_ref())));
            return ExitCode::FAILURE;
        }
    };
    init_logging(&cli, telemetry.as_ref());
    let result = run(cli.command).await;
    if let Some(telemetry) = telemetry {
        // The spans still queued, sent within the exporter's timeout.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log_writer::eprint_line(&format!("error: {}", error_chain(e.as_ref())));
            ExitCode::FAILURE
        }
    }
}

/// The run's shutdown token, cancelled by the first SIGINT/SIGTERM once a
/// command has taken it ([`shutdown_on_signal`]).
static SHUTDOWN: std::sync::OnceLock<CancellationToken> = std::sync::OnceLock::new();
/// Whether a long-running command took the shutdown token: until one does,
/// a signal ends the process at once, as it would without a handler.
static SHUTDOWN_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs the SIGINT/SIGTERM handlers, first thing in `main`.
///
/// The handlers are registered before this returns, not later in a spawned
/// task: a signal that arrived while a command was still connecting (a
/// broker down, a busy runtime) used to find the default action in place
/// and killed the process (exit 143) instead of shutting it down.
fn install_signal_handlers() {
    use tokio::signal::unix::{signal, SignalKind};
    let token = SHUTDOWN.get_or_init(CancellationToken::new).clone();
    let (term, int) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    let (Ok(mut term), Ok(mut int)) = (term, int) else {
        tracing::warn!("could not install the signal handlers; a signal ends the process at once");
        return;
    };
    tokio::spawn(async move {
        let code = next_signal(&mut term, &mut int).await;
        if !SHUTDOWN_TAKEN.load(std::sync::atomic::Ordering::SeqCst) {
            // A short command (a listing, a migration): stop as the default
            // action would have.
            std::process::exit(code);
        }
        tracing::info!(
            "shutdown requested; finishing batches in flight (signal again to exit at once)"
        );
        token.cancel();
        next_signal(&mut term, &mut int).await;
        tracing::warn!("second signal: exiting now; batches in flight will be delivered again");
        std::process::exit(130);
    });
}

/// Waits for the next SIGTERM or SIGINT; the exit code its default action
/// would give.
async fn next_signal(
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> i32 {
    tokio::select! {
        _ = term.recv() => 143,
        _ = int.recv() => 130,
    }
}

/// The token the first SIGINT/SIGTERM cancels; a long-running command
/// takes it to shut down gracefully, and a second signal exits at once.
fn shutdown_on_signal() -> CancellationToken {
    SHUTDOWN_TAKEN.store(true, std::sync::atomic::Ordering::SeqCst);
    SHUTDOWN.get_or_init(CancellationToken::new).clone()
}

/// `ferry cdc --from … --to …`.
async fn run_cdc(args: CdcArgs) -> anyhow::Result<()> {
    let (Some(from), Some(to)) = (args.from, args.to) else {
        anyhow::bail!("ferry cdc needs --from (the database) and --to (the sink)");
    };
    ferry_store::DatabaseKind::of(&from).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    let valid_name = !args.name.is_empty()
        && args.name.len() <= 32
        && args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        anyhow::bail!("--name: use 1 to 32 letters, digits or '_' (it names triggers)");
    }
    let name = args.name;
    let to = if ferry_store::DatabaseKind::of(&to).is_ok() {
        cdc::To::Database {
            url: to,
            config: ferry_cdc::ApplyConfig::new(name.clone()),
        }
    } else {
        cdc::To::Sink(flag("--to", SinkConfig::from_url(&to))?)
    };
    let cdc = cdc::Cdc {
        from,
        mode: args.mode,
        filter: ferry_cdc::Filter {
            include: args.tables,
            exclude: args.exclude,
            exclude_columns: args.exclude_columns,
        },
        state: args.state,
        snapshot: !args.no_snapshot,
        poll_interval: Duration::from_millis(100),
        pull: cdc::PullSettings::default(),
        slot: cdc::SlotSettings {
            retained_wal_warning_mb: args.retained_wal_warning_mb,
            heartbeat: args.heartbeat,
        },
        to,
        ship: ferry_cdc::ShipConfig {
            topic_prefix: args.topic_prefix.unwrap_or_else(|| name.clone()),
            format: match args.format {
                CdcFormat::Ferry => ferry_cdc::Format::Ferry,
                CdcFormat::Debezium => ferry_cdc::Format::Debezium,
            },
            retry: RetryPolicy {
                max_attempts: args.max_attempts.max(1),
                ..RetryPolicy::default()
            },
            ..ferry_cdc::ShipConfig::new(name.clone())
        },
    };
    let shutdown = shutdown_on_signal();
    let metrics = metrics::Metrics::default();
    if let Some(listen) = args.listen {
        drop(metrics::serve(listen, metrics.clone(), shutdown.clone()).await?);
    }
    cdc.run(shutdown, |stats| metrics.add_cdc(&name, stats))
        .await
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => {
            let config = FerryConfig::load(&config)?;
            let shutdown = shutdown_on_signal();
            let metrics = metrics::Metrics::default();
            let mut tasks = tokio::task::JoinSet::new();
            let mut pauses = std::collections::HashMap::new();
            for p in &config.pipelines {
                let pipeline = Pipeline::from(p);
                pauses.insert(p.name.get_ref().clone(), pipeline.relay.pause.clone());
                tasks.spawn(pipeline.run_shown(shutdown.clone(), metrics.clone()));
            }
            for c in &config.cdcs {
                let (metrics, name) = (metrics.clone(), c.name.get_ref().clone());
                tasks.spawn(
                    cdc::Cdc::from(c)
                        .run(shutdown.clone(), move |stats| metrics.add_cdc(&name, stats)),
                );
            }
            batch::spawn_all(&config, &mut tasks, &metrics, &shutdown);
            for f in &config.forwarders {
                let (metrics, name) = (metrics.clone(), f.name.get_ref().clone());
                tasks.spawn(
                    forward::Forward::from(f).run(shutdown.clone(), move |stats| {
                        metrics.add_forwarder(&name, stats)
                    }),
                );
            }
            let mut started = Ok(());
            let mut admin_layer = None;
            for c in &config.consumers {
                let consumer = consume::Consumer::from(c);
                match consumer.start(&shutdown).await {
                    Ok(None) => break,
                    Ok(Some((router, stats))) => {
                        metrics.add_consumer(&consumer.name, stats);
                        tasks.spawn(consume::Consumer::run(
                            consumer.name.clone(),
                            router,
                            shutdown.clone(),
                        ));
                    }
                    Err(e) => {
                        started = Err(e);
                        break;
                    }
                }
            }
            if started.is_ok() {
                if let Some(http) = &config.http {
                    let api = match &config.events_api {
                        Some(events) => events_api::router(events, http, &shutdown).await,
                        None => Ok(Some(axum::Router::new())),
                    };
                    let api = api.and_then(|api| {
                        let admin =
                            admin::router(&config, http, metrics.clone(), pauses, &shutdown)?;
                        Ok(api.map(|api| match admin {
                            Some((routes, layer)) => {
                                admin_layer = Some(layer);
                                api.merge(routes)
                            }
                            None => api,
                        }))
                    });
                    // `None`: shut down before the events database was reached.
                    // The server is one of the daemon's tasks: with nothing but
                    // the events API to run, the daemon runs until shut down.
                    let served = match api {
                        Ok(Some(api)) => {
                            metrics::serve_with(http.listen, metrics.clone(), api, shutdown.clone())
                                .await
                                .map(|server| {
                                    tasks.spawn(async move {
                                        server.await.map_err(anyhow::Error::from)
                                    });
                                })
                        }
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = served {
                        started = Err(e);
                    }
                }
            }
            let mut result = started;
            if result.is_err() {
                shutdown.cancel();
            }
            while let Some(done) = tasks.join_next().await {
                let outcome = done.map_err(anyhow::Error::from).and_then(|r| r);
                if let Err(e) = outcome {
                    // One pipeline failing to start stops the daemon: a half-running
                    // config is worse than a clear failure.
                    shutdown.cancel();
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
            if let Some(admin) = admin_layer {
                admin.finish_jobs(admin::BULK_JOB_GRACE).await;
            }
            result
        }
        Command::Check { config } => {
            let config = FerryConfig::load(&config)?;
            outln!(
                "ok: {} pipeline(s), {} consumer(s), {} forwarder(s), {} cdc, {} export(s), {} import(s)",
                config.pipelines.len(),
                config.consumers.len(),
                config.forwarders.len(),
                config.cdcs.len(),
                config.exports.len(),
                config.imports.len()
            );
            Ok(())
        }
        Command::Relay {
            database,
            to,
            migrate,
            order,
            batch_size,
            concurrency,
            topics,
            max_attempts,
            retention,
        } => {
            let sink = flag("--to", SinkConfig::from_url(&to))?;
            let retry = RetryPolicy {
                max_attempts,
                ..RetryPolicy::default()
            };
            retry.validate().context("--max-attempts")?;
            let topics = (!topics.is_empty()).then_some(topics);
            let p = Pipeline::quick(
                database,
                sink,
                order,
                batch_size.get(),
                concurrency.get(),
                topics,
                retry,
                retention,
                migrate,
            );
            p.run(shutdown_on_signal()).await
        }
        Command::Consume {
            from,
            to,
            topics,
            group,
            command,
            database,
            max_deliveries,
            timeout,
            prefetch,
            listen,
            warn_waiting,
            dedup_window,
        } => {
            let from = flag("--from", ferry_adapters::SubscriberConfig::from_url(&from))?;
            let to = flag("--to", SinkConfig::from_url(&to))?;
            let mut router = ferry_consumer::RouterConfig {
                prefetch,
                timeout,
                ..Default::default()
            };
            if let Some(retry) = router.retry.as_mut() {
                retry.max_deliveries = max_deliveries;
            }
            router.lag.warn_waiting = warn_waiting;
            router.dedup = dedup_window.map(|max_age| ferry_consumer::middleware::DedupConfig {
                capacity: 100_000,
                max_age,
            });
            router
                .validate()
                .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))?;
            let consumer = consume::Consumer {
                name: group.clone(),
                topics,
                kind: if command {
                    ferry_core::Kind::Command
                } else {
                    ferry_core::Kind::Event
                },
                group,
                database,
                migrate: true,
                from,
                to,
                router,
            };
            let shutdown = shutdown_on_signal();
            let Some((router, stats)) = consumer.start(&shutdown).await? else {
                return Ok(());
            };
            if let Some(listen) = listen {
                let metrics = metrics::Metrics::default();
                metrics.add_consumer(&consumer.name, stats);
                drop(metrics::serve(listen, metrics, shutdown.clone()).await?);
            }
            consume::Consumer::run(consumer.name, router, shutdown).await
        }
        Command::Forward {
            database,
            to,
            name,
            migrate,
            on_failure,
            max_attempts,
            batch_size,
            poll_interval,
        } => {
            let sink = flag("--to", SinkConfig::from_url(&to))?;
            let config = ferry_events::forwarder::ForwarderConfig {
                name,
                batch_size,
                poll_interval,
                on_failure,
                retry: RetryPolicy {
                    max_attempts,
                    ..RetryPolicy::default()
                },
                ..Default::default()
            };
            config.validate()?;
            let forward = forward::Forward {
                database,
                migrate,
                sink,
                config,
            };
            forward.run(shutdown_on_signal(), drop).await
        }
        Command::Serve {
            database,
            listen,
            token,
            max_limit,
            max_wait,
            migrate,
            admin_token,
            read_only_token,
        } => {
            let admin_tokens = admin::serve_tokens(admin_token, read_only_token)?;
            let token = token
                .map(ferry_events::api::BearerToken::new)
                .transpose()
                .context("--token (or FERRY_API_TOKEN)")?;
            let config = ferry_events::api::ApiConfig {
                token,
                max_limit,
                max_wait,
                shutdown: shutdown_on_signal(),
                ..Default::default()
            };
            events_api::serve(&database, migrate, listen, config, admin_tokens).await
        }
        Command::Export {
            action:
                ExportAction::Run {
                    job,
                    config,
                    window,
                },
        } => batch::export_run(&FerryConfig::load(&config)?, &job, window.as_deref()).await,
        Command::Import {
            action: ImportAction::Run { job, config },
        } => batch::import_run(&FerryConfig::load(&config)?, &job).await,
        Command::Batch {
            action: BatchAction::Status { config, job, limit },
        } => batch::status(&FerryConfig::load(&config)?, job.as_deref(), limit).await,
        Command::Cdc { action, args } => match action {
            Some(CdcAction::Status(c)) => cdc::status(&c.from, &c.name, c.mode).await,
            Some(CdcAction::Drop(c)) => cdc::drop_capture(&c.from, &c.name, c.mode).await,
            Some(CdcAction::Backfill {
                capture: c,
                tables,
                wait,
            }) => cdc::backfill(&c.from, &c.name, c.mode, &tables, wait).await,
            None => run_cdc(args).await,
        },
        Command::Migrate { database } => {
            let db = open(&database).await?;
            let applied = db.migrate().await?;
            if applied.is_empty() {
                outln!("up to date");
            } else {
                outln!("applied migrations {applied:?}");
            }
            Ok(())
        }
        Command::Status { database } => {
            let s = open(&database).await?.outbox_stats().await?;
            outln!(
                "pending {}  (retrying {})  delivered {}  dead {}",
                s.pending,
                s.retrying,
                s.delivered,
                s.dead
            );
            Ok(())
        }
        Command::Dead { action } => dead(action).await,
        Command::DeadLetters { action } => dead_letters(action).await,
    }
}

/// The value of the command-line flag `name`, or an error that names it.
fn flag<T, E: std::error::Error + 'static>(name: &str, parsed: Result<T, E>) -> anyhow::Result<T> {
    parsed.map_err(|e| anyhow::anyhow!("{name}: {}", error_chain(&e)))
}

async fn open(url: &str) -> anyhow::Result<Database> {
    Database::connect(url)
        .await
        .with_context(|| format!("cannot open {}", redact(url)))
}

/// How `list` commands print their rows.
struct Table {
    /// Printed instead of the header when there are no rows.
    empty: &'static str,
    /// The header above the rows.
    header: String,
}

impl Table {
    /// With `json`, one JSON object a line (`json_line`); else the header
    /// and a `line` a row, or `empty`.
    fn print<R>(
        &self,
        rows: &[R],
        json: bool,
        json_line: impl Fn(&R) -> serde_json::Result<String>,
        line: impl Fn(&R) -> String,
    ) -> anyhow::Result<()> {
        if json {
            for r in rows {
                outln!("{}", json_line(r)?);
            }
        } else if rows.is_empty() {
            outln!("{}", self.empty);
        } else {
            outln!("{}", self.header);
            for r in rows {
                outln!("{}", line(r));
            }
        }
        Ok(())
    }
}

async fn dead(action: DeadAction) -> anyhow::Result<()> {
    match action {
        DeadAction::List {
            database,
            limit,
            json,
        } => {
            let rows = open(&database).await?.dead_messages(limit).await?;
            let table = Table {
                empty: "no dead messages",
                header: format!(
                    "{:>8}  {:36}  {:20}  {:>8}  last error",
                    "seq", "message id", "topic", "attempts"
                ),
            };
            table.print(&rows, json, serde_json::to_string, |r| {
                format!(
                    "{:>8}  {:36}  {:20}  {:>8}  {}",
                    r.seq,
                    r.message_id,
                    r.topic,
                    r.attempts,
                    r.last_error.as_deref().unwrap_or("")
                )
            })
        }
        DeadAction::Replay { id, all, database } => {
            let which = if all {
                None
            } else {
                Some(parse_ref(id.as_deref().unwrap_or_default())?)
            };
            let n = open(&database).await?.replay_dead(which.as_ref()).await?;
            outln!("replayed {n} message(s)");
            Ok(())
        }
        DeadAction::Discard { id, database } => {
            let which = parse_ref(&id)?;
            open(&database).await?.discard_dead(&which).await?;
            outln!("discarded {which}");
            Ok(())
        }
    }
}

async fn dead_letters(action: DeadLetterAction) -> anyhow::Result<()> {
    match action {
        DeadLetterAction::List {
            database,
            consumer,
            limit,
            json,
        } => {
            let rows = open(&database)
                .await?
                .dead_letters(consumer.as_deref(), limit)
                .await?;
            let table = Table {
                empty: "no dead letters",
                header: format!(
                    "{:36}  {:16}  {:20}  {:>8}  error",
                    "id", "consumer", "topic", "attempts"
                ),
            };
            let json_line = |r: &DeadLetter| {
                let m = &r.message;
                Ok::<_, serde_json::Error>(
                    serde_json::json!({
                        "id": r.id,
                        "consumer": r.consumer,
                        "message_id": m.id,
                        "kind": m.kind,
                        "topic": m.topic,
                        "key": m.key,
                        "headers": m.headers,
                        "content_type": m.content_type,
                        "payload": String::from_utf8_lossy(&m.payload),
                        "error": r.error,
                        "attempts": r.attempts,
                        "dead_at": r.dead_at,
                    })
                    .to_string(),
                )
            };
            table.print(&rows, json, json_line, |r| {
                format!(
                    "{:36}  {:16}  {:20}  {:>8}  {}",
                    r.id, r.consumer, r.message.topic, r.attempts, r.error
                )
            })
        }
        DeadLetterAction::Replay { id, database, to } => {
            let db = open(&database).await?;
            let sink = flag("--to", SinkConfig::from_url(&to))?;
            let letter = db
                .dead_letter(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no dead letter {id}"))?;
            let sink = flag("--to", sink.build().await)?;
            // A fresh broker dedup id: the first publish is still inside the
            // broker's duplicate window (JetStream, SQS FIFO) more often than not.
            let message = letter.message.clone().replayed();
            let delivered = sink.deliver(std::slice::from_ref(&message)).await;
            match delivered.into_iter().next() {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    anyhow::bail!("{} refused the message: {}", sink.name(), e.describe())
                }
                None => anyhow::bail!("{} returned no result", sink.name()),
            }
            db.delete_dead_letter(id).await?;
            outln!(
                "replayed {id} (message {}) to {}",
                letter.message.id,
                sink.name()
            );
            Ok(())
        }
        DeadLetterAction::Discard { id, database } => {
            if !open(&database).await?.delete_dead_letter(id).await? {
                anyhow::bail!("no dead letter {id}");
            }
            outln!("discarded {id}");
            Ok(())
        }
    }
}

fn parse_ref(s: &str) -> anyhow::Result<MessageRef> {
    Ok(s.parse::<MessageRef>()?)
}

#[cfg(test)]
mod logging_tests {
    #[test]
    fn chatty_libraries_are_quieted_unless_named() {
        const NATS: &str = ",async_nats=off";
        const KAFKA_OFF: &str = ",rdkafka::client=off,librdkafka=off";
        assert_eq!(
            super::quieted("info"),
            format!("info,pg_walstream=warn,pg_walstream::retry=off{NATS},rdkafka=warn{KAFKA_OFF}")
        );
        assert_eq!(
            super::quieted("debug,ferry=trace"),
            format!(
                "debug,ferry=trace,pg_walstream=warn,pg_walstream::retry=off{NATS},rdkafka=warn{KAFKA_OFF}"
            )
        );
        assert_eq!(
            super::quieted("warn"),
            format!("warn,pg_walstream::retry=off{NATS}{KAFKA_OFF}")
        );
        assert_eq!(
            super::quieted("off"),
            format!("off,pg_walstream::retry=off{NATS}{KAFKA_OFF}")
        );
        assert_eq!(
            super::quieted("info,pg_walstream=debug"),
            format!("info,pg_walstream=debug{NATS},rdkafka=warn{KAFKA_OFF}")
        );
    }

    #[test]
    fn a_named_client_library_keeps_its_lines() {
        assert_eq!(
            super::quieted("info,async_nats=info"),
            "info,async_nats=info,pg_walstream=warn,pg_walstream::retry=off,\
             rdkafka=warn,rdkafka::client=off,librdkafka=off"
        );
        assert_eq!(
            super::quieted("warn,rdkafka=debug"),
            "warn,rdkafka=debug,pg_walstream::retry=off,async_nats=off"
        );
        assert_eq!(
            super::quieted("info,librdkafka=info"),
            "info,librdkafka=info,pg_walstream=warn,pg_walstream::retry=off,async_nats=off"
        );
        assert_eq!(
            super::quieted("async_nats=debug,rdkafka=trace,pg_walstream=info"),
            "async_nats=debug,rdkafka=trace,pg_walstream=info"
        );
    }

    /// Whether `probe` finds its line enabled under the filter `quieted`
    /// makes of `spec`.
    fn shown(spec: &str, probe: fn() -> bool) -> bool {
        use tracing_subscriber::layer::SubscriberExt;
        let filter = tracing_subscriber::EnvFilter::new(super::quieted(spec));
        let subscriber = tracing_subscriber::registry().with(filter);
        tracing::subscriber::with_default(subscriber, probe)
    }

    /// The filter `quieted` makes lets a library's lines through exactly
    /// when the user's filter names the library.
    #[test]
    fn named_libraries_log_and_others_do_not() {
        use tracing::{enabled, Level};
        assert!(!shown(
            "info",
            || enabled!(target: "async_nats", Level::INFO)
        ));
        assert!(!shown(
            "info",
            || enabled!(target: "async_nats", Level::ERROR)
        ));
        assert!(shown("info,async_nats=info", || enabled!(
            target: "async_nats",
            Level::INFO
        )));
        assert!(!shown(
            "info",
            || enabled!(target: "librdkafka", Level::ERROR)
        ));
        assert!(!shown("info", || enabled!(
            target: "rdkafka::client",
            Level::ERROR
        )));
        assert!(shown("info", || enabled!(
            target: "rdkafka::producer::base_producer",
            Level::WARN
        )));
        assert!(!shown("info", || enabled!(
            target: "rdkafka::consumer",
            Level::INFO
        )));
        assert!(shown("warn,librdkafka=warn", || enabled!(
            target: "librdkafka",
            Level::ERROR
        )));
        assert!(shown("rdkafka=debug", || enabled!(
            target: "rdkafka::client",
            Level::ERROR
        )));
        // Ferry's own lines are untouched.
        assert!(shown(
            "info",
            || enabled!(target: "ferry_delivery::health", Level::WARN)
        ));
    }
}
