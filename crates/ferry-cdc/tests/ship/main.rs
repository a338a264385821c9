#![allow(missing_docs)]
//! Shipping changes to a sink (a real webhook receiver): every committed
//! change once in effect, per-row order, a sink that goes down, a change
//! refused for good, a restart that has not acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_adapters::SinkConfig;
use ferry_cdc::{ship, OnFailure, ShipConfig, ShipStats, TriggerCapture, TriggerConfig};
use ferry_core::{RetryPolicy, Sink};
use ferry_delivery::SinkBackoff;
use ferry_store::Database;
use ferry_testkit::{Mode, Receiver, SqliteTestDb};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Env {
    db: Database,
    _t: SqliteTestDb,
}

async fn env() -> Env {
    let t = SqliteTestDb::create();
    let db = Database::connect(&t.url).await.unwrap();
    db.migrate().await.unwrap();
    sqlx::query("CREATE TABLE accounts (id INT PRIMARY KEY, owner TEXT, balance INT)")
        .execute(pool(&db))
        .await
        .unwrap();
    Env { db, _t: t }
}

fn pool(db: &Database) -> &sqlx::SqlitePool {
    let Database::Sqlite(p) = db else {
        unreachable!()
    };
    p
}

fn config() -> ShipConfig {
    ShipConfig {
        batch_size: 50,
        window: 200,
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
            ..RetryPolicy::default()
        },
        backoff: SinkBackoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        acknowledge_every: Duration::from_millis(20),
        ..ShipConfig::new("bank")
    }
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), ferry_cdc::ShipError>>,
    stats: Arc<ShipStats>,
}

async fn start(env: &Env, r: &Receiver, config: ShipConfig) -> Running {
    let capture = TriggerCapture::start(
        env.db.clone(),
        TriggerConfig {
            poll_interval: Duration::from_millis(10),
            ..TriggerConfig::new("bank")
        },
    )
    .await
    .unwrap();
    let sink: Arc<dyn Sink> = SinkConfig::from_url(&r.url())
        .unwrap()
        .build()
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let stats = Arc::new(ShipStats::default());
    let task = tokio::spawn(ship(
        capture,
        sink,
        config,
        Some(env.db.clone()),
        stats.clone(),
        stop.clone(),
    ));
    Running { stop, task, stats }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn exec(env: &Env, sql: &str) {
    sqlx::query(sql).execute(pool(&env.db)).await.unwrap();
}

/// The workload: 20 accounts, each updated 5 times, 5 deleted.
async fn workload(env: &Env) {
    for i in 0..20 {
        exec(
            env,
            &format!("INSERT INTO accounts VALUES ({i}, 'o{i}', 0)"),
        )
        .await;
    }
    for round in 1..=5 {
        let mut tx = pool(&env.db).begin().await.unwrap();
        for i in 0..20 {
            sqlx::query(&format!(
                "UPDATE accounts SET balance = {round} WHERE id = {i}"
            ))
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
    for i in 0..5 {
        exec(env, &format!("DELETE FROM accounts WHERE id = {i}")).await;
    }
}

fn body(r: &ferry_testkit::Received) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// Per account, the balances the receiver applied, in order.
fn balances(applied: &[ferry_testkit::Received]) -> std::collections::BTreeMap<i64, Vec<String>> {
    let mut out: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
    for r in applied {
        let b = body(r);
        let id = b["key"]["id"].as_i64().unwrap();
        let what = match b["op"].as_str().unwrap() {
            "d" => "deleted".to_owned(),
            _ => b["after"]["balance"].to_string(),
        };
        out.entry(id).or_default().push(what);
    }
    out
}

fn expected() -> std::collections::BTreeMap<i64, Vec<String>> {
    (0..20)
        .map(|i| {
            let mut v: Vec<String> = (0..=5).map(|b| b.to_string()).collect();
            if i < 5 {
                v.push("deleted".into());
            }
            (i, v)
        })
        .collect()
}

#[tokio::test]
async fn every_change_once_in_row_order() {
    let env = env().await;
    let r = Receiver::start().await;
    let running = start(&env, &r, config()).await;
    workload(&env).await;
    wait_until("125 changes", || r.applied().len() == 125).await;
    let applied = r.applied();
    assert_eq!(balances(&applied), expected());
    let first = &applied[0];
    assert_eq!(first.headers["ce-type"], "bank.main.accounts");
    assert_eq!(first.key.as_deref(), Some(r#"main.accounts:{"id":0}"#));
    // Acknowledged: the change table is empty again.
    wait_until("pruned", || {
        running
            .stats
            .acknowledged
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    })
    .await;
    running.stop().await;
    let (backlog, _) = TriggerCapture::backlog(&env.db, "bank").await.unwrap();
    assert_eq!(backlog, 0);
}

#[tokio::test]
async fn a_sink_that_goes_down_loses_nothing() {
    let env = env().await;
    let r = Receiver::start().await;
    r.set_mode(Mode::Down);
    let running = start(&env, &r, config()).await;
    workload(&env).await;
    wait_until("refused while down", || r.requests_while_down() > 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.set_mode(Mode::Up);
    wait_until("125 changes", || r.applied().len() == 125).await;
    assert_eq!(balances(&r.applied()), expected());
    running.stop().await;
}

#[tokio::test]
async fn a_change_refused_for_good_is_dead_lettered_and_the_rest_goes_on() {
    let env = env().await;
    let r = Receiver::start().await;
    let running = start(&env, &r, config()).await;
    // The receiver answers 400 to payloads containing "poison".
    exec(&env, "INSERT INTO accounts VALUES (1, 'poison', 0)").await;
    exec(&env, "INSERT INTO accounts VALUES (2, 'fine', 0)").await;
    wait_until("the good change", || r.applied().len() == 1).await;
    wait_until("a dead letter", || {
        running
            .stats
            .dead
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    let dead = env.db.dead_letters(Some("cdc:bank"), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(String::from_utf8_lossy(&dead[0].message.payload).contains("poison"));
    running.stop().await;
    // Both acknowledged: nothing is read again.
    let (backlog, _) = TriggerCapture::backlog(&env.db, "bank").await.unwrap();
    assert_eq!(backlog, 0);
}

#[tokio::test]
async fn stop_mode_stops_at_the_refused_change() {
    let env = env().await;
    let r = Receiver::start().await;
    let running = start(
        &env,
        &r,
        ShipConfig {
            on_failure: OnFailure::Stop,
            ..config()
        },
    )
    .await;
    exec(&env, "INSERT INTO accounts VALUES (1, 'poison', 0)").await;
    exec(&env, "INSERT INTO accounts VALUES (2, 'fine', 0)").await;
    let err = running.task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("stopped at change"), "{err}");
    // Not acknowledged past it: both are still there to read.
    let (backlog, _) = TriggerCapture::backlog(&env.db, "bank").await.unwrap();
    assert_eq!(backlog, 2);
}

/// A change delivered but not acknowledged (one before it still waits for
/// a retry) is sent again after a crash, under the same id: the receiver
/// applies it once.
#[tokio::test]
async fn a_crash_sends_the_unacknowledged_again_under_the_same_ids() {
    let env = env().await;
    let r = Receiver::start().await;
    let patient = ShipConfig {
        retry: RetryPolicy {
            max_attempts: 1000,
            ..config().retry
        },
        ..config()
    };
    let running = start(&env, &r, patient.clone()).await;
    // The receiver answers 503 to payloads containing "refuse".
    exec(&env, "INSERT INTO accounts VALUES (1, 'refuse', 0)").await;
    exec(&env, "INSERT INTO accounts VALUES (2, 'fine', 0)").await;
    wait_until("the second change applied", || r.applied().len() == 1).await;
    let fine = r.applied()[0].id.clone();
    // A crash: no acknowledgement past the change that waits.
    running.task.abort();
    let _ = running.task.await;
    let (backlog, _) = TriggerCapture::backlog(&env.db, "bank").await.unwrap();
    assert_eq!(backlog, 2, "neither acknowledged");
    let again = start(&env, &r, patient).await;
    wait_until("sent again", || {
        r.requests().iter().filter(|x| x.id == fine).count() == 2
    })
    .await;
    assert_eq!(r.applied().len(), 1, "applied once");
    again.stop().await;
}
