//! `ferry cdc` in PostgreSQL log mode against a private cluster of its own
//! (`ferry_testkit::private_pg`), which the test may misconfigure, stop or
//! crash without disturbing the shared server on 5432: a server without
//! `wal_level = logical` is refused with the fix; the server restarted
//! mid-stream (cleanly, then as a crash) and a sink down for a while lose
//! nothing, reorder nothing, and are each logged once going down and once
//! coming back.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use ferry_cdc::postgres::{PgCapture, PgLogConfig};
use ferry_testkit::private_pg::{PrivatePg, Stop};
use ferry_testkit::Mode;
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::*;

/// Accounts `0..ACCOUNTS` exist; the writer updates `0..UPDATED`.
const ACCOUNTS: i64 = 100;
const UPDATED: i64 = 50;

/// The log filter the captures run with: the daemon's default.
const LOG_LEVEL: &str = "info";

/// A `ferry` process whose stderr (its log) is collected while it runs,
/// so the pipe never fills; killed when dropped.
struct Logged {
    child: Reaped,
    log: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Logged {
    fn spawn(args: &[&str]) -> Self {
        let mut child = ferry_command(LOG_LEVEL, args)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferry");
        let mut stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            child: Reaped(child),
            log,
            reader: Some(reader),
        }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    /// Waits at most `limit` for the process to exit by itself; its status
    /// and whole log. Killed, and the test failed, if it does not.
    async fn exit_within(mut self, limit: Duration) -> (ExitStatus, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                sigkill(&mut self.child.0);
                panic!("still running after {limit:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.reader.take().unwrap().join().unwrap();
        (status, self.log())
    }

    /// SIGTERM: it must exit 0; its whole log.
    fn stop(mut self) -> String {
        assert!(
            self.child.0.try_wait().unwrap().is_none(),
            "ferry exited early:\n{}",
            self.log()
        );
        stop(&mut self.child.0);
        self.reader.take().unwrap().join().unwrap();
        self.log()
    }

    /// Like [`wait_until`], with the process's log in the failure and a
    /// failure as soon as the process exits.
    async fn wait_until(&mut self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                panic!(
                    "ferry exited ({status}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}; ferry's log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `ferry cdc` from `url`'s `accounts` to the receiver, streaming changes
/// committed from its start (no snapshot).
fn spawn_capture(url: &str, r: &Receiver) -> Logged {
    Logged::spawn(&[
        "cdc",
        "--from",
        url,
        "--to",
        &r.url(),
        "--name",
        "bank",
        "--tables",
        "accounts",
        "--no-snapshot",
    ])
}

/// `accounts` with every balance 0.
async fn accounts(url: &str) {
    let pool = PgPool::connect(url).await.unwrap();
    sqlx::query("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO accounts SELECT i, 0 FROM generate_series(0, $1 - 1) AS i")
        .bind(ACCOUNTS as i32)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// Per account, the balances the receiver applied (each `ce-id` once), in
/// order.
fn balances(r: &Receiver) -> BTreeMap<i64, Vec<i64>> {
    let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for x in r.applied() {
        let b: Value = serde_json::from_slice(&x.body).unwrap();
        let id = b["key"]["id"].as_i64().unwrap();
        out.entry(id)
            .or_default()
            .push(b["after"]["balance"].as_i64().unwrap());
    }
    out
}

/// The highest balance the receiver applied to account 0.
fn newest(r: &Receiver) -> i64 {
    balances(r)
        .get(&0)
        .and_then(|s| s.iter().copied().max())
        .unwrap_or(0)
}

/// Commits balance 1, 2, 3, … to accounts `0..UPDATED`, one transaction
/// each, through outages of the server, until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<i64>,
}

impl Writer {
    fn start(url: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicI64::new(0));
        // One connection, made again after the server went away.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(url)
            .unwrap();
        let (s, c) = (stop.clone(), committed.clone());
        let task = tokio::spawn(async move {
            let mut balance = 0;
            while !s.load(Ordering::SeqCst) {
                balance += 1;
                commit_once(&pool, balance).await;
                c.store(balance, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            pool.close().await;
            balance
        });
        Self {
            stop,
            committed,
            task,
        }
    }

    /// The last balance committed.
    fn committed(&self) -> i64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Stops after the update under way; the last balance committed.
    async fn finish(self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// Commits `balance`, retrying while the server is away. A failed commit
/// may have committed (the answer lost in a crash): the condition makes
/// its retry change nothing then, so each balance is committed once.
async fn commit_once(pool: &PgPool, balance: i64) {
    let start = Instant::now();
    let mut failed = false;
    loop {
        let done = sqlx::query("UPDATE accounts SET balance = $1 WHERE id < $2 AND balance < $1")
            .bind(balance as i32)
            .bind(UPDATED as i32)
            .execute(pool)
            .await;
        match done {
            Ok(done) => {
                let rows = done.rows_affected();
                assert!(
                    rows == UPDATED as u64 || (rows == 0 && failed),
                    "balance {balance}: {rows} rows updated"
                );
                return;
            }
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "balance {balance} not committed in 60 s: {e}"
                );
                failed = true;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Every account updated went from the first balance the capture saw to
/// `last` one by one (every committed change once, in order); the others
/// never changed.
fn assert_every_change_once_in_order(r: &Receiver, last: i64) -> i64 {
    let got = balances(r);
    for (id, seen) in &got {
        assert!(*id < UPDATED, "account {id} was never updated: {seen:?}");
        let expected: Vec<i64> = (seen[0]..=last).collect();
        assert_eq!(seen, &expected, "account {id}: every change once, in order");
    }
    assert_eq!(got.len(), UPDATED as usize, "every account updated arrived");
    got.values().map(|s| s[0]).max().unwrap()
}

/// The log lines containing `what`.
fn lines<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(what)).collect()
}

/// `failures=N` of a "… available again" line: the attempts the outage
/// took.
fn failures(line: &str) -> u32 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("failures="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no failures= in {line}"))
}

/// `dependency` (`database`, `sink`) is logged going down and coming back
/// once per outage, `outages` times in all, though the outages took more
/// attempts than that. (An outage may take a single attempt: the runner
/// reads the source only between rounds of deliveries, so a server that
/// was away during a round is found gone, and back, at the next read.)
fn assert_logged_once_per_outage(log: &str, dependency: &str, outages: usize) {
    let down = lines(log, &format!("{dependency} unavailable"));
    let up = lines(log, &format!("{dependency} available again"));
    assert_eq!(
        (down.len(), up.len()),
        (outages, outages),
        "{dependency}: one line going down and one coming back per outage:\n{log}"
    );
    let attempts: u32 = up.iter().map(|l| failures(l)).sum();
    assert!(
        attempts > outages as u32,
        "{attempts} failed attempts in {outages} outages: too few to tell once from per \
         attempt:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// Nothing is logged at WARN or ERROR but `dependency`'s going-down line
/// and the lines `bounded` names, each at most once per outage: no line
/// per attempt, from Ferry or from a library it uses.
fn assert_no_line_per_attempt(log: &str, dependency: &str, outages: usize, bounded: &[&str]) {
    let going_down = format!("{dependency} unavailable");
    let others: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| !l.contains(&going_down))
        .collect();
    let unexpected: Vec<&str> = others
        .iter()
        .copied()
        .filter(|l| !bounded.iter().any(|b| l.contains(b)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} warning or error lines besides the {outages} outages' own, e.g.\n{}\n\nwhole log:\n{log}",
        unexpected.len(),
        unexpected[..unexpected.len().min(4)].join("\n")
    );
    for b in bounded {
        let n = others.iter().filter(|l| l.contains(b)).count();
        assert!(
            n <= outages,
            "{b:?} logged {n} times for {outages} outages:\n{log}"
        );
    }
}

/// A server with `wal_level = replica`: `PgCapture::connect` fails
/// permanently naming the setting, and `ferry cdc` exits 1 at once (no
/// retrying, no panic) with the fix on stderr, having sent nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_refuses_a_server_without_logical_wal_naming_the_fix() {
    let pg = PrivatePg::start_with(&["wal_level = replica"]);
    let url = pg.url();
    accounts(&url).await;

    let err = match PgCapture::connect(PgLogConfig::new(url.clone(), "refused")).await {
        Ok(_) => panic!("a capture started with wal_level = replica"),
        Err(e) => e,
    };
    assert_eq!(err.kind, ferry_core::ErrorKind::Permanent, "{err:?}");
    let message = err.describe();
    assert!(
        message.contains("wal_level is replica") && message.contains("wal_level = logical"),
        "{message}"
    );

    let r = Receiver::start().await;
    let child = Logged::spawn(&["cdc", "--from", &url, "--to", &r.url(), "--name", "refused"]);
    let (status, log) = child.exit_within(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "an error, not a panic: {log}");
    assert!(!log.contains("panicked"), "{log}");
    let error = log
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{log}"));
    assert!(
        error.contains("wal_level is replica") && error.contains("wal_level = logical"),
        "{error}"
    );
    assert_eq!(
        lines(&log, "database unavailable").len(),
        0,
        "a refusal, not retried:\n{log}"
    );
    assert!(r.requests().is_empty());
}

/// Updates run while the server is stopped cleanly (`-m fast`) for a
/// while and started again, then crashes (`-m immediate`) and recovers;
/// the writer retries its own commits meanwhile. Every committed change
/// reaches the receiver once (it dedups by `ce-id`), each account's in
/// order, and each outage is logged once going down and once coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_through_a_restart_and_a_crash_of_the_server_loses_nothing() {
    let pg = PrivatePg::start();
    let url = pg.url();
    accounts(&url).await;
    let r = Receiver::start().await;
    r.set_delay(Duration::from_millis(20));
    let mut cdc = spawn_capture(&url, &r);
    let writer = Writer::start(&url);
    cdc.wait_until("the capture to stream", Duration::from_secs(30), || {
        newest(&r) > 0
    })
    .await;
    let mut behind_at_stop = 0;
    for how in [Stop::Fast, Stop::Immediate] {
        // Streaming again before each stop: changes arrive as committed.
        let resumed = writer.committed() + 5;
        cdc.wait_until(
            "changes committed since the last restart",
            Duration::from_secs(60),
            || newest(&r) >= resumed,
        )
        .await;
        if newest(&r) < writer.committed() {
            behind_at_stop += 1;
        }
        pg.stop(how);
        // Down long enough for the capture to try several times.
        tokio::time::sleep(Duration::from_secs(2)).await;
        pg.start_again();
    }
    let resumed = writer.committed() + 5;
    cdc.wait_until(
        "changes committed after the crash",
        Duration::from_secs(60),
        || newest(&r) >= resumed,
    )
    .await;
    let last = writer.finish().await;
    cdc.wait_until(
        "every account at its last balance",
        Duration::from_secs(60),
        || {
            let got = balances(&r);
            (0..UPDATED).all(|id| got.get(&id).and_then(|s| s.last()) == Some(&last))
        },
    )
    .await;
    // A change arriving late, or again under another id, shows by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = cdc.stop();
    let first = assert_every_change_once_in_order(&r, last);
    assert!(
        first < last / 3,
        "the capture saw most updates as they came ({first} of {last})"
    );
    assert_logged_once_per_outage(&log, "database", 2);
    eprintln!(
        "balances {first}..={last}; {} requests for {} changes; {behind_at_stop} of 2 stops \
         with committed changes not yet delivered",
        r.requests().len(),
        r.applied().len()
    );
}

/// The receiver answers 503 for a few seconds while updates commit; once
/// it is back, every change arrives once, in order, and the outage is
/// logged once going down and once coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_through_a_sink_outage_loses_nothing_and_logs_it_once() {
    let pg = PrivatePg::start();
    let url = pg.url();
    accounts(&url).await;
    let r = Receiver::start().await;
    let mut cdc = spawn_capture(&url, &r);
    let writer = Writer::start(&url);
    cdc.wait_until("the capture to stream", Duration::from_secs(30), || {
        newest(&r) > 0
    })
    .await;
    r.set_mode(Mode::Down);
    let down_from = writer.committed();
    cdc.wait_until(
        "updates committed and refused while the sink is down",
        Duration::from_secs(30),
        || r.requests_while_down() >= 3 && writer.committed() >= down_from + 20,
    )
    .await;
    // Down for a few seconds in all, while the writer goes on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.set_mode(Mode::Up);
    let attempts = r.requests_while_down();
    let last = writer.finish().await;
    cdc.wait_until(
        "every account at its last balance",
        Duration::from_secs(60),
        || {
            let got = balances(&r);
            (0..UPDATED).all(|id| got.get(&id).and_then(|s| s.last()) == Some(&last))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = cdc.stop();
    assert_every_change_once_in_order(&r, last);
    assert!(attempts >= 3, "several attempts while down ({attempts})");
    assert_logged_once_per_outage(&log, "sink", 1);
    assert_no_line_per_attempt(&log, "sink", 1, &[]);
}

/// The server stopped for a while, cleanly and then as a crash, under a
/// running capture: the operator reads one warning when it goes down and
/// one line when it is back, whatever the number of attempts in between
/// (docs/cdc.md: "logged when it goes down and when it comes back").
///
/// `pg_walstream`'s connection retry logs two ERROR lines per attempt
/// (`Connection attempt 1 failed: …`, `All connection attempts failed
/// after …`, pg_walstream 0.10.0 `src/retry.rs`), and every attempt of
/// Ferry's goes through it (`PgCapture::open` asks it for one attempt and
/// retries itself): the daemon's default log filter turns that module off
/// (`quieted` in `crates/ferry/src/main.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_a_server_outage_is_logged_once_not_per_attempt() {
    let pg = PrivatePg::start();
    let url = pg.url();
    accounts(&url).await;
    let r = Receiver::start().await;
    let mut cdc = spawn_capture(&url, &r);
    let writer = Writer::start(&url);
    for (outage, how) in [Stop::Fast, Stop::Immediate].into_iter().enumerate() {
        let resumed = writer.committed() + 3;
        cdc.wait_until("the capture to stream", Duration::from_secs(60), || {
            newest(&r) >= resumed
        })
        .await;
        pg.stop(how);
        // Down long enough for the capture to try several times.
        tokio::time::sleep(Duration::from_secs(2)).await;
        pg.start_again();
        let log = cdc.log.clone();
        cdc.wait_until("the capture back", Duration::from_secs(60), || {
            let log = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
            lines(&log, "database available again").len() > outage
        })
        .await;
    }
    let last = writer.finish().await;
    cdc.wait_until("the last balance", Duration::from_secs(60), || {
        newest(&r) >= last
    })
    .await;
    let log = cdc.stop();
    assert_logged_once_per_outage(&log, "database", 2);
    assert_no_line_per_attempt(
        &log,
        "database",
        2,
        &[
            // Once per lost connection, as it is dropped.
            "Failed to end COPY mode gracefully",
        ],
    );
}
