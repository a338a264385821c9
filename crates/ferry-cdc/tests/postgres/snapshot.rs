//! The initial snapshot against a real server: rows read once, joined to
//! the stream with no gap and no duplicate, resumed after a crash, values
//! mapped as the stream maps them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use ferry_cdc::postgres::{PgCapture, SnapshotMode};
use ferry_cdc::{Capture, Captured, Op, Position, TableId};
use ferry_testkit::PgTestDb;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use crate::support::{config, exec, parse_lsn, read_acking, read_n, read_quiet, unique, Slots};

/// `id` of a change of a table keyed by `id`.
fn id(c: &Captured) -> i64 {
    c.change.key["id"].as_i64().expect("an integer id")
}

/// The snapshot label and key of a read change.
fn snapshot_position(c: &Captured) -> (String, String) {
    match &c.change.source.position {
        Position::Snapshot { snapshot, key } => (snapshot.clone(), key.clone()),
        other => panic!("a read change at {other:?}"),
    }
}

/// Reads until `done` says so (a minute at most), `max` at a time, calling
/// `between` after each non-empty read with the number of reads so far.
async fn read_until<F, Fut>(
    capture: &mut PgCapture,
    max: usize,
    done: impl Fn(&[Captured]) -> bool,
    mut between: F,
) -> Vec<Captured>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut got = Vec::new();
    let mut reads = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&got) {
        assert!(Instant::now() < deadline, "{} changes only", got.len());
        let batch = capture
            .read(max, Duration::from_millis(500))
            .await
            .unwrap_or_else(|e| panic!("read: {}", e.describe()));
        assert!(batch.len() <= max);
        if !batch.is_empty() {
            reads += 1;
            got.extend(batch);
            between(reads).await;
        }
    }
    got
}

/// `changes` applied to `state`, by id: reads, inserts and updates set the
/// row, deletes remove it.
fn apply(state: &mut BTreeMap<i64, Value>, changes: &[Captured]) {
    for c in changes {
        match c.change.op {
            Op::Read | Op::Create | Op::Update => {
                state.insert(id(c), Value::Object(c.change.after.clone().unwrap()));
            }
            Op::Delete => {
                state.remove(&id(c));
            }
            Op::Truncate => state.clear(),
        }
    }
}

/// The table's rows as the capture maps them.
async fn table_state(conn: &mut PgConnection, table: &str) -> BTreeMap<i64, Value> {
    let rows: Vec<(i64, String, i32)> =
        sqlx::query_as(&format!("SELECT id::int8, v, n FROM {table} ORDER BY id"))
            .fetch_all(conn)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(id, v, n)| (id, json!({"id": id, "v": v, "n": n})))
        .collect()
}

#[tokio::test]
async fn the_snapshot_joins_the_stream_with_no_gap_and_no_duplicate() {
    const ROWS: i64 = 5000;
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("snap");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL);
             INSERT INTO items SELECT g, 'v' || g, 0 FROM generate_series(1, {ROWS}) g;
             ANALYZE items"
        ),
    )
    .await;
    let cfg = config(&db, &name, &mut slots);
    let slot = cfg.slot_name();
    let mut capture = PgCapture::connect(cfg).await.unwrap();
    assert!(capture.snapshotting());
    let consistent: String = sqlx::query_scalar(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&slot)
    .fetch_one(&mut conn)
    .await
    .unwrap();

    // Committed while the snapshot is read, each after the slot's point:
    // the stream's, never the snapshot's. Rows not read yet among them.
    let mut writer = PgConnection::connect(&db.url).await.unwrap();
    let writes = [
        "INSERT INTO items SELECT g, 'new' || g, 1 FROM generate_series(5001, 5050) g",
        "BEGIN; UPDATE items SET n = n + 1 WHERE id <= 20 OR id BETWEEN 4990 AND 5000;
         DELETE FROM items WHERE id BETWEEN 100 AND 104 OR id BETWEEN 4000 AND 4004; COMMIT",
        "UPDATE items SET v = 'late' WHERE id = 4500",
        "DELETE FROM items WHERE id = 5001",
    ];
    // (op, id) in commit order, as the stream must give them.
    let mut expected_stream: Vec<(Op, i64)> = (5001..=5050).map(|i| (Op::Create, i)).collect();
    expected_stream.extend((1..=20).chain(4990..=5000).map(|i| (Op::Update, i)));
    expected_stream.extend((100..=104).chain(4000..=4004).map(|i| (Op::Delete, i)));
    expected_stream.push((Op::Update, 4500));
    expected_stream.push((Op::Delete, 5001));
    let total = ROWS as usize + expected_stream.len();

    let mut progress = Vec::new();
    let got = {
        let writer = &mut writer;
        let mut next = 0;
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < total {
            assert!(
                Instant::now() < deadline,
                "{} of {total} changes",
                got.len()
            );
            let batch = capture.read(700, Duration::from_millis(500)).await.unwrap();
            assert!(batch.len() <= 700);
            progress.push(capture.snapshot_progress());
            if !batch.is_empty() && next < writes.len() {
                exec(writer, writes[next]).await;
                next += 1;
            }
            got.extend(batch);
        }
        assert_eq!(next, writes.len(), "every write made while reading");
        got
    };
    assert!(read_quiet(&mut capture).await.is_empty(), "nothing else");
    assert!(!capture.snapshotting());
    assert_eq!(capture.snapshot_progress(), None);

    // Every row once, as it was at the slot's point, before any change.
    let reads: Vec<&Captured> = got.iter().filter(|c| c.change.op == Op::Read).collect();
    assert_eq!(reads.len(), ROWS as usize);
    assert!(got[..reads.len()].iter().all(|c| c.change.op == Op::Read));
    let ids: Vec<i64> = reads.iter().map(|c| id(c)).collect();
    assert_eq!(ids, (1..=ROWS).collect::<Vec<_>>(), "key order, each once");
    for c in &reads {
        let i = id(c);
        assert_eq!(
            Value::Object(c.change.after.clone().unwrap()),
            json!({"id": i, "v": format!("v{i}"), "n": 0}),
            "row {i} as at the slot's point"
        );
        let (label, key) = snapshot_position(c);
        assert_eq!(label, consistent);
        assert_eq!(key, format!("{{\"id\":{i}}}"));
        assert_eq!(c.change.source.table, TableId::new("public", "items"));
        assert!(c.change.tx.is_none() && c.change.before.is_none());
    }
    let unique_ids: HashSet<uuid::Uuid> = reads.iter().map(|c| c.change.id(&name)).collect();
    assert_eq!(unique_ids.len(), reads.len(), "one id per row");
    // A checkpoint closes each chunk (1000 rows, less when read asks less).
    let checkpoints = reads.iter().filter(|c| c.checkpoint.is_some()).count();
    assert!(checkpoints >= (ROWS / 1000) as usize, "{checkpoints}");
    assert!(reads.last().unwrap().checkpoint.is_some());

    // Then exactly the changes committed after it, in commit order.
    let stream = &got[reads.len()..];
    let described: Vec<(Op, i64)> = stream.iter().map(|c| (c.change.op, id(c))).collect();
    assert_eq!(described, expected_stream);
    let point = parse_lsn(&consistent);
    for c in stream {
        let Position::Lsn { commit_lsn, .. } = c.change.source.position else {
            panic!("a streamed change at {:?}", c.change.source.position);
        };
        assert!(commit_lsn > point, "committed after the slot's point");
    }

    // The receiver's state is the table's.
    let mut state = BTreeMap::new();
    apply(&mut state, &got);
    assert_eq!(state, table_state(&mut conn, "items").await);

    // Progress named the table while it was read, with the estimate.
    let seen: Vec<(TableId, u64, Option<u64>)> = progress.into_iter().flatten().collect();
    assert!(!seen.is_empty());
    for (table, done, estimate) in &seen {
        assert_eq!(*table, TableId::new("public", "items"));
        assert!(*done <= ROWS as u64);
        assert_eq!(*estimate, Some(ROWS as u64));
    }
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "rows only grow");
}

#[tokio::test]
async fn a_crash_mid_snapshot_resumes_after_the_acknowledged_chunk() {
    const ROWS: i64 = 5000;
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("crash");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL);
             INSERT INTO items SELECT g, 'v' || g, 0 FROM generate_series(1, {ROWS}) g"
        ),
    )
    .await;
    let mut cfg = config(&db, &name, &mut slots);
    cfg.snapshot_chunk = 500;

    // Three chunks read, the second acknowledged, then a crash.
    let mut capture = PgCapture::connect(cfg.clone()).await.unwrap();
    let first = read_until(&mut capture, 1000, |g| g.len() >= 1500, |_| async {}).await;
    assert_eq!(first.len(), 1500, "chunks of 500");
    let chunk_ends: Vec<usize> = (0..first.len())
        .filter(|&i| first[i].checkpoint.is_some())
        .collect();
    assert_eq!(chunk_ends, [499, 999, 1499]);
    capture
        .acknowledge(first[999].checkpoint.as_ref().unwrap())
        .await
        .unwrap();
    // A checkpoint not handed out yet is refused.
    let mut ahead = first[1499].checkpoint.clone().unwrap();
    ahead.0["chunk"] = json!(9);
    assert!(capture.acknowledge(&ahead).await.is_err());
    // After the slot's point: rows the resumed snapshot reads as they are
    // now, and the stream delivers again.
    exec(
        &mut conn,
        "UPDATE items SET v = 'changed' WHERE id = 4500;
         INSERT INTO items VALUES (6000, 'v6000', 0);
         DELETE FROM items WHERE id = 10",
    )
    .await;
    drop(capture);

    let saved: String =
        sqlx::query_scalar("SELECT checkpoint FROM ferry_cdc_offsets WHERE capture = $1")
            .bind(&cfg.name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let saved: Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved["snapshot"], "reading", "{saved}");
    assert_eq!(saved["table"], json!({"schema": "public", "name": "items"}));
    assert_eq!(saved["after"], json!(["1000"]));

    // The rest is read as a backfill beside the stream, which starts at
    // the snapshot's consistent point: the changes made since come first,
    // and a row's read never precedes its older change.
    let mut capture = PgCapture::connect(cfg.clone()).await.unwrap();
    assert!(!capture.snapshotting());
    assert!(capture.backfilling(), "the snapshot goes on as a backfill");
    let rest = read_acking(&mut capture, 1000, |c, _| !c.backfilling()).await;
    let reads: Vec<&Captured> = rest.iter().filter(|c| c.change.op == Op::Read).collect();
    let ids: Vec<i64> = reads.iter().map(|c| id(c)).collect();
    let mut expected: Vec<i64> = (1001..=ROWS).collect();
    expected.push(6000);
    assert_eq!(ids, expected, "from the chunk after the acknowledged one");
    // The chunk read again has the same ids.
    let before: HashMap<i64, uuid::Uuid> = first[1000..]
        .iter()
        .map(|c| (id(c), c.change.id(&name)))
        .collect();
    for c in reads.iter().take(500) {
        assert_eq!(Some(&c.change.id(&name)), before.get(&id(c)));
        assert_eq!(snapshot_position(c).0, snapshot_position(&first[0]).0);
    }
    // Read as it is now, after its change.
    let at = |op: Op, row: i64| {
        rest.iter()
            .position(|c| c.change.op == op && id(c) == row)
            .unwrap_or_else(|| panic!("{op:?} of {row}"))
    };
    let row_4500 = &rest[at(Op::Read, 4500)];
    assert_eq!(row_4500.change.after.as_ref().unwrap()["v"], "changed");
    assert!(at(Op::Update, 4500) < at(Op::Read, 4500));
    assert!(at(Op::Create, 6000) < at(Op::Read, 6000));
    let stream: Vec<(Op, i64)> = rest
        .iter()
        .filter(|c| c.change.op != Op::Read)
        .map(|c| (c.change.op, id(c)))
        .collect();
    assert_eq!(
        stream,
        [(Op::Update, 4500), (Op::Create, 6000), (Op::Delete, 10)]
    );

    // Everything delivered converges on the table.
    let mut state = BTreeMap::new();
    apply(&mut state, &first[..1000]);
    apply(&mut state, &rest);
    assert_eq!(state, table_state(&mut conn, "items").await);

    // All acknowledged: a restart only streams.
    drop(capture);
    let mut capture = PgCapture::connect(cfg).await.unwrap();
    assert!(!capture.snapshotting(), "the snapshot was recorded as done");
    assert!(!capture.backfilling());
    assert!(read_quiet(&mut capture).await.is_empty());
    exec(&mut conn, "INSERT INTO items VALUES (7000, 'x', 0)").await;
    let next = read_n(&mut capture, 1, 10).await;
    assert_eq!((next[0].change.op, id(&next[0])), (Op::Create, 7000));
}

#[tokio::test]
async fn a_lost_reader_imports_the_exported_snapshot_again() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("lost");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(
        &mut conn,
        "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL);
         INSERT INTO items SELECT g, 'v' || g, 0 FROM generate_series(1, 3000) g",
    )
    .await;
    let mut cfg = config(&db, &name, &mut slots);
    cfg.snapshot_chunk = 500;
    let mut capture = PgCapture::connect(cfg).await.unwrap();
    let mut got = read_n(&mut capture, 500, 1000).await;
    exec(&mut conn, "UPDATE items SET v = 'after' WHERE id = 2500").await;

    // The reader holds the slot's snapshot lock: end its backend.
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(killed, [true]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let failure = loop {
        match capture.read(1000, Duration::from_millis(200)).await {
            Err(e) => break e,
            Ok(batch) => {
                assert!(Instant::now() < deadline, "the lost reader went unnoticed");
                got.extend(batch);
            }
        }
    };
    assert_eq!(
        failure.kind,
        ferry_core::ErrorKind::Unavailable,
        "{}",
        failure.describe()
    );
    let need = 3001 - got.len();
    got.extend(read_until(&mut capture, 1000, move |g| g.len() >= need, |_| async {}).await);

    // The same snapshot: every row once, 2500 as it was; then its update.
    let reads: Vec<i64> = got
        .iter()
        .filter(|c| c.change.op == Op::Read)
        .map(id)
        .collect();
    assert_eq!(reads, (1..=3000).collect::<Vec<_>>());
    let row_2500 = got.iter().find(|c| id(c) == 2500).unwrap();
    assert_eq!(row_2500.change.after.as_ref().unwrap()["v"], "v2500");
    let last = got.last().unwrap();
    assert_eq!((last.change.op, id(last)), (Op::Update, 2500));
}

#[tokio::test]
async fn snapshot_never_only_streams() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    exec(
        &mut conn,
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         INSERT INTO items SELECT g, 'x' FROM generate_series(1, 100) g",
    )
    .await;
    let mut cfg = config(&db, &unique("never"), &mut slots);
    cfg.snapshot = SnapshotMode::Never;
    let mut capture = PgCapture::connect(cfg).await.unwrap();
    assert!(!capture.snapshotting());
    assert!(read_quiet(&mut capture).await.is_empty(), "no r events");
    exec(&mut conn, "INSERT INTO items VALUES (101, 'y')").await;
    let got = read_n(&mut capture, 1, 10).await;
    assert_eq!((got[0].change.op, id(&got[0])), (Op::Create, 101));
    assert!(read_quiet(&mut capture).await.is_empty());
}

#[tokio::test]
async fn snapshot_values_and_keys_are_the_streams() {
    let db = PgTestDb::create().await;
    let mut slots = Slots::new(&db.url);
    let name = unique("vals");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    // A key whose index order is not its column order, every kind of
    // value; a table without a key; one left out.
    exec(
        &mut conn,
        "CREATE TABLE kinds (a text, b int, f float8, n numeric, j jsonb, flag bool,
           ts timestamptz, d date, bin bytea, note text, PRIMARY KEY (b, a));
         ALTER TABLE kinds REPLICA IDENTITY FULL;
         INSERT INTO kinds VALUES
           ('x''y', 1, 1.5, 12345678901234567890.5, '{\"k\": [1, \"2\"]}', true,
            '2024-01-02 03:04:05.123456+00', '2024-02-29', '\\x00ff', NULL),
           ('z', 1, 'NaN', -0.25, 'null', false, 'infinity', '1999-12-31', '', 'n');
         CREATE TABLE loose (x int, y text);
         ALTER TABLE loose REPLICA IDENTITY FULL;
         INSERT INTO loose VALUES (1, 'same'), (1, 'same'), (2, NULL);
         CREATE TABLE skipped (id int PRIMARY KEY);
         INSERT INTO skipped VALUES (1)",
    )
    .await;
    let mut cfg = config(&db, &name, &mut slots);
    cfg.tables.exclude = vec!["skipped".into()];
    let mut capture = PgCapture::connect(cfg).await.unwrap();
    let reads = read_n(&mut capture, 5, 100).await;
    assert!(reads.iter().all(|c| c.change.op == Op::Read));
    let tables: Vec<String> = reads
        .iter()
        .map(|c| c.change.source.table.to_string())
        .collect();
    assert_eq!(
        tables,
        [
            "public.kinds",
            "public.kinds",
            "public.loose",
            "public.loose",
            "public.loose"
        ],
        "tables in name order, skipped left out"
    );

    // The same rows through the stream: an update that changes nothing.
    exec(
        &mut conn,
        "UPDATE kinds SET note = note; UPDATE loose SET x = x",
    )
    .await;
    let streamed = read_n(&mut capture, 5, 100).await;
    for (r, u) in reads[..2].iter().zip(&streamed[..2]) {
        assert_eq!(u.change.op, Op::Update);
        assert_eq!(r.change.after, u.change.after, "values mapped the same");
        assert_eq!(r.change.key, u.change.key, "the same key");
        assert_eq!(r.change.ordering_key(), u.change.ordering_key());
    }
    assert_eq!(
        Value::Object(reads[0].change.after.clone().unwrap()),
        json!({"a": "x'y", "b": 1, "f": 1.5, "n": "12345678901234567890.5",
               "j": {"k": [1, "2"]}, "flag": true, "ts": "2024-01-02 03:04:05.123456+00",
               "d": "2024-02-29", "bin": "\\x00ff", "note": null})
    );
    assert_eq!(reads[1].change.after.as_ref().unwrap()["f"], "NaN");
    assert_eq!(
        Value::Object(reads[0].change.key.clone()),
        json!({"a": "x'y", "b": 1})
    );

    // Without a key: every row, each with an id of its own, keyed by the
    // whole row as the stream keys it.
    let loose = &reads[2..];
    let ids: HashSet<uuid::Uuid> = loose.iter().map(|c| c.change.id(&name)).collect();
    assert_eq!(ids.len(), 3, "identical rows are distinct reads");
    assert!(loose[..2].iter().all(|c| c.checkpoint.is_none()));
    assert!(loose[2].checkpoint.is_some(), "one checkpoint, at its end");
    let mut keys: Vec<Value> = loose
        .iter()
        .map(|c| Value::Object(c.change.key.clone()))
        .collect();
    let mut streamed_keys: Vec<Value> = streamed[2..]
        .iter()
        .map(|c| Value::Object(c.change.key.clone()))
        .collect();
    keys.sort_by_key(|v| v.to_string());
    streamed_keys.sort_by_key(|v| v.to_string());
    assert_eq!(keys, streamed_keys);
    assert!(loose
        .iter()
        .any(|c| c.change.after.as_ref().unwrap()["y"].is_null()));
}
