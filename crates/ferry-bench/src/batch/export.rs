//! `batch export-pg`: `ferry_batch::export::write::write_parts` of a
//! 10-column PostgreSQL table to local files (CSV, CSV + gzip, JSON
//! Lines), beside `psql -c "COPY (SELECT * FROM t) TO STDOUT WITH CSV"`
//! writing the same rows to a file in the same folder (and to /dev/null);
//! the process's peak RSS over the exports.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_batch::export::write::{write_parts, PartsSpec, Query};
use ferry_batch::FileFormat;
use ferry_store::Database;
use sqlx::{Connection, Executor, PgConnection};

use crate::cdc::{per_sec, DEFAULT_PG};
use crate::report::{ratio, thousands, Figure, Tsv};
use crate::scratch::Server;

/// The exported table.
pub const TABLE: &str = "bench_orders";

/// `batch export-pg`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The PostgreSQL server (a scratch database is made on it).
    #[arg(long, default_value = DEFAULT_PG)]
    pub pg: String,
    /// Rows in the table.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Rows per file (0: one file).
    #[arg(long, default_value_t = 0)]
    pub max_rows_per_file: u64,
}

/// `CREATE TABLE bench_orders`: ten columns of the usual kinds.
pub fn create_table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, customer_id bigint NOT NULL, \
         amount numeric(12,2) NOT NULL, rate double precision, status text NOT NULL, \
         note text, created_at timestamptz NOT NULL, day date NOT NULL, paid boolean NOT NULL, \
         items integer NOT NULL)"
    )
}

/// Fills `table` with `n` rows (a few NULLs, quotes and commas in notes).
pub async fn fill(conn: &mut PgConnection, table: &str, n: u64) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "INSERT INTO {table} SELECT g, g % 10000, (g % 100000) / 100.0, \
         CASE WHEN g % 7 = 0 THEN NULL ELSE g * 0.37 END, \
         (ARRAY['new','paid','shipped'])[g % 3 + 1], \
         CASE WHEN g % 5 = 0 THEN NULL WHEN g % 5 = 1 THEN 'say \"hi\", ' || g ELSE 'note ' || g END, \
         timestamptz '2026-01-01 00:00:00+00' + g * interval '1.25 second', \
         date '2026-01-01' + (g % 365)::int, g % 2 = 0, (g % 10)::int \
         FROM generate_series(1, $1::bigint) g"
    ))
    .bind(n as i64)
    .execute(&mut *conn)
    .await?;
    conn.execute(format!("VACUUM ANALYZE {table}").as_str())
        .await?;
    Ok(())
}

pub async fn run(args: &ExportArgs, tsv: &Tsv) -> anyhow::Result<()> {
    let server = Server::parse(&args.pg)?;
    let describe = server.describe().await?;
    let scratch = server.create().await?;
    let result = inner(args, &scratch.url, &describe, tsv).await;
    scratch.remove().await;
    result
}

async fn inner(args: &ExportArgs, url: &str, describe: &str, tsv: &Tsv) -> anyhow::Result<()> {
    let n = args.rows;
    let mut conn = PgConnection::connect(url).await?;
    conn.execute(create_table_sql(TABLE).as_str()).await?;
    fill(&mut conn, TABLE, n).await?;
    let _ = conn.close().await;
    let dir = tempdir()?;
    let copy_sql = format!("COPY (SELECT * FROM {TABLE}) TO STDOUT WITH CSV");
    // Warm the cache.
    psql_copy(url, &copy_sql, None).await?;
    let baseline_file = psql_copy(url, &copy_sql, Some(&dir.join("psql.csv"))).await?;
    let baseline_null = psql_copy(url, &copy_sql, None).await?;
    let db = Database::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let query = Query {
        sql: format!("SELECT * FROM {TABLE}"),
        params: vec![],
    };
    let rss_before = vm_hwm_mb();
    let b = per_sec(n, baseline_file);
    let b_null = per_sec(n, baseline_null);
    for (label, format, gzip) in [
        ("csv", FileFormat::Csv, false),
        ("csv_gzip", FileFormat::Csv, true),
        ("jsonl", FileFormat::Jsonl, false),
    ] {
        let out = dir.join(label);
        std::fs::create_dir_all(&out)?;
        let spec = PartsSpec {
            format,
            gzip,
            max_rows_per_file: args.max_rows_per_file,
        };
        let start = Instant::now();
        let written = write_parts(&db, &query, &spec, &out, &|_, _| {})
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
        let took = start.elapsed();
        let rows: u64 = written.parts.iter().map(|p| p.rows).sum();
        let bytes: u64 = written.parts.iter().map(|p| p.bytes).sum();
        anyhow::ensure!(rows == n, "exported {rows} rows, expected {n}");
        let f = per_sec(n, took);
        println!(
            "export postgres → {label}: {} rows/s ({n} rows, {} parts, {:.1} MB, {:.2} s)  |  baseline psql COPY … TO STDOUT WITH CSV > file: {} rows/s ({:.2} s)  |  ratio {}  |  to /dev/null: {} rows/s, ratio {}",
            thousands(f),
            written.parts.len(),
            bytes as f64 / 1e6,
            took.as_secs_f64(),
            thousands(b),
            baseline_file.as_secs_f64(),
            ratio(f, b),
            thousands(b_null),
            ratio(f, b_null),
        );
        tsv.append(&Figure {
            command: "batch",
            database: "postgres".to_owned(),
            server: describe.to_owned(),
            sink: label.to_owned(),
            figure: format!("batch_export_{label}"),
            run: 1,
            value: f,
            unit: "rows/s",
            baseline: "psql_copy_csv_to_file".to_owned(),
            baseline_value: Some(b),
            settings: format!(
                "rows={n} columns=10 max_rows_per_file={}",
                args.max_rows_per_file
            ),
            notes: format!("bytes={bytes} psql_copy_csv_to_dev_null={b_null:.0}"),
        })?;
        std::fs::remove_dir_all(&out)?;
    }
    let rss_peak = vm_hwm_mb();
    println!(
        "peak RSS of the bench process: {rss_peak:.1} MB after the exports ({rss_before:.1} MB before them; {n} rows)"
    );
    tsv.append(&Figure {
        command: "batch",
        database: "postgres".to_owned(),
        server: describe.to_owned(),
        sink: "file".to_owned(),
        figure: "batch_export_peak_rss".to_owned(),
        run: 1,
        value: rss_peak,
        unit: "MB",
        baseline: "peak_rss_before_exports".to_owned(),
        baseline_value: Some(rss_before),
        settings: format!("rows={n}"),
        notes: String::new(),
    })?;
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs `psql -c sql`, its output to `file` or /dev/null; how long it took.
pub async fn psql_copy(url: &str, sql: &str, file: Option<&Path>) -> anyhow::Result<Duration> {
    let stdout = match file {
        Some(path) => Stdio::from(std::fs::File::create(path)?),
        None => Stdio::null(),
    };
    let start = Instant::now();
    let status = tokio::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .stdin(Stdio::null())
        .stdout(stdout)
        .kill_on_drop(true)
        .status()
        .await
        .context("cannot run psql")?;
    let took = start.elapsed();
    anyhow::ensure!(status.success(), "psql failed: {status}");
    Ok(took)
}

/// A fresh folder under the system's temporary folder.
pub fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("ferry-bench-batch-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The process's peak resident memory so far (`VmHWM`), in MB.
pub fn vm_hwm_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
