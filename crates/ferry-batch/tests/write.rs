//! write_parts against real PostgreSQL, MariaDB and SQLite databases.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{TimeZone, Utc};
use ferry_batch::export::write::{write_parts, Param, PartsSpec, Query, Written};
use ferry_batch::format::open_rows;
use ferry_batch::{FileFormat, Manifest, ValueKind, Window};
use ferry_core::ErrorKind;
use ferry_store::Database;
use ferry_testkit::{MysqlTestDb, PgTestDb, SqliteTestDb};
use sqlx::Executor;

fn spec(format: FileFormat, gzip: bool, max_rows_per_file: u64) -> PartsSpec {
    PartsSpec {
        format,
        gzip,
        max_rows_per_file,
    }
}

fn query(sql: &str) -> Query {
    Query {
        sql: sql.into(),
        params: Vec::new(),
    }
}

async fn export(db: &Database, q: &Query, spec: PartsSpec, dir: &Path) -> Written {
    let calls = AtomicU64::new(0);
    let written = write_parts(db, q, &spec, dir, &|_, _| {
        calls.fetch_add(1, Ordering::Relaxed);
    })
    .await
    .unwrap();
    assert!(calls.load(Ordering::Relaxed) > 0, "progress is reported");
    check_parts(&written);
    written
}

/// Every part's rows, size and SHA-256 are those of the file on disk.
fn check_parts(written: &Written) {
    for (i, p) in written.parts.iter().enumerate() {
        assert_eq!(p.part as usize, i + 1);
        assert_eq!(
            p.path.file_name().unwrap().to_str().unwrap(),
            format!("part-{:05}", i + 1)
        );
        let bytes = std::fs::read(&p.path).unwrap();
        assert_eq!(p.bytes, bytes.len() as u64);
        use sha2::Digest;
        assert_eq!(p.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
    }
}

fn manifest(written: &Written, spec: PartsSpec) -> Manifest {
    Manifest {
        format_version: ferry_batch::manifest::FORMAT_VERSION,
        job: "j".into(),
        window: Window {
            start: "a".into(),
            end: "b".into(),
        },
        run_id: "r".into(),
        format: spec.format,
        gzip: spec.gzip,
        columns: written.columns.clone(),
        files: Vec::new(),
        created_at: Utc.timestamp_opt(0, 0).unwrap(),
    }
}

/// Every part's rows, read back, in order; each part's count checked.
fn read_back(written: &Written, spec: PartsSpec) -> Vec<Vec<Option<String>>> {
    let m = manifest(written, spec);
    let mut all = Vec::new();
    for p in &written.parts {
        let mut reader = open_rows(&p.path, &m).unwrap();
        let mut n = 0;
        while let Some(row) = reader.next_row().unwrap() {
            all.push(row);
            n += 1;
        }
        assert_eq!(n, p.rows);
    }
    all
}

fn cells(rows: &[&[Option<&str>]]) -> Vec<Vec<Option<String>>> {
    rows.iter()
        .map(|r| r.iter().map(|c| c.map(str::to_owned)).collect())
        .collect()
}

/// The values every database shares, as each one spells its table.
const TRICKY: &str = "a \"quoted\", comma\r\nnew line, é 日本 💡";

/// The rows of the shared table, in canonical text.
fn shared_expected() -> Vec<Vec<Option<String>>> {
    cells(&[
        &[Some("1"), Some(TRICKY), Some("0.1"), Some("\\x00ff10")],
        &[
            Some("9223372036854775807"),
            Some(""),
            Some("1e+20"),
            Some("\\x"),
        ],
        &[Some("-9223372036854775808"), None, None, None],
    ])
}

async fn pg_shared(db: &PgTestDb) {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    conn.execute("CREATE TABLE t (id int8, name text, score float8, data bytea)")
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1, $1, 0.1, '\\x00ff10'), (9223372036854775807, '', 1e20, ''), (-9223372036854775808, NULL, NULL, NULL)")
        .bind(TRICKY)
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn postgres_writes_every_kind_in_its_canonical_text() {
    let pg = PgTestDb::create().await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url)
        .await
        .unwrap();
    conn.execute(
        "CREATE TABLE k (i2 int2, i8 int8, n numeric(38,10), f4 float4, f8 float8, b bool, \
         s text, v varchar(10), u uuid, tz timestamptz, ts timestamp, d date, tm time, \
         j json, jb jsonb, by bytea)",
    )
    .await
    .unwrap();
    conn.execute(
        "INSERT INTO k VALUES (-32768, 9223372036854775807, 1234567890123456789012345678.0123456789, \
         1.5, 'NaN', true, 'x,\"y\"', '', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', \
         '2026-12-07 03:04:05.000006+01', '2026-12-07 03:04:05.1', '2026-12-07', '23:59:59.999999', \
         '{\"a\": [1, 2.50]}', '{\"b\": \"é\\n\"}', '\\x00ff'), \
         (NULL, NULL, NULL, NULL, NULL, false, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    .await
    .unwrap();
    let db = Database::connect(&pg.url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = spec(FileFormat::Csv, false, 0);
    let written = export(
        &db,
        &query("SELECT * FROM k ORDER BY b DESC;"),
        s,
        dir.path(),
    )
    .await;
    use ValueKind::*;
    let kinds: Vec<ValueKind> = written.columns.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            Integer, Integer, Decimal, Float, Float, Boolean, Text, Text, Text, Timestamp,
            DateTime, Date, Time, Json, Json, Bytes
        ]
    );
    assert_eq!(written.columns[9].db_type, "timestamptz");
    let expected = cells(&[
        &[
            Some("-32768"),
            Some("9223372036854775807"),
            Some("1234567890123456789012345678.0123456789"),
            Some("1.5"),
            Some("NaN"),
            Some("true"),
            Some("x,\"y\""),
            Some(""),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            Some("2026-12-07T02:04:05.000006Z"),
            Some("2026-12-07T03:04:05.100000"),
            Some("2026-12-07"),
            Some("23:59:59.999999"),
            Some("{\"a\": [1, 2.50]}"),
            Some("{\"b\": \"é\\n\"}"),
            Some("\\x00ff"),
        ],
        &[
            None,
            None,
            None,
            None,
            None,
            Some("false"),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        ],
    ]);
    assert_eq!(read_back(&written, s), expected);

    // JSON Lines: numbers exact, Json values as values, NaN a string.
    let dir = tempfile::tempdir().unwrap();
    let s = spec(FileFormat::Jsonl, true, 0);
    let written = export(
        &db,
        &query("SELECT * FROM k ORDER BY b DESC"),
        s,
        dir.path(),
    )
    .await;
    let back = read_back(&written, s);
    assert_eq!(back[1], expected[1]);
    assert_eq!(back[0][2], expected[0][2]);
    assert_eq!(back[0][13].as_deref(), Some("{\"a\":[1,2.50]}"));
    let mut gz = flate2::read::GzDecoder::new(std::fs::File::open(&written.parts[0].path).unwrap());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut gz, &mut text).unwrap();
    assert!(text.starts_with("{\"i2\":-32768,\"i8\":9223372036854775807,\"n\":1234567890123456789012345678.0123456789,\"f4\":1.5,\"f8\":\"NaN\",\"b\":true,"), "{text}");
}

#[tokio::test]
async fn the_same_values_give_the_same_bytes_from_every_database() {
    let pg = PgTestDb::create().await;
    pg_shared(&pg).await;
    let my = MysqlTestDb::create().await;
    let mut conn = <sqlx::MySqlConnection as sqlx::Connection>::connect(&my.url)
        .await
        .unwrap();
    conn.execute(
        "CREATE TABLE t (id BIGINT, name TEXT, score DOUBLE, data BLOB) CHARACTER SET utf8mb4",
    )
    .await
    .unwrap();
    sqlx::query("INSERT INTO t VALUES (1, ?, 0.1, x'00ff10'), (9223372036854775807, '', 1e20, ''), (-9223372036854775808, NULL, NULL, NULL)")
        .bind(TRICKY)
        .execute(&mut conn)
        .await
        .unwrap();
    let lite = SqliteTestDb::create();
    let sqlite = Database::connect(&lite.url).await.unwrap();
    let Database::Sqlite(pool) = &sqlite else {
        unreachable!()
    };
    pool.execute("CREATE TABLE t (id INTEGER, name TEXT, score REAL, data BLOB)")
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1, ?, 0.1, x'00ff10'), (9223372036854775807, '', 1e20, x''), (-9223372036854775808, NULL, NULL, NULL)")
        .bind(TRICKY)
        .execute(pool)
        .await
        .unwrap();

    let q = query("SELECT id, name, score, data FROM t ORDER BY id DESC");
    for format in [FileFormat::Csv, FileFormat::Jsonl] {
        let s = spec(format, false, 0);
        let mut files = Vec::new();
        for db in [
            Database::connect(&pg.url).await.unwrap(),
            Database::connect(&my.url).await.unwrap(),
            sqlite.clone(),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let written = export(&db, &q, s, dir.path()).await;
            let kinds: Vec<ValueKind> = written.columns.iter().map(|c| c.kind).collect();
            assert_eq!(
                kinds,
                [
                    ValueKind::Integer,
                    ValueKind::Text,
                    ValueKind::Float,
                    ValueKind::Bytes
                ],
                "{:?}",
                db.kind()
            );
            let mut expected = shared_expected();
            expected.sort_by_key(|r| {
                std::cmp::Reverse(r[0].as_deref().unwrap().parse::<i64>().unwrap())
            });
            assert_eq!(read_back(&written, s), expected, "{:?}", db.kind());
            files.push(std::fs::read(&written.parts[0].path).unwrap());
        }
        assert_eq!(files[0], files[1], "PostgreSQL and MariaDB, {format:?}");
        assert_eq!(files[0], files[2], "PostgreSQL and SQLite, {format:?}");
    }
}

#[tokio::test]
async fn postgres_and_mariadb_agree_on_decimals_times_and_booleans() {
    let pg = PgTestDb::create().await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url)
        .await
        .unwrap();
    conn.execute("CREATE TABLE v (amount numeric(38,10), ok bool, at timestamptz, local timestamp, day date, t time, f real)")
        .await
        .unwrap();
    conn.execute("INSERT INTO v VALUES (-1234567890123456789012345678.0123456789, true, '2026-12-07 02:00:00.000001+00', '1999-01-02 03:04:05.5', '2026-02-28', '00:00:00.000001', 1234567), (0, false, NULL, NULL, NULL, NULL, 0.1)")
        .await
        .unwrap();
    let my = MysqlTestDb::create().await;
    let mut conn = <sqlx::MySqlConnection as sqlx::Connection>::connect(&my.url)
        .await
        .unwrap();
    conn.execute("CREATE TABLE v (amount DECIMAL(38,10), ok BOOLEAN, at TIMESTAMP(6) NULL, local DATETIME(6), day DATE, t TIME(6), f FLOAT)")
        .await
        .unwrap();
    conn.execute("SET time_zone = '+00:00'").await.unwrap();
    conn.execute("INSERT INTO v VALUES (-1234567890123456789012345678.0123456789, true, '2026-12-07 02:00:00.000001', '1999-01-02 03:04:05.5', '2026-02-28', '00:00:00.000001', 1234567), (0, false, NULL, NULL, NULL, NULL, 0.1)")
        .await
        .unwrap();
    let q = query("SELECT * FROM v ORDER BY ok DESC");
    let s = spec(FileFormat::Csv, false, 0);
    let mut files = Vec::new();
    for url in [&pg.url, &my.url] {
        let db = Database::connect(url).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let written = export(&db, &q, s, dir.path()).await;
        files.push(String::from_utf8(std::fs::read(&written.parts[0].path).unwrap()).unwrap());
    }
    assert_eq!(
        files[0],
        "amount,ok,at,local,day,t,f\r\n\
         -1234567890123456789012345678.0123456789,true,2026-12-07T02:00:00.000001Z,1999-01-02T03:04:05.500000,2026-02-28,00:00:00.000001,1.234567e+06\r\n\
         0.0000000000,false,,,,,0.1\r\n"
    );
    assert_eq!(files[0], files[1]);
}

#[tokio::test]
async fn parts_split_exactly_at_the_row_limit() {
    let pg = PgTestDb::create().await;
    let db = Database::connect(&pg.url).await.unwrap();
    for (rows, limit, sizes) in [
        (10, 3, vec![3, 3, 3, 1]),
        (9, 3, vec![3, 3, 3]),
        (5, 0, vec![5]),
        (0, 3, vec![0]),
    ] {
        for (format, gzip) in [(FileFormat::Csv, false), (FileFormat::Jsonl, true)] {
            let q = Query {
                sql:
                    "SELECT g AS n, 'line\n' || g AS s FROM generate_series(1, :rows) g ORDER BY g"
                        .into(),
                params: vec![("rows".into(), Param::Int(rows))],
            };
            let dir = tempfile::tempdir().unwrap();
            let s = spec(format, gzip, limit);
            let written = export(&db, &q, s, dir.path()).await;
            let got: Vec<u64> = written.parts.iter().map(|p| p.rows).collect();
            assert_eq!(got, sizes, "{rows} rows, {limit} a file");
            let back = read_back(&written, s);
            let expected: Vec<Vec<Option<String>>> = (1..=rows)
                .map(|g| vec![Some(g.to_string()), Some(format!("line\n{g}"))])
                .collect();
            assert_eq!(back, expected);
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), sizes.len());
        }
    }
}

#[tokio::test]
async fn an_empty_result_is_one_file_with_the_header() {
    let pg = PgTestDb::create().await;
    let db = Database::connect(&pg.url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let written = export(
        &db,
        &query("SELECT 1 AS a, 'x' AS \"b c\" WHERE false"),
        spec(FileFormat::Csv, false, 10),
        dir.path(),
    )
    .await;
    assert_eq!(written.parts.len(), 1);
    assert_eq!(std::fs::read(&written.parts[0].path).unwrap(), b"a,b c\r\n");
}

#[tokio::test]
async fn placeholders_take_their_parameters() {
    let pg = PgTestDb::create().await;
    let my = MysqlTestDb::create().await;
    let lite = SqliteTestDb::create();
    let start = Utc.with_ymd_and_hms(2026, 12, 6, 0, 0, 0).unwrap();
    for url in [&pg.url, &my.url, &lite.url] {
        let db = Database::connect(url).await.unwrap();
        let q = Query {
            sql: "SELECT :name AS name, :n AS n, :none AS none, ':n' AS quoted -- :x\n WHERE :start < :end".into(),
            params: vec![
                ("name".into(), Param::Text("it's :n".into())),
                ("n".into(), Param::Int(-5)),
                ("none".into(), Param::Null),
                ("start".into(), Param::Time(start)),
                ("end".into(), Param::Time(start + chrono::Duration::days(1))),
                ("unused".into(), Param::Int(1)),
            ],
        };
        let dir = tempfile::tempdir().unwrap();
        let s = spec(FileFormat::Csv, false, 0);
        let written = export(&db, &q, s, dir.path()).await;
        let back = read_back(&written, s);
        assert_eq!(back.len(), 1, "{url}");
        assert_eq!(back[0][0].as_deref(), Some("it's :n"), "{url}");
        assert_eq!(back[0][1].as_deref(), Some("-5"), "{url}");
        assert_eq!(back[0][2], None, "{url}");
        assert_eq!(back[0][3].as_deref(), Some(":n"), "{url}");
    }
}

/// SQLite has no time type: a window's bounds compare with the column as
/// text, so they are bound in SQLite's own layout (`datetime()`'s), and a
/// day's window takes exactly that day's rows, the edges included on the
/// start side only.
#[tokio::test]
async fn sqlite_windows_take_the_rows_of_their_window() {
    let lite = SqliteTestDb::create();
    let db = Database::connect(&format!("{}?mode=rwc", lite.url))
        .await
        .unwrap();
    let Database::Sqlite(pool) = &db else {
        unreachable!()
    };
    sqlx::query("CREATE TABLE t (id INTEGER, at TEXT)")
        .execute(pool)
        .await
        .unwrap();
    for (id, at) in [
        (1, "datetime('2026-12-05 23:59:59')"),
        (2, "datetime('2026-12-06 00:00:00')"),
        (3, "datetime('2026-12-06 12:30:00')"),
        (4, "'2026-12-06 23:59:59.999'"),
        (5, "CURRENT_TIMESTAMP"),
        (6, "datetime('2026-12-07 00:00:00')"),
    ] {
        sqlx::query(&format!("INSERT INTO t VALUES ({id}, {at})"))
            .execute(pool)
            .await
            .unwrap();
    }
    let start = Utc.with_ymd_and_hms(2026, 12, 6, 0, 0, 0).unwrap();
    let q = Query {
        sql: "SELECT id FROM t WHERE at >= :window_start AND at < :window_end ORDER BY id".into(),
        params: vec![
            ("window_start".into(), Param::Time(start)),
            (
                "window_end".into(),
                Param::Time(start + chrono::Duration::days(1)),
            ),
        ],
    };
    let dir = tempfile::tempdir().unwrap();
    let s = spec(FileFormat::Csv, false, 0);
    let written = export(&db, &q, s, dir.path()).await;
    let ids: Vec<_> = read_back(&written, s)
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect();
    assert_eq!(ids, ["2", "3", "4"]);
}

#[tokio::test]
async fn bad_queries_are_permanent_failures() {
    let pg = PgTestDb::create().await;
    let my = MysqlTestDb::create().await;
    let lite = SqliteTestDb::create();
    for url in [&pg.url, &my.url, &lite.url] {
        let db = Database::connect(url).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = spec(FileFormat::Csv, false, 0);
        let e = write_parts(
            &db,
            &query("SELECT * FROM no_such_table"),
            &s,
            dir.path(),
            &|_, _| {},
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent, "{url}: {e}");
        assert!(
            e.message.contains("no_such_table"),
            "{url}: the database's message: {e}"
        );
        let e = write_parts(
            &db,
            &Query {
                sql: "SELECT 1 WHERE 1 > :last".into(),
                params: vec![("first".into(), Param::Int(1))],
            },
            &s,
            dir.path(),
            &|_, _| {},
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent, "{url}: {e}");
        assert!(e.message.contains(":last"), "{e}");
    }
    // A failure during the rows (after some were sent) is permanent too.
    let db = Database::connect(&pg.url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = write_parts(
        &db,
        &query("SELECT 1 / (300000 - g) FROM generate_series(1, 400000) g"),
        &spec(FileFormat::Csv, false, 0),
        dir.path(),
        &|_, _| {},
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    assert!(e.message.contains("division by zero"), "{e}");
    // The pool still works afterwards.
    let written = export(
        &db,
        &query("SELECT 1 AS one"),
        spec(FileFormat::Csv, false, 0),
        dir.path(),
    )
    .await;
    assert_eq!(written.parts[0].rows, 1);
}

/// A manual timing, not an assertion: `FERRY_A1_BENCH_URL=postgres://…/db
/// cargo test --release -p ferry-batch --test write -- --ignored
/// --nocapture` exports the table `bench` of that database to CSV and
/// JSON Lines and prints the time each took.
#[tokio::test]
#[ignore]
async fn time_a_large_postgres_export() {
    let Ok(url) = std::env::var("FERRY_A1_BENCH_URL") else {
        return;
    };
    let db = Database::connect(&url).await.unwrap();
    for (format, gzip) in [
        (FileFormat::Csv, false),
        (FileFormat::Jsonl, false),
        (FileFormat::Csv, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let written = write_parts(
            &db,
            &query("SELECT * FROM bench"),
            &spec(format, gzip, 0),
            dir.path(),
            &|_, _| {},
        )
        .await
        .unwrap();
        let rows: u64 = written.parts.iter().map(|p| p.rows).sum();
        let bytes: u64 = written.parts.iter().map(|p| p.bytes).sum();
        println!(
            "{format:?} gzip={gzip}: {rows} rows, {bytes} bytes in {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn sqlite_values_of_another_storage_class_are_written_losslessly() {
    let lite = SqliteTestDb::create();
    let db = Database::connect(&lite.url).await.unwrap();
    let Database::Sqlite(pool) = &db else {
        unreachable!()
    };
    pool.execute("CREATE TABLE m (i INTEGER, t TEXT, b BOOLEAN, n NUMERIC)")
        .await
        .unwrap();
    pool.execute(
        "INSERT INTO m VALUES ('abc', x'01ff', 1, 12.5), (7, 'x', 0, 3), (2.5, NULL, 5, 'text')",
    )
    .await
    .unwrap();
    let expected = cells(&[
        // NUMERIC: no declared type sqlx knows, the first value's class.
        &[Some("abc"), Some("\\x01ff"), Some("true"), Some("12.5")],
        &[Some("7"), Some("x"), Some("false"), Some("3")],
        &[Some("2.5"), None, Some("5"), Some("text")],
    ]);
    for format in [FileFormat::Csv, FileFormat::Jsonl] {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(format, false, 0);
        let written = export(&db, &query("SELECT * FROM m ORDER BY rowid"), s, dir.path()).await;
        let kinds: Vec<ValueKind> = written.columns.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                ValueKind::Integer,
                ValueKind::Text,
                ValueKind::Boolean,
                ValueKind::Float
            ],
            "{:?}",
            written.columns
        );
        assert_eq!(read_back(&written, s), expected, "{format:?}");
    }
}

#[tokio::test]
async fn a_rerun_writes_the_same_bytes() {
    let pg = PgTestDb::create().await;
    let db = Database::connect(&pg.url).await.unwrap();
    let q = query("SELECT g AS n, md5(g::text) AS h, now() - g * interval '1 day' AS at FROM generate_series(1, 5000) g ORDER BY g");
    let mut runs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let written = export(&db, &q, spec(FileFormat::Jsonl, true, 2000), dir.path()).await;
        runs.push(
            written
                .parts
                .iter()
                .map(|p| (p.rows, p.bytes, p.sha256.clone()))
                .collect::<Vec<_>>(),
        );
    }
    // now() differs between the runs' transactions: only the shape is compared.
    assert_eq!(runs[0].len(), 3);
    let q = query("SELECT g AS n, md5(g::text) AS h FROM generate_series(1, 5000) g ORDER BY g");
    let mut hashes = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let written = export(&db, &q, spec(FileFormat::Jsonl, true, 2000), dir.path()).await;
        hashes.push(
            written
                .parts
                .iter()
                .map(|p| p.sha256.clone())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(hashes[0], hashes[1]);
}

/// The planner's estimate (PostgreSQL, for a progress bar's time left):
/// near the real count on an analyzed table, bound parameters included;
/// none on SQLite.
#[tokio::test]
async fn postgres_estimates_the_rows_of_a_query() {
    let pg = PgTestDb::create().await;
    let db = Database::connect(&pg.url).await.unwrap();
    let Database::Postgres(pool) = &db else {
        unreachable!()
    };
    sqlx::query("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10000) g")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("ANALYZE t").execute(pool).await.unwrap();
    let q = Query {
        sql: "SELECT id FROM t WHERE id > :last ORDER BY id".into(),
        params: vec![("last".into(), Param::Int(5000))],
    };
    let estimate = ferry_batch::export::write::estimate_rows(&db, &q)
        .await
        .expect("an estimate");
    assert!((2500..=10000).contains(&estimate), "{estimate}");
    let lite = SqliteTestDb::create();
    let db = Database::connect(&format!("{}?mode=rwc", lite.url))
        .await
        .unwrap();
    assert_eq!(
        ferry_batch::export::write::estimate_rows(&db, &query("SELECT 1")).await,
        None
    );
}
