//! On-demand backfill against a real server: a table read again between
//! watermarks while writers change it, no row's older state sent after a
//! newer change of it, resumed after a crash with the same ids.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_cdc::postgres::{request_backfill, PgCapture, SnapshotMode};
use ferry_cdc::{Capture, Op, TableId};
use ferry_core::ErrorKind;
use ferry_testkit::PgTestDb;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use crate::order::{assert_rows_in_order, received_once, state_of};
use crate::support::{config, exec, read_acking, read_quiet, unique, Slots};

/// Changes `items` until told to stop: increments `n` of rows (so a row's
/// states are ordered by `n`), deletes some, inserts new ones. Returns the
/// number of statements run.
fn writer(
    url: String,
    stop: Arc<AtomicBool>,
    done: Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let mut k: u64 = 0;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while !stop.load(Ordering::Relaxed) {
            k += 1;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let row = (x % 3000 + 1) as i32;
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
        k
    })
}

async fn table_state(conn: &mut PgConnection) -> BTreeMap<i64, Value> {
    let rows: Vec<(i64, String, i32)> =
        sqlx::query_as("SELECT id::int8, v, n FROM items ORDER BY id")
            .fetch_all(conn)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(id, v, n)| (id, json!({"id": id, "v": v, "n": n})))
        .collect()
}

#[tokio::test]
async fn a_backfill_beside_writers_keeps_every_rows_order_and_survives_a_crash() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("backfill");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(
        &mut conn,
        "CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL, n int NOT NULL);
         INSERT INTO items SELECT g, 'v' || g, 0 FROM generate_series(1, 3000) g;
         CREATE TABLE other (id int PRIMARY KEY)",
    )
    .await;
    let mut cfg = config(&db, &name, &mut slots);
    cfg.snapshot = SnapshotMode::Never;
    cfg.snapshot_chunk = 250;
    let mut capture = PgCapture::connect(cfg.clone()).await.unwrap();
    assert!(read_quiet(&mut capture).await.is_empty(), "no snapshot");
    assert!(!capture.backfilling());

    let items = TableId::new("public", "items");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writes = writer(db.url.clone(), stop.clone(), done.clone());
    // The writers are under way before the backfill begins.
    while done.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let request = request_backfill(&cfg, std::slice::from_ref(&items))
        .await
        .unwrap_or_else(|e| panic!("{}", e.describe()));

    // Four chunks delivered, then a crash.
    let first = read_acking(&mut capture, 100, |_, g| {
        g.iter()
            .filter(|c| c.change.op == Op::Read && c.checkpoint.is_some())
            .count()
            >= 4
    })
    .await;
    assert!(capture.backfilling());
    // Read on without acknowledging: what follows is read again.
    let unacked = capture
        .read(1000, Duration::from_millis(500))
        .await
        .unwrap();
    drop(capture);

    let mut capture = PgCapture::connect(cfg.clone()).await.unwrap();
    assert!(
        capture.backfilling(),
        "the backfill goes on after a restart"
    );
    let mut second = read_acking(&mut capture, 100, |c, _| !c.backfilling()).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writes.await.unwrap();
    exec(&mut conn, "INSERT INTO items VALUES (99999, 'end', 0)").await;
    second.extend(
        read_acking(&mut capture, 100, |_, g| {
            g.iter().any(|c| c.change.key["id"] == json!(99999))
        })
        .await,
    );

    // What a receiver deduplicating by id applies, in order.
    let received = received_once(&name, [first, unacked, second]);
    let reads = assert_rows_in_order(&received);
    // A row a change superseded inside its chunk's window is not read (the
    // change carries its state); the state check below shows none is
    // missing.
    assert!(reads.values().all(|&n| n == 1), "no row read twice");
    assert!(
        reads.keys().all(|&r| r <= 3000 || r >= 10_000),
        "only items' rows"
    );
    assert_eq!(state_of(&received), table_state(&mut conn).await);
    assert!(writes >= 20);

    // Done and saved: a restart neither backfills nor snapshots.
    drop(capture);
    let mut capture = PgCapture::connect(cfg.clone()).await.unwrap();
    assert!(!capture.backfilling());
    assert!(read_quiet(&mut capture).await.is_empty());
    let saved: String =
        sqlx::query_scalar("SELECT checkpoint FROM ferry_cdc_offsets WHERE capture = $1")
            .bind(format!("{}/backfill", cfg.name))
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let saved: Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved["jobs"], json!([]));
    assert_eq!(saved["done"], json!([request.id]));
}

#[tokio::test]
async fn a_backfill_request_is_refused_naming_what_is_wrong() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("refused");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(
        &mut conn,
        "CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE loose (v text);
         ALTER TABLE loose REPLICA IDENTITY FULL",
    )
    .await;
    let mut cfg = config(&db, &name, &mut slots);
    cfg.snapshot = SnapshotMode::Never;
    let keyed = TableId::new("public", "keyed");
    let err = request_backfill(&cfg, std::slice::from_ref(&keyed))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert!(
        err.describe().contains("start it first"),
        "{}",
        err.describe()
    );

    let _capture = PgCapture::connect(cfg.clone()).await.unwrap();
    let err = request_backfill(&cfg, &[TableId::new("public", "loose")])
        .await
        .unwrap_err();
    assert!(
        err.describe().contains("no primary key"),
        "{}",
        err.describe()
    );
    let err = request_backfill(&cfg, &[TableId::new("public", "nope")])
        .await
        .unwrap_err();
    assert!(
        err.describe().contains("no table public.nope"),
        "{}",
        err.describe()
    );
    request_backfill(&cfg, &[keyed]).await.unwrap();
}
