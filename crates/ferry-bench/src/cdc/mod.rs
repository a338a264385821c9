//! `cdc`: ferry-cdc's captures, each beside a baseline measured in the
//! same run: the database's own log reader (`pg_recvlogical`,
//! `mariadb-binlog`), a plain `SELECT` of the trigger change table, trigger
//! mode's latency, the process's resident memory before the capture, and
//! `COPY` for the initial snapshot (and, without a database, the snapshot
//! row's cost per stage). What each figure is: `bench/README.md`.

mod latency;
mod memory;
mod snapshot;
mod stages;
mod throughput;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_cdc::{ship, Capture, ShipConfig, ShipError, ShipStats};
use ferry_core::Sink;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::report::Tsv;

/// The default PostgreSQL server (scratch databases are made on it).
pub const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The default MariaDB server.
pub const DEFAULT_MARIADB: &str = "mysql://root@127.0.0.1:3306/mysql";

/// The captured table, the same on every database.
pub const TABLE: &str = "bench_rows";

/// `ferry-bench cdc …`.
#[derive(clap::Args, Debug)]
pub struct CdcArgs {
    #[command(subcommand)]
    command: CdcCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CdcCommand {
    /// PostgreSQL log mode (PgCapture + ship to null) draining N inserts,
    /// beside pg_recvlogical draining slots made at the same point with
    /// test_decoding and with pgoutput.
    ThroughputPg(throughput::PgArgs),
    /// MariaDB binlog mode draining N inserts, beside `mariadb-binlog
    /// --verbose` decoding the same binlog range from the server.
    ThroughputMariadb(throughput::MariaDbArgs),
    /// Trigger mode (SQLite or PostgreSQL) draining N inserts, beside a
    /// plain keyset SELECT of the same change rows.
    ThroughputTriggers(throughput::TriggerArgs),
    /// Commit → sink latency at a steady rate, log mode beside trigger mode
    /// (PostgreSQL).
    LatencyPg(latency::LatencyArgs),
    /// Resident memory: before the capture, while streaming steadily, and
    /// draining one large transaction (PostgreSQL log mode).
    Memory(memory::MemoryArgs),
    /// The initial snapshot of a table (PostgreSQL log mode) beside `psql
    /// COPY … TO STDOUT` of the same table.
    SnapshotPg(snapshot::SnapshotArgs),
    /// Where a snapshot row's client time goes, without a database: build,
    /// encode, the engine's clone, drops, each timed; then `ship` from
    /// memory to null.
    SnapshotStages(stages::StagesArgs),
}

/// Runs one `cdc` sub-command.
pub async fn run(args: CdcArgs, tsv: &Tsv) -> anyhow::Result<()> {
    match args.command {
        CdcCommand::ThroughputPg(a) => throughput::run_pg(&a, tsv).await,
        CdcCommand::ThroughputMariadb(a) => throughput::run_mariadb(&a, tsv).await,
        CdcCommand::ThroughputTriggers(a) => throughput::run_triggers(&a, tsv).await,
        CdcCommand::LatencyPg(a) => latency::run(&a, tsv).await,
        CdcCommand::Memory(a) => memory::run(&a, tsv).await,
        CdcCommand::SnapshotPg(a) => snapshot::run(&a, tsv).await,
        CdcCommand::SnapshotStages(a) => stages::run(&a, tsv).await,
    }
}

/// A capture shipping to a sink on its own task.
pub struct Shipping {
    stop: CancellationToken,
    task: JoinHandle<Result<(), ShipError>>,
    /// Its counters.
    pub stats: Arc<ShipStats>,
}

impl Shipping {
    /// `ferry_cdc::ship` with its defaults (batches of 1,000, window
    /// 8,000), no dead letters (the sinks here never refuse).
    pub fn spawn<C: Capture + 'static>(capture: C, sink: Arc<dyn Sink>, name: &str) -> Self {
        let stop = CancellationToken::new();
        let stats = Arc::new(ShipStats::default());
        let task = tokio::spawn(ship(
            capture,
            sink,
            ShipConfig::new(name),
            None,
            stats.clone(),
            stop.clone(),
        ));
        Self { stop, task, stats }
    }

    /// Changes the sink accepted so far.
    pub fn delivered(&self) -> u64 {
        self.stats
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (watching every 2 ms) until `n` changes were delivered;
    /// returns when that was seen. Fails when shipping ended, or after
    /// `timeout`.
    pub async fn until_delivered(&self, n: u64, timeout: Duration) -> anyhow::Result<Instant> {
        let start = Instant::now();
        loop {
            if self.delivered() >= n {
                return Ok(Instant::now());
            }
            anyhow::ensure!(
                !self.task.is_finished(),
                "shipping ended after {} of {n} changes",
                self.delivered()
            );
            anyhow::ensure!(
                start.elapsed() < timeout,
                "only {} of {n} changes delivered after {timeout:?}",
                self.delivered()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops it (acknowledging what was delivered) and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("shipping task")??;
        Ok(())
    }
}

/// The null sink.
pub fn null_sink() -> Arc<dyn Sink> {
    Arc::new(ferry_adapters::NullSink::new())
}

/// The process's resident memory (`VmRSS`), in MB.
pub fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU time the process has used so far, all threads, user and system
/// (`/proc/self/stat`, in clock ticks of 10 ms); `None` off Linux.
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name (in parentheses, may hold spaces): state is
    // field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// `CREATE TABLE bench_rows`: a key and ~90 bytes of other columns.
pub fn create_table_sql() -> String {
    format!(
        "CREATE TABLE {TABLE} (seq BIGINT PRIMARY KEY, kind VARCHAR(16) NOT NULL, \
         amount INT NOT NULL, note VARCHAR(80) NOT NULL)"
    )
}

/// One multi-row INSERT of rows `from..to` (any dialect).
pub fn insert_sql(from: u64, to: u64) -> String {
    let mut sql = format!("INSERT INTO {TABLE} (seq, kind, amount, note) VALUES ");
    for seq in from..to {
        if seq > from {
            sql.push(',');
        }
        sql.push_str(&format!("({seq},'order',{},'note {seq:0>64}')", seq % 1000));
    }
    sql
}

/// Rows `0..n` in transactions of `txn` rows: `(from, to)` each.
pub fn ranges(n: u64, txn: u64) -> impl Iterator<Item = (u64, u64)> {
    let txn = txn.max(1);
    (0..n.div_ceil(txn)).map(move |i| (i * txn, ((i + 1) * txn).min(n)))
}

/// The scratch database's URL with a path of `name`.
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let mut u = url::Url::parse(url)?;
    u.set_path(&format!("/{name}"));
    Ok(u.to_string())
}

/// Drops replication slots (terminating their readers first), so that
/// their database can be dropped. Failures are printed.
pub async fn drop_slots(admin: &str, slots: &[String]) {
    let result = async {
        let mut conn = PgConnection::connect(admin).await?;
        for slot in slots {
            for _ in 0..100 {
                let _ = sqlx::query(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND active_pid IS NOT NULL",
                )
                .bind(slot)
                .execute(&mut conn)
                .await;
                let dropped = sqlx::query(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = $1",
                )
                .bind(slot)
                .execute(&mut conn)
                .await;
                if dropped.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let _ = conn.close().await;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        eprintln!("warning: could not drop replication slots {slots:?}: {e:#}");
    }
}

/// `a/b` as a rate per second.
pub fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}
