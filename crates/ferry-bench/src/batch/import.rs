//! `batch import`: `ferry_batch::import::Importer` loading one CSV batch
//! (exported by `write_parts` from the 10-column table of `export-pg`)
//! from a folder into PostgreSQL, beside `psql -c "COPY t FROM STDIN
//! WITH (FORMAT csv, HEADER)" < file` of the same file; then the same
//! batch into MariaDB (beside `LOAD DATA LOCAL INFILE` by the `mariadb`
//! client) and SQLite (beside the `sqlite3` shell's `.import --csv`).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use ferry_batch::export::write::{write_parts, PartsSpec, Query};
use ferry_batch::import::{ImportJob, Importer};
use ferry_batch::location::FolderLocation;
use ferry_batch::manifest::FORMAT_VERSION;
use ferry_batch::{FileEntry, FileFormat, Manifest, Window};
use ferry_store::Database;
use sqlx::{Connection, Executor, MySqlConnection, PgConnection};

use super::export::{create_table_sql, fill, tempdir};
use crate::cdc::{per_sec, with_database, DEFAULT_MARIADB, DEFAULT_PG};
use crate::report::{ratio, thousands, Figure, Tsv};
use crate::scratch::Server;

/// `batch import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The PostgreSQL server (a scratch database is made on it).
    #[arg(long, default_value = DEFAULT_PG)]
    pub pg: String,
    /// The MariaDB server (a scratch database is made on it).
    #[arg(long, default_value = DEFAULT_MARIADB)]
    pub mariadb: String,
    /// Rows in the batch.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Skip MariaDB and SQLite.
    #[arg(long)]
    pub postgres_only: bool,
}

const SOURCE: &str = "bench_orders";

pub async fn run(args: &ImportArgs, tsv: &Tsv) -> anyhow::Result<()> {
    let server = Server::parse(&args.pg)?;
    let describe = server.describe().await?;
    let scratch = server.create().await?;
    let dir = tempdir()?;
    let result = inner(args, &scratch.url, &describe, &dir, tsv).await;
    scratch.remove().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn inner(
    args: &ImportArgs,
    url: &str,
    describe: &str,
    dir: &Path,
    tsv: &Tsv,
) -> anyhow::Result<()> {
    let n = args.rows;
    let mut conn = PgConnection::connect(url).await?;
    for table in [SOURCE, "bench_copy", "bench_ferry"] {
        conn.execute(create_table_sql(table).as_str()).await?;
    }
    fill(&mut conn, SOURCE, n).await?;
    let batch = dir.join("batch");
    std::fs::create_dir_all(&batch)?;
    let file = write_batch(url, &batch, n).await?;

    // Baseline: the same file through psql's COPY FROM STDIN.
    let baseline = psql_copy_in(
        url,
        "COPY bench_copy FROM STDIN WITH (FORMAT csv, HEADER)",
        &file,
    )
    .await?;
    let ferry = import_into(&batch, url, "bench_ferry").await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM bench_ferry")
        .fetch_one(&mut conn)
        .await?;
    anyhow::ensure!(count as u64 == n, "imported {count} rows, expected {n}");
    let _ = conn.close().await;
    report(
        tsv,
        "postgres",
        describe,
        "psql_copy_from_stdin",
        n,
        ferry,
        baseline,
    )?;

    if args.postgres_only {
        return Ok(());
    }
    // MariaDB.
    let maria = format!("ferry_bench_{:08x}", rand::random::<u32>());
    let mut admin = MySqlConnection::connect(&args.mariadb).await?;
    admin
        .execute(format!("CREATE DATABASE {maria}").as_str())
        .await?;
    let maria_url = with_database(&args.mariadb, &maria)?;
    let result = async {
        let mut c = MySqlConnection::connect(&maria_url).await?;
        for table in ["bench_copy", "bench_ferry"] {
            c.execute(mariadb_table(table).as_str()).await?;
        }
        let _ = c.close().await;
        let baseline = mariadb_load(&args.mariadb, &maria, &file).await?;
        let ferry = import_into(&batch, &maria_url, "bench_ferry").await?;
        let server: String = sqlx::query_scalar("SELECT CONCAT('MariaDB ', VERSION())")
            .fetch_one(&mut admin)
            .await?;
        report(
            tsv,
            "mariadb",
            &server,
            "mariadb_load_data_local_infile",
            n,
            ferry,
            baseline,
        )
    }
    .await;
    let _ = admin
        .execute(format!("DROP DATABASE IF EXISTS {maria}").as_str())
        .await;
    result?;

    // SQLite.
    let db_file = dir.join("bench.db");
    let sqlite_url = format!("sqlite://{}?mode=rwc", db_file.display());
    {
        let mut c = sqlx::SqliteConnection::connect(&sqlite_url).await?;
        for table in ["bench_copy", "bench_ferry"] {
            c.execute(sqlite_table(table).as_str()).await?;
        }
        let _ = c.close().await;
    }
    let baseline = sqlite_import(&db_file, &file).await?;
    let ferry = import_into(&batch, &sqlite_url, "bench_ferry").await?;
    report(
        tsv,
        "sqlite",
        "SQLite (sqlx)",
        "sqlite3_import_csv",
        n,
        ferry,
        baseline,
    )
}

/// Exports the source table into `folder` as one CSV batch with its
/// manifest; the data file's path.
async fn write_batch(url: &str, folder: &Path, n: u64) -> anyhow::Result<std::path::PathBuf> {
    let db = Database::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let parts = folder.join("parts");
    std::fs::create_dir_all(&parts)?;
    let query = Query {
        sql: format!("SELECT * FROM {SOURCE} ORDER BY id"),
        params: vec![],
    };
    let spec = PartsSpec {
        format: FileFormat::Csv,
        gzip: false,
        max_rows_per_file: 0,
    };
    let written = write_parts(&db, &query, &spec, &parts, &|_, _| {})
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
    db.close().await;
    let part = written.parts.first().context("no part written")?;
    anyhow::ensure!(part.rows == n, "exported {} rows, expected {n}", part.rows);
    let file = folder.join("bench-1.csv");
    std::fs::rename(&part.path, &file)?;
    std::fs::remove_dir_all(&parts)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        job: "bench".to_owned(),
        window: Window {
            start: "2026-01-01T00:00:00Z".to_owned(),
            end: "2026-01-02T00:00:00Z".to_owned(),
        },
        run_id: "bench".to_owned(),
        format: FileFormat::Csv,
        gzip: false,
        columns: written.columns,
        files: vec![FileEntry {
            name: "bench-1.csv".to_owned(),
            part: 1,
            rows: part.rows,
            bytes: part.bytes,
            sha256: part.sha256.clone(),
        }],
        created_at: Utc::now(),
    };
    std::fs::write(
        folder.join(Manifest::file_name("bench")),
        manifest.to_bytes(),
    )?;
    Ok(file)
}

/// Imports the batch in `folder` into `table` of `url`; the time of the
/// pass. The batch is copied to a folder of its own first (the importer
/// archives what it imports).
async fn import_into(folder: &Path, url: &str, table: &str) -> anyhow::Result<Duration> {
    let inbox = folder.with_extension(format!("in-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&inbox)?;
    for entry in std::fs::read_dir(folder)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), inbox.join(entry.file_name()))?;
        }
    }
    let job: ImportJob = toml::from_str(&format!(
        "name = \"bench\"\nsource = {{ url = {:?} }}\n[target.database]\nurl = {:?}\ntable = {:?}\n",
        inbox.display().to_string(),
        url,
        table
    ))
    .context("import job")?;
    let location = Arc::new(FolderLocation::new(&inbox));
    let importer =
        Importer::with_location(job, location).map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
    let start = Instant::now();
    let report = importer
        .run_once()
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.describe()))?;
    let took = start.elapsed();
    anyhow::ensure!(
        report.imported.len() == 1 && report.refused.is_empty(),
        "import pass: {report:?}"
    );
    let _ = std::fs::remove_dir_all(&inbox);
    Ok(took)
}

fn report(
    tsv: &Tsv,
    database: &str,
    server: &str,
    baseline_name: &str,
    n: u64,
    ferry: Duration,
    baseline: Duration,
) -> anyhow::Result<()> {
    let (f, b) = (per_sec(n, ferry), per_sec(n, baseline));
    println!(
        "import CSV → {database}: {} rows/s ({n} rows, {:.2} s)  |  baseline {baseline_name}: {} rows/s ({:.2} s)  |  ratio {}",
        thousands(f),
        ferry.as_secs_f64(),
        thousands(b),
        baseline.as_secs_f64(),
        ratio(f, b)
    );
    tsv.append(&Figure {
        command: "batch",
        database: database.to_owned(),
        server: server.to_owned(),
        sink: "table".to_owned(),
        figure: "batch_import_csv".to_owned(),
        run: 1,
        value: f,
        unit: "rows/s",
        baseline: baseline_name.to_owned(),
        baseline_value: Some(b),
        settings: format!("rows={n} columns=10"),
        notes: String::new(),
    })
}

async fn psql_copy_in(url: &str, sql: &str, file: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = tokio::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .stdin(Stdio::from(std::fs::File::open(file)?))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .context("cannot run psql")?;
    let took = start.elapsed();
    anyhow::ensure!(status.success(), "psql failed: {status}");
    Ok(took)
}

fn mariadb_table(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, customer_id BIGINT NOT NULL, \
         amount DECIMAL(12,2) NOT NULL, rate DOUBLE, status TEXT NOT NULL, note TEXT, \
         created_at DATETIME(6) NOT NULL, day DATE NOT NULL, paid BOOLEAN NOT NULL, \
         items INT NOT NULL)"
    )
}

fn sqlite_table(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, \
         amount NUMERIC NOT NULL, rate REAL, status TEXT NOT NULL, note TEXT, \
         created_at TEXT NOT NULL, day TEXT NOT NULL, paid BOOLEAN NOT NULL, items INTEGER NOT NULL)"
    )
}

/// `LOAD DATA LOCAL INFILE` of the file by the `mariadb` client (its
/// timestamps converted by the server: `…Z` trimmed by STR_TO_DATE).
async fn mariadb_load(server: &str, database: &str, file: &Path) -> anyhow::Result<Duration> {
    let url = url::Url::parse(server)?;
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = url.port().unwrap_or(3306).to_string();
    let user = if url.username().is_empty() {
        "root".to_owned()
    } else {
        url.username().to_owned()
    };
    let sql = format!(
        "SET time_zone = '+00:00'; LOAD DATA LOCAL INFILE '{}' INTO TABLE bench_copy \
         FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY '' LINES TERMINATED BY '\\r\\n' \
         IGNORE 1 LINES (id, customer_id, amount, @rate, status, @note, @created_at, day, @paid, items) \
         SET rate = NULLIF(@rate, ''), note = NULLIF(@note, ''), \
         created_at = STR_TO_DATE(@created_at, '%Y-%m-%dT%H:%i:%s.%fZ'), paid = (@paid = 'true')",
        file.display()
    );
    let start = Instant::now();
    let status = tokio::process::Command::new("mariadb")
        .args([
            "--local-infile=1",
            "-h",
            &host,
            "-P",
            &port,
            "-u",
            &user,
            database,
            "-e",
            &sql,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .context("cannot run mariadb")?;
    let took = start.elapsed();
    anyhow::ensure!(status.success(), "mariadb failed: {status}");
    Ok(took)
}

/// The `sqlite3` shell's `.import --csv --skip 1` of the file, in one
/// transaction.
async fn sqlite_import(db: &Path, file: &Path) -> anyhow::Result<Duration> {
    let script = format!(
        "BEGIN;\n.import --csv --skip 1 {} bench_copy\nCOMMIT;\n",
        file.display()
    );
    let start = Instant::now();
    let mut child = tokio::process::Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run sqlite3")?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(script.as_bytes()).await?;
    }
    let status = child.wait().await?;
    let took = start.elapsed();
    anyhow::ensure!(status.success(), "sqlite3 failed: {status}");
    Ok(took)
}
