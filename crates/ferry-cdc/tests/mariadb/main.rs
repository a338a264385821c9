//! MariaDB binlog mode, and the offsets store, against real servers.
//!
//! The binlog is the server's, shared by every test running at once: each
//! test has a database of its own, captures only that database's tables,
//! and starts at the binlog's end (or snapshots its own tables).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use ferry_cdc::mariadb::{BinlogConfig, MariaDbCapture, Saved, SnapshotMode};
use ferry_cdc::offsets::Offsets;
use ferry_cdc::{Capture, CaptureError, Captured, Checkpoint, Filter, Op, Position};
use ferry_core::ErrorKind;
use ferry_store::Database;
use ferry_testkit::{MysqlTestDb, PgTestDb, SqliteTestDb};
use serde_json::{json, Value};
use sqlx::{Connection, MySqlConnection};

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
        .err()
        .expect("capture refused")
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
/// a key changed. Returns what must be captured, in commit order.
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
    exec(&mut s1, "INSERT INTO a VALUES (4, 'a4'), (5, 'a5'), (6, 'a6')").await;
    exec(&mut s2, "DELETE FROM b WHERE id = 1").await;
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
    ]
}

/// The transactions' sizes, in the order expected above.
const TX_SIZES: [u64; 7] = [2, 2, 2, 2, 2, 3, 1];

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
