//! The exporter against real databases and a real folder: files and the
//! manifest (last), re-runs, the run history on SQLite, PostgreSQL and
//! MariaDB, interrupted runs, failing destinations, watermarks and the
//! HTTP bulk alternative.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_batch::export::{runs, ExportJob, Exporter, RunStatus, RunWindow, Trigger};
use ferry_batch::location::FolderLocation;
use ferry_batch::schedule::TimeWindow;
use ferry_batch::{Entry, FileFormat, Location, Manifest};
use ferry_core::{ErrorKind, Failure, RetryPolicy};
use ferry_store::Database;
use ferry_testkit::{MysqlTestDb, PgTestDb, SqliteTestDb, TempDir};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use sqlx::Connection;
use tokio::sync::Notify;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn day(start: &str) -> RunWindow {
    let start = t(start);
    RunWindow::Scheduled(TimeWindow {
        start,
        end: start + chrono::Duration::days(1),
    })
}

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        multiplier: 2.0,
        jitter: 0.0,
    }
}

/// A real folder location that records the order of puts and can be told
/// to fail the next puts, or to hang in one (a process killed mid-put).
struct Recording {
    inner: FolderLocation,
    puts: Mutex<Vec<String>>,
    fail_next: AtomicU32,
    fail_kind: Mutex<ErrorKind>,
    hang: AtomicBool,
    hanging: Notify,
}

impl Recording {
    fn new(root: &Path) -> Arc<Self> {
        Arc::new(Self {
            inner: FolderLocation::new(root),
            puts: Mutex::new(Vec::new()),
            fail_next: AtomicU32::new(0),
            fail_kind: Mutex::new(ErrorKind::Unavailable),
            hang: AtomicBool::new(false),
            hanging: Notify::new(),
        })
    }
    fn puts(&self) -> Vec<String> {
        self.puts.lock().unwrap().clone()
    }
}

impl Location for Recording {
    fn describe(&self) -> String {
        format!("recording {}", self.inner.describe())
    }
    fn put_file<'a>(
        &'a self,
        local: &'a Path,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            if self.hang.load(Ordering::SeqCst) {
                self.hanging.notify_one();
                std::future::pending::<()>().await;
            }
            let failing = self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                let kind = *self.fail_kind.lock().unwrap();
                return Err(Failure::new(
                    kind,
                    format!("injected: destination down putting {name}"),
                ));
            }
            self.inner.put_file(local, name).await?;
            self.puts.lock().unwrap().push(name.to_owned());
            Ok(())
        })
    }
    fn list<'a>(&'a self, folder: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, Failure>> {
        self.inner.list(folder)
    }
    fn get_file<'a>(
        &'a self,
        name: &'a str,
        local: &'a Path,
    ) -> BoxFuture<'a, Result<u64, Failure>> {
        self.inner.get_file(name, local)
    }
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<(), Failure>> {
        self.inner.rename(from, to)
    }
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Failure>> {
        self.inner.delete(name)
    }
}

async fn sqlite_orders(url: &str) {
    let mut conn = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, name TEXT, day TEXT NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    for (id, name, d) in [
        (1, Some("before"), "2026-12-05"),
        (2, Some("plain"), "2026-12-06"),
        (3, Some("comma, \"quote\" and ü"), "2026-12-06"),
        (4, None, "2026-12-06"),
        (5, Some("after"), "2026-12-07"),
    ] {
        sqlx::query("INSERT INTO orders (id, name, day) VALUES (?, ?, ?)")
            .bind(id)
            .bind(name)
            .bind(d)
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

const SQLITE_QUERY: &str = "SELECT id, name, day FROM orders \
    WHERE day >= date(:window_start) AND day < date(:window_end) ORDER BY id";

fn job(name: &str, database: &str, query: &str, work: &Path) -> ExportJob {
    let mut job = ExportJob::new(name, database, query, Duration::from_secs(86_400));
    job.retry = fast_retry(3);
    job.work_dir = Some(work.to_path_buf());
    job
}

/// Checks every file of `manifest` in `root` against it (bytes, SHA-256,
/// rows) and returns the data rows (CSV lines without the header, or JSON
/// lines), decompressed.
fn check_files(root: &Path, manifest: &Manifest) -> Vec<String> {
    let mut rows = Vec::new();
    for f in &manifest.files {
        let bytes = std::fs::read(root.join(&f.name)).unwrap();
        assert_eq!(bytes.len() as u64, f.bytes, "{}", f.name);
        assert_eq!(hex::encode(Sha256::digest(&bytes)), f.sha256, "{}", f.name);
        let text = if manifest.gzip {
            let mut s = String::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_string(&mut s)
                .unwrap();
            s
        } else {
            String::from_utf8(bytes).unwrap()
        };
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if manifest.format == FileFormat::Csv {
            lines.remove(0);
        }
        assert_eq!(lines.len() as u64, f.rows, "{}", f.name);
        rows.extend(lines);
    }
    rows
}

fn files_in(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn sqlite_window_to_a_folder_manifest_last_and_a_rerun_writes_the_same_files() {
    let db = SqliteTestDb::create();
    sqlite_orders(&db.url).await;
    let out = TempDir::new();
    let work = TempDir::new();
    let location = Recording::new(&out.0);
    let mut job = job("orders", &db.url, SQLITE_QUERY, &work.0);
    job.max_rows_per_file = 2;
    let state = Database::connect(&db.url).await.unwrap();
    let exporter = Exporter::with_location(job, state.clone(), location.clone())
        .await
        .unwrap();

    let record = exporter
        .run_window(&day("2026-12-06T00:00:00Z"), Trigger::Manual)
        .await
        .unwrap();
    assert_eq!(record.status, RunStatus::Succeeded, "{:?}", record.error);
    assert_eq!((record.rows, record.attempts), (3, 1));
    let manifest_name = "orders-20261206T000000Z.manifest.json";
    assert_eq!(record.manifest.as_deref(), Some(manifest_name));
    assert_eq!(
        files_in(&out.0),
        [
            "orders-20261206T000000Z-001.csv",
            "orders-20261206T000000Z-002.csv",
            manifest_name
        ]
    );
    // The manifest is put last, after every data file.
    assert_eq!(
        location.puts().last().map(String::as_str),
        Some(manifest_name)
    );
    assert_eq!(location.puts().len(), 3);
    let manifest = Manifest::parse(&std::fs::read(out.0.join(manifest_name)).unwrap()).unwrap();
    assert_eq!(manifest.window.start, "2026-12-06T00:00:00Z");
    assert_eq!(manifest.window.end, "2026-12-07T00:00:00Z");
    assert_eq!(manifest.run_id, record.run_id);
    assert_eq!(manifest.files, record.files);
    let names: Vec<_> = manifest.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "day"]);
    let rows = check_files(&out.0, &manifest);
    assert_eq!(rows.len(), 3);
    assert!(rows[0].starts_with("2,plain,"));
    assert!(
        rows[1].contains("\"comma, \"\"quote\"\" and ü\""),
        "{}",
        rows[1]
    );
    // The work folder is cleaned up.
    assert!(files_in(&work.0).is_empty());

    // A re-run of the window: the same names and data bytes.
    let before: HashMap<String, Vec<u8>> = manifest
        .files
        .iter()
        .map(|f| (f.name.clone(), std::fs::read(out.0.join(&f.name)).unwrap()))
        .collect();
    let again = exporter
        .run_window(&day("2026-12-06T00:00:00Z"), Trigger::Manual)
        .await
        .unwrap();
    assert_eq!(again.status, RunStatus::Succeeded);
    assert_ne!(again.run_id, record.run_id);
    assert_eq!(again.files, record.files);
    for (name, bytes) in &before {
        assert_eq!(&std::fs::read(out.0.join(name)).unwrap(), bytes, "{name}");
    }
    let mut second = Manifest::parse(&std::fs::read(out.0.join(manifest_name)).unwrap()).unwrap();
    assert_eq!(second.run_id, again.run_id);
    second.run_id = manifest.run_id.clone();
    second.created_at = manifest.created_at;
    assert_eq!(second, manifest);

    let history = runs(&state, Some("orders"), 10).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].run_id, again.run_id, "newest first");
    assert_eq!(history[1], record);
    assert!(runs(&state, Some("other"), 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn postgres_table_gzip_to_a_folder_with_history_in_postgres() {
    let pg = PgTestDb::create().await;
    let mut conn = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    sqlx::query(
        "CREATE TABLE events (id bigint PRIMARY KEY, note text, amount numeric(20,2), at timestamptz NOT NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events SELECT g, 'note ' || g, g * 1.5, TIMESTAMPTZ '2026-12-05 22:00:00+00' + g * INTERVAL '1 hour' \
         FROM generate_series(1, 30) g",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let out = TempDir::new();
    let work = TempDir::new();
    let location = Recording::new(&out.0);
    let mut job = job(
        "events",
        &pg.url,
        "SELECT id, note, amount, at FROM events WHERE at >= :window_start AND at < :window_end ORDER BY id",
        &work.0,
    );
    job.gzip = true;
    job.max_rows_per_file = 10;
    job.file_name = "{job}/{window_start:%Y-%m-%d}/part-{part}.{ext}".into();
    let state = Database::connect(&pg.url).await.unwrap();
    let exporter = Exporter::with_location(job, state.clone(), location.clone())
        .await
        .unwrap();
    let record = exporter
        .run_window(&day("2026-12-06T00:00:00Z"), Trigger::Manual)
        .await
        .unwrap();
    assert_eq!(record.status, RunStatus::Succeeded, "{:?}", record.error);
    // Hours 00..23 of 2026-12-06 are ids 2..=25.
    assert_eq!(record.rows, 24);
    let names: Vec<_> = record.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "events/2026-12-06/part-1.csv.gz",
            "events/2026-12-06/part-2.csv.gz",
            "events/2026-12-06/part-3.csv.gz"
        ]
    );
    let manifest_name = record.manifest.clone().unwrap();
    assert_eq!(location.puts().last(), Some(&manifest_name));
    let manifest = Manifest::parse(&std::fs::read(out.0.join(&manifest_name)).unwrap()).unwrap();
    assert!(manifest.gzip);
    let rows = check_files(&out.0, &manifest);
    let ids: Vec<i64> = rows
        .iter()
        .map(|r| r.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (2..=25).collect::<Vec<i64>>());
    assert_eq!(
        record.bytes,
        manifest.files.iter().map(|f| f.bytes).sum::<u64>()
    );
    let history = runs(&state, None, 5).await.unwrap();
    assert_eq!(history, [record]);
    drop(exporter);
    state.close().await;
}

#[tokio::test]
async fn an_interrupted_run_is_found_and_redone_with_history_in_mariadb() {
    let db = SqliteTestDb::create();
    sqlite_orders(&db.url).await;
    let maria = MysqlTestDb::create().await;
    let state = Database::connect(&maria.url).await.unwrap();
    let out = TempDir::new();
    let work = TempDir::new();
    let mut job = job("orders", &db.url, SQLITE_QUERY, &work.0);
    job.start_at = Some(t("2026-12-06T00:00:00Z"));

    // A run killed while it puts its first file: its row stays running.
    let hanging = Recording::new(&out.0);
    hanging.hang.store(true, Ordering::SeqCst);
    let first = Exporter::with_location(job.clone(), state.clone(), hanging.clone())
        .await
        .unwrap();
    let killed = tokio::spawn(async move {
        first
            .run_window(&day("2026-12-06T00:00:00Z"), Trigger::Schedule)
            .await
    });
    hanging.hanging.notified().await;
    killed.abort();
    assert!(killed.await.unwrap_err().is_cancelled());
    let left = runs(&state, Some("orders"), 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].status, RunStatus::Running);
    assert!(!out.0.join("orders-20261206T000000Z.manifest.json").exists());

    // Its work folder is still there (a killed process cleans nothing).
    assert_eq!(files_in(&work.0).len(), 1);

    // The next start finds it and runs the window again.
    let location = Recording::new(&out.0);
    let exporter = Exporter::with_location(job, state.clone(), location.clone())
        .await
        .unwrap();
    let done = exporter.catch_up(t("2026-12-07T00:00:10Z")).await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].status, RunStatus::Succeeded, "{:?}", done[0].error);
    assert_eq!(done[0].window.start, "2026-12-06T00:00:00Z");
    assert!(out.0.join("orders-20261206T000000Z.manifest.json").exists());
    let history = runs(&state, Some("orders"), 10).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].status, RunStatus::Succeeded);
    assert_eq!(history[1].status, RunStatus::Failed);
    assert!(
        history[1].error.as_deref().unwrap().contains("interrupted"),
        "{:?}",
        history[1].error
    );
    assert!(history[1].finished_at.is_some());
    assert!(files_in(&work.0).is_empty(), "stale work folder removed");
    // Done now: nothing more is due.
    assert!(exporter
        .catch_up(t("2026-12-07T00:00:20Z"))
        .await
        .unwrap()
        .is_empty());
    drop(exporter);
    state.close().await;
}

#[tokio::test]
async fn a_failing_destination_is_retried_recorded_failed_and_caught_up_in_order() {
    let db = SqliteTestDb::create();
    sqlite_orders(&db.url).await;
    let state = Database::connect(&db.url).await.unwrap();
    let out = TempDir::new();
    let work = TempDir::new();
    let mut job = job("orders", &db.url, SQLITE_QUERY, &work.0);
    job.start_at = Some(t("2026-12-04T00:00:00Z"));
    let location = Recording::new(&out.0);
    let exporter = Exporter::with_location(job, state.clone(), location.clone())
        .await
        .unwrap();
    let now = t("2026-12-07T00:00:30Z");

    // Down for good: three attempts, then the first window is recorded
    // failed with the reason and the later windows wait.
    location.fail_next.store(1000, Ordering::SeqCst);
    let first = exporter.catch_up(now).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].status, RunStatus::Failed);
    assert_eq!(first[0].window.start, "2026-12-04T00:00:00Z");
    assert_eq!(first[0].attempts, 3);
    assert!(
        first[0]
            .error
            .as_deref()
            .unwrap()
            .contains("injected: destination down"),
        "{:?}",
        first[0].error
    );
    assert_eq!(1000 - location.fail_next.load(Ordering::SeqCst), 3);
    assert!(files_in(&out.0).is_empty());

    // Back (after one more failure): every window, in order, once.
    location.fail_next.store(1, Ordering::SeqCst);
    let caught = exporter.catch_up(now).await.unwrap();
    let starts: Vec<_> = caught.iter().map(|r| r.window.start.as_str()).collect();
    assert_eq!(
        starts,
        [
            "2026-12-04T00:00:00Z",
            "2026-12-05T00:00:00Z",
            "2026-12-06T00:00:00Z"
        ]
    );
    assert!(caught.iter().all(|r| r.status == RunStatus::Succeeded));
    assert_eq!(caught[0].attempts, 2);
    assert_eq!(caught[0].trigger, Trigger::CatchUp);
    assert_eq!(caught[2].trigger, Trigger::Schedule);
    let manifests: Vec<_> = location
        .puts()
        .into_iter()
        .filter(|n| n.ends_with(".manifest.json"))
        .collect();
    assert_eq!(
        manifests,
        [
            "orders-20261204T000000Z.manifest.json",
            "orders-20261205T000000Z.manifest.json",
            "orders-20261206T000000Z.manifest.json"
        ]
    );
    assert!(exporter.catch_up(now).await.unwrap().is_empty());

    // A permanent refusal is not retried.
    *location.fail_kind.lock().unwrap() = ErrorKind::Permanent;
    location.fail_next.store(1, Ordering::SeqCst);
    let refused = exporter
        .run_window(&day("2026-12-06T00:00:00Z"), Trigger::Manual)
        .await
        .unwrap();
    assert_eq!((refused.status, refused.attempts), (RunStatus::Failed, 1));
}

#[tokio::test]
async fn watermark_windows_export_rows_past_the_last_and_rerun_with_recorded_bounds() {
    let db = SqliteTestDb::create();
    let mut conn = sqlx::SqliteConnection::connect(&format!("{}?mode=rwc", db.url))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        .execute(&mut conn)
        .await
        .unwrap();
    for id in 1..=5 {
        sqlx::query("INSERT INTO items VALUES (?, ?)")
            .bind(id)
            .bind(format!("item {id}"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let state = Database::connect(&db.url).await.unwrap();
    let out = TempDir::new();
    let work = TempDir::new();
    let mut job = job(
        "items",
        &db.url,
        "SELECT id, name FROM items WHERE id > :last",
        &work.0,
    );
    job.format = FileFormat::Jsonl;
    job.watermark = Some(toml::from_str("column = \"id\"\ninitial = 0").unwrap());
    let location = Recording::new(&out.0);
    let exporter = Exporter::with_location(job, state.clone(), location.clone())
        .await
        .unwrap();
    let now = Utc::now();
    let first = exporter.catch_up(now).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0].window.start.as_str(), first[0].window.end.as_str()),
        ("0", "5")
    );
    assert_eq!(first[0].rows, 5);
    let first_bytes = std::fs::read(out.0.join(&first[0].files[0].name)).unwrap();
    assert!(
        exporter.catch_up(now).await.unwrap().is_empty(),
        "nothing new"
    );

    for id in 6..=7 {
        sqlx::query("INSERT INTO items VALUES (?, ?)")
            .bind(id)
            .bind(format!("item {id}"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let second = exporter.catch_up(now).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(
        (
            second[0].window.start.as_str(),
            second[0].window.end.as_str()
        ),
        ("5", "7")
    );
    assert_eq!(second[0].rows, 2);
    let manifest =
        Manifest::parse(&std::fs::read(out.0.join(second[0].manifest.as_ref().unwrap())).unwrap())
            .unwrap();
    let rows = check_files(&out.0, &manifest);
    assert_eq!(
        rows,
        [
            "{\"id\":6,\"name\":\"item 6\"}",
            "{\"id\":7,\"name\":\"item 7\"}"
        ]
    );

    // A manual re-run of the first window reads its recorded bounds.
    let window = exporter.window_for("0").await.unwrap();
    let again = exporter.run_window(&window, Trigger::Manual).await.unwrap();
    assert_eq!(again.rows, 5);
    assert_eq!(again.files, first[0].files);
    assert_eq!(
        std::fs::read(out.0.join(&again.files[0].name)).unwrap(),
        first_bytes
    );
}

#[tokio::test]
async fn config_errors_name_the_key_and_value() {
    let base = r#"
        name = "orders"
        database = "sqlite::memory:"
        query = "SELECT 1"
        [destination]
        url = "/tmp/x"
    "#;
    let parse = |extra: &str| -> ExportJob { toml::from_str(&format!("{extra}\n{base}")).unwrap() };
    let e = parse("schedule = \"0 25 * * *\"").validate().unwrap_err();
    assert!(
        e.message.contains("export job `orders`")
            && e.message.contains("schedule = \"0 25 * * *\""),
        "{}",
        e.message
    );
    let e = parse("schedule = \"0 2 * * *\"\ntimezone = \"Europe/Nowhere\"")
        .validate()
        .unwrap_err();
    assert!(
        e.message.contains("timezone = \"Europe/Nowhere\""),
        "{}",
        e.message
    );
    let e = parse("every = \"1h\"\nfile_name = \"{job}-{day}.{ext}\"")
        .validate()
        .unwrap_err();
    assert!(
        e.message.contains("file_name") && e.message.contains("{day}"),
        "{}",
        e.message
    );
    let e = parse("every = \"1h\"\nbatch_name = \"{job}-{nope}\"")
        .validate()
        .unwrap_err();
    assert!(
        e.message.contains("batch_name") && e.message.contains("{nope}"),
        "{}",
        e.message
    );
    let e = parse("every = \"1h\"\nschedule = \"0 2 * * *\"")
        .validate()
        .unwrap_err();
    assert!(
        e.message.contains("exactly one of `schedule`"),
        "{}",
        e.message
    );
    let e = parse("every = \"1h\"\nfile_name = \"{job}.{ext}\"")
        .validate()
        .unwrap_err();
    assert!(e.message.contains("has no {part}"), "{}", e.message);
    assert!(
        parse("every = \"1h\"\nfile_name = \"{job}.{ext}\"\nmax_rows_per_file = 0")
            .validate()
            .is_ok()
    );
    assert!(
        parse("schedule = \"0 2 * * *\"\ntimezone = \"Europe/Berlin\"\ncatch_up = \"latest\"")
            .validate()
            .is_ok()
    );
    let unknown: Result<ExportJob, _> =
        toml::from_str(&format!("every = \"1h\"\ncolour = 1\n{base}"));
    assert!(unknown.unwrap_err().to_string().contains("colour"));
    let mut bulk: ExportJob = toml::from_str(
        "name = \"b\"\ndatabase = \"sqlite::memory:\"\nquery = \"SELECT 1\"\nevery = \"1h\"\n[bulk]\nurl = \"http://127.0.0.1:1/in\"",
    )
    .unwrap();
    let e = bulk.validate().unwrap_err();
    assert!(e.message.contains("format = \"jsonl\""), "{}", e.message);
    bulk.format = FileFormat::Jsonl;
    assert!(bulk.validate().is_ok());
    // Bad config never gets as far as connecting.
    let e = Exporter::new(
        parse("schedule = \"61 * * * *\""),
        Database::connect("sqlite::memory:").await.unwrap(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
}

/// A bulk endpoint that records every request and answers 503 to the
/// first request of each idempotency key (or 400 to everything).
#[derive(Clone, Default)]
struct Endpoint {
    requests: Arc<Mutex<Vec<(String, String, bool)>>>,
    refuse: Arc<AtomicBool>,
}

async fn serve(endpoint: Endpoint) -> String {
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new()
        .route(
            "/bulk",
            axum::routing::post(
                |axum::extract::State(e): axum::extract::State<Endpoint>,
                 headers: HeaderMap,
                 body: String| async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let ndjson = headers.get("content-type").and_then(|v| v.to_str().ok())
                        == Some("application/x-ndjson");
                    assert!(ndjson);
                    let last = headers.get("ferry-last-chunk").is_some();
                    let mut requests = e.requests.lock().unwrap();
                    let seen = requests.iter().any(|(k, _, _)| *k == key);
                    requests.push((key, body, last));
                    if e.refuse.load(Ordering::SeqCst) {
                        StatusCode::BAD_REQUEST
                    } else if seen {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                },
            ),
        )
        .with_state(endpoint);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/bulk")
}

#[tokio::test]
async fn bulk_posts_json_lines_chunks_with_stable_idempotency_keys() {
    let db = SqliteTestDb::create();
    sqlite_orders(&db.url).await;
    let state = Database::connect(&db.url).await.unwrap();
    let endpoint = Endpoint::default();
    let url = serve(endpoint.clone()).await;
    let work = TempDir::new();
    let mut job = job(
        "orders",
        &db.url,
        "SELECT id, name FROM orders ORDER BY id",
        &work.0,
    );
    job.format = FileFormat::Jsonl;
    job.retry = fast_retry(10);
    job.bulk = Some(toml::from_str(&format!("url = \"{url}\"\nrows_per_request = 2")).unwrap());
    let exporter = Exporter::new(job, state.clone()).await.unwrap();
    let window = day("2026-12-06T00:00:00Z");
    let record = exporter.run_window(&window, Trigger::Manual).await.unwrap();
    assert_eq!(record.status, RunStatus::Succeeded, "{:?}", record.error);
    assert_eq!(record.rows, 5);

    let requests = endpoint.requests.lock().unwrap().clone();
    // Three chunks (2 + 2 + 1 rows), each refused once and sent again
    // with the same key and body.
    assert_eq!(requests.len(), 6);
    let keys: Vec<&String> = record.files.iter().map(|f| &f.name).collect();
    assert_eq!(keys.len(), 3);
    for (i, key) in keys.iter().enumerate() {
        let sent: Vec<_> = requests.iter().filter(|(k, _, _)| k == *key).collect();
        assert_eq!(sent.len(), 2, "chunk {i}");
        assert_eq!(sent[0].1, sent[1].1, "a retry carries the same body");
        assert_eq!(
            record.files[i].sha256,
            hex::encode(Sha256::digest(sent[1].1.as_bytes()))
        );
    }
    let delivered: String = keys
        .iter()
        .map(|k| {
            requests
                .iter()
                .find(|(key, _, _)| key == *k)
                .unwrap()
                .1
                .clone()
        })
        .collect();
    let ids: Vec<i64> = delivered
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    assert!(requests.last().unwrap().2, "the last chunk says so");
    assert!(!requests[1].2);

    // A re-run of the window sends the same keys.
    let again = exporter.run_window(&window, Trigger::Manual).await.unwrap();
    assert_eq!(again.files, record.files);

    // A 400 is permanent: one attempt, recorded with the reason.
    endpoint.refuse.store(true, Ordering::SeqCst);
    let refused = exporter.run_window(&window, Trigger::Manual).await.unwrap();
    assert_eq!((refused.status, refused.attempts), (RunStatus::Failed, 1));
    assert!(
        refused.error.as_deref().unwrap().contains("400"),
        "{:?}",
        refused.error
    );
}

#[tokio::test]
async fn run_catches_up_then_stops_on_shutdown() {
    let db = SqliteTestDb::create();
    sqlite_orders(&db.url).await;
    let state = Database::connect(&db.url).await.unwrap();
    let out = TempDir::new();
    let work = TempDir::new();
    let mut job = job("orders", &db.url, SQLITE_QUERY, &work.0);
    job.start_at = Some(t("2026-12-05T00:00:00Z"));
    job.max_rows_per_file = 0;
    job.file_name = "{job}-{window_start:%Y%m%d}.{ext}".into();
    let location = Recording::new(&out.0);
    let observed = Arc::new(Mutex::new(Vec::new()));
    let seen = observed.clone();
    let exporter = Exporter::with_location(job, state.clone(), location.clone())
        .await
        .unwrap()
        .with_observer(move |r| seen.lock().unwrap().push(r.clone()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(exporter.run(shutdown.clone()));
    // Wait until the catch-up has recorded the window before today's.
    let yesterday = (Utc::now() - chrono::Duration::days(1))
        .format("%Y-%m-%dT00:00:00Z")
        .to_string();
    loop {
        let history = runs(&state, Some("orders"), 1000).await.unwrap();
        if history
            .iter()
            .any(|r| r.window.start == yesterday && r.status == RunStatus::Succeeded)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.unwrap();
    let history = runs(&state, Some("orders"), 1000).await.unwrap();
    let mut starts: Vec<_> = history.iter().map(|r| r.window.start.clone()).collect();
    starts.reverse();
    assert_eq!(
        starts.first().map(String::as_str),
        Some("2026-12-05T00:00:00Z")
    );
    assert!(
        history.iter().all(|r| r.status == RunStatus::Succeeded),
        "{history:?}"
    );
    let mut sorted = starts.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(starts, sorted, "in order, once each");
    assert!(out.0.join("orders-20261205.csv").exists());
    let mut observed = observed.lock().unwrap().clone();
    observed.reverse();
    assert_eq!(observed, history, "every finished run observed");
}

#[tokio::test]
async fn a_job_from_toml_opens_its_folder_or_http_destination() {
    let db = SqliteTestDb::create();
    sqlite_orders(&db.url).await;
    let state = Database::connect(&db.url).await.unwrap();
    let out = TempDir::new();
    let job: ExportJob = toml::from_str(&format!(
        r#"
        name = "orders"
        database = "{db}"
        query = "{query}"
        schedule = "0 0 * * *"
        timezone = "UTC"
        file_name = "{{job}}-{{window_start:%Y%m%d}}.{{ext}}"
        batch_name = "{{job}}-{{window_start:%Y%m%d}}"
        max_rows_per_file = 0
        [destination]
        url = "file://{out}"
        "#,
        db = db.url,
        query = SQLITE_QUERY,
        out = out.0.display()
    ))
    .unwrap();
    let exporter = Exporter::new(job, state.clone()).await.unwrap();
    let record = exporter
        .run_window(&day("2026-12-06T00:00:00Z"), Trigger::Manual)
        .await
        .unwrap();
    assert_eq!(record.status, RunStatus::Succeeded, "{:?}", record.error);
    assert_eq!(
        files_in(&out.0),
        ["orders-20261206.csv", "orders-20261206.manifest.json"]
    );
    let manifest =
        Manifest::parse(&std::fs::read(out.0.join("orders-20261206.manifest.json")).unwrap())
            .unwrap();
    assert_eq!(check_files(&out.0, &manifest).len(), 3);

    // An http:// destination sends the rows as bulk chunks, one per part.
    let endpoint = Endpoint::default();
    let url = serve(endpoint.clone()).await;
    let mut job: ExportJob = toml::from_str(&format!(
        "name = \"orders\"\ndatabase = \"{}\"\nquery = \"SELECT id FROM orders ORDER BY id\"\nevery = \"1d\"\nformat = \"jsonl\"\nmax_rows_per_file = 3\n[destination]\nurl = \"{url}\"",
        db.url
    ))
    .unwrap();
    job.retry = fast_retry(5);
    let exporter = Exporter::new(job, state.clone()).await.unwrap();
    let record = exporter
        .run_window(&day("2026-12-06T00:00:00Z"), Trigger::Manual)
        .await
        .unwrap();
    assert_eq!(record.status, RunStatus::Succeeded, "{:?}", record.error);
    assert_eq!(
        record.files.iter().map(|f| f.rows).collect::<Vec<_>>(),
        [3, 2]
    );
    assert_eq!(endpoint.requests.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn postgres_timestamp_watermark() {
    let pg = PgTestDb::create().await;
    let mut conn = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    sqlx::query("CREATE TABLE changes (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    let insert = "INSERT INTO changes SELECT g, TIMESTAMPTZ '2026-12-06 00:00:00+00' + g * INTERVAL '1 minute' + INTERVAL '0.25 second' FROM generate_series($1::bigint, $2::bigint) g";
    sqlx::query(insert)
        .bind(1i64)
        .bind(4i64)
        .execute(&mut conn)
        .await
        .unwrap();
    let state = Database::connect(&pg.url).await.unwrap();
    let out = TempDir::new();
    let work = TempDir::new();
    let mut job = job(
        "changes",
        &pg.url,
        "SELECT id, updated_at FROM changes WHERE updated_at > :last",
        &work.0,
    );
    job.watermark = Some(
        toml::from_str("column = \"updated_at\"\ninitial = \"2026-12-06T00:01:00.25Z\"").unwrap(),
    );
    let exporter = Exporter::with_location(job, state.clone(), Recording::new(&out.0))
        .await
        .unwrap();
    let first = exporter.catch_up(Utc::now()).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].window.start, "2026-12-06T00:01:00.250Z");
    assert_eq!(first[0].window.end, "2026-12-06T00:04:00.250Z");
    assert_eq!(first[0].rows, 3, "ids 2..=4: past the initial value");
    sqlx::query(insert)
        .bind(5i64)
        .bind(6i64)
        .execute(&mut conn)
        .await
        .unwrap();
    let second = exporter.catch_up(Utc::now()).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].window.start, first[0].window.end);
    assert_eq!(second[0].rows, 2);
    let manifest =
        Manifest::parse(&std::fs::read(out.0.join(second[0].manifest.as_ref().unwrap())).unwrap())
            .unwrap();
    let rows = check_files(&out.0, &manifest);
    assert_eq!(
        rows,
        [
            "5,2026-12-06T00:05:00.250000Z",
            "6,2026-12-06T00:06:00.250000Z"
        ]
    );
    assert!(exporter.catch_up(Utc::now()).await.unwrap().is_empty());
    drop(exporter);
    state.close().await;
}

#[tokio::test]
async fn catch_up_latest_and_none_skip_what_an_outage_missed() {
    let db = SqliteTestDb::create();
    sqlite_orders(&db.url).await;
    let state = Database::connect(&db.url).await.unwrap();
    let out = TempDir::new();
    let work = TempDir::new();
    let mut job = job("orders", &db.url, SQLITE_QUERY, &work.0);
    job.start_at = Some(t("2026-12-01T00:00:00Z"));
    job.catch_up = ferry_batch::schedule::CatchUp::Latest;
    let exporter = Exporter::with_location(job.clone(), state.clone(), Recording::new(&out.0))
        .await
        .unwrap();
    // Six windows missed: only the latest runs.
    let ran = exporter.catch_up(t("2026-12-07T05:00:00Z")).await.unwrap();
    let starts: Vec<_> = ran.iter().map(|r| r.window.start.as_str()).collect();
    assert_eq!(starts, ["2026-12-06T00:00:00Z"]);

    // `none`: a start long after the tick runs nothing, one on time runs
    // the window.
    job.name = "orders_none".into();
    job.catch_up = ferry_batch::schedule::CatchUp::None;
    let exporter = Exporter::with_location(job, state.clone(), Recording::new(&out.0))
        .await
        .unwrap();
    assert!(exporter
        .catch_up(t("2026-12-07T05:00:00Z"))
        .await
        .unwrap()
        .is_empty());
    let ran = exporter.catch_up(t("2026-12-08T00:00:02Z")).await.unwrap();
    let starts: Vec<_> = ran.iter().map(|r| r.window.start.as_str()).collect();
    assert_eq!(starts, ["2026-12-07T00:00:00Z"]);
    assert_eq!(ran[0].trigger, Trigger::Schedule);
}

#[tokio::test]
async fn a_failed_watermark_window_is_redone_with_its_recorded_bounds_first() {
    let db = SqliteTestDb::create();
    let mut conn = sqlx::SqliteConnection::connect(&format!("{}?mode=rwc", db.url))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        .execute(&mut conn)
        .await
        .unwrap();
    let add = |from: i64, to: i64| {
        let url = db.url.clone();
        async move {
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            for id in from..=to {
                sqlx::query("INSERT INTO items VALUES (?, 'x')")
                    .bind(id)
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        }
    };
    add(1, 5).await;
    let state = Database::connect(&db.url).await.unwrap();
    let out = TempDir::new();
    let work = TempDir::new();
    let mut job = job(
        "items",
        &db.url,
        "SELECT id, name FROM items WHERE id > :last",
        &work.0,
    );
    job.watermark = Some(toml::from_str("column = \"id\"\ninitial = 0").unwrap());
    let location = Recording::new(&out.0);
    let exporter = Exporter::with_location(job, state.clone(), location.clone())
        .await
        .unwrap();
    location.fail_next.store(1000, Ordering::SeqCst);
    let failed = exporter.catch_up(Utc::now()).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].status, RunStatus::Failed);
    assert_eq!(
        (
            failed[0].window.start.as_str(),
            failed[0].window.end.as_str()
        ),
        ("0", "5")
    );

    add(6, 7).await;
    location.fail_next.store(0, Ordering::SeqCst);
    let caught = exporter.catch_up(Utc::now()).await.unwrap();
    let windows: Vec<_> = caught
        .iter()
        .map(|r| {
            (
                r.window.start.as_str(),
                r.window.end.as_str(),
                r.rows,
                r.status,
            )
        })
        .collect();
    assert_eq!(
        windows,
        [
            ("0", "5", 5, RunStatus::Succeeded),
            ("5", "7", 2, RunStatus::Succeeded)
        ]
    );
    assert_eq!(caught[0].trigger, Trigger::CatchUp);
}
