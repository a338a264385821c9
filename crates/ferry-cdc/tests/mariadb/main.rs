//! MariaDB binlog mode, and the offsets store, against real servers.
//!
//! The binlog is the server's, shared by every test running at once: each
//! test has a database of its own, captures only that database's tables,
//! and starts at the binlog's end (or snapshots its own tables).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_cdc::mariadb::{BinlogConfig, MariaDbCapture, Saved, SnapshotMode};
use ferry_cdc::offsets::Offsets;
use ferry_cdc::{
    ApplyConfig, Capture, CaptureError, Captured, Checkpoint, Filter, Op, Position, ShipStats,
};
use ferry_core::ErrorKind;
use ferry_testkit::{MysqlTestDb, PgTestDb, SqliteTestDb};
use serde_json::{json, Value};
use sqlx::{Connection, MySqlConnection};
use tokio_util::sync::CancellationToken;

mod backfill;
#[path = "../common/order.rs"]
mod order;

/// The database's name, from its URL.
fn db_name(db: &MysqlTestDb) -> String {
    url::Url::parse(&db.url)
        .expect("test database url")
        .path()
        .trim_start_matches('/')
        .to_owned()
}

/// A capture of `db`'s tables only, named after the database (so every
/// test registers with its own server id).
fn config(db: &MysqlTestDb, snapshot: SnapshotMode) -> BinlogConfig {
    let name = db_name(db);
    let mut c = BinlogConfig::new(db.url.clone(), format!("cap_{name}"));
    c.tables = Filter {
        include: vec![format!("{name}.*")],
        ..Filter::default()
    };
    c.snapshot = snapshot;
    c
}

async fn connect(db: &MysqlTestDb) -> MySqlConnection {
    MySqlConnection::connect(&db.url).await.expect("connect")
}

/// Runs `sql` (several statements allowed).
async fn exec(conn: &mut MySqlConnection, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn start(config: BinlogConfig) -> MariaDbCapture {
    MariaDbCapture::start(config).await.expect("capture starts")
}

async fn refused(config: BinlogConfig) -> CaptureError {
    MariaDbCapture::start(config)
        .await
        .expect_err("capture refused")
}

/// Reads until `n` changes came (reading `max` at a time), failing after
/// a minute.
async fn read_n(capture: &mut MariaDbCapture, n: usize, max: usize) -> Vec<Captured> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} changes after a minute",
            out.len()
        );
        let got = capture
            .read(max, Duration::from_millis(500))
            .await
            .expect("read");
        assert!(got.len() <= max, "read returned {} > {max}", got.len());
        out.extend(got);
    }
    out
}

/// Reads `max` at a time, acknowledging each batch's last checkpoint as a
/// runner does once it delivered the batch, until `done` says so (two
/// minutes at most).
async fn read_acking(
    capture: &mut MariaDbCapture,
    max: usize,
    done: impl Fn(&MariaDbCapture, &[Captured]) -> bool,
) -> Vec<Captured> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut out: Vec<Captured> = Vec::new();
    while !done(capture, &out) {
        assert!(Instant::now() < deadline, "only {} changes", out.len());
        let got = capture
            .read(max, Duration::from_millis(200))
            .await
            .unwrap_or_else(|e| panic!("read: {}", e.describe()));
        if let Some(checkpoint) = got.iter().rev().find_map(|c| c.checkpoint.clone()) {
            capture
                .acknowledge(&checkpoint)
                .await
                .unwrap_or_else(|e| panic!("acknowledge: {}", e.describe()));
        }
        out.extend(got);
    }
    out
}

/// Asserts that nothing more comes for a while.
async fn assert_quiet(capture: &mut MariaDbCapture) {
    let more = capture
        .read(100, Duration::from_millis(800))
        .await
        .expect("read");
    let ops: Vec<String> = more.iter().map(describe).collect();
    assert!(more.is_empty(), "unexpected changes: {ops:?}");
}

fn describe(c: &Captured) -> String {
    format!(
        "{} {} {}",
        c.change.source.table,
        c.change.op,
        c.change.key_text()
    )
}

/// (table name, op, key) of each change.
fn summary(got: &[Captured]) -> Vec<(String, Op, Value)> {
    got.iter()
        .map(|c| {
            (
                c.change.source.table.name.clone(),
                c.change.op,
                Value::Object(c.change.key.clone()),
            )
        })
        .collect()
}

fn k(id: i64) -> Value {
    json!({ "id": id })
}

const SCHEMA: &str = "
    CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(50)) ENGINE=InnoDB;
    CREATE TABLE b (id INT PRIMARY KEY, v VARCHAR(50), n DECIMAL(12,2), f DOUBLE, j JSON) ENGINE=InnoDB;
    CREATE TABLE c (id BIGINT PRIMARY KEY, v TEXT) ENGINE=InnoDB;
";

/// Transactions over three tables from two sessions: one rolled back,
/// two interleaved (the later begun commits first), multi-row statements,
/// a key changed, a truncate. Returns what must be captured, in commit
/// order.
async fn workload(db: &MysqlTestDb) -> Vec<(String, Op, Value)> {
    let mut s1 = connect(db).await;
    let mut s2 = connect(db).await;
    exec(
        &mut s1,
        "BEGIN; INSERT INTO a VALUES (1, 'a1');
         INSERT INTO b VALUES (1, 'b1', 1.50, 2.5, '{\"k\": 1}'); COMMIT",
    )
    .await;
    exec(&mut s1, "BEGIN; INSERT INTO c VALUES (1, 'c1'); ROLLBACK").await;
    exec(&mut s2, "BEGIN; INSERT INTO a VALUES (2, 'a2')").await;
    exec(&mut s1, "BEGIN; INSERT INTO c VALUES (10, 'c10')").await;
    exec(&mut s2, "UPDATE a SET v = 'a1x' WHERE id = 1").await;
    exec(&mut s1, "INSERT INTO a VALUES (7, 'a7'); COMMIT").await;
    exec(&mut s2, "COMMIT").await;
    exec(
        &mut s1,
        "BEGIN; INSERT INTO c VALUES (2, 'c2'); SAVEPOINT sp;
         INSERT INTO c VALUES (3, 'c3'); UPDATE b SET v = 'rolled back' WHERE id = 1;
         ROLLBACK TO SAVEPOINT sp;
         UPDATE b SET v = 'b1y', n = 2.25 WHERE id = 1; COMMIT",
    )
    .await;
    exec(
        &mut s2,
        "BEGIN; DELETE FROM a WHERE id = 2; UPDATE c SET id = 20 WHERE id = 10; COMMIT",
    )
    .await;
    exec(
        &mut s1,
        "INSERT INTO a VALUES (4, 'a4'), (5, 'a5'), (6, 'a6')",
    )
    .await;
    exec(&mut s2, "DELETE FROM b WHERE id = 1").await;
    exec(&mut s1, "TRUNCATE TABLE c").await;
    vec![
        ("a".into(), Op::Create, k(1)),
        ("b".into(), Op::Create, k(1)),
        ("c".into(), Op::Create, k(10)),
        ("a".into(), Op::Create, k(7)),
        ("a".into(), Op::Create, k(2)),
        ("a".into(), Op::Update, k(1)),
        ("c".into(), Op::Create, k(2)),
        ("b".into(), Op::Update, k(1)),
        ("a".into(), Op::Delete, k(2)),
        ("c".into(), Op::Update, k(20)),
        ("a".into(), Op::Create, k(4)),
        ("a".into(), Op::Create, k(5)),
        ("a".into(), Op::Create, k(6)),
        ("b".into(), Op::Delete, k(1)),
        ("c".into(), Op::Truncate, json!({})),
    ]
}

/// The transactions' sizes, in the order expected above.
const TX_SIZES: [u64; 8] = [2, 2, 2, 2, 2, 3, 1, 1];

#[tokio::test]
async fn committed_changes_in_commit_order() {
    let db = MysqlTestDb::create().await;
    exec(&mut connect(&db).await, SCHEMA).await;
    let mut capture = start(config(&db, SnapshotMode::Never)).await;
    let expected = workload(&db).await;
    let got = read_n(&mut capture, expected.len(), 100).await;
    assert_eq!(summary(&got), expected);
    assert_quiet(&mut capture).await;

    // Before and after images, values mapped.
    let b_insert = &got[1].change;
    assert_eq!(b_insert.before, None);
    assert_eq!(
        Value::Object(b_insert.after.clone().unwrap()),
        json!({"id": 1, "v": "b1", "n": "1.50", "f": 2.5, "j": {"k": 1}})
    );
    let a_update = &got[5].change;
    assert_eq!(a_update.before.as_ref().unwrap()["v"], "a1");
    assert_eq!(a_update.after.as_ref().unwrap()["v"], "a1x");
    let b_update = &got[7].change;
    assert_eq!(b_update.before.as_ref().unwrap()["v"], "b1");
    assert_eq!(b_update.after.as_ref().unwrap()["v"], "b1y");
    assert_eq!(b_update.after.as_ref().unwrap()["n"], "2.25");
    let key_change = &got[9].change;
    assert_eq!(key_change.before.as_ref().unwrap()["id"], 10);
    let b_delete = &got[13].change;
    assert_eq!(b_delete.after, None);
    assert_eq!(b_delete.before.as_ref().unwrap()["v"], "b1y");

    // Transactions: order within, total and checkpoint on the last only.
    let mut sizes = Vec::new();
    let mut ids = HashSet::new();
    for c in &got {
        let tx = c.change.tx.as_ref().unwrap();
        assert_eq!(c.change.source.tx_id.as_deref(), Some(tx.id.as_str()));
        assert!(c.change.source.commit_time.is_some());
        let Position::Binlog { gtid, file, .. } = &c.change.source.position else {
            panic!("binlog position expected: {:?}", c.change.source.position)
        };
        assert_eq!(gtid.as_deref(), Some(tx.id.as_str()));
        assert!(file.contains("bin"), "{file}");
        assert_eq!(tx.total.is_some(), c.checkpoint.is_some());
        if let Some(total) = tx.total {
            assert_eq!(total, tx.order);
            sizes.push(total);
        }
        assert!(ids.insert(c.change.id("cap")), "ids are distinct");
    }
    assert_eq!(sizes, TX_SIZES);
    capture.close().await;
}

/// The offsets store's contract, on any database: nothing, saved,
/// replaced, deleted; opening twice is fine.
async fn offsets_round_trip(url: &str) {
    let offsets = Offsets::connect(url).await.expect("offsets open");
    Offsets::open(offsets.database().clone())
        .await
        .expect("offsets open again");
    assert_eq!(offsets.load("orders").await.unwrap(), None);
    let first = Checkpoint(json!({"file": "mariadb-bin.000001", "pos": 4}));
    let second = Checkpoint(json!({"file": "mariadb-bin.000002", "pos": 1234, "gtid": "0-1-9"}));
    offsets.save("orders", &first).await.unwrap();
    offsets.save("other", &first).await.unwrap();
    assert_eq!(offsets.load("orders").await.unwrap(), Some(first.clone()));
    offsets.save("orders", &second).await.unwrap();
    assert_eq!(offsets.load("orders").await.unwrap(), Some(second));
    assert!(offsets.delete("orders").await.unwrap());
    assert!(!offsets.delete("orders").await.unwrap());
    assert_eq!(offsets.load("orders").await.unwrap(), None);
    assert_eq!(offsets.load("other").await.unwrap(), Some(first));
    offsets.database().close().await;
}

#[tokio::test]
async fn offsets_on_sqlite() {
    let db = SqliteTestDb::create();
    offsets_round_trip(&db.url).await;
}

#[tokio::test]
async fn offsets_on_postgres() {
    let db = PgTestDb::create().await;
    offsets_round_trip(&db.url).await;
}

#[tokio::test]
async fn offsets_on_mariadb() {
    let db = MysqlTestDb::create().await;
    offsets_round_trip(&db.url).await;
}

/// The id of every change, in order.
fn ids(got: &[Captured], capture: &str) -> Vec<uuid::Uuid> {
    got.iter().map(|c| c.change.id(capture)).collect()
}

#[tokio::test]
async fn a_restart_resumes_after_the_acknowledged_transaction() {
    let db = MysqlTestDb::create().await;
    let mut conn = connect(&db).await;
    exec(&mut conn, SCHEMA).await;
    let cfg = config(&db, SnapshotMode::Never);
    let mut capture = start(cfg.clone()).await;
    exec(
        &mut conn,
        "BEGIN; INSERT INTO a VALUES (1, 'x'); INSERT INTO a VALUES (2, 'x'); COMMIT",
    )
    .await;
    exec(&mut conn, "INSERT INTO a VALUES (3, 'x')").await;
    exec(
        &mut conn,
        "BEGIN; UPDATE a SET v = 'y' WHERE id = 1; DELETE FROM a WHERE id = 3; COMMIT",
    )
    .await;
    let first = read_n(&mut capture, 5, 100).await;
    // Acknowledge the first transaction only, then crash.
    let checkpoint = first[1]
        .checkpoint
        .clone()
        .expect("end of the first transaction");
    capture.acknowledge(&checkpoint).await.unwrap();
    drop(capture);

    let mut again = start(cfg.clone()).await;
    let second = read_n(&mut again, 3, 100).await;
    assert_quiet(&mut again).await;
    assert_eq!(summary(&second), summary(&first[2..]));
    assert_eq!(
        ids(&second, "c"),
        ids(&first[2..], "c"),
        "same ids when read again"
    );
    // Nothing acknowledged since: the same changes once more.
    drop(again);
    let mut third = start(cfg.clone()).await;
    let repeated = read_n(&mut third, 3, 100).await;
    assert_eq!(ids(&repeated, "c"), ids(&first[2..], "c"));
    // All acknowledged: nothing left.
    third
        .acknowledge(repeated[2].checkpoint.as_ref().unwrap())
        .await
        .unwrap();
    drop(third);
    let mut fourth = start(cfg.clone()).await;
    assert_quiet(&mut fourth).await;
    exec(&mut conn, "INSERT INTO a VALUES (9, 'x')").await;
    let last = read_n(&mut fourth, 1, 100).await;
    assert_eq!(summary(&last), vec![("a".to_owned(), Op::Create, k(9))]);

    // status: saved against the end; drop forgets.
    fourth
        .acknowledge(last[0].checkpoint.as_ref().unwrap())
        .await
        .unwrap();
    let status = MariaDbCapture::status(&cfg).await.unwrap();
    let saved = Saved::parse(last[0].checkpoint.as_ref().unwrap()).unwrap();
    assert_eq!(status.saved, Some(saved.position()));
    assert!(status.lag_bytes.is_some());
    assert!(status.lag_seconds.is_some());
    assert!(MariaDbCapture::drop(&cfg).await.unwrap());
    assert!(!MariaDbCapture::drop(&cfg).await.unwrap());
    assert_eq!(MariaDbCapture::status(&cfg).await.unwrap().saved, None);
    fourth.close().await;
}

/// `n` rows `(id, v)` in `t`, ids 1..=n, in one statement.
async fn fill(conn: &mut MySqlConnection, table: &str, n: u64) {
    exec(
        conn,
        &format!("INSERT INTO {table} (id, v) SELECT seq, CONCAT('v', seq) FROM seq_1_to_{n}"),
    )
    .await;
}

#[tokio::test]
async fn snapshot_then_the_changes_made_during_it() {
    let db = MysqlTestDb::create().await;
    let mut conn = connect(&db).await;
    exec(&mut conn, SCHEMA).await;
    fill(&mut conn, "a", 5000).await;
    exec(&mut conn, "INSERT INTO c VALUES (1, 'c1'), (2, 'c2')").await;
    let mut cfg = config(&db, SnapshotMode::Initial);
    cfg.snapshot_chunk = 700;
    let mut capture = start(cfg).await;
    assert!(capture.snapshotting());
    // While the snapshot is read: changes to rows read and not read yet.
    let mut got = read_n(&mut capture, 700, 1000).await;
    exec(
        &mut conn,
        "BEGIN; UPDATE a SET v = 'new' WHERE id IN (1, 4000);
         DELETE FROM a WHERE id = 4500; INSERT INTO a VALUES (6000, 'late'); COMMIT",
    )
    .await;
    exec(&mut conn, "DELETE FROM c WHERE id = 2").await;
    got.extend(read_n(&mut capture, 5002 + 5 - 700, 1000).await);
    assert_quiet(&mut capture).await;
    assert!(!capture.snapshotting());

    let (reads, changes): (Vec<_>, Vec<_>) = got.iter().partition(|c| c.change.op == Op::Read);
    // Every row of the snapshot's moment, once, as it was then.
    let mut seen = BTreeMap::new();
    for c in &reads {
        let id = c.change.key["id"].as_i64().unwrap();
        let table = c.change.source.table.name.clone();
        let v = c.change.after.as_ref().unwrap()["v"].clone();
        assert!(
            seen.insert((table, id), v).is_none(),
            "read twice: {}",
            describe(c)
        );
        assert!(matches!(
            c.change.source.position,
            Position::Snapshot { .. }
        ));
    }
    assert_eq!(seen.len(), 5002);
    assert_eq!(seen[&("a".to_owned(), 1)], "v1");
    assert_eq!(seen[&("a".to_owned(), 4500)], "v4500");
    assert!(!seen.contains_key(&("a".to_owned(), 6000)));
    // Reads first, then the changes, in commit order.
    assert!(got[..5002].iter().all(|c| c.change.op == Op::Read));
    assert_eq!(
        summary(&changes.into_iter().cloned().collect::<Vec<_>>()),
        vec![
            ("a".to_owned(), Op::Update, k(1)),
            ("a".to_owned(), Op::Update, k(4000)),
            ("a".to_owned(), Op::Delete, k(4500)),
            ("a".to_owned(), Op::Create, k(6000)),
            ("c".to_owned(), Op::Delete, k(2)),
        ]
    );
    // A checkpoint ends every chunk.
    let chunks = reads.iter().filter(|c| c.checkpoint.is_some()).count();
    assert!(chunks >= 5002 / 700, "{chunks} checkpoints");
    capture.close().await;
}

#[tokio::test]
async fn a_snapshot_resumes_after_its_last_acknowledged_chunk() {
    let db = MysqlTestDb::create().await;
    let mut conn = connect(&db).await;
    exec(&mut conn, SCHEMA).await;
    fill(&mut conn, "a", 5000).await;
    let mut cfg = config(&db, SnapshotMode::Initial);
    cfg.snapshot_chunk = 1000;
    let mut capture = start(cfg.clone()).await;
    let first = read_n(&mut capture, 2000, 1000).await;
    assert_eq!(first.len(), 2000);
    let checkpoint = first[1999]
        .checkpoint
        .clone()
        .expect("end of the second chunk");
    capture.acknowledge(&checkpoint).await.unwrap();
    let _unacknowledged = read_n(&mut capture, 1000, 1000).await;
    drop(capture);
    exec(&mut conn, "UPDATE a SET v = 'after crash' WHERE id = 10").await;

    // The rest is read as a backfill beside the stream, from the
    // snapshot's position: the update made since comes first, then the
    // rows after the acknowledged chunk, row 10 never read again.
    let mut resumed = start(cfg).await;
    assert!(!resumed.snapshotting());
    assert!(resumed.backfilling(), "the snapshot goes on as a backfill");
    let rest = read_acking(&mut resumed, 1000, |c, _| !c.backfilling()).await;
    assert_quiet(&mut resumed).await;
    assert_eq!(
        summary(&rest[..1]),
        vec![("a".to_owned(), Op::Update, k(10))]
    );
    let read_ids: Vec<i64> = rest[1..]
        .iter()
        .map(|c| c.change.key["id"].as_i64().unwrap())
        .collect();
    assert_eq!(read_ids, (2001..=5000).collect::<Vec<_>>());
    assert!(rest[1..].iter().all(|c| c.change.op == Op::Read));
    // The same snapshot label: the same ids for rows read again.
    assert_eq!(ids(&rest[1..1001], "c"), ids(&_unacknowledged, "c"));
    resumed.close().await;

    // Delivered and saved: a restart neither snapshots nor backfills.
    let mut again = start(config(&db, SnapshotMode::Initial)).await;
    assert!(!again.snapshotting() && !again.backfilling());
    assert_quiet(&mut again).await;
    again.close().await;
}

/// The process's resident memory, in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test]
async fn a_large_transaction_is_read_in_bounded_memory() {
    const ROWS: u64 = 100_000;
    let db = MysqlTestDb::create().await;
    let mut conn = connect(&db).await;
    exec(
        &mut conn,
        "CREATE TABLE big (id INT PRIMARY KEY, v VARCHAR(200))",
    )
    .await;
    let mut capture = start(config(&db, SnapshotMode::Never)).await;
    exec(
        &mut conn,
        &format!("INSERT INTO big (id, v) SELECT seq, REPEAT('x', 200) FROM seq_1_to_{ROWS}"),
    )
    .await;
    let before = rss_bytes();
    let mut peak = before;
    let mut count = 0u64;
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while count < ROWS {
        assert!(
            Instant::now() < deadline,
            "only {count} rows after two minutes"
        );
        let got = capture.read(1000, Duration::from_secs(1)).await.unwrap();
        assert!(got.len() <= 1000);
        for c in got {
            count += 1;
            let tx = c.change.tx.as_ref().unwrap();
            assert_eq!(tx.order, count);
            assert_eq!(c.change.key["id"], count);
            last = Some(c);
        }
        peak = peak.max(rss_bytes());
    }
    let last = last.unwrap();
    assert_eq!(last.change.tx.unwrap().total, Some(ROWS));
    assert!(last.checkpoint.is_some());
    let growth = peak.saturating_sub(before);
    eprintln!("rss before {} MB, peak {} MB", before >> 20, peak >> 20);
    assert!(
        growth < 100 << 20,
        "resident memory grew {} MB",
        growth >> 20
    );
    capture.close().await;
}

#[tokio::test]
async fn a_table_without_a_primary_key_is_refused() {
    let db = MysqlTestDb::create().await;
    let mut conn = connect(&db).await;
    exec(&mut conn, "CREATE TABLE keyless (v INT)").await;
    let e = refused(config(&db, SnapshotMode::Never)).await;
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(
        e.message.contains("keyless") && e.message.contains("add a primary key"),
        "{e}"
    );

    // One created after the start is refused when its changes come.
    exec(
        &mut conn,
        "DROP TABLE keyless; CREATE TABLE a (id INT PRIMARY KEY)",
    )
    .await;
    let mut capture = start(config(&db, SnapshotMode::Never)).await;
    exec(
        &mut conn,
        "CREATE TABLE later (v INT); INSERT INTO later VALUES (1)",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let e = loop {
        assert!(Instant::now() < deadline, "not refused");
        match capture.read(10, Duration::from_millis(500)).await {
            Ok(got) => assert!(got.is_empty()),
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(
        e.message.contains("later") && e.message.contains("add a primary key"),
        "{e}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let port = ferry_testkit::nats_server::free_port();
    let db = SqliteTestDb::create();
    let mut cfg = BinlogConfig::new(format!("mysql://root@127.0.0.1:{port}/shop"), "nowhere");
    cfg.offsets = Some(db.url.clone());
    let e = refused(cfg).await;
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
}

#[tokio::test]
async fn a_purged_position_is_refused() {
    let db = MysqlTestDb::create().await;
    let cfg = config(&db, SnapshotMode::Never);
    let offsets = Offsets::connect(&db.url).await.unwrap();
    let gone = Checkpoint(json!({"file": "mariadb-bin.999999", "pos": 4}));
    offsets.save(&cfg.name, &gone).await.unwrap();
    offsets.database().close().await;
    let e = refused(cfg).await;
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(
        e.message.contains("mariadb-bin.999999:4 is gone (purged)")
            && e.message.contains("ferry cdc drop"),
        "{e}"
    );
}

/// Every type read by the snapshot and by the binlog maps to the same
/// JSON.
#[tokio::test]
async fn values_map_alike_from_snapshot_and_binlog() {
    let db = MysqlTestDb::create().await;
    let mut conn = connect(&db).await;
    exec(
        &mut conn,
        "CREATE TABLE t (
            id BIGINT UNSIGNED PRIMARY KEY,
            ti TINYINT, tu TINYINT UNSIGNED, mi MEDIUMINT UNSIGNED, bi BIGINT,
            fl FLOAT, db DOUBLE, de DECIMAL(30,10), dz DECIMAL(20,2),
            vc VARCHAR(20), ch CHAR(5), tx TEXT, l1 VARCHAR(10) CHARACTER SET latin1,
            js JSON, bn BINARY(4), vb VARBINARY(10), bl BLOB,
            d DATE, dt DATETIME(6), ts TIMESTAMP(3) NULL, tm TIME(2), y YEAR,
            bt BIT(10), e ENUM('a','it''s','c'), s SET('x','y','z'), n INT NULL,
            u UUID, i6 INET6, i4 INET4
        )",
    )
    .await;
    let row = "(18446744073709551615, -128, 255, 16777215, -9223372036854775808,
        1.1, 2.5e-300, 12345678901234567890.0123456789, 0.50,
        'héllo ☃', 'ab', 'long text', 'café',
        '{\"a\": [1, 2.5, \"x\"], \"b\": null}', x'01', x'00ff', x'deadbeef',
        '2024-05-01', '2024-05-01 13:45:00.250000', '2024-05-01 13:45:00.123', '-26:03:04.50', 2024,
        b'1000000001', 'it''s', 'x,z', NULL,
        '6ccd780c-baba-1026-9564-5b8c656024db', '2001:db8::1', '10.1.2.3')";
    exec(&mut conn, "SET time_zone = '+00:00'").await;
    exec(&mut conn, &format!("INSERT INTO t VALUES {row}")).await;
    let mut capture = start(config(&db, SnapshotMode::Initial)).await;
    let snap = read_n(&mut capture, 1, 10).await;
    exec(&mut conn, "DELETE FROM t").await;
    exec(&mut conn, &format!("INSERT INTO t VALUES {row}")).await;
    let streamed = read_n(&mut capture, 2, 10).await;
    let read = Value::Object(snap[0].change.after.clone().unwrap());
    let written = Value::Object(streamed[1].change.after.clone().unwrap());
    let deleted = Value::Object(streamed[0].change.before.clone().unwrap());
    let want = json!({
        "id": 18446744073709551615u64, "ti": -128, "tu": 255, "mi": 16777215,
        "bi": i64::MIN, "fl": 1.1, "db": 2.5e-300,
        "de": "12345678901234567890.0123456789", "dz": "0.50",
        "vc": "héllo ☃", "ch": "ab", "tx": "long text", "l1": "café",
        "js": {"a": [1, 2.5, "x"], "b": null},
        "bn": "AQAAAA==", "vb": "AP8=", "bl": "3q2+7w==",
        "d": "2024-05-01", "dt": "2024-05-01T13:45:00.250000",
        "ts": "2024-05-01T13:45:00.123000Z", "tm": "-26:03:04.500000", "y": 2024,
        "bt": 513, "e": "it's", "s": "x,z", "n": null,
        "u": "6ccd780c-baba-1026-9564-5b8c656024db", "i6": "2001:db8::1", "i4": "10.1.2.3",
    });
    assert_eq!(read, want, "snapshot");
    assert_eq!(written, want, "binlog insert");
    assert_eq!(deleted, want, "binlog delete");
    assert_eq!(streamed[1].change.key, snap[0].change.key);
    capture.close().await;
}

/// A server user of a test's own, dropped afterwards.
struct TestUser {
    name: String,
}

impl TestUser {
    /// A user with `grants` (`GRANT … TO` the user), connecting with
    /// password `pw`.
    async fn create(admin: &mut MySqlConnection, grants: &[&str]) -> Self {
        let name = format!(
            "ferry_u_{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        exec(
            admin,
            &format!("CREATE USER '{name}'@'%' IDENTIFIED BY 'pw'"),
        )
        .await;
        let user = Self { name };
        for grant in grants {
            user.grant(admin, grant).await;
        }
        user
    }

    async fn grant(&self, admin: &mut MySqlConnection, what: &str) {
        exec(admin, &format!("GRANT {what} TO '{}'@'%'", self.name)).await;
    }

    /// `db`'s URL with this user.
    fn url(&self, db: &MysqlTestDb) -> String {
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_username(&self.name).unwrap();
        url.set_password(Some("pw")).unwrap();
        url.into()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let url = ferry_testkit::mysql_admin_url();
                let mut conn = MySqlConnection::connect(&url).await.ok()?;
                let sessions: Vec<i64> = sqlx::query_scalar(
                    "SELECT id FROM information_schema.processlist WHERE user = ?",
                )
                .bind(&name)
                .fetch_all(&mut conn)
                .await
                .ok()?;
                for id in sessions {
                    let _ = sqlx::raw_sql(&format!("KILL {id}"))
                        .execute(&mut conn)
                        .await;
                }
                sqlx::raw_sql(&format!("DROP USER IF EXISTS '{name}'@'%'"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

#[tokio::test]
async fn missing_privileges_are_refused_naming_them() {
    let db = MysqlTestDb::create().await;
    let mut admin = connect(&db).await;
    exec(&mut admin, "CREATE TABLE a (id INT PRIMARY KEY)").await;
    let user = TestUser::create(&mut admin, &[&format!("ALL ON {}.*", db_name(&db))]).await;
    let mut cfg = config(&db, SnapshotMode::Never);
    cfg.url = user.url(&db);
    let e = refused(cfg.clone()).await;
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("BINLOG MONITOR"), "{e}");

    user.grant(&mut admin, "BINLOG MONITOR ON *.*").await;
    for snapshot in [SnapshotMode::Never, SnapshotMode::Initial] {
        let e = refused(BinlogConfig {
            snapshot,
            ..cfg.clone()
        })
        .await;
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(e.message.contains("REPLICATION SLAVE"), "{}", e.describe());
    }

    user.grant(&mut admin, "REPLICATION SLAVE ON *.*").await;
    let mut capture = start(cfg).await;
    exec(&mut admin, "INSERT INTO a VALUES (1)").await;
    let got = read_n(&mut capture, 1, 10).await;
    assert_eq!(summary(&got), vec![("a".to_owned(), Op::Create, k(1))]);
    capture.close().await;
}

#[tokio::test]
async fn a_lost_connection_is_unavailable_then_resumed() {
    let db = MysqlTestDb::create().await;
    let mut admin = connect(&db).await;
    exec(&mut admin, "CREATE TABLE a (id INT PRIMARY KEY)").await;
    let user = TestUser::create(
        &mut admin,
        &[
            &format!("ALL ON {}.*", db_name(&db)),
            "BINLOG MONITOR, REPLICATION SLAVE ON *.*",
        ],
    )
    .await;
    let mut cfg = config(&db, SnapshotMode::Never);
    cfg.url = user.url(&db);
    let mut capture = start(cfg).await;
    exec(&mut admin, "INSERT INTO a VALUES (1)").await;
    let first = read_n(&mut capture, 1, 10).await;

    // The server drops the replica connection; changes go on meanwhile.
    let dumps: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM information_schema.processlist WHERE user = ? AND command LIKE 'Binlog Dump%'",
    )
    .bind(&user.name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(dumps.len(), 1, "one replica connection");
    exec(&mut admin, &format!("KILL {}", dumps[0])).await;
    exec(&mut admin, "INSERT INTO a VALUES (2)").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let e = loop {
        assert!(
            Instant::now() < deadline,
            "the lost connection went unnoticed"
        );
        match capture.read(10, Duration::from_millis(500)).await {
            Ok(got) => assert!(
                got.is_empty(),
                "{:?}",
                got.iter().map(describe).collect::<Vec<_>>()
            ),
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    // The next read reconnects after what was handed out.
    let second = read_n(&mut capture, 1, 10).await;
    assert_eq!(summary(&second), vec![("a".to_owned(), Op::Create, k(2))]);
    assert_ne!(ids(&first, "c"), ids(&second, "c"));
    assert_quiet(&mut capture).await;
    capture.close().await;
}

#[tokio::test]
async fn a_prepared_xa_transaction_on_a_captured_table_stops_the_capture() {
    let db = MysqlTestDb::create().await;
    let mut conn = connect(&db).await;
    exec(&mut conn, "CREATE TABLE a (id INT PRIMARY KEY)").await;
    let mut capture = start(config(&db, SnapshotMode::Never)).await;
    exec(
        &mut conn,
        "XA START 'ferry'; INSERT INTO a VALUES (1); XA END 'ferry'; XA PREPARE 'ferry';
         XA COMMIT 'ferry'",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let e = loop {
        assert!(Instant::now() < deadline, "not refused");
        match capture.read(10, Duration::from_millis(500)).await {
            Ok(got) => assert!(got.is_empty()),
            Err(e) => break e,
        }
    };
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("XA PREPARE is not supported"), "{e}");
}

/// (database, op, key, `v` if sent) of each change.
fn scoped_summary(got: &[Captured]) -> Vec<(String, Op, Value, Option<Value>)> {
    got.iter()
        .map(|c| {
            let row = c.change.after.as_ref().or(c.change.before.as_ref());
            (
                c.change.source.table.schema.clone(),
                c.change.op,
                Value::Object(c.change.key.clone()),
                row.and_then(|r| r.get("v").cloned()),
            )
        })
        .collect()
}

/// The binlog is the whole server's: a bare table name (and the table of
/// a bare `table.column`) means the table of the URL's database, in the
/// snapshot and in the stream; `*.table` names it in every database.
#[tokio::test]
async fn a_bare_table_name_means_the_urls_database_only() {
    let own = MysqlTestDb::create().await;
    let other = MysqlTestDb::create().await;
    let (own_name, other_name) = (db_name(&own), db_name(&other));
    // The same name in both databases, and in no other test's.
    let table = format!("same_{}", &own_name[own_name.len() - 12..]);
    let mut own_conn = connect(&own).await;
    let mut other_conn = connect(&other).await;
    let create = format!("CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(50)) ENGINE=InnoDB");
    exec(&mut own_conn, &create).await;
    exec(&mut other_conn, &create).await;
    exec(
        &mut own_conn,
        &format!("INSERT INTO {table} VALUES (1, 'own1'), (2, 'own2')"),
    )
    .await;
    exec(
        &mut other_conn,
        &format!("INSERT INTO {table} VALUES (101, 'other101')"),
    )
    .await;

    let mut bare = config(&own, SnapshotMode::Initial);
    bare.tables = Filter {
        include: vec![table.clone()],
        ..Filter::default()
    };
    let mut every = config(&own, SnapshotMode::Initial);
    every.name = format!("every_{own_name}");
    every.tables = Filter {
        include: vec![format!("*.{table}")],
        exclude_columns: vec![format!("{table}.v")],
        ..Filter::default()
    };
    let mut bare = start(bare).await;
    let mut every = start(every).await;

    exec(
        &mut own_conn,
        &format!(
            "INSERT INTO {table} VALUES (3, 'own3'); UPDATE {table} SET v = 'own1x' WHERE id = 1"
        ),
    )
    .await;
    exec(
        &mut other_conn,
        &format!(
            "INSERT INTO {table} VALUES (102, 'other102'); DELETE FROM {table} WHERE id = 101"
        ),
    )
    .await;

    let got = read_n(&mut bare, 4, 100).await;
    assert_quiet(&mut bare).await;
    let (o, v) = (own_name.clone(), |s: &str| Some(json!(s)));
    assert_eq!(
        scoped_summary(&got),
        vec![
            (o.clone(), Op::Read, k(1), v("own1")),
            (o.clone(), Op::Read, k(2), v("own2")),
            (o.clone(), Op::Create, k(3), v("own3")),
            (o.clone(), Op::Update, k(1), v("own1x")),
        ]
    );

    // `*.table`: both databases; the bare `table.v` left out of the own
    // database's rows only.
    let got = read_n(&mut every, 7, 100).await;
    assert_quiet(&mut every).await;
    let got = scoped_summary(&got);
    let mut reads = got[..3].to_vec();
    reads.sort_by_key(|(db, _, key, _)| (db.clone(), key.to_string()));
    let mut want_reads = vec![
        (o.clone(), Op::Read, k(1), None),
        (o.clone(), Op::Read, k(2), None),
        (other_name.clone(), Op::Read, k(101), v("other101")),
    ];
    want_reads.sort_by_key(|(db, _, key, _)| (db.clone(), key.to_string()));
    assert_eq!(reads, want_reads);
    assert_eq!(
        got[3..],
        [
            (o.clone(), Op::Create, k(3), None),
            (o.clone(), Op::Update, k(1), None),
            (other_name.clone(), Op::Create, k(102), v("other102")),
            (other_name.clone(), Op::Delete, k(101), v("other101")),
        ]
    );
    bare.close().await;
    every.close().await;
}

/// Into a database target, a bare source table of `[tables]` names the
/// capture's database's table too: with `*.table` captured and `table =
/// "copy"`, the URL's database's rows go to `copy`, the other database's
/// to the table of their own name.
#[tokio::test]
async fn a_bare_table_of_an_apply_mapping_means_the_urls_database() {
    let own = MysqlTestDb::create().await;
    let other = MysqlTestDb::create().await;
    let own_name = db_name(&own);
    let table = format!("same_{}", &own_name[own_name.len() - 12..]);
    let mut own_conn = connect(&own).await;
    let mut other_conn = connect(&other).await;
    let create = format!("CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(50)) ENGINE=InnoDB");
    exec(&mut own_conn, &create).await;
    exec(&mut other_conn, &create).await;
    exec(
        &mut own_conn,
        &format!("INSERT INTO {table} VALUES (1, 'own1')"),
    )
    .await;
    exec(
        &mut other_conn,
        &format!("INSERT INTO {table} VALUES (101, 'other101')"),
    )
    .await;
    let target = SqliteTestDb::create();
    let target_db = ferry_store::Database::connect(&target.url).await.unwrap();
    let ferry_store::Database::Sqlite(pool) = &target_db else {
        unreachable!()
    };
    for t in ["copy", table.as_str()] {
        sqlx::query(&format!(
            "CREATE TABLE {t} (id INTEGER PRIMARY KEY, v TEXT)"
        ))
        .execute(pool)
        .await
        .unwrap();
    }

    let mut cfg = config(&own, SnapshotMode::Initial);
    cfg.tables = Filter {
        include: vec![format!("*.{table}")],
        ..Filter::default()
    };
    let capture = start(cfg.clone()).await;
    let mut apply_config = ApplyConfig::new(cfg.name.clone());
    apply_config.tables.insert(table.clone(), "copy".into());
    let stop = CancellationToken::new();
    let task = tokio::spawn(ferry_cdc::apply(
        capture,
        target_db.clone(),
        apply_config,
        Arc::new(ShipStats::default()),
        stop.clone(),
    ));
    exec(
        &mut own_conn,
        &format!("INSERT INTO {table} VALUES (2, 'own2')"),
    )
    .await;
    exec(
        &mut other_conn,
        &format!("INSERT INTO {table} VALUES (102, 'other102')"),
    )
    .await;

    let rows = |t: String| async move {
        sqlx::query_as::<_, (i64, String)>(&format!("SELECT id, v FROM {t} ORDER BY id"))
            .fetch_all(pool)
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows("copy".into()).await.len() + rows(table.clone()).await.len() < 4 {
        assert!(!task.is_finished(), "apply ended: {task:?}");
        assert!(Instant::now() < deadline, "not applied after a minute");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    let row = |id: i64, v: &str| (id, v.to_owned());
    assert_eq!(
        rows("copy".into()).await,
        vec![row(1, "own1"), row(2, "own2")]
    );
    assert_eq!(
        rows(table.clone()).await,
        vec![row(101, "other101"), row(102, "other102")]
    );
    target_db.close().await;
}
