//! Drain rates: N inserts committed before the clock starts, drained by a
//! capture shipping to the null sink, beside the database's own reader of
//! the same changes.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_cdc::mariadb::{BinlogConfig, MariaDbCapture, SnapshotMode as BinlogSnapshot};
use ferry_cdc::postgres::{PgCapture, PgLogConfig, SnapshotMode};
use ferry_cdc::{Filter, TriggerCapture, TriggerConfig};
use ferry_store::Database;
use sqlx::{Connection, Executor, MySqlConnection, PgConnection, Row};

use super::{
    create_table_sql, drop_slots, insert_sql, null_sink, per_sec, ranges, Shipping,
    DEFAULT_MARIADB, DEFAULT_PG, TABLE,
};
use crate::report::{ratio, thousands, Figure, Tsv};
use crate::scratch::Server;

/// How long a drain may take before the run is failed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

/// The load, shared by the throughput sub-commands.
#[derive(clap::Args, Clone, Debug)]
pub struct Load {
    /// Row changes (inserts) to drain.
    #[arg(long, default_value_t = 200_000)]
    pub changes: u64,
    /// Rows per transaction of the load.
    #[arg(long, default_value_t = 1_000)]
    pub txn: u64,
}

/// `cdc throughput-pg`.
#[derive(clap::Args, Debug)]
pub struct PgArgs {
    /// The PostgreSQL server (a scratch database is made on it).
    #[arg(long, default_value = DEFAULT_PG)]
    pub pg: String,
    #[command(flatten)]
    pub load: Load,
}

/// `cdc throughput-mariadb`.
#[derive(clap::Args, Debug)]
pub struct MariaDbArgs {
    /// The MariaDB server (a scratch database is made on it).
    #[arg(long, default_value = DEFAULT_MARIADB)]
    pub mariadb: String,
    #[command(flatten)]
    pub load: Load,
}

/// `cdc throughput-triggers`.
#[derive(clap::Args, Debug)]
pub struct TriggerArgs {
    /// `sqlite://` (a scratch file in the temp dir) or a PostgreSQL server.
    #[arg(long, default_value = "sqlite://")]
    pub database: String,
    #[command(flatten)]
    pub load: Load,
}

fn print_pair(title: &str, n: u64, ferry: Duration, base_name: &str, base: Duration) {
    let (f, b) = (per_sec(n, ferry), per_sec(n, base));
    println!(
        "{title}: {} changes/s ({n} in {:.2} s)  |  baseline {base_name}: {} changes/s ({:.2} s)  |  ratio {}",
        thousands(f),
        ferry.as_secs_f64(),
        thousands(b),
        base.as_secs_f64(),
        ratio(f, b)
    );
}

#[allow(clippy::too_many_arguments)]
fn figure(
    database: &str,
    server: &str,
    figure: &str,
    n: u64,
    ferry: Duration,
    baseline: &str,
    base: Duration,
    load: &Load,
) -> Figure {
    Figure {
        command: "cdc",
        database: database.to_owned(),
        server: server.to_owned(),
        sink: "null".to_owned(),
        figure: figure.to_owned(),
        run: 1,
        value: per_sec(n, ferry),
        unit: "changes/s",
        baseline: baseline.to_owned(),
        baseline_value: Some(per_sec(n, base)),
        settings: format!("changes={} txn={}", load.changes, load.txn),
        notes: String::new(),
    }
}

/// PostgreSQL log mode beside `pg_recvlogical`.
pub async fn run_pg(args: &PgArgs, tsv: &Tsv) -> anyhow::Result<()> {
    let server = Server::parse(&args.pg)?;
    let describe = server.describe().await?;
    let scratch = server.create().await?;
    let name = format!("b{:08x}", rand::random::<u32>());
    let mut config = PgLogConfig::new(scratch.url.clone(), name.clone());
    config.snapshot = SnapshotMode::Never;
    config.tables = Filter {
        include: vec![format!("public.{TABLE}")],
        ..Filter::default()
    };
    let slot2 = format!("ferry_bench_recv_{name}");
    let slots = vec![config.slot_name(), slot2.clone(), format!("{slot2}_td")];
    let result = pg_inner(args, &scratch.url, config, &slot2, &describe, tsv).await;
    drop_slots(&args.pg, &slots).await;
    scratch.remove().await;
    result
}

async fn pg_inner(
    args: &PgArgs,
    url: &str,
    config: PgLogConfig,
    slot2: &str,
    describe: &str,
    tsv: &Tsv,
) -> anyhow::Result<()> {
    let n = args.load.changes;
    let mut conn = PgConnection::connect(url).await?;
    conn.execute(create_table_sql().as_str()).await?;
    let publication = config.publication_name();
    // Both slots before the load: the capture's (with its publication),
    // then the baseline's, at the same point.
    let capture = PgCapture::connect(config)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
    // The ceiling: test_decoding (the database's own text
    // decoder); pgoutput beside it, the capture's own plugin.
    let slot_td = format!("{slot2}_td");
    for (slot, plugin) in [(slot2, "pgoutput"), (slot_td.as_str(), "test_decoding")] {
        sqlx::query("SELECT pg_create_logical_replication_slot($1, $2)")
            .bind(slot)
            .bind(plugin)
            .execute(&mut conn)
            .await?;
    }
    let start = Instant::now();
    for (from, to) in ranges(n, args.load.txn) {
        conn.execute(insert_sql(from, to).as_str()).await?;
    }
    let load = start.elapsed();
    let end: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&mut conn)
        .await?;
    println!(
        "loaded {n} inserts in transactions of {} in {:.2} s; end LSN {end}",
        args.load.txn,
        load.as_secs_f64()
    );

    let start = Instant::now();
    let shipping = Shipping::spawn(capture, null_sink(), "bench");
    let done = shipping.until_delivered(n, DRAIN_TIMEOUT).await?;
    let ferry = done - start;
    shipping.stop().await?;

    let pgoutput = [
        "-o".to_owned(),
        "proto_version=1".to_owned(),
        "-o".to_owned(),
        format!("publication_names={publication}"),
    ];
    let base = recv(url, slot2, &pgoutput, &end, &mut conn).await?;
    let base_td = recv(url, &slot_td, &[], &end, &mut conn).await?;
    let _ = conn.close().await;
    print_pair(
        "postgres log mode → null",
        n,
        ferry,
        "pg_recvlogical (test_decoding, to /dev/null)",
        base_td,
    );
    print_pair(
        "postgres log mode → null",
        n,
        ferry,
        "pg_recvlogical (pgoutput, same publication, to /dev/null)",
        base,
    );
    for (name, time) in [
        ("pg_recvlogical_test_decoding", base_td),
        ("pg_recvlogical_pgoutput", base),
    ] {
        tsv.append(&figure(
            "postgres",
            describe,
            "cdc_log_drain",
            n,
            ferry,
            name,
            time,
            &args.load,
        ))?;
    }
    Ok(())
}

/// How long `pg_recvlogical` with `options` takes to drain `slot` to
/// /dev/null up to `end` (connecting included).
async fn recv(
    url: &str,
    slot: &str,
    options: &[String],
    end: &str,
    conn: &mut PgConnection,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = tokio::process::Command::new("pg_recvlogical")
        .args(["-d", url, "-S", slot, "--start"])
        .args(options)
        .args(["-E", end, "-f", "/dev/null", "--no-loop"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(DRAIN_TIMEOUT, status)
        .await
        .context("pg_recvlogical did not reach the end LSN")?
        .context("cannot run pg_recvlogical")?;
    let took = start.elapsed();
    if !status.success() {
        bail!("pg_recvlogical failed: {status}");
    }
    let confirmed: Option<String> = sqlx::query_scalar(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_one(conn)
    .await?;
    println!(
        "pg_recvlogical on {slot} stopped at end LSN {end} (its slot confirmed {confirmed:?})"
    );
    Ok(took)
}

/// MariaDB binlog mode beside `mariadb-binlog --read-from-remote-server
/// --verbose`.
pub async fn run_mariadb(args: &MariaDbArgs, tsv: &Tsv) -> anyhow::Result<()> {
    let n = args.load.changes;
    let mut admin = MySqlConnection::connect(&args.mariadb)
        .await
        .context("cannot connect to MariaDB")?;
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&mut admin)
        .await?;
    let db = format!("ferry_bench_{:016x}", rand::random::<u64>());
    admin
        .execute(format!("CREATE DATABASE {db}").as_str())
        .await?;
    let url = super::with_database(&args.mariadb, &db)?;
    let result = async {
        let mut conn = MySqlConnection::connect(&url).await?;
        conn.execute(create_table_sql().as_str()).await?;
        let mut config = BinlogConfig::new(url.clone(), format!("bench_{db}"));
        config.snapshot = BinlogSnapshot::Never;
        config.tables = Filter {
            include: vec![format!("{db}.*")],
            ..Filter::default()
        };
        let capture = MariaDbCapture::start(config)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
        let (file1, pos1) = master_status(&mut conn).await?;
        let start = Instant::now();
        for (from, to) in ranges(n, args.load.txn) {
            conn.execute(insert_sql(from, to).as_str()).await?;
        }
        let load = start.elapsed();
        let (file2, pos2) = master_status(&mut conn).await?;
        println!(
            "loaded {n} inserts in transactions of {} in {:.2} s; binlog {file1}:{pos1} → {file2}:{pos2}",
            args.load.txn,
            load.as_secs_f64()
        );
        anyhow::ensure!(file1 == file2, "the binlog rotated during the load; run again");

        let start = Instant::now();
        let shipping = Shipping::spawn(capture, null_sink(), "bench");
        let done = shipping.until_delivered(n, DRAIN_TIMEOUT).await?;
        let ferry = done - start;
        shipping.stop().await?;

        let u = url::Url::parse(&args.mariadb)?;
        let start = Instant::now();
        let mut cmd = tokio::process::Command::new("mariadb-binlog");
        cmd.args(["--read-from-remote-server", "--verbose"])
            .arg(format!("--host={}", u.host_str().unwrap_or("127.0.0.1")))
            .arg(format!("--port={}", u.port().unwrap_or(3306)))
            .arg(format!("--user={}", u.username()));
        if let Some(p) = u.password() {
            cmd.arg(format!("--password={p}"));
        }
        let status = cmd
            .arg(format!("--start-position={pos1}"))
            .arg(format!("--stop-position={pos2}"))
            .arg(&file1)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .context("cannot run mariadb-binlog")?;
        let base = start.elapsed();
        anyhow::ensure!(status.success(), "mariadb-binlog failed: {status}");
        print_pair(
            "mariadb binlog mode → null",
            n,
            ferry,
            "mariadb-binlog --read-from-remote-server --verbose (rows decoded, to /dev/null)",
            base,
        );
        tsv.append(&figure(
            "mariadb",
            &format!("MariaDB {version}"),
            "cdc_binlog_drain",
            n,
            ferry,
            "mariadb_binlog_verbose",
            base,
            &args.load,
        ))?;
        let _ = conn.close().await;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = admin
        .execute(format!("DROP DATABASE IF EXISTS {db}").as_str())
        .await
    {
        eprintln!("warning: could not drop {db}: {e}");
    }
    result
}

async fn master_status(conn: &mut MySqlConnection) -> anyhow::Result<(String, u64)> {
    let row = sqlx::query("SHOW MASTER STATUS").fetch_one(conn).await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Trigger mode beside a keyset SELECT of the change table.
pub async fn run_triggers(args: &TriggerArgs, tsv: &Tsv) -> anyhow::Result<()> {
    let server = Server::parse(&args.database)?;
    let describe = server.describe().await?;
    let label = server.label();
    server
        .with_fresh(4, |_url, db| async move {
            let n = args.load.changes;
            sqlx::raw_sql(&create_table_sql()).execute_on(&db).await?;
            let capture = TriggerCapture::start(
                db.clone(),
                TriggerConfig {
                    snapshot: false,
                    ..TriggerConfig::new("bench")
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
            let start = Instant::now();
            for (from, to) in ranges(n, args.load.txn) {
                sqlx::raw_sql(&insert_sql(from, to)).execute_on(&db).await?;
            }
            let load = start.elapsed();
            println!(
                "loaded {n} inserts in transactions of {} in {:.2} s (triggers writing the change table)",
                args.load.txn,
                load.as_secs_f64()
            );
            // The baseline first: it only reads, the capture deletes.
            let start = Instant::now();
            let read = select_changes(&db).await?;
            let base = start.elapsed();
            anyhow::ensure!(read == n, "the change table holds {read} rows, not {n}");

            let start = Instant::now();
            let shipping = Shipping::spawn(capture, null_sink(), "bench");
            let done = shipping.until_delivered(n, DRAIN_TIMEOUT).await?;
            let ferry = done - start;
            shipping.stop().await?;
            print_pair(
                &format!("{label} trigger mode → null"),
                n,
                ferry,
                "keyset SELECT of the change rows, pages of 1,000 (the reader's query, no delete)",
                base,
            );
            tsv.append(&figure(
                label,
                &describe,
                "cdc_triggers_drain",
                n,
                ferry,
                "select_change_rows",
                base,
                &args.load,
            ))?;
            Ok(())
        })
        .await
}

/// Reads every change row the way the reader does (its columns, pages of
/// 1,000 in id order, every value decoded), without deleting; returns
/// the rows read.
async fn select_changes(db: &Database) -> anyhow::Result<u64> {
    let mut after = 0i64;
    let mut count = 0u64;
    let mut bytes = 0usize;
    loop {
        let rows: Vec<ChangeRow> =
            match db {
                Database::Sqlite(p) => {
                    sqlx::query_as(
                        "SELECT id, schema_name, table_name, op, tx_id, old_row, new_row, changed_at \
                         FROM ferry_cdc_changes WHERE id > ? ORDER BY id LIMIT 1000",
                    )
                    .bind(after)
                    .fetch_all(p)
                    .await?
                }
                Database::Postgres(p) => {
                    sqlx::query_as(
                        "SELECT id, schema_name, table_name, op, tx_id, old_row::text, new_row::text, \
                         changed_at::text FROM ferry_cdc_changes WHERE id > $1 ORDER BY id LIMIT 1000",
                    )
                    .bind(after)
                    .fetch_all(p)
                    .await?
                }
                Database::Mysql(_) => bail!("not measured on MariaDB"),
            };
        let Some(last) = rows.last() else {
            break;
        };
        after = last.0;
        count += rows.len() as u64;
        bytes += rows
            .iter()
            .map(|r| r.6.as_ref().map_or(0, String::len))
            .sum::<usize>();
    }
    std::hint::black_box(bytes);
    Ok(count)
}

/// `raw_sql(..).execute` on whichever pool the database has.
trait ExecuteOn {
    async fn execute_on(self, db: &Database) -> anyhow::Result<()>;
}

/// A change table row as the baseline reads it: id, schema, table, op,
/// transaction, old row, new row, time.
type ChangeRow = (
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl ExecuteOn for sqlx::RawSql<'_> {
    async fn execute_on(self, db: &Database) -> anyhow::Result<()> {
        match db {
            Database::Sqlite(p) => self.execute(p).await.map(|_| ())?,
            Database::Postgres(p) => self.execute(p).await.map(|_| ())?,
            Database::Mysql(p) => self.execute(p).await.map(|_| ())?,
        }
        Ok(())
    }
}
