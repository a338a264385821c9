//! Batch hand-off end to end across databases and transports, with faults:
//! PostgreSQL → SFTP → MariaDB, PostgreSQL → S3 → PostgreSQL, an SFTP
//! server stopped mid-upload, exporter and importer killed mid-run.
//!
//! Everything goes through the `ferry` binary (`ferry export run`, `ferry
//! import run`, `ferry batch status`, `ferry run`) against real
//! PostgreSQL, MariaDB, OpenSSH's sshd and moto's S3.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ferry_testkit::s3::S3TestBucket;
use ferry_testkit::sftp::PrivateSshd;
use ferry_testkit::{MysqlTestDb, PgTestDb, TempDir};
use rand::{Rng, SeedableRng};
use sqlx::{Connection, Executor, MySqlConnection, PgConnection, Row};

use super::{ferry, ferry_command, sigkill, spawn_ferry, stop, wait_for, wait_until, Reaped};

// ------------------------------------------------------------- helpers

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Runs `ferry <args>`, which must succeed; its stdout.
fn ok(args: &[&str]) -> String {
    let out = ferry(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The settings of a location on the private sshd, folder `folder` under
/// its root, as TOML lines.
fn sftp_location(sshd: &PrivateSshd, folder: &str) -> String {
    format!(
        "url = \"sftp://{}@{}:{}{}/{folder}\"\nprivate_key = \"{}\"\nknown_hosts = \"{}\"\n",
        sshd.user(),
        sshd.host(),
        sshd.port(),
        sshd.root().display(),
        sshd.client_key().display(),
        sshd.known_hosts().display()
    )
}

fn s3_location(bucket: &S3TestBucket, prefix: &str) -> String {
    format!(
        "url = \"s3://{}/{prefix}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
         access_key_id = \"ferry-test\"\nsecret_access_key = \"ferry-test-secret\"\nallow_http = true\n",
        bucket.bucket, bucket.endpoint
    )
}

async fn pg(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap()
}

fn sha256_hex(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The manifests at the top of `folder` (a local path), parsed.
fn manifests(folder: &Path) -> Vec<(PathBuf, ferry_batch::Manifest)> {
    let Ok(read) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in read {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".manifest.json") {
            continue;
        }
        let bytes = std::fs::read(e.path()).unwrap();
        let m = ferry_batch::Manifest::parse(&bytes)
            .unwrap_or_else(|err| panic!("{name}: a manifest that does not parse: {err}"));
        out.push((e.path(), m));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Names (not starting with a dot) directly in `folder`, or none when it
/// does not exist.
fn names_in(folder: &Path) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut out: Vec<String> = read
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    out.sort();
    out
}

// ---------------------------------------- the values every hop must carry

/// `(id, note, amount numeric(38,10), at timestamptz, flag, day)`, as the
/// text PostgreSQL reads them from.
type Item = (
    i64,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    Option<bool>,
    Option<&'static str>,
);

const ITEMS: &[Item] = &[
    (
        1,
        Some("plain"),
        Some("1234567890123456789012345678.0123456789"),
        Some("2026-12-06 10:00:00.123456+00"),
        Some(true),
        Some("2026-12-06"),
    ),
    (
        2,
        Some("comma, \"quotes\" and\nnewline\r\nCRLF"),
        Some("-0.0000000001"),
        // Not UTC: must arrive as 2000-01-01T04:59:59.999999Z.
        Some("1999-12-31 23:59:59.999999-05"),
        Some(false),
        Some("1970-01-01"),
    ),
    (
        3,
        Some(""),
        Some("0"),
        Some("2038-01-19 03:14:08.000001+00"),
        None,
        Some("9999-12-31"),
    ),
    (4, None, None, None, None, None),
    (
        5,
        Some("non-ASCII: żółć 東京 🚢"),
        Some("-9999999999999999999999999999.9999999999"),
        Some("2026-06-30 23:59:59.5+02"),
        Some(true),
        Some("1000-01-01"),
    ),
    (
        6,
        Some("it's a \\backslash\\, a tab\there, 'single' and \"\" quotes"),
        Some("0.5"),
        Some("2026-12-06 00:00:00+00"),
        Some(false),
        Some("2024-02-29"),
    ),
    (
        7,
        Some("\"a whole quoted field\""),
        Some("99999999999999999999999999.99"),
        Some("2026-12-06 10:59:59.999999+00"),
        Some(true),
        Some("2026-12-31"),
    ),
    (
        i64::MAX,
        Some("i64::MAX"),
        Some("42"),
        Some("2026-12-06 10:45:00+00"),
        Some(true),
        Some("2026-12-07"),
    ),
    (
        i64::MIN,
        Some("i64::MIN"),
        Some("-42.1"),
        Some("1970-01-01 00:00:00+00"),
        Some(false),
        Some("2000-02-29"),
    ),
];

const ITEMS_TABLE_PG: &str = "CREATE TABLE items (id bigint PRIMARY KEY, note text, \
    amount numeric(38,10), at timestamptz, flag boolean, day date)";

async fn pg_items_source(url: &str) {
    let mut c = pg(url).await;
    c.execute(ITEMS_TABLE_PG).await.unwrap();
    for (id, note, amount, at, flag, day) in ITEMS {
        sqlx::query(
            "INSERT INTO items VALUES ($1, $2, $3::numeric, $4::timestamptz, $5, $6::date)",
        )
        .bind(id)
        .bind(note)
        .bind(amount)
        .bind(at)
        .bind(flag)
        .bind(day)
        .execute(&mut c)
        .await
        .unwrap();
    }
    c.close().await.unwrap();
}

/// A row with each value as normalised text: integers and decimals as
/// the database prints them (numeric(38,10) / DECIMAL(38,10): ten
/// decimals on both), timestamps in UTC with microseconds
/// (`YYYY-MM-DDTHH:MM:SS.ffffff`), booleans `true`/`false`, dates
/// `YYYY-MM-DD`, NULL as `None`.
type TextRow = Vec<Option<String>>;

async fn pg_items(url: &str) -> Vec<TextRow> {
    let mut c = pg(url).await;
    let rows = sqlx::query(
        "SELECT id::text, note, amount::text, \
         to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), \
         CASE WHEN flag THEN 'true' WHEN NOT flag THEN 'false' END, \
         to_char(day, 'YYYY-MM-DD') FROM items ORDER BY id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    rows.iter()
        .map(|r| (0..6).map(|i| r.get::<Option<String>, _>(i)).collect())
        .collect()
}

async fn mariadb_items(url: &str) -> Vec<TextRow> {
    let mut c = MySqlConnection::connect(url).await.unwrap();
    let rows = sqlx::query(
        "SELECT CAST(id AS CHAR), note, CAST(amount AS CHAR), \
         DATE_FORMAT(at, '%Y-%m-%dT%H:%i:%s.%f'), \
         CASE WHEN flag = 1 THEN 'true' WHEN flag = 0 THEN 'false' END, \
         DATE_FORMAT(day, '%Y-%m-%d') FROM items ORDER BY id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    rows.iter()
        .map(|r| {
            (0..6)
                .map(|i| {
                    // CAST/DATE_FORMAT may come back as binary strings.
                    r.try_get::<Option<String>, _>(i).unwrap_or_else(|_| {
                        r.get::<Option<Vec<u8>>, _>(i)
                            .map(|b| String::from_utf8(b).unwrap())
                    })
                })
                .collect()
        })
        .collect()
}

/// The source's rows as normalised text, checked against the values
/// written (so that a broken normalisation cannot hide a loss).
async fn source_items(url: &str) -> Vec<TextRow> {
    let rows = pg_items(url).await;
    assert_eq!(rows.len(), ITEMS.len());
    let by_id: BTreeMap<String, &TextRow> =
        rows.iter().map(|r| (r[0].clone().unwrap(), r)).collect();
    assert_eq!(
        by_id["2"][1].as_deref(),
        Some("comma, \"quotes\" and\nnewline\r\nCRLF")
    );
    assert_eq!(by_id["2"][3].as_deref(), Some("2000-01-01T04:59:59.999999"));
    assert_eq!(
        by_id["1"][2].as_deref(),
        Some("1234567890123456789012345678.0123456789")
    );
    assert_eq!(by_id["3"][1].as_deref(), Some(""));
    assert_eq!(
        by_id["4"],
        &vec![Some("4".to_owned()), None, None, None, None, None]
    );
    rows
}

fn items_config(
    src: &str,
    location: &str,
    target: &str,
    format: &str,
    gzip: bool,
    work: &Path,
) -> String {
    format!(
        r#"
[[export]]
name = "items"
database = "{src}"
query = "SELECT id, note, amount, at, flag, day FROM items ORDER BY id"
every = "1h"
format = "{format}"
gzip = {gzip}
work_dir = "{work}"
[export.destination]
{location}
[[import]]
name = "items"
[import.source]
{location}
[import.target.database]
url = "{target}"
table = "items"
"#,
        work = work.display()
    )
}

/// Exports the items' window by hand, imports it by hand; then exports
/// the window again, which the importer recognises and skips.
fn export_then_import(cfg: &str) {
    let out = ok(&[
        "export",
        "run",
        "items",
        "-c",
        cfg,
        "--window",
        "2026-12-06T10:30:00Z",
    ]);
    assert!(
        out.contains("[2026-12-06T10:00:00") && out.contains("succeeded"),
        "{out}"
    );
    let out = ok(&["import", "run", "items", "-c", cfg]);
    assert!(
        out.contains("imported items-20261206T100000Z")
            && out.contains(&format!("({} rows)", ITEMS.len())),
        "{out}"
    );
    ok(&[
        "export",
        "run",
        "items",
        "-c",
        cfg,
        "--window",
        "2026-12-06T10:00:00Z",
    ]);
    let out = ok(&["import", "run", "items", "-c", cfg]);
    assert!(
        out.contains("skipped items-20261206T100000Z") && !out.contains("imported items"),
        "{out}"
    );
}

// ------------------------------------ 1. PostgreSQL → SFTP → MariaDB

async fn pg_to_sftp_to_mariadb(format: &str, gzip: bool) {
    let (src, dst, dir) = (
        PgTestDb::create().await,
        MysqlTestDb::create().await,
        TempDir::new(),
    );
    let sshd = PrivateSshd::start();
    pg_items_source(&src.url).await;
    {
        let mut c = MySqlConnection::connect(&dst.url).await.unwrap();
        c.execute(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, note TEXT, amount DECIMAL(38,10), \
             at DATETIME(6), flag BOOLEAN, day DATE) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        )
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    let cfg = write_config(
        &dir.0,
        "ferry.toml",
        &items_config(
            &src.url,
            &sftp_location(&sshd, "outbox"),
            &dst.url,
            format,
            gzip,
            &dir.0.join("work"),
        ),
    );
    export_then_import(&cfg);
    let expected = source_items(&src.url).await;
    assert_eq!(mariadb_items(&dst.url).await, expected);
    // The files that went over the wire were of the format asked for.
    let archived = names_in(&sshd.root().join("outbox/archive/items-20261206T100000Z"));
    let ext = if gzip {
        format!(".{format}.gz")
    } else {
        format!(".{format}")
    };
    assert!(
        !archived.is_empty() && archived.iter().all(|n| n.ends_with(&ext)),
        "archived {archived:?}, expected *{ext}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_to_sftp_to_mariadb_csv_carries_every_value() {
    pg_to_sftp_to_mariadb("csv", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_to_sftp_to_mariadb_jsonl_gzip_carries_every_value() {
    pg_to_sftp_to_mariadb("jsonl", true).await;
}

// ------------------------------------ 2. PostgreSQL → S3 → PostgreSQL

async fn pg_to_s3_to_pg(format: &str, gzip: bool) {
    let (src, dst, dir) = (
        PgTestDb::create().await,
        PgTestDb::create().await,
        TempDir::new(),
    );
    let bucket = S3TestBucket::create().await;
    pg_items_source(&src.url).await;
    {
        let mut c = pg(&dst.url).await;
        c.execute(ITEMS_TABLE_PG).await.unwrap();
        c.close().await.unwrap();
    }
    let cfg = write_config(
        &dir.0,
        "ferry.toml",
        &items_config(
            &src.url,
            &s3_location(&bucket, "batches"),
            &dst.url,
            format,
            gzip,
            &dir.0.join("work"),
        ),
    );
    export_then_import(&cfg);
    let expected = source_items(&src.url).await;
    assert_eq!(pg_items(&dst.url).await, expected);
    // Nothing left waiting: a second pass finds no batch.
    let out = ok(&["import", "run", "items", "-c", &cfg]);
    assert!(out.contains("no complete batch waiting"), "{out}");
    assert_eq!(pg_items(&dst.url).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_to_s3_to_pg_csv_carries_every_value() {
    pg_to_s3_to_pg("csv", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_to_s3_to_pg_jsonl_gzip_carries_every_value() {
    pg_to_s3_to_pg("jsonl", true).await;
}

// ---------------------------------------------- events, for the faults

const EVENTS_TABLE: &str =
    "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, payload text NOT NULL)";

const EVENTS_QUERY: &str = "SELECT id, at, payload FROM events \
    WHERE at >= :window_start AND at < :window_end ORDER BY id";

/// `n` events from `start`, `spacing` apart, ids from 1.
async fn insert_events(url: &str, start: DateTime<Utc>, n: i64, spacing_us: i64) {
    let mut c = pg(url).await;
    c.execute(EVENTS_TABLE).await.unwrap();
    sqlx::query(
        "INSERT INTO events SELECT g, $1 + (g - 1) * ($2 * interval '1 microsecond'), \
         md5(g::text) || ', \"' || repeat('x', (g % 50)::int) || E'\"\\n' \
         FROM generate_series(1, $3::bigint) g",
    )
    .bind(start)
    .bind(spacing_us as f64)
    .bind(n)
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
}

async fn create_events_target(url: &str) {
    let mut c = pg(url).await;
    // No key: a row loaded twice would show as two rows.
    c.execute("CREATE TABLE events (id bigint, at timestamptz, payload text)")
        .await
        .unwrap();
    c.close().await.unwrap();
}

/// Ids of the events with `at` in `[from, to)`, ascending.
async fn event_ids(url: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<i64> {
    let mut c = pg(url).await;
    let ids = sqlx::query_scalar("SELECT id FROM events WHERE at >= $1 AND at < $2 ORDER BY id")
        .bind(from)
        .bind(to)
        .fetch_all(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    ids
}

async fn all_event_ids(url: &str) -> Vec<i64> {
    let mut c = pg(url).await;
    let ids = sqlx::query_scalar("SELECT id FROM events ORDER BY id")
        .fetch_all(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    ids
}

fn events_export(src: &str, location: &str, schedule: &str, work: &Path, extra: &str) -> String {
    format!(
        r#"
[[export]]
name = "events"
database = "{src}"
query = "{EVENTS_QUERY}"
{schedule}
work_dir = "{work}"
{extra}
[export.destination]
{location}
"#,
        work = work.display()
    )
}

fn events_import(location: &str, target: &str) -> String {
    format!(
        r#"
[[import]]
name = "events"
poll_interval = "100ms"
[import.source]
{location}
[import.target.database]
url = "{target}"
table = "events"
"#
    )
}

/// `(job, window_start, row_count)` of every ledger row in `url`.
async fn ledger(url: &str) -> Vec<(String, String, i64)> {
    let mut c = pg(url).await;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('ferry_batch_imports') IS NOT NULL")
        .fetch_one(&mut c)
        .await
        .unwrap();
    if !exists {
        return Vec::new();
    }
    let rows = sqlx::query(
        "SELECT job, window_start, row_count FROM ferry_batch_imports ORDER BY window_start",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .with_timezone(&Utc)
}

// ------------------------------- 3. the SFTP server down during a run

/// Checks every manifest at the top of `folder`: each of its files is
/// there with the size and SHA-256 it lists. The number of manifests.
fn check_complete(folder: &Path) -> usize {
    let found = manifests(folder);
    for (path, m) in &found {
        for f in &m.files {
            let file = folder.join(&f.name);
            let len = std::fs::metadata(&file)
                .unwrap_or_else(|e| {
                    panic!(
                        "{} is listed by {} but missing: {e}",
                        f.name,
                        path.display()
                    )
                })
                .len();
            assert_eq!(len, f.bytes, "{}: size differs from the manifest", f.name);
            assert_eq!(sha256_hex(&file), f.sha256, "{}: SHA-256 differs", f.name);
        }
    }
    found.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_down_at_start_and_mid_upload_the_run_retries_and_no_partial_batch_is_ever_visible() {
    let (src, dst, dir) = (
        PgTestDb::create().await,
        PgTestDb::create().await,
        TempDir::new(),
    );
    let mut sshd = PrivateSshd::start();
    let start = time("2026-12-06T10:00:00Z");
    // 100,000 rows in the hour, 20 files of 5,000.
    insert_events(&src.url, start, 100_000, 36_000).await;
    create_events_target(&dst.url).await;
    let location = sftp_location(&sshd, "outbox");
    let cfg = write_config(
        &dir.0,
        "ferry.toml",
        &(events_export(
            &src.url,
            &location,
            "every = \"1h\"",
            &dir.0.join("work"),
            "max_rows_per_file = 5000\n[export.retry]\nmax_attempts = 60\n\
             initial_backoff = \"100ms\"\nmax_backoff = \"300ms\"\njitter = 0.0",
        ) + &events_import(&location, &dst.url)),
    );
    let outbox = sshd.root().join("outbox");

    // Down before the run starts.
    sshd.stop();
    let mut child = ferry_command(
        "warn,ferry_batch=debug",
        &[
            "export",
            "run",
            "events",
            "-c",
            &cfg,
            "--window",
            "2026-12-06T10:30:00Z",
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let failures = Arc::new(AtomicUsize::new(0));
    let stderr = child.stderr.take().unwrap();
    let reader = {
        let failures = failures.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let line = line.unwrap_or_default();
                if line.contains("export attempt failed") {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                eprintln!("{line}");
            }
        })
    };
    let mut child = Reaped(child);

    // Sample the folder all along; bring the server back after a failed
    // attempt, stop it again once the first data file is there (while
    // the others are on their way), bring it back after the next failure.
    enum Phase {
        DownAtStart,
        Uploading,
        DownMidUpload(usize),
        Up,
    }
    let mut phase = Phase::DownAtStart;
    let (mut samples, mut with_manifest, mut stopped_mid_upload) = (0, 0, false);
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        assert!(Instant::now() < deadline, "the export run did not end");
        samples += 1;
        let seen = check_complete(&outbox);
        if seen > 0 {
            with_manifest += 1;
        }
        let done = child.0.try_wait().unwrap();
        match phase {
            Phase::DownAtStart if failures.load(Ordering::SeqCst) > 0 => {
                sshd.resume();
                phase = Phase::Uploading;
            }
            Phase::Uploading if seen == 0 && !names_in(&outbox).is_empty() => {
                sshd.stop();
                stopped_mid_upload = true;
                phase = Phase::DownMidUpload(failures.load(Ordering::SeqCst));
            }
            Phase::Uploading if seen > 0 => phase = Phase::Up,
            Phase::DownMidUpload(before) if failures.load(Ordering::SeqCst) > before => {
                sshd.resume();
                phase = Phase::Up;
            }
            _ => {}
        }
        if let Some(status) = done {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    reader.join().unwrap();
    assert!(status.success(), "the export run failed: {status:?}");
    sshd.resume();
    assert_eq!(check_complete(&outbox), 1, "one complete batch at the end");
    eprintln!(
        "{samples} samples of the folder, {with_manifest} with the manifest; \
         stopped again mid-upload: {stopped_mid_upload}; {} failed attempt(s)",
        failures.load(Ordering::SeqCst)
    );

    let status = ok(&["batch", "status", "-c", &cfg]);
    let line = status
        .lines()
        .find(|l| l.contains("succeeded"))
        .unwrap_or_else(|| panic!("no succeeded run: {status}"));
    let attempts: u32 = line
        .split_once("manual, ")
        .and_then(|(_, rest)| rest.split_once(" attempt"))
        .map(|(n, _)| n.parse().unwrap())
        .unwrap_or_else(|| panic!("no attempts in {line}"));
    assert!(attempts > 1, "{line}");
    assert!(
        attempts as usize > failures.load(Ordering::SeqCst),
        "{line}: fewer attempts than failures logged"
    );

    let out = ok(&["import", "run", "events", "-c", &cfg]);
    assert!(
        out.contains("imported") && out.contains("(100000 rows)"),
        "{out}"
    );
    let out = ok(&["import", "run", "events", "-c", &cfg]);
    assert!(out.contains("no complete batch waiting"), "{out}");
    assert_eq!(
        all_event_ids(&dst.url).await,
        (1..=100_000).collect::<Vec<_>>()
    );
}

// --------------------- 4. exporter and importer SIGKILLed, many times

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_and_importer_sigkilled_repeatedly_every_window_once() {
    let dir = TempDir::new();
    let outbox = dir.0.join("outbox");
    let location = format!("url = \"{}\"\n", outbox.display());
    sigkilled_repeatedly(&location, &outbox, &dir.0).await;
}

/// The same over SFTP, where a kill mid-upload may leave a `.…part-…`
/// file behind, which the importer must never take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_and_importer_sigkilled_repeatedly_over_sftp_every_window_once() {
    let dir = TempDir::new();
    let sshd = PrivateSshd::start();
    let location = sftp_location(&sshd, "outbox");
    sigkilled_repeatedly(&location, &sshd.root().join("outbox"), &dir.0).await;
}

/// Exporter and importer daemons on `location` (`outbox` locally) killed
/// in turn, then left to catch up; every window once, every row once.
async fn sigkilled_repeatedly(location: &str, outbox: &Path, work: &Path) {
    let seed: u64 = std::env::var("FERRY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill schedule seed: {seed} (FERRY_TEST_SEED={seed} repeats it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let (src, dst) = (PgTestDb::create().await, PgTestDb::create().await);
    // Fifteen 2 s windows back, aligned on the schedule's ticks.
    let now = Utc::now().timestamp();
    let start = DateTime::from_timestamp(now - now % 2 - 30, 0).unwrap();
    // 20,000 rows per 2 s window, for the next two minutes.
    insert_events(&src.url, start, 1_200_000, 100).await;
    create_events_target(&dst.url).await;
    let schedule = format!(
        "every = \"2s\"\nstart_at = \"{}\"\ncatch_up = \"all\"",
        start.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let export_cfg = write_config(
        work,
        "export.toml",
        &events_export(
            &src.url,
            location,
            &schedule,
            &work.join("work"),
            "batch_name = \"{job}-{window_start:%Y%m%dT%H%M%S}\"\n\
             file_name = \"{job}-{window_start:%Y%m%dT%H%M%S}-{part}.{ext}\"",
        ),
    );
    let import_cfg = write_config(work, "import.toml", &events_import(location, &dst.url));

    // Each round: both daemons started; the importer killed a random
    // moment after a load began (its COPY seen in pg_stat_activity), then
    // the exporter a random moment after a run began (its `running` row
    // seen in the run history).
    let (mut export_kills, mut import_kills, mut mid_load) = (0, 0, 0);
    // At least four rounds, more (up to twelve) until a kill has caught
    // the importer with its COPY under way.
    let mut round = 0;
    while round < 4 || (mid_load == 0 && round < 12) {
        let stale = running_runs(&src.url).await;
        let mut exporter = Reaped(spawn_ferry(&["run", "--config", &export_cfg]));
        let mut importer = Reaped(spawn_ferry(&["run", "--config", &import_cfg]));
        let i_after = Duration::from_millis(rng.gen_range(0..10));
        let e_after = Duration::from_millis(rng.gen_range(0..80));
        eprintln!(
            "round {round}: importer killed {i_after:?} after a load starts, \
             exporter {e_after:?} after a run starts"
        );
        wait_for(
            "a load to start",
            Duration::from_secs(60),
            Duration::from_millis(2),
            || loading(&dst.url),
        )
        .await;
        tokio::time::sleep(i_after).await;
        let was_loading = loading(&dst.url).await;
        assert!(importer.0.try_wait().unwrap().is_none(), "importer exited");
        sigkill(&mut importer.0);
        import_kills += 1;
        mid_load += usize::from(was_loading);
        let src_url = src.url.clone();
        wait_for(
            "a run to start",
            Duration::from_secs(60),
            Duration::from_millis(2),
            || {
                let (src_url, stale) = (src_url.clone(), stale.clone());
                async move { running_runs(&src_url).await.difference(&stale).count() > 0 }
            },
        )
        .await;
        tokio::time::sleep(e_after).await;
        assert!(exporter.0.try_wait().unwrap().is_none(), "exporter exited");
        sigkill(&mut exporter.0);
        export_kills += 1;
        round += 1;
    }
    eprintln!("{mid_load} of {import_kills} importer kills with its COPY still running");
    assert!(mid_load >= 1, "no importer kill caught a load under way");
    assert!(export_kills >= 3 && import_kills >= 3);

    // Now left alone until caught up: every window from start_at to the
    // last complete one (but the one that just closed) exported; stopped
    // between two ticks, no run under way (a run cut short by SIGTERM is
    // recorded stopped and redone: its own test below).
    let mut exporter = Reaped(spawn_ferry(&["run", "--config", &export_cfg]));
    let mut importer = Reaped(spawn_ferry(&["run", "--config", &import_cfg]));
    let src_url = src.url.clone();
    wait_for(
        "the exporter to catch up",
        Duration::from_secs(120),
        Duration::from_millis(50),
        || {
            let src_url = src_url.clone();
            async move {
                let now = Utc::now();
                let secs = now.timestamp();
                let due = DateTime::from_timestamp(secs - secs % 2 - 2, 0).unwrap();
                let into_tick = (secs % 2) * 1000 + i64::from(now.timestamp_subsec_millis());
                let done = succeeded_windows(&src_url).await;
                (300..1500).contains(&into_tick)
                    && done.last().is_some_and(|(_, end)| *end >= due)
                    && running_runs(&src_url).await.is_empty()
            }
        },
    )
    .await;
    stop(&mut exporter.0);

    let mut c = pg(&src.url).await;
    let runs: Vec<(String, String, String, Option<String>)> = sqlx::query(
        "SELECT window_start, window_end, status, error FROM ferry_batch_runs \
         WHERE job = 'events' ORDER BY started_at",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect();
    c.close().await.unwrap();
    let interrupted = runs
        .iter()
        .filter(|r| r.2 == "failed" && r.3.as_deref().unwrap_or("").contains("interrupted"))
        .count();
    eprintln!("{} runs, {interrupted} interrupted by a kill", runs.len());
    let done = succeeded_windows(&src.url).await;
    // Each window succeeded once, contiguous from start_at.
    let distinct: BTreeSet<_> = done.iter().collect();
    assert_eq!(
        distinct.len(),
        done.len(),
        "a window exported twice: {done:?}"
    );
    assert_eq!(done[0].0, start, "the first window starts at start_at");
    for pair in done.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "a gap or overlap: {done:?}");
    }
    assert!(done.len() >= 10, "{done:?}");
    assert!(
        !runs.iter().any(|r| r.2 == "running"),
        "a run left running: {runs:?}"
    );
    let last_end = done.last().unwrap().1;

    // Each exported batch imported once.
    let dst_url = dst.url.clone();
    let windows = done.len();
    let outbox_wait = outbox.to_path_buf();
    wait_for(
        "the importer to load every batch",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || {
            let dst_url = dst_url.clone();
            let outbox = outbox_wait.clone();
            async move { ledger(&dst_url).await.len() >= windows && manifests(&outbox).is_empty() }
        },
    )
    .await;
    stop(&mut importer.0);

    let ledger = ledger(&dst.url).await;
    assert_eq!(
        ledger.len(),
        windows,
        "one ledger row per window: {ledger:?}"
    );
    let mut total = 0;
    for ((from, to), (job, window_start, rows)) in done.iter().zip(&ledger) {
        assert_eq!(job, "events");
        assert_eq!(time(window_start), *from, "ledger {ledger:?}");
        let ids = event_ids(&src.url, *from, *to).await;
        assert_eq!(
            *rows as usize,
            ids.len(),
            "window {from}: rows in the ledger"
        );
        assert_eq!(
            event_ids(&dst.url, *from, *to).await,
            ids,
            "window {from}: the target's rows"
        );
        total += ids.len();
    }
    // Every row exactly once, nothing else.
    let loaded = all_event_ids(&dst.url).await;
    assert_eq!(loaded.len(), total);
    assert_eq!(loaded, event_ids(&src.url, start, last_end).await);
    assert!(total >= 100_000, "{total} rows");
    assert!(
        names_in(&outbox.join("error")).is_empty(),
        "batches refused: {:?}",
        names_in(&outbox.join("error"))
    );
    assert_eq!(
        names_in(&outbox.join("archive"))
            .iter()
            .filter(|n| n.ends_with(".manifest.json"))
            .count(),
        windows
    );
}

/// Run ids of the `running` rows in the run history at `url`.
async fn running_runs(url: &str) -> BTreeSet<String> {
    let mut c = pg(url).await;
    let ids = sqlx::query_scalar("SELECT run_id FROM ferry_batch_runs WHERE status = 'running'")
        .fetch_all(&mut c)
        .await
        .unwrap_or_default();
    c.close().await.unwrap();
    ids.into_iter().collect()
}

/// Whether another session of the database at `url` is running a COPY
/// (the importer loading a batch).
async fn loading(url: &str) -> bool {
    let mut c = pg(url).await;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND state = 'active' AND query ILIKE 'COPY%'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    n > 0
}

/// The windows of `events` with a succeeded run, oldest first (with
/// repeats, if any).
async fn succeeded_windows(url: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut c = pg(url).await;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT window_start, window_end FROM ferry_batch_runs \
         WHERE job = 'events' AND status = 'succeeded'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap_or_default();
    c.close().await.unwrap();
    let mut out: Vec<_> = rows.iter().map(|(s, e)| (time(s), time(e))).collect();
    out.sort();
    out
}

// ----------------------------- 5. corrupt and mismatched batches refused

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_or_mismatched_batch_goes_to_error_and_a_good_one_still_loads() {
    let (src, dst, dir) = (
        PgTestDb::create().await,
        PgTestDb::create().await,
        TempDir::new(),
    );
    let sshd = PrivateSshd::start();
    // 1,000 rows per hour from 10:00.
    insert_events(&src.url, time("2026-12-06T10:00:00Z"), 4_000, 3_600_000).await;
    create_events_target(&dst.url).await;
    let location = sftp_location(&sshd, "outbox");
    let cfg = write_config(
        &dir.0,
        "ferry.toml",
        &(events_export(
            &src.url,
            &location,
            "every = \"1h\"",
            &dir.0.join("work"),
            "",
        ) + &events_import(&location, &dst.url)),
    );
    let export = |at: &str| {
        let out = ok(&["export", "run", "events", "-c", &cfg, "--window", at]);
        assert!(
            out.contains("succeeded") && out.contains("1000 rows"),
            "{out}"
        );
    };
    export("2026-12-06T10:30:00Z");
    export("2026-12-06T11:30:00Z");
    export("2026-12-06T12:30:00Z");
    let outbox = sshd.root().join("outbox");
    let found = manifests(&outbox);
    assert_eq!(found.len(), 3);

    // 10:00: one byte of its data file changed, size unchanged.
    let file = outbox.join(&found[0].1.files[0].name);
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2
        + bytes[bytes.len() / 2..]
            .iter()
            .position(u8::is_ascii_digit)
            .unwrap();
    bytes[at] = if bytes[at] == b'7' { b'8' } else { b'7' };
    std::fs::write(&file, &bytes).unwrap();
    // 11:00: the manifest promises a row more than its file holds (size
    // and checksum still right).
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&found[1].0).unwrap()).unwrap();
    let rows = manifest["files"][0]["rows"].as_u64().unwrap();
    manifest["files"][0]["rows"] = (rows + 1).into();
    std::fs::write(&found[1].0, serde_json::to_vec(&manifest).unwrap()).unwrap();

    let out = ok(&["import", "run", "events", "-c", &cfg]);
    eprintln!("{out}");
    let refused = |batch: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("refused {batch}:")))
            .unwrap_or_else(|| panic!("{batch} not refused: {out}"))
            .to_owned()
    };
    let corrupt = refused("events-20261206T100000Z");
    assert!(corrupt.to_lowercase().contains("sha"), "{corrupt}");
    let mismatched = refused("events-20261206T110000Z");
    assert!(mismatched.contains("row"), "{mismatched}");
    assert!(
        out.contains("imported events-20261206T120000Z (1000 rows)"),
        "{out}"
    );
    // Only the good batch's rows, and its ledger row.
    let window = |h: u32| {
        let from = time(&format!("2026-12-06T{h}:00:00Z"));
        (from, from + chrono::Duration::hours(1))
    };
    let (from, to) = window(12);
    assert_eq!(
        all_event_ids(&dst.url).await,
        event_ids(&src.url, from, to).await
    );
    assert_eq!(ledger(&dst.url).await.len(), 1);
    // The refused ones in error/, each with its reason.
    let error = names_in(&outbox.join("error"));
    for batch in ["events-20261206T100000Z", "events-20261206T110000Z"] {
        for name in [
            format!("{batch}.manifest.json"),
            format!("{batch}.reason.txt"),
            format!("{batch}-001.csv"),
        ] {
            assert!(error.contains(&name), "{name} not in error/: {error:?}");
        }
    }
    let reason =
        std::fs::read_to_string(outbox.join("error/events-20261206T100000Z.reason.txt")).unwrap();
    assert!(
        reason.contains("events-20261206T100000Z-001.csv"),
        "{reason}"
    );
    assert!(manifests(&outbox).is_empty(), "batches left waiting");

    // A later good batch still loads; the refused ones stay refused.
    export("2026-12-06T13:30:00Z");
    let out = ok(&["import", "run", "events", "-c", &cfg]);
    assert!(
        out.contains("imported events-20261206T130000Z (1000 rows)") && !out.contains("refused"),
        "{out}"
    );
    let (from, _) = window(12);
    let (_, to) = window(13);
    assert_eq!(
        all_event_ids(&dst.url).await,
        event_ids(&src.url, from, to).await
    );
    assert_eq!(ledger(&dst.url).await.len(), 2);
}

// ------------------------------------------ a run cut short by SIGTERM

/// `ferry run` stopped by SIGTERM while an export run is under way exits
/// cleanly and records the run as stopped (failed), not `running`: `ferry
/// batch status` shows no run of a daemon that is gone, and the window is
/// redone at the next start. (It was left `running` before: the run's
/// future was dropped by `Exporter::run`'s `select!` on shutdown.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_sigterm_mid_run_leaves_no_run_marked_running() {
    let (src, dir) = (PgTestDb::create().await, TempDir::new());
    insert_events(&src.url, time("2026-12-06T10:00:00Z"), 400_000, 9_000).await;
    let location = format!("url = \"{}\"\n", dir.0.join("outbox").display());
    let cfg = write_config(
        &dir.0,
        "ferry.toml",
        &events_export(
            &src.url,
            &location,
            "every = \"1h\"\nstart_at = \"2026-12-06T10:00:00Z\"",
            &dir.0.join("work"),
            "",
        ),
    );
    let mut daemon = Reaped(spawn_ferry(&["run", "--config", &cfg]));
    let src_url = src.url.clone();
    wait_for(
        "a run to start",
        Duration::from_secs(60),
        Duration::from_millis(2),
        || {
            let src_url = src_url.clone();
            async move { !running_runs(&src_url).await.is_empty() }
        },
    )
    .await;
    stop(&mut daemon.0);
    assert_eq!(
        running_runs(&src.url).await,
        BTreeSet::new(),
        "runs left `running` by a daemon stopped with SIGTERM"
    );
}

// --------------------------- the importer's SFTP source unreachable

/// A source that cannot be reached is a failure outside the batch: `ferry
/// import run` fails and leaves the batch where it is (nothing in
/// error/); a daemon started while the server is down keeps polling and
/// loads the batch once when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_sftp_source_leaves_the_batch_in_place_until_it_is_back() {
    let (src, dst, dir) = (
        PgTestDb::create().await,
        PgTestDb::create().await,
        TempDir::new(),
    );
    let mut sshd = PrivateSshd::start();
    insert_events(&src.url, time("2026-12-06T10:00:00Z"), 1_000, 3_600_000).await;
    create_events_target(&dst.url).await;
    let location = sftp_location(&sshd, "outbox");
    let export_cfg = write_config(
        &dir.0,
        "export.toml",
        &events_export(
            &src.url,
            &location,
            "every = \"1h\"",
            &dir.0.join("work"),
            "",
        ),
    );
    let import_cfg = write_config(&dir.0, "import.toml", &events_import(&location, &dst.url));
    ok(&[
        "export",
        "run",
        "events",
        "-c",
        &export_cfg,
        "--window",
        "2026-12-06T10:00:00Z",
    ]);
    let outbox = sshd.root().join("outbox");
    let waiting = names_in(&outbox);
    assert_eq!(
        waiting,
        [
            "events-20261206T100000Z-001.csv",
            "events-20261206T100000Z.manifest.json"
        ]
    );

    sshd.stop();
    let out = ferry(&["import", "run", "events", "-c", &import_cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "imported with the server down: {err}"
    );
    assert!(err.contains("127.0.0.1"), "{err}");
    assert_eq!(names_in(&outbox), waiting, "the batch moved");
    assert!(all_event_ids(&dst.url).await.is_empty());

    let mut daemon = Reaped(spawn_ferry(&["run", "--config", &import_cfg]));
    // The daemon up (and polling in vain) before the server is back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon exited");
    sshd.resume();
    let dst_url = dst.url.clone();
    wait_for(
        "the batch to be loaded",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let dst_url = dst_url.clone();
            async move { ledger(&dst_url).await.len() == 1 }
        },
    )
    .await;
    let outbox_wait = outbox.clone();
    wait_until("the batch to be archived", Duration::from_secs(30), || {
        manifests(&outbox_wait).is_empty()
    })
    .await;
    stop(&mut daemon.0);
    let (from, to) = (time("2026-12-06T10:00:00Z"), time("2026-12-06T11:00:00Z"));
    let ids = event_ids(&src.url, from, to).await;
    assert_eq!(ids.len(), 1_000);
    assert_eq!(all_event_ids(&dst.url).await, ids);
    assert!(names_in(&outbox.join("error")).is_empty());
}

// ------------------------------------------- two importers racing

/// Exports six hourly windows of 20,000 events to a folder and runs two
/// `ferry import run` at once on them; what each printed and how it ended.
async fn race_two_importers() -> (Vec<std::process::Output>, PgTestDb, PgTestDb, TempDir) {
    let (src, dst, dir) = (
        PgTestDb::create().await,
        PgTestDb::create().await,
        TempDir::new(),
    );
    insert_events(&src.url, time("2026-12-06T10:00:00Z"), 120_000, 180_000).await;
    create_events_target(&dst.url).await;
    let outbox = dir.0.join("outbox");
    let location = format!("url = \"{}\"\n", outbox.display());
    let cfg = write_config(
        &dir.0,
        "ferry.toml",
        &(events_export(
            &src.url,
            &location,
            "every = \"1h\"",
            &dir.0.join("work"),
            "",
        ) + &events_import(&location, &dst.url)),
    );
    for h in 10..16 {
        ok(&[
            "export",
            "run",
            "events",
            "-c",
            &cfg,
            "--window",
            &format!("2026-12-06T{h}:30:00Z"),
        ]);
    }
    assert_eq!(manifests(&outbox).len(), 6);
    let racers: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(super::FERRY)
                .args(["import", "run", "events", "-c", &cfg])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = racers
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        eprintln!(
            "{:?}\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    (outs, src, dst, dir)
}

/// Two `ferry import run` at once on the same batches: each batch loaded
/// once, nothing refused. (The one that loses a race must not fail its
/// pass either: the test below.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_importers_racing_load_each_batch_once() {
    let (outs, _src, dst, dir) = race_two_importers().await;
    let outbox = dir.0.join("outbox");
    let printed: String = outs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .collect();
    assert!(!printed.contains("refused"), "{printed}");
    assert!(
        names_in(&outbox.join("error")).is_empty(),
        "refused: {:?}",
        names_in(&outbox.join("error"))
    );
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("to move"),
            "an importer failed otherwise: {err}"
        );
    }
    // What a failed pass left behind, the next pass takes.
    let cfg = dir.0.join("ferry.toml").display().to_string();
    ok(&["import", "run", "events", "-c", &cfg]);
    assert_eq!(ledger(&dst.url).await.len(), 6);
    assert_eq!(
        all_event_ids(&dst.url).await,
        (1..=120_000).collect::<Vec<_>>()
    );
    assert!(names_in(&outbox.join("error")).is_empty());
    assert!(manifests(&outbox).is_empty());
}

/// The importer that finds a batch already imported by another one
/// (ledger row there) archives it from the listing it took at the start
/// of its pass; the other importer may have moved the files meanwhile.
/// A file gone when it is moved was moved by the other: the pass goes on
/// (it ended in an error before: "no file … to move", `ferry import run`
/// exiting 1). Racy: the race is tried 5 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn the_importer_that_loses_a_race_does_not_fail() {
    for _ in 0..5 {
        let (outs, _src, _dst, _dir) = race_two_importers().await;
        for o in &outs {
            assert!(
                o.status.success(),
                "an importer failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}
