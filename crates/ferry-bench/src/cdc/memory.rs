//! Resident memory of the bench process running PostgreSQL log mode to
//! the null sink: before the capture starts, while it streams a steady
//! load, and while it drains one large transaction.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_cdc::postgres::{PgCapture, PgLogConfig, SnapshotMode};
use ferry_cdc::Filter;
use sqlx::{Connection, Executor, PgConnection};

use super::{
    create_table_sql, drop_slots, insert_sql, null_sink, rss_mb, Shipping, DEFAULT_PG, TABLE,
};
use crate::report::{median, thousands, Figure, Tsv};
use crate::scratch::Server;

/// `cdc memory`.
#[derive(clap::Args, Debug)]
pub struct MemoryArgs {
    /// The PostgreSQL server (a scratch database is made on it).
    #[arg(long, default_value = DEFAULT_PG)]
    pub pg: String,
    /// Steady load: changes per second.
    #[arg(long, default_value_t = 2_000)]
    pub steady_rate: u64,
    /// Steady load: rows per transaction.
    #[arg(long, default_value_t = 10)]
    pub steady_txn: u64,
    /// Steady load: seconds.
    #[arg(long, default_value_t = 15)]
    pub steady_secs: u64,
    /// Rows of the single large transaction.
    #[arg(long, default_value_t = 1_000_000)]
    pub big_rows: u64,
}

const BASELINE: u8 = 0;
const STEADY: u8 = 1;
const BIG: u8 = 2;

/// Samples VmRSS every 100 ms, each tagged with the phase it was taken in.
struct Sampler {
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(u8, f64)>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start() -> Self {
        let phase = Arc::new(AtomicU8::new(BASELINE));
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (p, s, v) = (phase.clone(), stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let x = rss_mb();
                v.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((p.load(Ordering::Relaxed), x));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self {
            phase,
            stop,
            samples,
            thread,
        }
    }

    fn enter(&self, phase: u8) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    fn finish(self) -> Vec<(u8, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let v = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        v.clone()
    }
}

pub async fn run(args: &MemoryArgs, tsv: &Tsv) -> anyhow::Result<()> {
    let server = Server::parse(&args.pg)?;
    let describe = server.describe().await?;
    let scratch = server.create().await?;
    let mut config = PgLogConfig::new(
        scratch.url.clone(),
        format!("m{:08x}", rand::random::<u32>()),
    );
    config.snapshot = SnapshotMode::Never;
    config.tables = Filter {
        include: vec![format!("public.{TABLE}")],
        ..Filter::default()
    };
    let slot = config.slot_name();
    let url = scratch.url.clone();
    let result = inner(args, &url, config, &describe, tsv).await;
    drop_slots(&args.pg, &[slot]).await;
    scratch.remove().await;
    result
}

async fn inner(
    args: &MemoryArgs,
    url: &str,
    config: PgLogConfig,
    describe: &str,
    tsv: &Tsv,
) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    conn.execute(create_table_sql().as_str()).await?;
    let sampler = Sampler::start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_mb();

    let capture = PgCapture::connect(config)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
    let shipping = Shipping::spawn(capture, null_sink(), "bench");
    sampler.enter(STEADY);
    // The steady load: open loop, `steady_txn` rows per transaction.
    let txns = args.steady_rate * args.steady_secs / args.steady_txn.max(1);
    let every = Duration::from_secs_f64(args.steady_txn.max(1) as f64 / args.steady_rate as f64);
    let t0 = tokio::time::Instant::now();
    let mut seq = 0u64;
    for i in 0..txns {
        tokio::time::sleep_until(t0 + every * i as u32).await;
        conn.execute(insert_sql(seq, seq + args.steady_txn).as_str())
            .await?;
        seq += args.steady_txn;
    }
    shipping
        .until_delivered(seq, Duration::from_secs(60))
        .await?;

    // One transaction of `big_rows` rows, made by the server.
    sampler.enter(BIG);
    let start = Instant::now();
    sqlx::query(&format!(
        "INSERT INTO {TABLE} (seq, kind, amount, note) \
         SELECT g, 'order', g % 1000, 'note ' || lpad(g::text, 64, '0') FROM generate_series($1::bigint, $2::bigint) g"
    ))
    .bind(seq as i64)
    .bind((seq + args.big_rows - 1) as i64)
    .execute(&mut conn)
    .await?;
    let committed = start.elapsed();
    let total = seq + args.big_rows;
    let done = shipping
        .until_delivered(total, Duration::from_secs(900))
        .await?;
    let drained = done - start;
    shipping.stop().await?;
    let _ = conn.close().await;
    let samples = sampler.finish();

    let of = |phase: u8| -> Vec<f64> {
        samples
            .iter()
            .filter(|(p, _)| *p == phase)
            .map(|(_, x)| *x)
            .collect()
    };
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let (steady, big) = (of(STEADY), of(BIG));
    println!("baseline (bench process before the capture starts): {baseline:.1} MB RSS");
    println!(
        "steady streaming ({} changes/s in transactions of {}, {} s): median {:.1} MB, max {:.1} MB RSS ({} samples)",
        args.steady_rate,
        args.steady_txn,
        args.steady_secs,
        median(&steady),
        max(&steady),
        steady.len()
    );
    println!(
        "one transaction of {} rows (committed in {:.1} s, drained {:.1} s after its INSERT started, {} changes/s): peak {:.1} MB RSS, at the end {:.1} MB ({} samples)",
        args.big_rows,
        committed.as_secs_f64(),
        drained.as_secs_f64(),
        thousands(args.big_rows as f64 / drained.as_secs_f64()),
        max(&big),
        big.last().copied().unwrap_or(f64::NAN),
        big.len()
    );
    for (figure, value) in [
        ("cdc_rss_baseline", baseline),
        ("cdc_rss_steady_median", median(&steady)),
        ("cdc_rss_steady_max", max(&steady)),
        ("cdc_rss_big_txn_peak", max(&big)),
    ] {
        tsv.append(&Figure {
            command: "cdc",
            database: "postgres".to_owned(),
            server: describe.to_owned(),
            sink: "null".to_owned(),
            figure: figure.to_owned(),
            run: 1,
            value,
            unit: "MB",
            baseline: "cdc_rss_baseline".to_owned(),
            baseline_value: Some(baseline),
            settings: format!(
                "steady_rate={} steady_txn={} steady_secs={} big_rows={}",
                args.steady_rate, args.steady_txn, args.steady_secs, args.big_rows
            ),
            ..Figure::default()
        })?;
    }
    Ok(())
}
