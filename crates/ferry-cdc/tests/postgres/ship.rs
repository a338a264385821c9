//! PostgreSQL log mode shipped to a real webhook that goes down for a
//! while: the slot keeps what was not delivered (its confirmed position
//! stays behind), nothing is lost, each change is applied once, and the
//! slot moves on once the sink is back.

use std::sync::Arc;

use ferry_adapters::SinkConfig;
use ferry_cdc::postgres::{PgCapture, SnapshotMode};
use ferry_cdc::{ship, ShipConfig, ShipStats};
use ferry_core::{RetryPolicy, Sink};
use ferry_delivery::SinkBackoff;
use ferry_testkit::{Mode, PgTestDb, Receiver};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use super::support::{config, exec, slot_lsns, unique, Slots};

async fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed().as_secs() < 30, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_sink_outage_keeps_the_changes_in_the_slot_and_loses_nothing() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(&mut conn, "CREATE TABLE t (id int PRIMARY KEY, v int)").await;
    let name = unique("ship");
    let mut cfg = config(&db, &name, &mut slots);
    cfg.snapshot = SnapshotMode::Never;
    let slot = cfg.slot_name();
    let capture = PgCapture::connect(cfg).await.unwrap();
    let r = Receiver::start().await;
    r.set_mode(Mode::Down);
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
        ShipConfig {
            retry: RetryPolicy {
                max_attempts: 1000,
                initial_backoff: std::time::Duration::from_millis(20),
                max_backoff: std::time::Duration::from_millis(100),
                ..RetryPolicy::default()
            },
            backoff: SinkBackoff {
                initial: std::time::Duration::from_millis(20),
                max: std::time::Duration::from_millis(200),
            },
            ..ShipConfig::new(name.clone())
        },
        None,
        stats.clone(),
        stop.clone(),
    ));
    // Where the WAL ends before the changes: the slot may confirm up to
    // here (an idle capture does), never past it while they wait.
    let (before,): (String,) = sqlx::query_as("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let before = super::support::parse_lsn(&before);
    for i in 0..50 {
        exec(&mut conn, &format!("INSERT INTO t VALUES ({i}, {i})")).await;
    }
    wait("refused while down", || r.requests_while_down() > 3).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (during, _) = slot_lsns(&mut conn, &slot).await;
    assert!(
        during <= before,
        "nothing confirmed past the changes while the sink is down"
    );
    r.set_mode(Mode::Up);
    wait("50 changes applied", || r.applied().len() == 50).await;
    let ids: std::collections::HashSet<String> = r.applied().into_iter().map(|x| x.id).collect();
    assert_eq!(ids.len(), 50);
    // Confirmed past the changes once delivered.
    let start = std::time::Instant::now();
    loop {
        let (now, _) = slot_lsns(&mut conn, &slot).await;
        if now > during {
            break;
        }
        assert!(start.elapsed().as_secs() < 30, "the slot did not move on");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
}
