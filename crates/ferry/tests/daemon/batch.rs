//! `[[export]]` / `[[import]]` through the `ferry` binary: a batch
//! exported and imported end to end, re-runs that change nothing, a
//! daemon that was down across scheduled times catching up, and bad
//! configuration named by key and line.

use std::path::Path;
use std::time::Duration;

use ferry_testkit::{SqliteTestDb, TempDir};
use sqlx::{Connection, Executor, Row, SqliteConnection};

use ferry_testkit::nats_server::free_port;

use super::{ferry, spawn_ferry, stop, Reaped};

/// Rows whose values CSV and JSON Lines must carry exactly.
const ROWS: &[(i64, Option<&str>, Option<&str>)] = &[
    (1, Some("plain"), Some("2026-12-06T10:00:00.000000Z")),
    (2, Some("comma, \"quotes\" and\nnewline\r\nCRLF"), None),
    (3, Some(""), Some("2026-12-06T10:59:59.999999Z")),
    (4, None, Some("2026-12-06T10:30:00.000000Z")),
    (
        5,
        Some("non-ASCII: żółć 東京 🚢"),
        Some("2026-12-06T10:15:00.000000Z"),
    ),
    (
        9_223_372_036_854_775_807,
        Some("i64::MAX"),
        Some("2026-12-06T10:45:00.000000Z"),
    ),
];

async fn source(url: &str) {
    let mut c = SqliteConnection::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    c.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT, at TEXT)")
        .await
        .unwrap();
    for (id, note, at) in ROWS {
        sqlx::query("INSERT INTO orders VALUES (?, ?, ?)")
            .bind(id)
            .bind(note)
            .bind(at)
            .execute(&mut c)
            .await
            .unwrap();
    }
}

async fn rows(url: &str) -> Vec<(i64, Option<String>, Option<String>)> {
    let mut c = SqliteConnection::connect(url).await.unwrap();
    sqlx::query("SELECT id, note, at FROM orders ORDER BY id")
        .fetch_all(&mut c)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn config(dir: &Path, src: &str, dst: &str, schedule: &str) -> String {
    let outbox = dir.join("outbox");
    format!(
        r#"
[[export]]
name = "orders"
database = "{src}"
query = "SELECT id, note, at FROM orders ORDER BY id"
{schedule}
[export.destination]
url = "{outbox}"

[[import]]
name = "orders"
source = {{ url = "{outbox}" }}
poll_interval = "200ms"
[import.target.database]
url = "{dst}"
table = "orders"
"#,
        outbox = outbox.display()
    )
}

fn write(dir: &Path, text: &str) -> String {
    let path = dir.join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

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

/// Every file under `dir` (recursively) with its bytes, by relative name.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((name, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_export_then_import_once_by_hand() {
    let (src, dst, dir) = (
        SqliteTestDb::create(),
        SqliteTestDb::create(),
        TempDir::new(),
    );
    source(&src.url).await;
    {
        let mut c = SqliteConnection::connect(&format!("{}?mode=rwc", dst.url))
            .await
            .unwrap();
        c.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT, at TEXT)")
            .await
            .unwrap();
    }
    let cfg = write(
        &dir.0,
        &config(&dir.0, &src.url, &dst.url, "every = \"1h\""),
    );
    let out = ok(&[
        "export",
        "run",
        "orders",
        "-c",
        &cfg,
        "--window",
        "2026-12-06T10:30:00Z",
    ]);
    assert!(
        out.contains("[2026-12-06T10:00:00") && out.contains("succeeded"),
        "{out}"
    );
    let outbox = dir.0.join("outbox");
    let first = files(&outbox);
    assert!(
        first.iter().any(|(n, _)| n.ends_with(".manifest.json")),
        "no manifest in {first:?}"
    );

    let out = ok(&["import", "run", "orders", "-c", &cfg]);
    assert!(out.contains("imported") && out.contains("6 rows"), "{out}");
    let expected: Vec<_> = ROWS
        .iter()
        .map(|(id, n, a)| (*id, n.map(str::to_owned), a.map(str::to_owned)))
        .collect();
    assert_eq!(rows(&dst.url).await, expected);
    // The batch moved to the archive: nothing waits at the top.
    assert!(
        !std::fs::read_dir(&outbox).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".manifest.json")),
        "the imported batch was not archived"
    );

    // The same window again: the same data files, byte for byte; the
    // receiver recognises the batch and loads nothing twice.
    ok(&[
        "export",
        "run",
        "orders",
        "-c",
        &cfg,
        "--window",
        "2026-12-06T10:00:00Z",
    ]);
    let again: Vec<_> = files(&outbox)
        .into_iter()
        .filter(|(n, _)| !n.contains('/') && !n.ends_with(".manifest.json"))
        .collect();
    let data: Vec<_> = first
        .into_iter()
        .filter(|(n, _)| !n.ends_with(".manifest.json"))
        .collect();
    assert_eq!(again, data, "a re-run wrote other files");
    let out = ok(&["import", "run", "orders", "-c", &cfg]);
    assert!(out.contains("skipped"), "{out}");
    assert_eq!(rows(&dst.url).await, expected);

    let out = ok(&["batch", "status", "-c", &cfg]);
    assert_eq!(out.matches("succeeded").count(), 2, "{out}");
    assert!(out.contains("manual"), "{out}");
    // The receiver's ledger: the batch once, with its window and rows.
    assert!(out.contains("import orders (1 batch(es) shown)"), "{out}");
    assert!(
        out.contains("[2026-12-06T10:00:00") && out.contains(": 6 rows"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_down_across_ticks_exports_the_missed_windows_in_order_once() {
    let (src, dst, dir) = (
        SqliteTestDb::create(),
        SqliteTestDb::create(),
        TempDir::new(),
    );
    source(&src.url).await;
    {
        let mut c = SqliteConnection::connect(&format!("{}?mode=rwc", dst.url))
            .await
            .unwrap();
        c.execute("CREATE TABLE orders (id INTEGER, note TEXT, at TEXT)")
            .await
            .unwrap();
    }
    let start = chrono::Utc::now() - chrono::Duration::seconds(4);
    let start = start.format("%Y-%m-%dT%H:%M:%SZ");
    let port = free_port();
    let cfg = write(
        &dir.0,
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n{}",
            config(
                &dir.0,
                &src.url,
                &dst.url,
                &format!("every = \"2s\"\nstart_at = \"{start}\"\nbatch_name = \"{{job}}-{{window_start:%Y%m%dT%H%M%S}}\"\nfile_name = \"{{job}}-{{window_start:%Y%m%dT%H%M%S}}-{{part}}.{{ext}}\""),
            )
        ),
    );
    let mut daemon = Reaped(spawn_ferry(&["run", "--config", &cfg]));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The runs so far, on /metrics.
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let succeeded = metrics
        .lines()
        .find(|l| {
            l.starts_with("ferry_batch_export_runs_total{") && l.contains("outcome=\"succeeded\"")
        })
        .unwrap_or_else(|| panic!("no export runs on /metrics:\n{metrics}"));
    let n: f64 = succeeded.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 2.0, "{succeeded}");
    assert!(
        metrics.contains("ferry_batch_export_last_success_age_seconds{job=\"orders\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_batch_import_batches_total{job=\"orders\",outcome=\"imported\"}"),
        "{metrics}"
    );
    stop(&mut daemon.0);
    // Down for more than two ticks.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut daemon = Reaped(spawn_ferry(&["run", "--config", &cfg]));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop(&mut daemon.0);

    let status = ok(&["batch", "status", "-c", &cfg, "--limit", "100"]);
    let mut windows: Vec<(String, String)> = status
        .lines()
        .filter(|l| l.contains("succeeded"))
        .map(|l| {
            let w = l.trim().trim_start_matches('[');
            let (start, rest) = w.split_once(", ").unwrap();
            (start.to_owned(), rest.split_once(')').unwrap().0.to_owned())
        })
        .collect();
    windows.reverse(); // status lists newest first
    assert!(windows.len() >= 6, "expected at least 6 windows: {status}");
    for pair in windows.windows(2) {
        assert_eq!(
            pair[0].1, pair[1].0,
            "windows not contiguous or repeated: {status}"
        );
    }
    assert!(!status.contains("failed"), "{status}");
    // What the daemon's importer had not taken yet, taken now; then every
    // window's batch is loaded exactly once (the query takes every row in
    // each window, so the table holds each row once per window).
    ok(&["import", "run", "orders", "-c", &cfg]);
    let n = rows(&dst.url).await.len();
    assert_eq!(
        n,
        ROWS.len() * windows.len(),
        "{} windows exported, {n} rows loaded",
        windows.len()
    );
    let status = ok(&["batch", "status", "-c", &cfg, "--limit", "100"]);
    assert!(
        status.contains(&format!(
            "import orders ({} batch(es) shown)",
            windows.len()
        )),
        "{status}"
    );
}

#[test]
fn bad_batch_settings_name_the_key_and_line() {
    let dir = TempDir::new();
    let base = config(
        &dir.0,
        "sqlite://a.db",
        "sqlite://b.db",
        "schedule = \"0 2 * * *\"",
    );
    for (from, to, expect) in [
        (
            "schedule = \"0 2 * * *\"",
            "schedule = \"61 2 * * *\"",
            "schedule",
        ),
        (
            "schedule = \"0 2 * * *\"",
            "schedule = \"0 2 * * *\"\ntimezone = \"Mars/Olympus\"",
            "timezone",
        ),
        ("url = \"/", "url = \"ftp://host/", "ftp"),
        // SFTP without a key or a password.
        (
            "url = \"/",
            "url = \"sftp://ferry@127.0.0.1:2222/",
            "private_key",
        ),
        (
            "poll_interval = \"200ms\"",
            "poll_interval = \"soon\"",
            "poll_interval",
        ),
    ] {
        let text = base.replacen(from, to, 1);
        assert_ne!(text, base, "{from}");
        let cfg = write(&dir.0, &text);
        let out = ferry(&["check", "--config", &cfg]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{to}: accepted");
        assert!(err.contains("line "), "{to}: no line in {err}");
        assert!(err.contains(expect), "{to}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A query the database refuses: the run is recorded failed with the
/// database's own message, `ferry export run` says so and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_query_fails_the_run_with_the_databases_message() {
    let (src, dst, dir) = (
        SqliteTestDb::create(),
        SqliteTestDb::create(),
        TempDir::new(),
    );
    source(&src.url).await;
    let text = config(&dir.0, &src.url, &dst.url, "every = \"1h\"")
        .replace("FROM orders ORDER BY id", "FROM no_such_table");
    let cfg = write(&dir.0, &text);
    let out = ferry(&[
        "export",
        "run",
        "orders",
        "-c",
        &cfg,
        "--window",
        "2026-12-06T10:00:00Z",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("no_such_table"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let status = ok(&["batch", "status", "-c", &cfg]);
    assert!(
        status.contains("failed") && status.contains("no_such_table"),
        "{status}"
    );
}
