//! On-demand backfill in MariaDB log mode: requests and watermarks as
//! signal rows in the binary log, a table read again while writers change
//! it, a crash in the middle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_cdc::mariadb::{MariaDbCapture, SnapshotMode};
use ferry_cdc::{Capture, Op, TableId};
use ferry_core::ErrorKind;
use ferry_testkit::MysqlTestDb;
use serde_json::{json, Value};
use sqlx::{Connection, MySqlConnection};

use super::{assert_quiet, config, connect, db_name, exec, read_acking, start};
use crate::order::{assert_rows_in_order, received_once, state_of};

/// Changes `items` until told to stop: increments `n` of rows, deletes
/// some, inserts new ones; `done` counts the statements.
fn writer(url: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = MySqlConnection::connect(&url).await.unwrap();
        let mut k: u64 = 0;
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        while !stop.load(Ordering::Relaxed) {
            k += 1;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let row = x % 2000 + 1;
            let sql = match k % 20 {
                0 => format!("DELETE FROM items WHERE id = {row}"),
                7 => format!("INSERT INTO items VALUES ({}, 'new', 0)", 10_000 + k),
                _ => format!("UPDATE items SET n = n + 1 WHERE id = {row}"),
            };
            sqlx::query(&sql).execute(&mut conn).await.unwrap();
            done.store(k, Ordering::Relaxed);
            if k.is_multiple_of(10) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    })
}

async fn table_state(conn: &mut MySqlConnection) -> std::collections::BTreeMap<i64, Value> {
    let rows: Vec<(i64, String, i32)> = sqlx::query_as("SELECT id, v, n FROM items ORDER BY id")
        .fetch_all(conn)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(id, v, n)| (id, json!({"id": id, "v": v, "n": n})))
        .collect()
}

#[tokio::test]
async fn a_backfill_beside_writers_keeps_every_rows_order_and_survives_a_crash() {
    let db = MysqlTestDb::create().await;
    let mut conn = connect(&db).await;
    exec(
        &mut conn,
        "CREATE TABLE items (id BIGINT PRIMARY KEY, v VARCHAR(20) NOT NULL, n INT NOT NULL);
         INSERT INTO items SELECT seq, CONCAT('v', seq), 0 FROM seq_1_to_2000",
    )
    .await;
    let mut cfg = config(&db, SnapshotMode::Never);
    cfg.snapshot_chunk = 200;
    let mut capture = start(cfg.clone()).await;
    assert_quiet(&mut capture).await;
    // Acknowledged once, so the capture has a saved position.
    exec(&mut conn, "UPDATE items SET v = 'first' WHERE id = 1").await;
    let warm = read_acking(&mut capture, 100, |_, g| !g.is_empty()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writes = writer(db.url.clone(), stop.clone(), done.clone());
    while done.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let items = TableId::new(db_name(&db), "items");
    let request = MariaDbCapture::request_backfill(&cfg, std::slice::from_ref(&items))
        .await
        .unwrap_or_else(|e| panic!("{}", e.describe()));

    // Three chunks delivered, then a crash.
    let first = read_acking(&mut capture, 100, |_, g| {
        g.iter()
            .filter(|c| c.change.op == Op::Read && c.checkpoint.is_some())
            .count()
            >= 3
    })
    .await;
    assert!(capture.backfilling());
    let unacked = capture
        .read(1000, Duration::from_millis(500))
        .await
        .unwrap();
    drop(capture);

    let mut capture = start(cfg.clone()).await;
    assert!(
        capture.backfilling(),
        "the backfill goes on after a restart"
    );
    let mut second = read_acking(&mut capture, 100, |c, _| !c.backfilling()).await;
    stop.store(true, Ordering::Relaxed);
    writes.await.unwrap();
    exec(&mut conn, "INSERT INTO items VALUES (99999, 'end', 0)").await;
    second.extend(
        read_acking(&mut capture, 100, |_, g| {
            g.iter().any(|c| c.change.key["id"] == json!(99999))
        })
        .await,
    );

    let received = received_once(&cfg.name, [warm, first, unacked, second]);
    let reads = assert_rows_in_order(&received);
    assert!(reads.values().all(|&n| n == 1), "no row read twice");
    assert!(
        reads.len() > 1000,
        "the table was read ({} rows)",
        reads.len()
    );
    assert_eq!(state_of(&received), table_state(&mut conn).await);

    // Done and saved: a restart does not backfill again.
    capture.close().await;
    let mut capture = start(cfg.clone()).await;
    assert!(!capture.backfilling());
    assert_quiet(&mut capture).await;
    let jobs = MariaDbCapture::backfill_jobs(&cfg).await.unwrap();
    assert!(jobs.jobs.is_empty());
    assert_eq!(jobs.done, vec![request.id]);
    // Signals leave nothing behind in the table.
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ferry_cdc_signals")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
    capture.close().await;
}

#[tokio::test]
async fn a_backfill_request_is_refused_naming_what_is_wrong() {
    let db = MysqlTestDb::create().await;
    let mut conn = connect(&db).await;
    exec(
        &mut conn,
        "CREATE TABLE keyed (id INT PRIMARY KEY); CREATE TABLE loose (v TEXT)",
    )
    .await;
    let mut cfg = config(&db, SnapshotMode::Never);
    cfg.tables.exclude = vec![format!("{}.loose", db_name(&db))];
    let schema = db_name(&db);
    let keyed = TableId::new(schema.clone(), "keyed");
    let err = MariaDbCapture::request_backfill(&cfg, std::slice::from_ref(&keyed))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert!(
        err.describe().contains("start it first"),
        "{}",
        err.describe()
    );
    // Ran once and acknowledged: it has a position.
    let mut capture = start(cfg.clone()).await;
    exec(&mut conn, "INSERT INTO keyed VALUES (1)").await;
    read_acking(&mut capture, 10, |_, g| !g.is_empty()).await;
    let err = MariaDbCapture::request_backfill(&cfg, &[TableId::new(schema.clone(), "loose")])
        .await
        .unwrap_err();
    assert!(
        err.describe().contains("no primary key"),
        "{}",
        err.describe()
    );
    let err = MariaDbCapture::request_backfill(&cfg, &[TableId::new(schema.clone(), "nope")])
        .await
        .unwrap_err();
    assert!(err.describe().contains("no table"), "{}", err.describe());
    MariaDbCapture::request_backfill(&cfg, &[keyed])
        .await
        .unwrap();
    capture.close().await;
}
