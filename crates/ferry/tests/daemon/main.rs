//! The `ferry` binary as a process: killed mid-batch, run twice side by
//! side, stopped by signal, given bad configuration, and its operator
//! commands. Real PostgreSQL and SQLite, a real HTTP receiver.
#![allow(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_core::Message;
use ferry_store::Database;
use ferry_testkit::nats_server::free_port;
use ferry_testkit::{PgTestDb, Receiver, SqliteTestDb, TempDir};
use rand::Rng;

mod admin;
mod batch;
mod batch_faults;
mod cdc;
mod cdc_cluster;
mod cli;
mod closed_stderr;
mod closed_stdout;
mod consume;
mod early_signal;
mod faults;
mod forward;
mod quiet_clients;
mod relay_metrics;
mod serve;
mod telemetry;

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// `ferry --log-level <level> <args>`, its output discarded and its log on
/// the test's stderr (callers may change either before spawning).
pub fn ferry_command(level: &str, args: &[&str]) -> Command {
    let mut command = Command::new(FERRY);
    command
        .args(["--log-level", level])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

/// Starts `ferry --log-level warn <args>`.
pub fn spawn_ferry(args: &[&str]) -> Child {
    ferry_command("warn", args).spawn().expect("start ferry")
}

/// Starts `ferry relay` from `url` to the receiver.
pub fn spawn_relay(db: &str, to: &str, extra: &[&str]) -> Child {
    ferry_command("warn", &["relay", "--database", db, "--to", to])
        .args(extra)
        .spawn()
        .expect("start ferry")
}

/// A child process killed when the test ends, passed or not.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `#[tokio::test]` per database: `$test` runs `$run(url)` on the
/// fresh database `$db` makes.
macro_rules! per_database {
    ($run:ident { $($test:ident: $db:expr),+ $(,)? }) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let t = $db;
            $run(&t.url).await;
        }
    )+};
}
pub(crate) use per_database;

/// Runs `ferry` with `args` to completion.
pub fn ferry(args: &[&str]) -> Output {
    Command::new(FERRY).args(args).output().expect("run ferry")
}

pub fn sigterm(child: &Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
}

/// SIGKILL, and reaps the process.
pub fn sigkill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// SIGTERM, and the process exits 0.
pub fn stop(child: &mut Child) {
    sigterm(child);
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}

pub async fn migrated(url: &str) -> Database {
    let db = Database::connect(url).await.unwrap();
    db.migrate().await.unwrap();
    db
}

pub async fn enqueue(db: &Database, ms: &[Message]) {
    db.enqueue(ms).await.unwrap();
}

/// A migrated outbox at `url` holding `n` messages on `keys` keys (see
/// [`keyed`]), and a receiver for them.
pub async fn backlog(url: &str, n: usize, keys: usize) -> (Database, Receiver) {
    let db = migrated(url).await;
    enqueue(&db, &keyed(n, keys)).await;
    (db, Receiver::start().await)
}

pub fn keyed(n: usize, keys: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::event("t", format!("{}:{}", i % keys, i)).with_key(format!("k{}", i % keys))
        })
        .collect()
}

pub async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like [`wait_until`] for an asynchronous condition, looking every `every`.
pub async fn wait_for<F: Future<Output = bool>>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(every).await;
    }
}

/// `ferry <args> --database <url>` with nothing listening at the
/// PostgreSQL `url` (connection refused, a retryable error): it keeps
/// retrying with backoff, logs that once, and stops cleanly on SIGTERM.
pub async fn assert_an_unreachable_database_is_retried(args: &[&str]) {
    let url = format!("postgres://postgres@127.0.0.1:{}/x", free_port());
    let mut child = Command::new(FERRY)
        .args(args)
        .args(["--database", &url])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running, retrying"
    );
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("database unreachable").count(),
        1,
        "logged once, not per attempt:\n{log}"
    );
}

/// After the kills: with the receiver at full speed again, the process
/// `last` starts delivers the rest of the `n` messages or events (`noun`)
/// and stops cleanly on SIGTERM; each was applied exactly once.
pub async fn assert_the_rest_applied_once(
    r: &Receiver,
    n: usize,
    noun: &str,
    last: impl FnOnce() -> Child,
) {
    r.set_delay(Duration::ZERO);
    let mut child = last();
    wait_until(
        &format!("every {noun} applied"),
        Duration::from_secs(120),
        || r.applied().len() == n,
    )
    .await;
    stop(&mut child);
    let unique: HashSet<_> = r.applied().iter().map(|m| m.id.clone()).collect();
    assert_eq!(unique.len(), n, "each {noun} applied exactly once");
    eprintln!(
        "{} requests for {n} {noun}s ({} delivered again after kills)",
        r.requests().len(),
        r.requests().len() - n
    );
}

/// Per key, applied payload numbers strictly increase.
pub fn assert_in_order_per_key(r: &Receiver) {
    let mut last = HashMap::<String, i64>::new();
    for m in r.applied() {
        let body = String::from_utf8(m.body.to_vec()).unwrap();
        let (k, i) = body.split_once(':').unwrap();
        let i: i64 = i.parse().unwrap();
        let prev = last.insert(k.to_owned(), i).unwrap_or(-1);
        assert!(i > prev, "key {k}: {i} applied after {prev}");
    }
}
