//! `ferry-bench`: Ferry's benchmarks. Every figure is printed beside a
//! baseline measured in the same run, and can be appended to a TSV file.
//!
//! * `drain`: a relay empties a filled outbox into a sink (null, NATS,
//!   HTTP); baselines: the fill's INSERT rate and a one-statement SQL drain.
//! * `ceiling`: how fast the database takes the same rows.
//! * `latency`: commit-to-hand-off latency at a steady rate (PostgreSQL).
//! * `all`: the standard set, with a summary table.
//! * `brokers`: publish and consume rates per broker adapter, beside the
//!   broker's raw publish rate with the same client crate.
//! * `nats-raw`: JetStream's own publish rate, the ceiling for the NATS figure.
//! * `peer`: the adapter for the bench-peers harness.
//! * `events`: the event store's append rate beside a raw insert, the
//!   forwarder's rate to a no-op handler and the HTTP API's pages/s.
//! * `forward-flaky`: the `ferry forward` CLI (one or more binaries, e.g.
//!   before and after a change) to a webhook that refuses a share of its
//!   requests with 503.
//! * `cdc`: ferry-cdc's captures (PostgreSQL and MariaDB log modes,
//!   trigger mode): drain rate, commit-to-sink latency, memory, initial
//!   snapshot, each beside the database's own tool or another mode.
//! * `batch`: ferry-batch's export and import beside `psql`'s COPY of the
//!   same rows.
//! * `admin`: the admin API's and console's latency per endpoint on a
//!   filled store, beside the naive OFFSET page and COUNT(*).
//! * `trace-overhead`: a relay's drain rate with tracing off and on.
//! * `clean`: drops scratch databases left behind by interrupted runs.
//!
//! How to run them: `bench/README.md`.

mod admin;
mod batch;
mod brokers;
mod cdc;
mod ceiling;
mod destination;
mod drain;
mod events;
mod forward_flaky;
mod handoff;
mod latency;
mod natsraw;
mod peer;
mod pipeline;
mod producer;
mod receiver;
mod relay;
mod report;
mod scratch;
mod suite;
mod trace_overhead;
mod workload;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Ferry's benchmarks.
#[derive(Parser)]
#[command(name = "ferry-bench", version, about)]
struct Cli {
    /// Append every figure to this TSV file (created with a header).
    #[arg(long, global = true, env = "FERRY_BENCH_TSV")]
    tsv: Option<PathBuf>,
    /// Log filter (tracing syntax); `RUST_LOG` works too. sqlx's
    /// slow-statement warnings (a CHECKPOINT takes seconds) are off by default.
    #[arg(long, global = true, default_value = "warn,sqlx::query=error")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drain rate of a relay into a sink, beside the fill and SQL-drain rates.
    Drain(drain::DrainArgs),
    /// The database's insert ceiling for the same rows.
    Ceiling(ceiling::CeilingArgs),
    /// Commit-to-hand-off latency at a steady rate (PostgreSQL).
    Latency(latency::LatencyArgs),
    /// The standard set on SQLite and PostgreSQL, with a summary table.
    All(suite::AllArgs),
    /// The bench-peers adapter (environment-driven; see bench/README.md).
    Peer {
        /// Which step of the harness.
        #[arg(value_enum)]
        step: peer::PeerCommand,
    },
    /// Publish and consume rates per broker, beside its raw publish rate.
    Brokers(brokers::BrokersArgs),
    /// NATS JetStream's own publish rate with the same client crate (lighter
    /// messages than the relay's): the ceiling for the relay's NATS figure.
    NatsRaw(natsraw::NatsRawArgs),
    /// The event store: append rate beside a raw insert of the same rows,
    /// forwarder rate to a no-op handler, HTTP API pages/s.
    Events(events::EventsArgs),
    /// `ferry forward` (the CLI, given binaries alternated) to a webhook
    /// answering a share of its requests 503: events/s until all are applied.
    ForwardFlaky(forward_flaky::ForwardFlakyArgs),
    /// Change data capture (ferry-cdc): throughput, latency, memory and
    /// snapshot, each beside a baseline of the same run.
    Cdc(cdc::CdcArgs),
    /// Batch hand-off (ferry-batch): export and import, each beside
    /// `psql`'s COPY of the same rows.
    Batch(batch::BatchArgs),
    /// The admin API's and console's latency (p50/p99/max per endpoint)
    /// on a filled store (1M outbox messages, 100k dead letters), beside
    /// the naive OFFSET page plus COUNT(*) of the same run.
    Admin(admin::AdminArgs),
    /// A relay's drain rate with tracing off and on (OTLP export to a
    /// local receiver), side by side.
    TraceOverhead(trace_overhead::TraceOverheadArgs),
    /// Drop scratch databases (`ferry_bench_*`) left by interrupted runs.
    Clean {
        /// The PostgreSQL server, or `sqlite://` / `sqlite:///dir`.
        #[arg(long)]
        database: String,
    },
}

fn init_logs(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // No colour codes when the log goes to a file (the harness's worker logs).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli.log_level);
    let tsv = match report::Tsv::new(cli.tsv) {
        Ok(tsv) => tsv,
        Err(e) => {
            eprintln!("ferry-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Drain(args) => drain::run(&args, &tsv).await.map(drop),
        Command::Ceiling(args) => ceiling::run(&args, &tsv).await.map(drop),
        Command::Latency(args) => latency::run(&args, &tsv).await.map(drop),
        Command::All(args) => suite::run(&args, &tsv).await,
        Command::Peer { step } => peer::run(step).await,
        Command::Brokers(args) => brokers::run(&args, &tsv).await,
        Command::Events(args) => events::run(args, &tsv).await,
        Command::Admin(args) => admin::run(args, &tsv).await,
        Command::TraceOverhead(args) => trace_overhead::run(&args, &tsv).await,
        Command::ForwardFlaky(args) => forward_flaky::run(&args, &tsv).await,
        Command::NatsRaw(args) => natsraw::run(&args, &tsv).await.map(drop),
        Command::Cdc(args) => cdc::run(args, &tsv).await,
        Command::Batch(args) => batch::run(args, &tsv).await,
        Command::Clean { database } => {
            async {
                let gone = scratch::Server::parse(&database)?.clean().await?;
                println!(
                    "dropped {} scratch database(s): {}",
                    gone.len(),
                    gone.join(" ")
                );
                anyhow::Ok(())
            }
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
