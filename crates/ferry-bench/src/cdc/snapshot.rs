//! The initial snapshot of one table through PostgreSQL log mode, beside
//! `psql`'s `COPY … TO STDOUT` of the same table (the baseline), and
//! `psql` reading the capture's query through a cursor 1,000 rows a
//! `FETCH` (what the rows cost to read, before changes are made of them).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_cdc::postgres::{PgCapture, PgLogConfig, SnapshotMode};
use ferry_cdc::Filter;
use sqlx::{Connection, Executor, PgConnection};

use super::{
    cpu_time, create_table_sql, drop_slots, null_sink, per_sec, Shipping, DEFAULT_PG, TABLE,
};
use crate::report::{ratio, thousands, Figure, Tsv};
use crate::scratch::Server;

/// `cdc snapshot-pg`.
#[derive(clap::Args, Debug)]
pub struct SnapshotArgs {
    /// The PostgreSQL server (a scratch database is made on it).
    #[arg(long, default_value = DEFAULT_PG)]
    pub pg: String,
    /// Rows in the table.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// The capture's `snapshot_chunk`: rows per `FETCH` (handed over
    /// `ship`'s batch at a time).
    #[arg(long, default_value_t = 1000)]
    pub chunk: usize,
}

pub async fn run(args: &SnapshotArgs, tsv: &Tsv) -> anyhow::Result<()> {
    let server = Server::parse(&args.pg)?;
    let describe = server.describe().await?;
    let scratch = server.create().await?;
    let mut config = PgLogConfig::new(
        scratch.url.clone(),
        format!("s{:08x}", rand::random::<u32>()),
    );
    config.snapshot = SnapshotMode::Initial;
    config.snapshot_chunk = args.chunk;
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
    args: &SnapshotArgs,
    url: &str,
    config: PgLogConfig,
    describe: &str,
    tsv: &Tsv,
) -> anyhow::Result<()> {
    let n = args.rows;
    let mut conn = PgConnection::connect(url).await?;
    conn.execute(create_table_sql().as_str()).await?;
    sqlx::query(&format!(
        "INSERT INTO {TABLE} (seq, kind, amount, note) \
         SELECT g, 'order', g % 1000, 'note ' || lpad(g::text, 64, '0') FROM generate_series(0, $1::bigint - 1) g"
    ))
    .bind(n as i64)
    .execute(&mut conn)
    .await?;
    conn.execute(format!("VACUUM ANALYZE {TABLE}").as_str())
        .await?;
    // Warm the cache for both.
    let _: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {TABLE}"))
        .fetch_one(&mut conn)
        .await?;
    let _ = conn.close().await;

    let copy = psql(url, &[], &format!("COPY (SELECT * FROM {TABLE}) TO STDOUT")).await?;
    // The capture's own query through a cursor, 1,000 rows a FETCH (psql's
    // FETCH_COUNT), unaligned: what reading the rows costs the server
    // and libpq, before any change is made of them.
    let cursor = psql(
        url,
        &["-A", "-t", "-v", "FETCH_COUNT=1000"],
        &format!("SELECT seq, kind, amount, note FROM {TABLE} ORDER BY seq"),
    )
    .await?;

    // From the capture's start: creating the slot and exporting its
    // snapshot are part of the snapshot's cost.
    let start = Instant::now();
    let cpu_start = cpu_time();
    let capture = PgCapture::connect(config)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
    let connected = start.elapsed();
    let shipping = Shipping::spawn(capture, null_sink(), "bench");
    let done = shipping
        .until_delivered(n, Duration::from_secs(900))
        .await?;
    let ferry = done - start;
    let cpu = cpu_start.zip(cpu_time()).map(|(a, b)| b.saturating_sub(a));
    shipping.stop().await?;

    let (f, b) = (per_sec(n, ferry), per_sec(n, copy));
    let fetched = per_sec(n, cursor);
    // The bench process's own CPU per row (every thread: reading, building,
    // encoding, delivering), apart from the server's.
    let cpu_per_row = cpu.map_or("unknown".to_owned(), |c| {
        format!("{:.2} µs", c.as_secs_f64() * 1e6 / n.max(1) as f64)
    });
    println!(
        "postgres log mode initial snapshot → null: {} rows/s ({n} rows in {:.2} s, of which {:.2} s connecting and creating the slot; process CPU {cpu_per_row}/row)  |  baseline psql COPY (SELECT * FROM t) TO STDOUT > /dev/null: {} rows/s ({:.2} s)  |  ratio {}  |  psql FETCH_COUNT=1000 of the capture's query: {} rows/s (ratio to COPY {})",
        thousands(f),
        ferry.as_secs_f64(),
        connected.as_secs_f64(),
        thousands(b),
        copy.as_secs_f64(),
        ratio(f, b),
        thousands(fetched),
        ratio(fetched, b)
    );
    tsv.append(&Figure {
        command: "cdc",
        database: "postgres".to_owned(),
        server: describe.to_owned(),
        sink: "null".to_owned(),
        figure: "cdc_snapshot".to_owned(),
        run: 1,
        value: f,
        unit: "rows/s",
        baseline: "psql_copy_to_stdout".to_owned(),
        baseline_value: Some(b),
        settings: format!("rows={n} snapshot_chunk={}", args.chunk),
        notes: format!("process_cpu_per_row={cpu_per_row} psql_cursor_fetch_1000={fetched:.0}"),
    })?;
    Ok(())
}

/// Runs `psql -c sql` against `url`, output discarded; how long it took.
async fn psql(url: &str, options: &[&str], sql: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = tokio::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(options)
        .args(["-d", url, "-c", sql])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .context("cannot run psql")?;
    let took = start.elapsed();
    anyhow::ensure!(status.success(), "psql failed: {status}");
    Ok(took)
}
