//! `ferry`: the daemon and its command line.

mod config;
mod pipeline;

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_core::RetryPolicy;
use ferry_relay::{CancellationToken, OrderPolicy, RelayConfig};
use ferry_sinks::SinkConfig;
use ferry_store::outbox::MessageRef;
use ferry_store::{redact, Database};
use serde::Deserialize;

use crate::config::{error_chain, FerryConfig};
use crate::pipeline::Pipeline;

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
        /// Outbox database: `postgres://…` or `sqlite://path.db`.
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
        /// Batches in flight at once (at least 1; SQLite: 1).
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
    /// Apply Ferry's migrations to a database.
    Migrate {
        /// `postgres://…` or `sqlite://path.db`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
    },
    /// Counts of pending, retrying, delivered and dead messages.
    Status {
        /// `postgres://…` or `sqlite://path.db`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
    },
    /// Inspect and act on dead-lettered messages.
    Dead {
        #[command(subcommand)]
        action: DeadAction,
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
        /// `postgres://…` or `sqlite://path.db`.
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
        /// `postgres://…` or `sqlite://path.db`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
    },
    /// Delete a dead message for good.
    Discard {
        /// Sequence number or message id.
        id: String,
        /// `postgres://…` or `sqlite://path.db`.
        #[arg(long, env = "FERRY_DATABASE")]
        database: String,
    },
}

fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Cancels the token on the first SIGINT/SIGTERM; exits at once on a second.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        signal(&mut term).await;
        tracing::info!(
            "shutdown requested; finishing batches in flight (signal again to exit at once)"
        );
        t.cancel();
        signal(&mut term).await;
        tracing::warn!("second signal: exiting now; batches in flight will be delivered again");
        std::process::exit(130);
    });
    token
}

/// The next SIGINT or SIGTERM.
async fn signal(term: &mut Option<tokio::signal::unix::Signal>) {
    let term_recv = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term_recv => {}
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => {
            let config = FerryConfig::load(&config)?;
            let shutdown = shutdown_on_signal();
            let mut tasks = tokio::task::JoinSet::new();
            for p in &config.pipelines {
                tasks.spawn(Pipeline::from(p).run(shutdown.clone()));
            }
            let mut result = Ok(());
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
            result
        }
        Command::Check { config } => {
            let config = FerryConfig::load(&config)?;
            println!("ok: {} pipeline(s)", config.pipelines.len());
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
            let sink = SinkConfig::from_url(&to)
                .map_err(|e| anyhow::anyhow!("--to: {}", error_chain(&e)))?;
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
        Command::Migrate { database } => {
            let db = open(&database).await?;
            let applied = db.migrate().await?;
            if applied.is_empty() {
                println!("up to date");
            } else {
                println!("applied migrations {applied:?}");
            }
            Ok(())
        }
        Command::Status { database } => {
            let s = open(&database).await?.outbox_stats().await?;
            println!(
                "pending {}  (retrying {})  delivered {}  dead {}",
                s.pending, s.retrying, s.delivered, s.dead
            );
            Ok(())
        }
        Command::Dead { action } => dead(action).await,
    }
}

async fn open(url: &str) -> anyhow::Result<Database> {
    Database::connect(url)
        .await
        .with_context(|| format!("cannot open {}", redact(url)))
}

async fn dead(action: DeadAction) -> anyhow::Result<()> {
    match action {
        DeadAction::List {
            database,
            limit,
            json,
        } => {
            let rows = open(&database).await?.dead_messages(limit).await?;
            if json {
                for r in &rows {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else if rows.is_empty() {
                println!("no dead messages");
            } else {
                println!(
                    "{:>8}  {:36}  {:20}  {:>8}  last error",
                    "seq", "message id", "topic", "attempts"
                );
                for r in &rows {
                    println!(
                        "{:>8}  {:36}  {:20}  {:>8}  {}",
                        r.seq,
                        r.message_id,
                        r.topic,
                        r.attempts,
                        r.last_error.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(())
        }
        DeadAction::Replay { id, all, database } => {
            let which = if all {
                None
            } else {
                Some(parse_ref(id.as_deref().unwrap_or_default())?)
            };
            let n = open(&database).await?.replay_dead(which.as_ref()).await?;
            println!("replayed {n} message(s)");
            Ok(())
        }
        DeadAction::Discard { id, database } => {
            let which = parse_ref(&id)?;
            open(&database).await?.discard_dead(&which).await?;
            println!("discarded {which}");
            Ok(())
        }
    }
}

fn parse_ref(s: &str) -> anyhow::Result<MessageRef> {
    Ok(s.parse::<MessageRef>()?)
}
