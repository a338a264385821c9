//! Every measuring command runs end to end on tiny sizes: the binary exits
//! successfully, prints its figures and writes them to the TSV file.
#![allow(missing_docs)]

use std::path::Path;
use std::process::Command;

use ferry_testkit::{PgTestDb, TempDir};

/// Runs `ferry-bench --tsv <tsv> <args>`; returns its stdout, failing the
/// test (with stderr) when it does not exit successfully.
fn bench(tsv: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-bench"))
        .arg("--tsv")
        .arg(tsv)
        .args(args)
        .output()
        .expect("run ferry-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ferry-bench {args:?} failed\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The TSV's lines for `figure`, split into columns (after the header).
fn tsv_rows(tsv: &Path, figure: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(tsv).expect("read the tsv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split('\t').collect();
    let col = header
        .iter()
        .position(|h| *h == "figure")
        .expect("figure column");
    lines
        .map(|l| l.split('\t').map(str::to_owned).collect::<Vec<_>>())
        .inspect(|row| assert_eq!(row.len(), header.len(), "{row:?}"))
        .filter(|row| row[col] == figure)
        .collect()
}

#[test]
fn drain_sqlite_to_null() {
    let dir = TempDir::new();
    let tsv = dir.0.join("figures.tsv");
    let database = format!("sqlite://{}", dir.0.display());
    let out = bench(
        &tsv,
        &[
            "drain",
            "--database",
            &database,
            "--messages",
            "2000",
            "--runs",
            "1",
        ],
    );
    assert!(out.contains("median of 1: relay drain"), "{out}");
    assert!(out.contains("sql drain"), "{out}");
    assert!(out.contains("1 worker(s)"), "{out}");
    let rows = tsv_rows(&tsv, "relay_drain");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].iter().any(|c| c.starts_with("SQLite ")), "{rows:?}");
}

#[test]
fn drain_postgres_to_nats() {
    let dir = TempDir::new();
    let tsv = dir.0.join("figures.tsv");
    let server = block_on(PgTestDb::create());
    let out = bench(
        &tsv,
        &[
            "drain",
            "--database",
            &server.url,
            "--sink",
            "nats",
            "--messages",
            "2000",
            "--runs",
            "1",
            "--baseline",
            "fill",
        ],
    );
    assert!(out.contains("== drain postgres -> nats"), "{out}");
    assert!(out.contains("median of 1: relay drain"), "{out}");
    let rows = tsv_rows(&tsv, "relay_drain");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].iter().any(|c| c.starts_with("PostgreSQL ")),
        "{rows:?}"
    );
}

#[test]
fn latency_postgres() {
    let dir = TempDir::new();
    let tsv = dir.0.join("figures.tsv");
    let server = block_on(PgTestDb::create());
    let out = bench(
        &tsv,
        &[
            "latency",
            "--database",
            &server.url,
            "--rate",
            "200",
            "--secs",
            "2",
            "--runs",
            "1",
        ],
    );
    assert!(out.contains("median of 1: commit -> hand-off p50"), "{out}");
    assert!(out.contains(", 0 missing)"), "{out}");
    assert_eq!(tsv_rows(&tsv, "handoff_p50").len(), 1);
}

/// A fresh database needs async; the tests themselves run the binary.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// `brokers` on NATS and Redis, end to end through a PostgreSQL outbox and
/// inbox included: every figure reaches the table and the TSV.
#[test]
fn brokers_nats_and_redis_with_end_to_end() {
    let dir = TempDir::new();
    let tsv = dir.0.join("figures.tsv");
    let pg = ferry_testkit::pg_admin_url();
    let out = bench(
        &tsv,
        &[
            "brokers",
            "--broker",
            "nats",
            "--broker",
            "redis",
            "--messages",
            "300",
            "--runs",
            "1",
            "--end-to-end",
            &pg,
        ],
    );
    assert!(
        out.contains("| nats |") && out.contains("| redis |"),
        "{out}"
    );
    for figure in [
        "raw-publish",
        "publish",
        "consume",
        "end-to-end",
        "inbox-ceiling",
    ] {
        assert_eq!(tsv_rows(&tsv, figure).len(), 2, "{figure}: {out}");
    }
}
