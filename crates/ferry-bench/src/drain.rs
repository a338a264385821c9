//! `ferry-bench drain`: how fast a relay empties a filled outbox into a
//! sink, beside two baselines measured in the same run on the same rows:
//!
//! * **fill**: the multi-row INSERT that filled the outbox (rows/s);
//! * **sql drain**: the database's own drain floor for this table, one
//!   statement per batch (`claim … FOR UPDATE SKIP LOCKED` + `DELETE`, or
//!   the `UPDATE` that marks rows delivered, `RETURNING` the rows) with as
//!   many clients as the relay has workers and no sink, on a fresh copy.
//!
//! Drain rate = N / (time from the relay's start until it has settled all N
//! messages, watched every 2 ms through [`RelayStats`](ferry_relay::RelayStats)),
//! then checked against the table (no pending row left) and the sink.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use ferry_relay::{RelayConfig, Retention};
use ferry_store::Database;
use sqlx::Row as _;

use crate::destination::{Destination, SinkKind};
use crate::handoff::HandOffRecorder;
use crate::pipeline;
use crate::relay::{self, RelayArgs};
use crate::report::{median, ratio, thousands, Figure, Tsv};
use crate::scratch::Server;
use crate::workload::{self, PayloadShape, Row};

/// What happens to delivered rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RetentionArg {
    /// Deleted when delivered (Ferry's default).
    Delete,
    /// Kept, marked `delivered` (purged after an hour).
    Keep,
}

impl RetentionArg {
    pub(crate) fn relay(self) -> Retention {
        match self {
            RetentionArg::Delete => Retention::Delete,
            RetentionArg::Keep => Retention::Keep(Duration::from_secs(3600)),
        }
    }
    fn label(self) -> &'static str {
        match self {
            RetentionArg::Delete => "delete",
            RetentionArg::Keep => "keep",
        }
    }
}

/// Which baselines to measure besides the fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// Also the one-statement SQL drain (a second fill and drain per run).
    Sql,
    /// Only the fill.
    Fill,
}

/// `ferry-bench drain` options.
#[derive(clap::Args, Clone, Debug)]
pub struct DrainArgs {
    /// Where the scratch databases are made: `postgres://user@host:port/db`
    /// (a server; a database `ferry_bench_<random>` is created per pass and
    /// dropped after) or `sqlite://` (temp dir) / `sqlite:///some/dir`.
    #[arg(long)]
    pub database: String,
    /// The sink the relay delivers to.
    #[arg(long, value_enum, default_value_t = SinkKind::Null)]
    pub sink: SinkKind,
    /// Messages in the outbox.
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// The relay's settings.
    #[command(flatten)]
    pub relay: RelayArgs,
    /// Distinct ordering keys the messages are spread over (0: no key).
    #[arg(long, default_value_t = 1000)]
    pub keys: u32,
    /// What happens to delivered rows.
    #[arg(long, value_enum, default_value_t = RetentionArg::Delete)]
    pub retention: RetentionArg,
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Rows per INSERT statement when filling.
    #[arg(long, default_value_t = 1000)]
    pub fill_batch: usize,
    /// Baselines besides the fill.
    #[arg(long, value_enum, default_value_t = Baseline::Sql)]
    pub baseline: Baseline,
    /// NATS server, for `--sink nats`.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Give up on a drain after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// The medians of a `drain`.
#[derive(Clone, Debug)]
pub struct DrainSummary {
    /// The sink.
    pub sink: SinkKind,
    /// Relay drain, msg/s.
    pub relay: f64,
    /// Fill, rows/s.
    pub fill: f64,
    /// SQL drain, msg/s, when measured.
    pub sql: Option<f64>,
}

struct RelayPass {
    fill: Duration,
    workers: usize,
    drain: Duration,
    first_handoff: Option<Duration>,
    received: u64,
    batches: u64,
    failed: u64,
}

/// The server of `--database`, once `--messages` and `--runs` are checked
/// (the drain's and the ceiling's arguments).
pub fn server_for(database: &str, messages: usize, runs: usize) -> anyhow::Result<Server> {
    ensure!(
        messages > 0 && runs > 0,
        "--messages and --runs must be positive"
    );
    Server::parse(database)
}

/// Runs the drain benchmark; prints each run and the medians.
pub async fn run(args: &DrainArgs, tsv: &Tsv) -> anyhow::Result<DrainSummary> {
    let server = server_for(&args.database, args.messages, args.runs)?;
    let db_label = server.label();
    let described = server.describe().await?;
    let (batch_size, concurrency) = (args.relay.batch_size, args.relay.concurrency);
    let n = args.messages;
    let settings = format!(
        "messages={n} batch_size={batch_size} concurrency={concurrency} keys={} retention={} fill_batch={}",
        args.keys,
        args.retention.label(),
        args.fill_batch
    );
    println!(
        "== drain {db_label} -> {}: {} messages (~{}-byte JSON payload, {} keys), relay batch {batch_size}, {concurrency} worker(s) asked, retention {}, {} run(s)",
        args.sink.label(),
        thousands(n as f64),
        workload::payload(0, PayloadShape::Order).len(),
        args.keys,
        args.retention.label(),
        args.runs
    );
    println!("   database: {described}; a fresh database per pass");
    println!(
        "   baselines, same run: fill = multi-row INSERT, {} rows/statement, 1 client{}",
        args.fill_batch,
        if args.baseline == Baseline::Sql {
            format!(
                "; sql drain = one statement per batch of {batch_size} ({} {} RETURNING the rows), as many clients as relay workers, no sink, on a fresh copy",
                if db_label == "postgres" { "claim FOR UPDATE SKIP LOCKED +" } else { "pick by seq +" },
                if args.retention == RetentionArg::Delete { "DELETE" } else { "UPDATE status" }
            )
        } else {
            String::new()
        }
    );

    let (mut relays, mut fills, mut sqls) = (Vec::new(), Vec::new(), Vec::new());
    for r in 1..=args.runs {
        let rows = Arc::new(workload::rows(n, args.keys, PayloadShape::Order));
        let sql = if args.baseline == Baseline::Sql {
            let secs = sql_pass(&server, rows.clone(), args).await?;
            Some(n as f64 / secs.as_secs_f64())
        } else {
            None
        };
        let pass = relay_pass(&server, rows, args, r == 1).await?;
        let relay = n as f64 / pass.drain.as_secs_f64();
        let fill = n as f64 / pass.fill.as_secs_f64();
        let first = pass.first_handoff.map_or("?".to_owned(), |d| {
            format!("{:.1}", d.as_secs_f64() * 1000.0)
        });
        let retried = if pass.failed > 0 {
            format!(", {} failed attempts retried", pass.failed)
        } else {
            String::new()
        };
        println!(
            "   run {r}/{}: relay drain {} msg/s ({:.2} s, {} worker(s), first hand-off +{first} ms, \
             {} batches{retried}) | fill {} rows/s{} | relay/fill {}{}",
            args.runs,
            thousands(relay),
            pass.drain.as_secs_f64(),
            pass.workers,
            pass.batches,
            thousands(fill),
            sql.map_or(String::new(), |s| format!(
                " | sql drain {} msg/s",
                thousands(s)
            )),
            ratio(relay, fill),
            sql.map_or(String::new(), |s| format!(
                " | relay/sql {}",
                ratio(relay, s)
            )),
        );
        let figure = |name: &str,
                      value: f64,
                      unit: &'static str,
                      base: Option<(&str, f64)>,
                      notes: String| Figure {
            command: "drain",
            database: db_label.to_owned(),
            server: described.clone(),
            sink: args.sink.label().to_owned(),
            figure: name.to_owned(),
            run: r,
            value,
            unit,
            baseline: base.map(|b| b.0.to_owned()).unwrap_or_default(),
            baseline_value: base.map(|b| b.1),
            settings: settings.clone(),
            notes,
        };
        tsv.append(&figure(
            "fill",
            fill,
            "rows/s",
            None,
            format!("secs={:.3}", pass.fill.as_secs_f64()),
        ))?;
        if let Some(s) = sql {
            tsv.append(&figure(
                "sql_drain",
                s,
                "msg/s",
                Some(("fill", fill)),
                String::new(),
            ))?;
        }
        tsv.append(&figure(
            "relay_drain",
            relay,
            "msg/s",
            Some(sql.map_or(("fill", fill), |s| ("sql_drain", s))),
            format!(
                "secs={:.3} workers={} first_handoff_ms={} batches={} failed={} received={}",
                pass.drain.as_secs_f64(),
                pass.workers,
                pass.first_handoff
                    .map_or(-1.0, |d| d.as_secs_f64() * 1000.0),
                pass.batches,
                pass.failed,
                pass.received
            ),
        ))?;
        relays.push(relay);
        fills.push(fill);
        if let Some(s) = sql {
            sqls.push(s);
        }
    }
    let summary = DrainSummary {
        sink: args.sink,
        relay: median(&relays),
        fill: median(&fills),
        sql: (!sqls.is_empty()).then(|| median(&sqls)),
    };
    println!(
        "   median of {}: relay drain {} msg/s | fill {} rows/s{} | relay/fill {}{}",
        args.runs,
        thousands(summary.relay),
        thousands(summary.fill),
        summary.sql.map_or(String::new(), |s| format!(
            " | sql drain {} msg/s",
            thousands(s)
        )),
        ratio(summary.relay, summary.fill),
        summary.sql.map_or(String::new(), |s| format!(
            " | relay/sql {}",
            ratio(summary.relay, s)
        )),
    );
    Ok(summary)
}

/// Fresh database, fill, settle, relay until all N are settled.
async fn relay_pass(
    server: &Server,
    rows: Arc<Vec<Row>>,
    args: &DrainArgs,
    describe: bool,
) -> anyhow::Result<RelayPass> {
    let conns = args.relay.concurrency as u32 + 2;
    server
        .with_fresh(conns, |_, db| async move {
            let fill = workload::fill(&db, rows.clone(), args.fill_batch).await?;
            // A running relay has its connections open already.
            workload::warm(&db, args.relay.concurrency + 1).await?;
            let dest = Destination::start(args.sink, &args.nats_url).await?;
            if describe {
                println!("   sink: {}", dest.description);
            }
            let result = relay_drain(&db, &dest, rows.len(), args).await;
            dest.stop().await;
            result.map(|pass| RelayPass { fill, ..pass })
        })
        .await
}

async fn relay_drain(
    db: &Database,
    dest: &Destination,
    n: usize,
    args: &DrainArgs,
) -> anyhow::Result<RelayPass> {
    let recorder = Arc::new(HandOffRecorder::new(dest.sink.clone()));
    let config = RelayConfig {
        retention: args.retention.relay(),
        ..args.relay.config("bench")
    };
    let workers = relay::workers(db, config.concurrency);
    let relay = pipeline::spawn(db, recorder.clone(), config);
    let deadline = relay.started + Duration::from_secs(args.timeout_secs);
    let n64 = n as u64;
    let outcome = loop {
        let settled = relay.stats.delivered() + relay.stats.dead.load(Ordering::Relaxed);
        if settled >= n64 {
            break Ok(relay.started.elapsed());
        }
        if relay.has_ended() {
            break Err(anyhow::anyhow!(
                "the relay stopped early ({settled} of {n} settled)"
            ));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "drain timed out after {} s ({settled} of {n} settled)",
                args.timeout_secs
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let first_handoff = recorder
        .first()
        .map(|s| s.at.saturating_duration_since(relay.started));
    let stats = relay.stats.clone();
    relay.stop().await;
    let drain = outcome?;

    let dead = stats.dead.load(Ordering::Relaxed);
    ensure!(dead == 0, "{dead} messages were dead-lettered; see the log");
    let left = db.outbox_stats().await?;
    ensure!(
        left.pending == 0,
        "{} messages still pending after the drain",
        left.pending
    );
    let received = dest.received().await?;
    if received < n64 {
        bail!("the sink got {received} of {n} messages");
    }
    Ok(RelayPass {
        fill: Duration::ZERO,
        workers,
        drain,
        first_handoff,
        received,
        batches: stats.batches.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
    })
}

/// Fresh database, fill, settle, drain with plain SQL from as many clients
/// as the relay would run workers; returns the drain time.
async fn sql_pass(
    server: &Server,
    rows: Arc<Vec<Row>>,
    args: &DrainArgs,
) -> anyhow::Result<Duration> {
    let conns = args.relay.concurrency as u32 + 1;
    server
        .with_fresh(conns, |_, db| async move {
            let clients = relay::workers(&db, args.relay.concurrency);
            workload::fill(&db, rows, args.fill_batch).await?;
            workload::warm(&db, clients).await?;
            let took = sql_drain(&db, args.relay.batch_size, clients, args.retention).await?;
            let left = db.outbox_stats().await?;
            ensure!(
                left.pending == 0,
                "sql drain left {} pending rows",
                left.pending
            );
            Ok(took)
        })
        .await
}

/// The columns the relay's claim reads.
const COLUMNS: &str =
    "seq, message_id, kind, topic, message_key, headers, content_type, payload, attempts, created_at";

/// One batch of the SQL drain: claim and delete (or mark) in one statement,
/// returning the rows. `$1`/`?` is the batch size.
fn drain_statement(db: &Database, retention: RetentionArg) -> String {
    match (db, retention) {
        // Server::parse refuses MariaDB, so no drain ever gets here.
        (Database::Mysql(_), _) => String::new(),
        (Database::Postgres(_), retention) => {
            let claim = "WITH c AS (SELECT seq FROM ferry_outbox WHERE status = 'pending' \
                         ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED)";
            let settle = match retention {
                RetentionArg::Delete => "DELETE FROM ferry_outbox o USING c WHERE o.seq = c.seq",
                RetentionArg::Keep => {
                    "UPDATE ferry_outbox o SET status = 'delivered', delivered_at = now(), \
                     attempts = o.attempts + 1 FROM c WHERE o.seq = c.seq"
                }
            };
            let returned: Vec<String> = COLUMNS
                .split(", ")
                .chain(["payload_bytes"])
                .map(|c| format!("o.{c}"))
                .collect();
            format!("{claim} {settle} RETURNING {}", returned.join(", "))
        }
        (Database::Sqlite(_), retention) => {
            let pick = "seq IN (SELECT seq FROM ferry_outbox WHERE status = 'pending' \
                        ORDER BY seq LIMIT ?)";
            let settle = match retention {
                RetentionArg::Delete => "DELETE FROM ferry_outbox",
                RetentionArg::Keep => {
                    "UPDATE ferry_outbox SET status = 'delivered', \
                     delivered_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), attempts = attempts + 1"
                }
            };
            format!("{settle} WHERE {pick} RETURNING {COLUMNS}")
        }
    }
}

/// Runs one batch of the SQL drain; returns how many rows it took. The
/// payloads are read, as a consumer of the rows would.
async fn drain_batch(db: &Database, sql: &str, batch: u32) -> anyhow::Result<usize> {
    let size = i64::from(batch);
    Ok(match db {
        Database::Mysql(_) => anyhow::bail!("the benchmark does not run on MariaDB"),
        Database::Postgres(pool) => {
            let rows = sqlx::query(sql).bind(size).fetch_all(pool).await?;
            for r in &rows {
                r.try_get::<Option<String>, _>("payload")?;
            }
            rows.len()
        }
        Database::Sqlite(pool) => {
            let rows = sqlx::query(sql).bind(size).fetch_all(pool).await?;
            for r in &rows {
                r.try_get::<Vec<u8>, _>("payload")?;
            }
            rows.len()
        }
    })
}

/// Drains the pending rows with one statement per batch from `clients`
/// connections, each until it finds nothing left; returns the time taken.
pub async fn sql_drain(
    db: &Database,
    batch: u32,
    clients: usize,
    retention: RetentionArg,
) -> anyhow::Result<Duration> {
    let sql = Arc::new(drain_statement(db, retention));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        let (db, sql) = (db.clone(), sql.clone());
        tasks.spawn(async move {
            while drain_batch(&db, &sql, batch).await? > 0 {}
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a sql drain client panicked")??;
    }
    Ok(started.elapsed())
}
