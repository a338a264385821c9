//! PostgreSQL log mode against a real server: each test has a database and
//! a slot of its own, and drops the slot (cluster-wide) when it ends, even
//! on failure.

mod backfill;
mod monitor;
#[path = "../common/order.rs"]
mod order;
mod ship;
mod snapshot;
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry_cdc::postgres::{PgCapture, PgLogConfig};
use ferry_cdc::{Capture, Captured, Op, Position};
use ferry_core::ErrorKind;
use ferry_testkit::PgTestDb;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use support::{
    config, exec, lsn_of, read_n, read_quiet, rss_bytes, slot_lsns, test_decoding_changes, unique,
    Slots,
};

/// The tables of the workload: `b` with `REPLICA IDENTITY FULL`.
const SCHEMA: &str = "
    CREATE TABLE a (id int PRIMARY KEY, v text);
    CREATE TABLE b (id int PRIMARY KEY, v text, n numeric, f float8, j jsonb, flag bool);
    ALTER TABLE b REPLICA IDENTITY FULL;
    CREATE TABLE c (id bigint PRIMARY KEY, v text);
";

/// Several transactions over three tables from two sessions, one rolled
/// back, one with a savepoint rolled back, two interleaved (the later
/// begun commits first). Returns what must be captured, in commit order:
/// (table, op, key).
async fn workload(url: &str) -> Vec<(String, Op, Value)> {
    let mut s1 = PgConnection::connect(url).await.unwrap();
    let mut s2 = PgConnection::connect(url).await.unwrap();
    exec(
        &mut s1,
        "BEGIN; INSERT INTO a VALUES (1, 'a1');
         INSERT INTO b VALUES (1, 'b1', 1.50, 2.5, '{\"k\": 1}', true); COMMIT",
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
    exec(&mut s1, "TRUNCATE c").await;
    let k = |id: i64| json!({ "id": id });
    let t = |name: &str| format!("public.{name}");
    vec![
        (t("a"), Op::Create, k(1)),
        (t("b"), Op::Create, k(1)),
        (t("c"), Op::Create, k(10)),
        (t("a"), Op::Create, k(7)),
        (t("a"), Op::Create, k(2)),
        (t("a"), Op::Update, k(1)),
        (t("c"), Op::Create, k(2)),
        (t("b"), Op::Update, k(1)),
        (t("a"), Op::Delete, k(2)),
        (t("c"), Op::Update, k(20)),
        (t("a"), Op::Create, k(4)),
        (t("a"), Op::Create, k(5)),
        (t("a"), Op::Create, k(6)),
        (t("b"), Op::Delete, k(1)),
        (t("c"), Op::Truncate, json!({})),
    ]
}

fn described(changes: &[Captured]) -> Vec<(String, Op, Value)> {
    changes
        .iter()
        .map(|c| {
            let c = &c.change;
            (
                c.source.table.to_string(),
                c.op,
                Value::Object(c.key.clone()),
            )
        })
        .collect()
}

/// Transactions are whole and numbered: orders 1..n, the total and the
/// checkpoint on the last change only, one commit LSN per transaction,
/// increasing from one to the next, change LSNs increasing within one.
fn assert_transactions(changes: &[Captured]) {
    let mut i = 0;
    let mut last_commit = 0;
    while i < changes.len() {
        let tx = changes[i].change.tx.clone().expect("tx order");
        let group: Vec<&Captured> = changes[i..]
            .iter()
            .take_while(|c| c.change.tx.as_ref().map(|t| &t.id) == Some(&tx.id))
            .collect();
        let n = group.len() as u64;
        let Position::Lsn { commit_lsn, .. } = group[0].change.source.position else {
            panic!("not an LSN position");
        };
        assert!(commit_lsn > last_commit, "commit order");
        last_commit = commit_lsn;
        let mut last_lsn = 0;
        for (k, c) in group.iter().enumerate() {
            let order = c.change.tx.as_ref().unwrap();
            assert_eq!(order.order, k as u64 + 1);
            let is_last = k as u64 + 1 == n;
            assert_eq!(order.total, is_last.then_some(n));
            assert_eq!(c.checkpoint.is_some(), is_last);
            let Position::Lsn {
                commit_lsn: cl,
                lsn,
            } = c.change.source.position
            else {
                panic!("not an LSN position");
            };
            assert_eq!(cl, commit_lsn);
            assert!(lsn > last_lsn, "change order within the transaction");
            last_lsn = lsn;
            assert_eq!(c.change.source.tx_id.as_deref(), Some(tx.id.as_str()));
            assert!(c.change.source.commit_time.is_some());
        }
        assert!(lsn_of(group[group.len() - 1]) > commit_lsn);
        i += group.len();
    }
}

#[tokio::test]
async fn a_workload_yields_exactly_the_committed_changes_in_commit_order() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("w");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(&mut conn, SCHEMA).await;
    let mut cfg = config(&db, &name, &mut slots);
    cfg.tables.include = vec!["public.a".into(), "b".into(), "public.c".into()];
    let mut capture = PgCapture::connect(cfg).await.unwrap();
    assert_eq!(capture.connector(), "postgresql");
    assert!(db.url.ends_with(capture.database()));

    let expected = workload(&db.url).await;
    let got = read_n(&mut capture, expected.len(), 4).await;
    assert_eq!(described(&got), expected);
    assert!(read_quiet(&mut capture).await.is_empty(), "nothing else");
    assert_transactions(&got);

    let change = |i: usize| &got[i].change;
    // Values by type; FULL gives the old row, DEFAULT the old key when it
    // changed or on delete, nothing otherwise.
    assert_eq!(
        Value::Object(change(1).after.clone().unwrap()),
        json!({"id": 1, "v": "b1", "n": "1.50", "f": 2.5, "j": {"k": 1}, "flag": true})
    );
    assert_eq!(change(5).before, None);
    assert_eq!(change(5).after.as_ref().unwrap()["v"], "a1x");
    assert_eq!(
        Value::Object(change(7).before.clone().unwrap()),
        json!({"id": 1, "v": "b1", "n": "1.50", "f": 2.5, "j": {"k": 1}, "flag": true})
    );
    assert_eq!(change(7).after.as_ref().unwrap()["v"], "b1y");
    assert_eq!(change(7).after.as_ref().unwrap()["n"], "2.25");
    assert_eq!(change(8).before, json!({"id": 2}).as_object().cloned());
    assert_eq!(change(8).after, None);
    assert_eq!(change(9).before, json!({"id": 10}).as_object().cloned());
    assert_eq!(change(9).after.as_ref().unwrap()["v"], "c10");
    assert_eq!(change(13).before.as_ref().unwrap()["v"], "b1y");
    assert!(change(14).before.is_none() && change(14).after.is_none());
    // One transaction for the three-row insert, its rows in order.
    assert_eq!(
        change(10).tx,
        change(12).tx.clone().map(|mut t| {
            t.order = 1;
            t.total = None;
            t
        })
    );
}

#[tokio::test]
async fn postgres_own_decoder_describes_the_same_changes() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("x");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(&mut conn, SCHEMA).await;
    let mut capture = PgCapture::connect(config(&db, &name, &mut slots))
        .await
        .unwrap();
    let reference = slots.add(format!("ferry_{name}_td"));
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'test_decoding')")
        .bind(&reference)
        .execute(&mut conn)
        .await
        .unwrap();

    let expected = workload(&db.url).await;
    let got = read_n(&mut capture, expected.len(), 1000).await;
    let ours: Vec<(String, &'static str, Option<i64>)> = got
        .iter()
        .map(|c| {
            let c = &c.change;
            (
                c.source.table.to_string(),
                c.op.code(),
                c.key.get("id").and_then(Value::as_i64),
            )
        })
        .collect();
    let theirs = test_decoding_changes(&mut conn, &reference).await;
    assert_eq!(ours, theirs);
}

#[tokio::test]
async fn resumes_after_the_acknowledged_transaction_and_repeats_the_rest() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("r");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(&mut conn, "CREATE TABLE a (id int PRIMARY KEY, v text)").await;
    let cfg = config(&db, &name, &mut slots);
    let mut capture = PgCapture::connect(cfg.clone()).await.unwrap();
    exec(
        &mut conn,
        "BEGIN; INSERT INTO a VALUES (1, 'x'), (2, 'x'); COMMIT;
         INSERT INTO a VALUES (3, 'x');
         BEGIN; INSERT INTO a VALUES (4, 'x'); UPDATE a SET v = 'y' WHERE id = 1; COMMIT",
    )
    .await;
    let first = read_n(&mut capture, 5, 2).await;
    let ids = |cs: &[Captured]| -> Vec<uuid::Uuid> {
        cs.iter().map(|c| c.change.id(&cfg.name)).collect()
    };
    capture
        .acknowledge(first[1].checkpoint.as_ref().unwrap())
        .await
        .unwrap();
    drop(capture);

    let mut capture = PgCapture::connect(cfg.clone()).await.unwrap();
    let again = read_n(&mut capture, 3, 10).await;
    assert_eq!(ids(&again), ids(&first[2..]), "after the acknowledged one");
    assert!(read_quiet(&mut capture).await.is_empty());
    drop(capture);

    // Nothing acknowledged: the same changes, the same ids.
    let mut capture = PgCapture::connect(cfg.clone()).await.unwrap();
    let same = read_n(&mut capture, 3, 10).await;
    assert_eq!(ids(&same), ids(&first[2..]));
    assert_eq!(
        same.iter().map(|c| c.change.clone()).collect::<Vec<_>>(),
        first[2..]
            .iter()
            .map(|c| c.change.clone())
            .collect::<Vec<_>>()
    );
    capture
        .acknowledge(same[2].checkpoint.as_ref().unwrap())
        .await
        .unwrap();
    drop(capture);

    let mut capture = PgCapture::connect(cfg).await.unwrap();
    assert!(
        read_quiet(&mut capture).await.is_empty(),
        "all acknowledged"
    );
}

#[tokio::test]
async fn a_large_transaction_is_read_in_bounded_memory() {
    const ROWS: usize = 200_000;
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("l");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(&mut conn, "CREATE TABLE big (id int PRIMARY KEY, pad text)").await;
    let mut capture = PgCapture::connect(config(&db, &name, &mut slots))
        .await
        .unwrap();
    // About 200 bytes a row: some 40 MB of rows, several times that as
    // decoded changes if they were all held.
    exec(
        &mut conn,
        &format!(
            "INSERT INTO big SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, {ROWS}) g"
        ),
    )
    .await;

    let start = rss_bytes();
    let mut peak = start;
    let mut seen = 0usize;
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < ROWS {
        assert!(Instant::now() < deadline, "only {seen} of {ROWS} changes");
        let batch = capture.read(1000, Duration::from_secs(5)).await.unwrap();
        assert!(batch.len() <= 1000);
        for c in &batch {
            seen += 1;
            assert_eq!(c.change.tx.as_ref().unwrap().order, seen as u64);
            assert_eq!(c.change.key["id"], json!(seen));
        }
        if let Some(c) = batch.last() {
            last = Some(c.clone());
        }
        peak = peak.max(rss_bytes());
    }
    let last = last.unwrap();
    assert_eq!(last.change.tx.unwrap().total, Some(ROWS as u64));
    assert!(last.checkpoint.is_some());
    assert!(read_quiet(&mut capture).await.is_empty());
    let growth = peak.saturating_sub(start);
    assert!(
        growth < 100 << 20,
        "RSS grew by {} MB reading one transaction",
        growth >> 20
    );
}

#[tokio::test]
async fn an_idle_slot_does_not_retain_the_clusters_wal() {
    let db = PgTestDb::create().await;
    let other = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("i");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(&mut conn, "CREATE TABLE quiet (id int PRIMARY KEY)").await;
    let cfg = config(&db, &name, &mut slots);
    let slot = cfg.slot_name();
    let mut capture = PgCapture::connect(cfg.clone()).await.unwrap();

    // One captured change, acknowledged: the idle rule applies only once
    // everything handed over is.
    exec(&mut conn, "INSERT INTO quiet VALUES (1)").await;
    let got = read_n(&mut capture, 1, 10).await;
    capture
        .acknowledge(got[0].checkpoint.as_ref().unwrap())
        .await
        .unwrap();

    let (before, _) = slot_lsns(&mut conn, &slot).await;
    let mut busy = PgConnection::connect(&other.url).await.unwrap();
    exec(
        &mut busy,
        "CREATE TABLE noise (id int, pad text);
         INSERT INTO noise SELECT g, repeat('x', 1000) FROM generate_series(1, 50000) g",
    )
    .await;
    let written: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let written = support::parse_lsn(&written);
    assert!(written - before > 40 << 20, "50 MB of WAL written");

    // Read (nothing to capture) until the slot confirms past the writes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(capture
            .read(100, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty());
        let (confirmed, _) = slot_lsns(&mut conn, &slot).await;
        if confirmed >= written {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn stuck at {confirmed:X}, WAL at {written:X}"
        );
    }
    // After a checkpoint the slot stops holding the WAL of the writes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        exec(&mut conn, "CHECKPOINT").await;
        assert!(capture
            .read(100, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty());
        let (_, restart) = slot_lsns(&mut conn, &slot).await;
        if restart > before + (40 << 20) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restart_lsn stuck at {restart:X}, WAL written up to {written:X}"
        );
    }
    let status = ferry_cdc::postgres::status(&cfg).await.unwrap().unwrap();
    assert_eq!(status.slot, slot);
    assert!(status.active);
    assert!(status.confirmed_flush_lsn.unwrap() >= written);
    assert!(status.retained_wal_bytes.is_some() && status.lag_bytes.is_some());
}

#[tokio::test]
async fn unchanged_toast_values_and_schema_changes() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("s");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(
        &mut conn,
        "CREATE TABLE t (id int PRIMARY KEY, small int, body text);
         ALTER TABLE t ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE TABLE f (id int PRIMARY KEY, small int, body text);
         ALTER TABLE f ALTER COLUMN body SET STORAGE EXTERNAL;
         ALTER TABLE f REPLICA IDENTITY FULL",
    )
    .await;
    let mut capture = PgCapture::connect(config(&db, &name, &mut slots))
        .await
        .unwrap();
    exec(
        &mut conn,
        "INSERT INTO t VALUES (1, 0, repeat('x', 10000));
         INSERT INTO f VALUES (1, 0, repeat('x', 10000));
         UPDATE t SET small = 1;
         UPDATE f SET small = 1;
         ALTER TABLE t ADD COLUMN extra int DEFAULT 5;
         INSERT INTO t VALUES (2, 0, 'y', 9);
         ALTER TABLE t DROP COLUMN small;
         INSERT INTO t VALUES (3, 'z', 10)",
    )
    .await;
    let got = read_n(&mut capture, 6, 10).await;
    let after = |i: usize| got[i].change.after.clone().unwrap();
    // DEFAULT: the unchanged TOASTed value is left out and named.
    assert_eq!(got[2].change.unchanged, ["body"]);
    assert_eq!(Value::Object(after(2)), json!({"id": 1, "small": 1}));
    // FULL: taken from the old row.
    assert!(got[3].change.unchanged.is_empty());
    assert_eq!(after(3)["body"].as_str().unwrap().len(), 10000);
    // Columns added and dropped mid-stream.
    assert_eq!(
        Value::Object(after(4)),
        json!({"id": 2, "small": 0, "body": "y", "extra": 9})
    );
    assert_eq!(
        Value::Object(after(5)),
        json!({"id": 3, "body": "z", "extra": 10})
    );
}

#[tokio::test]
async fn a_dropped_connection_is_unavailable_then_resumes() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("d");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(&mut conn, "CREATE TABLE a (id int PRIMARY KEY)").await;
    let cfg = config(&db, &name, &mut slots);
    let mut capture = PgCapture::connect(cfg.clone()).await.unwrap();
    exec(&mut conn, "INSERT INTO a VALUES (1)").await;
    let first = read_n(&mut capture, 1, 10).await;
    capture
        .acknowledge(first[0].checkpoint.as_ref().unwrap())
        .await
        .unwrap();

    sqlx::query(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(cfg.slot_name())
    .execute(&mut conn)
    .await
    .unwrap();
    exec(&mut conn, "INSERT INTO a VALUES (2)").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let failure = loop {
        match capture.read(10, Duration::from_millis(500)).await {
            Err(e) => break e,
            Ok(batch) => assert!(batch.is_empty(), "read on a terminated connection"),
        }
        assert!(Instant::now() < deadline, "the termination went unnoticed");
    };
    assert_eq!(
        failure.kind,
        ErrorKind::Unavailable,
        "{}",
        failure.describe()
    );
    let next = read_n(&mut capture, 1, 10).await;
    assert_eq!(next[0].change.key["id"], 2);
}

#[tokio::test]
async fn a_table_without_a_key_is_refused_naming_replica_identity() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(
        &mut conn,
        "CREATE TABLE keyed (id int PRIMARY KEY); CREATE TABLE nopk (x int)",
    )
    .await;
    let cfg = config(&db, &unique("k"), &mut slots);
    let e = PgCapture::connect(cfg.clone()).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("REPLICA IDENTITY"), "{}", e.message);
    assert!(e.message.contains("nopk"), "{}", e.message);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_publication")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "no publication left behind");

    // Fixed as the message says: accepted.
    exec(&mut conn, "ALTER TABLE nopk REPLICA IDENTITY FULL").await;
    let capture = PgCapture::connect(cfg).await.unwrap();
    drop(capture);
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let mut cfg = PgLogConfig::new("postgres://postgres@127.0.0.1:1/nothing", "u");
    cfg.slot = Some(unique("ferry_u"));
    let e = PgCapture::connect(cfg).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{}", e.describe());
}

#[tokio::test]
async fn without_create_a_missing_slot_or_publication_is_refused_by_name() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(&mut conn, "CREATE TABLE a (id int PRIMARY KEY)").await;
    let mut cfg = config(&db, &unique("m"), &mut slots);
    cfg.create = false;

    let e = PgCapture::connect(cfg.clone()).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains(&cfg.publication_name()), "{}", e.message);

    exec(
        &mut conn,
        &format!(
            "CREATE PUBLICATION {} FOR ALL TABLES",
            cfg.publication_name()
        ),
    )
    .await;
    let e = PgCapture::connect(cfg.clone()).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains(&cfg.slot_name()), "{}", e.message);
    assert!(e.message.contains("slot"), "{}", e.message);

    // Created by hand: taken as given.
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(cfg.slot_name())
        .execute(&mut conn)
        .await
        .unwrap();
    let mut capture = PgCapture::connect(cfg.clone()).await.unwrap();
    exec(&mut conn, "INSERT INTO a VALUES (1)").await;
    assert_eq!(read_n(&mut capture, 1, 10).await.len(), 1);
    drop(capture);

    // `ferry cdc drop`: slot and publication gone.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match ferry_cdc::postgres::drop(&cfg).await {
            Ok(()) => break,
            Err(e) if e.kind == ErrorKind::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("{}", e.describe()),
        }
    }
    assert!(ferry_cdc::postgres::status(&cfg).await.unwrap().is_none());
    let publications: BTreeMap<String, i64> =
        sqlx::query_as("SELECT pubname::text, 1::bigint FROM pg_publication")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert!(publications.is_empty(), "{publications:?}");
}

#[tokio::test]
async fn rows_of_one_copy_record_keep_ids_of_their_own() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("c");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(&mut conn, "CREATE TABLE a (id int PRIMARY KEY, v text)").await;
    let mut capture = PgCapture::connect(config(&db, &name, &mut slots))
        .await
        .unwrap();
    // COPY writes one WAL record per page of rows: they share its LSN.
    let mut copy = conn.copy_in_raw("COPY a (id, v) FROM STDIN").await.unwrap();
    let rows: String = (1..=100).map(|i| format!("{i}\tx\n")).collect();
    copy.send(rows.as_bytes()).await.unwrap();
    copy.finish().await.unwrap();

    let got = read_n(&mut capture, 100, 1000).await;
    let ids: std::collections::HashSet<uuid::Uuid> =
        got.iter().map(|c| c.change.id(&name)).collect();
    assert_eq!(ids.len(), 100, "one id per row");
    let lsns: Vec<u64> = got
        .iter()
        .map(|c| match c.change.source.position {
            Position::Lsn { lsn, .. } => lsn,
            _ => panic!("not an LSN position"),
        })
        .collect();
    assert!(lsns.windows(2).all(|w| w[1] > w[0]));
    assert!(
        lsns.windows(2).any(|w| w[1] == w[0] + 1),
        "rows of one record, told apart by their index in it"
    );
}

#[tokio::test]
async fn reading_nothing_keeps_a_quiet_connection_alive() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("q");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(&mut conn, "CREATE TABLE a (id int PRIMARY KEY)").await;
    let mut cfg = config(&db, &name, &mut slots);
    cfg.url = format!("{}?options=-c%20wal_sender_timeout%3D1s", db.url);
    let mut capture = PgCapture::connect(cfg).await.unwrap();

    // Three timeouts' worth of not reading, with read(0) now and then.
    for _ in 0..10 {
        assert!(capture.read(0, Duration::ZERO).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    exec(&mut conn, "INSERT INTO a VALUES (1)").await;
    let got = capture.read(10, Duration::from_secs(5)).await;
    assert_eq!(got.map(|g| g.len()).map_err(|e| e.describe()), Ok(1));

    // Without it the server drops the connection.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let failure = loop {
        match capture.read(10, Duration::from_millis(200)).await {
            Err(e) => break e,
            Ok(batch) => assert!(batch.is_empty()),
        }
        assert!(
            Instant::now() < deadline,
            "the server kept a silent connection"
        );
    };
    assert_eq!(
        failure.kind,
        ErrorKind::Unavailable,
        "{}",
        failure.describe()
    );
}

#[tokio::test]
async fn a_slot_read_by_another_capture_is_reported_in_use() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(&mut conn, "CREATE TABLE a (id int PRIMARY KEY)").await;
    let cfg = config(&db, &unique("b"), &mut slots);
    let first = PgCapture::connect(cfg.clone()).await.unwrap();
    let e = PgCapture::connect(cfg.clone()).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.contains("in use"), "{}", e.message);
    assert!(e.message.contains(&cfg.slot_name()), "{}", e.message);
    drop(first);
}

#[tokio::test]
async fn a_role_without_replication_is_refused_naming_the_attribute() {
    let db = PgTestDb::create().await;
    let role = support::Role::create(&db.url).await;
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_username(&role.name).unwrap();
    let mut cfg = PgLogConfig::new(url.to_string(), unique("n"));
    cfg.slot = Some(unique("ferry_n"));
    let e = PgCapture::connect(cfg).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Permanent, "{}", e.describe());
    assert!(e.message.contains("REPLICATION"), "{}", e.message);
    assert!(e.message.contains(&role.name), "{}", e.message);
}
