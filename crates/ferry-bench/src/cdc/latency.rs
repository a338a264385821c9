//! Commit → sink latency at a steady rate: PostgreSQL log mode beside
//! trigger mode on the same server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_cdc::postgres::{PgCapture, PgLogConfig, SnapshotMode};
use ferry_cdc::{Filter, TriggerCapture, TriggerConfig};
use ferry_core::Sink;
use ferry_store::Database;
use sqlx::{Connection, Executor, PgConnection};

use super::{create_table_sql, drop_slots, insert_sql, null_sink, Shipping, DEFAULT_PG, TABLE};
use crate::handoff::HandOffRecorder;
use crate::report::{percentile, Figure, Tsv};
use crate::scratch::Server;

/// `cdc latency-pg`.
#[derive(clap::Args, Debug)]
pub struct LatencyArgs {
    /// The PostgreSQL server (scratch databases are made on it).
    #[arg(long, default_value = DEFAULT_PG)]
    pub pg: String,
    /// Changes per second, one per transaction.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// How long the writer writes.
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// Trigger mode's poll interval in milliseconds (its default: 100).
    #[arg(long, default_value_t = 100)]
    pub trigger_poll_ms: u64,
    /// Diagnosis: cap the wait the shipper passes to the log capture's
    /// `read` (ms; the shipper asks for 200 ms when nothing is in flight).
    #[arg(long)]
    pub cap_read_wait_ms: Option<u64>,
    /// Skip the trigger-mode baseline.
    #[arg(long)]
    pub no_baseline: bool,
}

/// Latencies in ms, sorted; and how many came before the commit returned.
struct Measured {
    sorted: Vec<f64>,
    early: usize,
}

pub async fn run(args: &LatencyArgs, tsv: &Tsv) -> anyhow::Result<()> {
    let server = Server::parse(&args.pg)?;
    let describe = server.describe().await?;
    let log = log_mode(args, &server).await?;
    report(
        "postgres log mode",
        &log,
        args,
        &describe,
        "cdc_latency_log",
        tsv,
    )?;
    if !args.no_baseline {
        let trig = trigger_mode(args, &server).await?;
        report(
            &format!(
                "baseline: postgres trigger mode (poll {} ms)",
                args.trigger_poll_ms
            ),
            &trig,
            args,
            &describe,
            "cdc_latency_triggers",
            tsv,
        )?;
        println!(
            "ratio log/trigger: p50 {:.2}, p99 {:.2}",
            percentile(&log.sorted, 50.0) / percentile(&trig.sorted, 50.0),
            percentile(&log.sorted, 99.0) / percentile(&trig.sorted, 99.0)
        );
    }
    Ok(())
}

fn report(
    title: &str,
    m: &Measured,
    args: &LatencyArgs,
    describe: &str,
    figure: &str,
    tsv: &Tsv,
) -> anyhow::Result<()> {
    let p = |q| percentile(&m.sorted, q);
    println!(
        "{title}: commit → sink at {}/s for {} s, {} changes: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} before their commit returned)",
        args.rate,
        args.secs,
        m.sorted.len(),
        p(50.0),
        p(95.0),
        p(99.0),
        m.sorted.last().copied().unwrap_or(f64::NAN),
        m.early
    );
    for (q, name) in [(50.0, "p50"), (95.0, "p95"), (99.0, "p99"), (100.0, "max")] {
        tsv.append(&Figure {
            command: "cdc",
            database: "postgres".to_owned(),
            server: describe.to_owned(),
            sink: "null".to_owned(),
            figure: format!("{figure}_{name}"),
            run: 1,
            value: p(q),
            unit: "ms",
            settings: format!("rate={} secs={}", args.rate, args.secs),
            ..Figure::default()
        })?;
    }
    Ok(())
}

async fn log_mode(args: &LatencyArgs, server: &Server) -> anyhow::Result<Measured> {
    let scratch = server.create().await?;
    let mut config = PgLogConfig::new(
        scratch.url.clone(),
        format!("l{:08x}", rand::random::<u32>()),
    );
    config.snapshot = SnapshotMode::Never;
    config.tables = Filter {
        include: vec![format!("public.{TABLE}")],
        ..Filter::default()
    };
    let slot = config.slot_name();
    let url = scratch.url.clone();
    let result = async {
        let mut conn = PgConnection::connect(&url).await?;
        conn.execute(create_table_sql().as_str()).await?;
        let _ = conn.close().await;
        let capture = PgCapture::connect(config)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
        match args.cap_read_wait_ms {
            Some(ms) => {
                let capped = CappedWait {
                    inner: capture,
                    max: Duration::from_millis(ms),
                };
                measure(args, &url, capped).await
            }
            None => measure(args, &url, capture).await,
        }
    }
    .await;
    drop_slots(&args_admin(server), &[slot]).await;
    scratch.remove().await;
    result
}

fn args_admin(server: &Server) -> String {
    match server {
        Server::Postgres { admin } => admin.clone(),
        Server::Sqlite { .. } => String::new(),
    }
}

async fn trigger_mode(args: &LatencyArgs, server: &Server) -> anyhow::Result<Measured> {
    server
        .with_fresh(4, |url, db| async move {
            let Database::Postgres(pool) = &db else {
                anyhow::bail!("trigger latency runs on PostgreSQL");
            };
            sqlx::raw_sql(&create_table_sql()).execute(pool).await?;
            let capture = TriggerCapture::start(
                db.clone(),
                TriggerConfig {
                    snapshot: false,
                    poll_interval: Duration::from_millis(args.trigger_poll_ms),
                    ..TriggerConfig::new("bench")
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
            measure(args, &url, capture).await
        })
        .await
}

/// Ships `capture` to a recording null sink while a writer on its own
/// thread commits `rate` single-row transactions per second.
async fn measure<C: ferry_cdc::Capture + 'static>(
    args: &LatencyArgs,
    url: &str,
    capture: C,
) -> anyhow::Result<Measured> {
    let n = args.rate * args.secs;
    let recorder = Arc::new(HandOffRecorder::new(null_sink()).recording_each(n as usize));
    let sink: Arc<dyn Sink> = recorder.clone();
    let shipping = Shipping::spawn(capture, sink, "bench");
    // Let the capture settle into its read loop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rate, url_w) = (args.rate, url.to_owned());
    let writer = std::thread::spawn(move || -> anyhow::Result<Vec<(u64, Instant)>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut conn = PgConnection::connect(&url_w).await?;
            let mut commits = Vec::with_capacity(n as usize);
            let t0 = tokio::time::Instant::now();
            for seq in 0..n {
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(seq as f64 / rate as f64))
                    .await;
                let mut tx = conn.begin().await?;
                tx.execute(insert_sql(seq, seq + 1).as_str()).await?;
                tx.commit().await?;
                commits.push((seq, Instant::now()));
            }
            let _ = conn.close().await;
            Ok(commits)
        })
    });
    let commits = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the writer panicked"))??;
    shipping
        .until_delivered(n, Duration::from_secs(30))
        .await
        .context("waiting for the last changes")?;
    shipping.stop().await?;
    let mut first: HashMap<u64, Instant> = HashMap::with_capacity(n as usize);
    for (seq, stamp) in recorder.each() {
        first.entry(seq).or_insert(stamp.at);
    }
    let mut early = 0;
    let mut sorted = Vec::with_capacity(commits.len());
    for (seq, committed) in commits {
        let got = *first
            .get(&seq)
            .with_context(|| format!("change {seq} never reached the sink"))?;
        let ms = if got >= committed {
            (got - committed).as_secs_f64() * 1000.0
        } else {
            early += 1;
            -((committed - got).as_secs_f64() * 1000.0)
        };
        sorted.push(ms);
    }
    sorted.sort_by(f64::total_cmp);
    Ok(Measured { sorted, early })
}

/// A capture whose reads wait at most `max` (a diagnosis of where the
/// latency comes from: the shipper's 200 ms read wait, or the server).
struct CappedWait<C> {
    inner: C,
    max: Duration,
}

impl<C: ferry_cdc::Capture> ferry_cdc::Capture for CappedWait<C> {
    fn connector(&self) -> &'static str {
        self.inner.connector()
    }

    fn database(&self) -> &str {
        self.inner.database()
    }

    async fn read(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ferry_cdc::Captured>, ferry_cdc::CaptureError> {
        self.inner.read(max, wait.min(self.max)).await
    }

    async fn acknowledge(
        &mut self,
        checkpoint: &ferry_cdc::Checkpoint,
    ) -> Result<(), ferry_cdc::CaptureError> {
        self.inner.acknowledge(checkpoint).await
    }
}
