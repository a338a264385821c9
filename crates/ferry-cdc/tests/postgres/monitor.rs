//! The slot monitor against a real server: retained WAL over a threshold
//! flagged once, heartbeats written into the captured database's log.

use ferry_cdc::postgres::{PgCapture, SlotMonitor, SnapshotMode};
use ferry_testkit::PgTestDb;
use sqlx::{Connection, PgConnection};

use crate::support::{config, exec, unique, Slots};

#[tokio::test]
async fn retained_wal_over_the_threshold_is_flagged_and_heartbeats_reach_the_log() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(&mut conn, "CREATE TABLE a (id int PRIMARY KEY)").await;
    let mut cfg = config(&db, &unique("watch"), &mut slots);
    cfg.snapshot = SnapshotMode::Never;
    let _capture = PgCapture::connect(cfg.clone()).await.unwrap();
    // A second slot, with test_decoding, sees what the monitor writes.
    let witness = slots.add(unique("witness_"));
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')")
        .bind(&witness)
        .execute(&mut conn)
        .await
        .unwrap();

    // Never over a threshold it cannot reach; over a threshold of 0 bytes
    // (a slot always keeps some WAL).
    let mut calm = SlotMonitor::connect(&cfg, u64::MAX, None).await.unwrap();
    let status = calm.check().await.unwrap().expect("the slot");
    assert!(status.retained_wal_bytes.unwrap() > 0);
    assert!(!calm.over_threshold());
    let mut strict = SlotMonitor::connect(&cfg, 0, Some(std::time::Duration::from_secs(3600)))
        .await
        .unwrap();
    strict.check().await.unwrap();
    assert!(strict.over_threshold());
    // The heartbeat is due on the first check only (one an hour).
    strict.check().await.unwrap();

    // Not transactional: flushed by the WAL writer shortly after, and
    // then visible to decoding.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let lines = loop {
        let lines: Vec<String> =
            sqlx::query_scalar("SELECT data FROM pg_logical_slot_peek_changes($1, NULL, NULL)")
                .bind(&witness)
                .fetch_all(&mut conn)
                .await
                .unwrap();
        if lines.iter().any(|l| l.contains("ferry_cdc_heartbeat"))
            || std::time::Instant::now() > deadline
        {
            break lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let beats = lines
        .iter()
        .filter(|l| l.contains("prefix: ferry_cdc_heartbeat"))
        .count();
    assert_eq!(beats, 1, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("prefix: ferry_cdc_heartbeat") || l.contains("transactional: 0")),
        "{lines:?}"
    );
}
