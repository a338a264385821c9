//! The `ferry` binary as a process: killed mid-batch, run twice side by
//! side, stopped by signal, given bad configuration, and its operator
//! commands. Real PostgreSQL and SQLite, a real HTTP receiver.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_core::Message;
use ferry_store::Database;
use ferry_testkit::{PgTestDb, Receiver, SqliteTestDb, TempDir};
use rand::Rng;

mod cli;
mod consume;
mod faults;
mod forward;
mod serve;

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Starts `ferry relay` from `url` to the receiver.
pub fn spawn_relay(db: &str, to: &str, extra: &[&str]) -> Child {
    Command::new(FERRY)
        .args(["--log-level", "warn", "relay", "--database", db, "--to", to])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ferry")
}

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

pub async fn migrated(url: &str) -> Database {
    let db = Database::connect(url).await.unwrap();
    db.migrate().await.unwrap();
    db
}

pub async fn enqueue(db: &Database, ms: &[Message]) {
    db.enqueue(ms).await.unwrap();
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
