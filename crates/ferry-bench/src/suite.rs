//! `ferry-bench all`: the standard set, in one invocation so that every
//! ratio compares figures taken together: on SQLite and on PostgreSQL the
//! insert ceiling, then the relay's drain to the null, NATS and HTTP sinks
//! (the null drain with its SQL-drain baseline); then latency on
//! PostgreSQL. Ends with a Markdown summary table of medians and ratios.

use crate::ceiling::{self, CeilingArgs, CeilingSummary};
use crate::destination::SinkKind;
use crate::drain::{self, Baseline, DrainArgs, DrainSummary, RetentionArg};
use crate::latency::{self, LatencyArgs, LatencySummary};
use crate::relay::RelayArgs;
use crate::report::{ratio, thousands, Tsv};

/// `ferry-bench all` options.
#[derive(clap::Args, Clone, Debug)]
pub struct AllArgs {
    /// The PostgreSQL server, e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
    #[arg(long)]
    pub pg: String,
    /// Where the SQLite scratch files go: `sqlite://` (temp dir) or `sqlite:///dir`.
    #[arg(long, default_value = "sqlite://")]
    pub sqlite: String,
    /// NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Sinks to drain to.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "null,nats,http"
    )]
    pub sinks: Vec<SinkKind>,
    /// Messages per drain and per ceiling measurement.
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// Runs of each drain and ceiling measurement.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The relay's settings.
    #[command(flatten)]
    pub relay: RelayArgs,
    /// Distinct ordering keys.
    #[arg(long, default_value_t = 1000)]
    pub keys: u32,
    /// Latency: messages per second.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Latency: seconds per run.
    #[arg(long, default_value_t = 20.0)]
    pub secs: f64,
    /// Latency: runs.
    #[arg(long, default_value_t = 3)]
    pub latency_runs: usize,
}

struct PerDatabase {
    label: &'static str,
    ceiling: CeilingSummary,
    drains: Vec<DrainSummary>,
}

/// Runs everything and prints the summary.
pub async fn run(args: &AllArgs, tsv: &Tsv) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut dbs = Vec::new();
    for database in [&args.sqlite, &args.pg] {
        let ceiling = ceiling::run(
            &CeilingArgs {
                database: database.clone(),
                messages: args.messages,
                clients: 4,
                single_row_messages: None,
                keys: args.keys,
                runs: args.runs,
            },
            tsv,
        )
        .await?;
        let mut drains = Vec::new();
        for &sink in &args.sinks {
            drains.push(
                drain::run(
                    &DrainArgs {
                        database: database.clone(),
                        sink,
                        messages: args.messages,
                        relay: args.relay.clone(),
                        keys: args.keys,
                        retention: RetentionArg::Delete,
                        runs: args.runs,
                        fill_batch: 1000,
                        // The SQL drain does not involve the sink: measured once, with the null sink.
                        baseline: if sink == SinkKind::Null {
                            Baseline::Sql
                        } else {
                            Baseline::Fill
                        },
                        nats_url: args.nats_url.clone(),
                        timeout_secs: 600,
                    },
                    tsv,
                )
                .await?,
            );
        }
        dbs.push(PerDatabase {
            label: ceiling.database,
            ceiling,
            drains,
        });
    }
    let latency = latency::run(
        &LatencyArgs {
            database: args.pg.clone(),
            rate: args.rate,
            secs: args.secs,
            runs: args.latency_runs,
            relay: args.relay.clone(),
            keys: args.keys,
            autocommit: false,
            warmup: 1.0,
        },
        tsv,
    )
    .await?;
    print_summary(args, &dbs, &latency, started.elapsed());
    Ok(())
}

fn print_summary(
    args: &AllArgs,
    dbs: &[PerDatabase],
    latency: &LatencySummary,
    took: std::time::Duration,
) {
    println!();
    println!(
        "== summary: medians of {} run(s), {} messages (~{}-byte payload, {} keys), relay batch {}, {} worker(s) (SQLite: 1); took {:.0} s",
        args.runs,
        thousands(args.messages as f64),
        crate::workload::payload(0, crate::workload::PayloadShape::Order).len(),
        args.keys,
        args.relay.batch_size,
        args.relay.concurrency,
        took.as_secs_f64()
    );
    println!("   database, relay, sinks' servers and the webhook receiver share this machine's {} core(s).", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!();
    println!("| database | figure | median | ÷ ceiling 100/txn ×1 | ÷ ceiling 100/txn ×4 | ÷ sql drain | ÷ relay → null |");
    println!("|---|---|---|---|---|---|---|");
    for db in dbs {
        let c1 = db.ceiling.rate(100, 1).unwrap_or(f64::NAN);
        let c4 = db.ceiling.rate(100, 4).unwrap_or(f64::NAN);
        for (shape, rate) in &db.ceiling.rates {
            println!(
                "| {} | ceiling: {} | {} rows/s | {} | {} | | |",
                db.label,
                shape.label(),
                thousands(*rate),
                ratio(*rate, c1),
                if shape.clients == 1 && shape.rows_per_txn == 100 {
                    String::new()
                } else {
                    ratio(*rate, c4)
                },
            );
        }
        let sql = db.drains.iter().find_map(|d| d.sql).unwrap_or(f64::NAN);
        let null = db
            .drains
            .iter()
            .find(|d| d.sink == SinkKind::Null)
            .map_or(f64::NAN, |d| d.relay);
        if sql.is_finite() {
            println!(
                "| {} | sql drain (1 statement/batch, no sink) | {} msg/s | {} | {} | | |",
                db.label,
                thousands(sql),
                ratio(sql, c1),
                ratio(sql, c4)
            );
        }
        for d in &db.drains {
            println!(
                "| {} | relay drain → {} | {} msg/s | {} | {} | {} | {} |",
                db.label,
                d.sink.label(),
                thousands(d.relay),
                ratio(d.relay, c1),
                ratio(d.relay, c4),
                ratio(d.relay, sql),
                if d.sink == SinkKind::Null {
                    String::new()
                } else {
                    ratio(d.relay, null)
                },
            );
        }
    }
    println!(
        "| postgres | commit → hand-off at {} msg/s, p50 / p99 / max | {:.2} / {:.2} / {:.2} ms | commit ack p50 / p99: {:.2} / {:.2} ms | | | |",
        latency.rate, latency.p50, latency.p99, latency.max, latency.ack_p50, latency.ack_p99
    );
}
