//! The receiver against real PostgreSQL, MariaDB and SQLite databases, a
//! real folder location and a real local HTTP server.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{Duration, Utc};
use ferry_batch::import::{ImportJob, Importer, LEDGER_TABLE};
use ferry_batch::location::FolderLocation;
use ferry_batch::manifest::FORMAT_VERSION;
use ferry_batch::{Column, FileEntry, FileFormat, Manifest, ValueKind, Window};
use ferry_core::ErrorKind;
use ferry_testkit::{MysqlTestDb, PgTestDb, SqliteTestDb, TempDir};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Row};

type Cells = Vec<Vec<Option<String>>>;

const WINDOW_START: &str = "2026-12-06T00:00:00Z";
const WINDOW_END: &str = "2026-12-07T00:00:00Z";

fn columns() -> Vec<Column> {
    [
        ("id", ValueKind::Integer),
        ("name", ValueKind::Text),
        ("note", ValueKind::Text),
        ("amount", ValueKind::Decimal),
        ("at", ValueKind::Timestamp),
        ("ok", ValueKind::Boolean),
        ("raw", ValueKind::Bytes),
    ]
    .into_iter()
    .map(|(name, kind)| Column {
        name: name.into(),
        db_type: "test".into(),
        kind,
    })
    .collect()
}

/// The batch's rows as CSV, written by hand per the manifest's contract:
/// NULL an empty unquoted field, the empty string `""`, CRLF.
const CSV: &str = concat!(
    "id,name,note,amount,at,ok,raw\r\n",
    "1,plain,,12345678901234567890123.456,2026-12-06T01:02:03.123456Z,true,\\x00ff\r\n",
    "2,\"\",\"quote \"\" comma , newline\n crlf\r\nend\",-0.500,2026-12-06T23:59:59.999999Z,false,\r\n",
    "9223372036854775807,héllo ünïcödé 日本 🚢,\"a,b\",0.000,1970-01-01T00:00:00.000000Z,,\\x\r\n",
);

/// The same rows as JSON Lines.
const JSONL: &str = concat!(
    r#"{"id":1,"name":"plain","note":null,"amount":12345678901234567890123.456,"at":"2026-12-06T01:02:03.123456Z","ok":true,"raw":"\\x00ff"}"#,
    "\n",
    r#"{"id":2,"name":"","note":"quote \" comma , newline\n crlf\r\nend","amount":-0.500,"at":"2026-12-06T23:59:59.999999Z","ok":false,"raw":null}"#,
    "\n",
    r#"{"id":9223372036854775807,"name":"héllo ünïcödé 日本 🚢","note":"a,b","amount":0.000,"at":"1970-01-01T00:00:00.000000Z","ok":null,"raw":"\\x"}"#,
    "\n",
);

/// The source cells of [`CSV`] and [`JSONL`].
fn expected() -> Cells {
    let s = |v: &str| Some(v.to_owned());
    vec![
        vec![
            s("1"),
            s("plain"),
            None,
            s("12345678901234567890123.456"),
            s("2026-12-06T01:02:03.123456Z"),
            s("true"),
            s("\\x00ff"),
        ],
        vec![
            s("2"),
            s(""),
            s("quote \" comma , newline\n crlf\r\nend"),
            s("-0.500"),
            s("2026-12-06T23:59:59.999999Z"),
            s("false"),
            None,
        ],
        vec![
            s("9223372036854775807"),
            s("héllo ünïcödé 日本 🚢"),
            s("a,b"),
            s("0.000"),
            s("1970-01-01T00:00:00.000000Z"),
            None,
            s("\\x"),
        ],
    ]
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Where batches arrive: `<root>/incoming`.
struct Dropbox {
    root: TempDir,
}

impl Dropbox {
    fn new() -> Self {
        Self {
            root: TempDir::new(),
        }
    }

    fn incoming(&self) -> PathBuf {
        self.root.0.join("incoming")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.incoming().join(name)
    }

    fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// Writes the data files (name, bytes as stored, rows), then the
    /// manifest; returns the manifest.
    fn drop_batch(
        &self,
        batch: &str,
        run_id: &str,
        format: FileFormat,
        gzip: bool,
        files: &[(&str, Vec<u8>, u64)],
    ) -> Manifest {
        std::fs::create_dir_all(self.incoming()).unwrap();
        let mut entries = Vec::new();
        for (i, (name, bytes, rows)) in files.iter().enumerate() {
            std::fs::write(self.path(name), bytes).unwrap();
            entries.push(FileEntry {
                name: (*name).to_owned(),
                part: i as u32 + 1,
                rows: *rows,
                bytes: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(bytes)),
            });
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            job: "items-export".into(),
            window: Window {
                start: WINDOW_START.into(),
                end: WINDOW_END.into(),
            },
            run_id: run_id.into(),
            format,
            gzip,
            columns: columns(),
            files: entries,
            created_at: Utc::now(),
        };
        self.write_manifest(batch, &manifest);
        manifest
    }

    fn write_manifest(&self, batch: &str, manifest: &Manifest) {
        std::fs::write(self.path(&Manifest::file_name(batch)), manifest.to_bytes()).unwrap();
    }

    /// The usual batch: the rows of [`CSV`] in one file.
    fn drop_csv(&self, batch: &str, run_id: &str) -> Manifest {
        self.drop_batch(
            batch,
            run_id,
            FileFormat::Csv,
            false,
            &[(&format!("{batch}-1.csv"), CSV.as_bytes().to_vec(), 3)],
        )
    }
}

fn job(name: &str, target: serde_json::Value) -> ImportJob {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "source": { "url": "file:///unused" },
        "folder": "incoming",
        "target": target,
        "poll_interval": "1s",
    }))
    .unwrap()
}

fn importer(dropbox: &Dropbox, job: ImportJob) -> Importer {
    Importer::with_location(job, Arc::new(FolderLocation::new(&dropbox.root.0))).unwrap()
}

fn db_target(url: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut t = serde_json::json!({ "url": url, "table": "items" });
    if let (Some(t), serde_json::Value::Object(extra)) = (t.as_object_mut(), extra) {
        t.extend(extra);
    }
    serde_json::json!({ "database": t })
}

// ------------------------------------------------------------ the databases

#[derive(Clone, Copy, Debug)]
enum Db {
    Postgres,
    Mysql,
    Sqlite,
}

/// A scratch database with the `items` table.
struct Scratch {
    url: String,
    kind: Db,
    _pg: Option<PgTestDb>,
    _my: Option<MysqlTestDb>,
    _lite: Option<SqliteTestDb>,
}

impl Scratch {
    async fn new(kind: Db) -> Self {
        let (url, pg, my, lite) = match kind {
            Db::Postgres => {
                let db = PgTestDb::create().await;
                (db.url.clone(), Some(db), None, None)
            }
            Db::Mysql => {
                let db = MysqlTestDb::create().await;
                (db.url.clone(), None, Some(db), None)
            }
            Db::Sqlite => {
                let db = SqliteTestDb::create();
                (format!("{}?mode=rwc", db.url), None, None, Some(db))
            }
        };
        let s = Self {
            url,
            kind,
            _pg: pg,
            _my: my,
            _lite: lite,
        };
        let table = match kind {
            Db::Postgres => "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT, note TEXT, amount NUMERIC, at TIMESTAMPTZ, ok BOOLEAN, raw BYTEA)",
            Db::Mysql => "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT, note TEXT, amount DECIMAL(40,3), at DATETIME(6), ok BOOLEAN, raw BLOB) DEFAULT CHARSET=utf8mb4",
            Db::Sqlite => "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, note TEXT, amount TEXT, at TEXT, ok INTEGER, raw BLOB)",
        };
        s.exec(table).await;
        s
    }

    async fn exec(&self, sql: &str) {
        match self.kind {
            Db::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            }
            Db::Mysql => {
                let mut c = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
                c.close().await.unwrap();
            }
            Db::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
            }
        }
    }

    /// Every row of `items`, by id, each value as its canonical text.
    async fn items(&self) -> Cells {
        let sql = match self.kind {
            Db::Postgres => {
                r#"SELECT id::text, name, note, amount::text,
                 to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                 ok::text, '\x' || encode(raw, 'hex') FROM items ORDER BY items.id"#
            }
            Db::Mysql => {
                r"SELECT CAST(id AS CHAR), name, note, CAST(amount AS CHAR),
                 DATE_FORMAT(at, '%Y-%m-%dT%H:%i:%s.%fZ'),
                 CASE WHEN ok IS NULL THEN NULL WHEN ok THEN 'true' ELSE 'false' END,
                 CONCAT('\\x', LOWER(HEX(raw))) FROM items ORDER BY items.id"
            }
            Db::Sqlite => {
                r"SELECT CAST(id AS TEXT), name, note, amount, at,
                 CASE ok WHEN 1 THEN 'true' WHEN 0 THEN 'false' END,
                 CASE WHEN raw IS NULL THEN NULL ELSE '\x' || lower(hex(raw)) END
                 FROM items ORDER BY items.id"
            }
        };
        self.cells(sql, 7).await
    }

    async fn cells(&self, sql: &str, width: usize) -> Cells {
        match self.kind {
            Db::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await.unwrap();
                let rows = sqlx::query(sql).fetch_all(&mut c).await.unwrap();
                rows.iter()
                    .map(|r| (0..width).map(|i| r.get::<Option<String>, _>(i)).collect())
                    .collect()
            }
            Db::Mysql => {
                let mut c = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
                let rows = sqlx::query(sql).fetch_all(&mut c).await.unwrap();
                let cells = rows
                    .iter()
                    .map(|r| {
                        (0..width)
                            .map(|i| {
                                r.get::<Option<Vec<u8>>, _>(i)
                                    .map(|b| String::from_utf8(b).unwrap())
                            })
                            .collect()
                    })
                    .collect();
                c.close().await.unwrap();
                cells
            }
            Db::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                let rows = sqlx::query(sql).fetch_all(&mut c).await.unwrap();
                rows.iter()
                    .map(|r| (0..width).map(|i| r.get::<Option<String>, _>(i)).collect())
                    .collect()
            }
        }
    }

    /// The ledger's rows: job, batch, window start, row count.
    async fn ledger(&self) -> Cells {
        let rows = match self.kind {
            Db::Mysql => "CAST(row_count AS CHAR)",
            _ => "CAST(row_count AS TEXT)",
        };
        self.cells(
            &format!("SELECT job, batch, window_start, {rows} FROM {LEDGER_TABLE} ORDER BY imported_at, batch"),
            4,
        )
        .await
    }
}

fn ids(cells: &Cells) -> Vec<String> {
    cells.iter().map(|r| r[0].clone().unwrap()).collect()
}

// ------------------------------------------------------------------- tests

async fn loads_every_value(kind: Db) {
    let db = Scratch::new(kind).await;
    let dropbox = Dropbox::new();
    dropbox.drop_csv("items-20261206", "r1");
    let importer = importer(
        &dropbox,
        job("items", db_target(&db.url, serde_json::json!({}))),
    );
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.imported.len(), 1, "{report:?}");
    assert_eq!(report.imported[0].rows, 3);
    assert_eq!(db.items().await, expected());
    assert_eq!(
        db.ledger().await,
        vec![vec![
            Some("items".into()),
            Some("items-20261206".into()),
            Some(WINDOW_START.into()),
            Some("3".into())
        ]]
    );
    // Archived: data files first, manifest beside the batch's folder.
    assert!(!dropbox.exists("items-20261206.manifest.json"));
    assert!(!dropbox.exists("items-20261206-1.csv"));
    assert!(dropbox.exists("archive/items-20261206.manifest.json"));
    assert_eq!(
        std::fs::read(dropbox.path("archive/items-20261206/items-20261206-1.csv")).unwrap(),
        CSV.as_bytes()
    );
    // Nothing left to do.
    let again = importer.run_once().await.unwrap();
    assert_eq!(again, Default::default());
}

#[tokio::test]
async fn loads_every_value_into_postgres() {
    loads_every_value(Db::Postgres).await;
}

#[tokio::test]
async fn loads_every_value_into_mariadb() {
    loads_every_value(Db::Mysql).await;
}

#[tokio::test]
async fn loads_every_value_into_sqlite() {
    loads_every_value(Db::Sqlite).await;
}

/// JSON Lines (gzip, two files) go through row conversion: COPY from
/// rows written as CSV on PostgreSQL, binds elsewhere.
async fn loads_json_lines_gzip_in_two_files(kind: Db) {
    let db = Scratch::new(kind).await;
    let dropbox = Dropbox::new();
    let lines: Vec<&str> = JSONL.split_inclusive('\n').collect();
    dropbox.drop_batch(
        "b",
        "r1",
        FileFormat::Jsonl,
        true,
        &[
            ("b-1.jsonl.gz", gzip(lines[..2].concat().as_bytes()), 2),
            ("b-2.jsonl.gz", gzip(lines[2].as_bytes()), 1),
        ],
    );
    let importer = importer(
        &dropbox,
        job("items", db_target(&db.url, serde_json::json!({}))),
    );
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.imported.len(), 1, "{report:?}");
    assert_eq!(db.items().await, expected());
    assert!(dropbox.exists("archive/b/b-2.jsonl.gz"));
}

#[tokio::test]
async fn loads_json_lines_into_postgres() {
    loads_json_lines_gzip_in_two_files(Db::Postgres).await;
}

#[tokio::test]
async fn loads_json_lines_into_mariadb() {
    loads_json_lines_gzip_in_two_files(Db::Mysql).await;
}

#[tokio::test]
async fn loads_json_lines_into_sqlite() {
    loads_json_lines_gzip_in_two_files(Db::Sqlite).await;
}

#[tokio::test]
async fn gzip_csv_streams_into_postgres() {
    let db = Scratch::new(Db::Postgres).await;
    let dropbox = Dropbox::new();
    dropbox.drop_batch(
        "b",
        "r1",
        FileFormat::Csv,
        true,
        &[("b-1.csv.gz", gzip(CSV.as_bytes()), 3)],
    );
    let importer = importer(
        &dropbox,
        job("items", db_target(&db.url, serde_json::json!({}))),
    );
    importer.run_once().await.unwrap();
    assert_eq!(db.items().await, expected());
}

/// The same batch dropped in again, then re-sent by its sender under a
/// new run id (a different manifest, the same files), is not loaded again.
async fn never_loads_a_batch_twice(kind: Db) {
    let db = Scratch::new(kind).await;
    let dropbox = Dropbox::new();
    let first = dropbox.drop_csv("b", "r1");
    let importer = importer(
        &dropbox,
        job("items", db_target(&db.url, serde_json::json!({}))),
    );
    assert_eq!(importer.run_once().await.unwrap().imported.len(), 1);

    // Exactly the same files again.
    dropbox.write_manifest("b", &first);
    std::fs::write(dropbox.path("b-1.csv"), CSV).unwrap();
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.skipped, vec!["b".to_owned()]);
    assert!(report.imported.is_empty());

    // Re-sent: new run id and time, so a different manifest.
    let resent = dropbox.drop_csv("b", "r2");
    assert_ne!(resent.to_bytes(), first.to_bytes());
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.skipped, vec!["b".to_owned()]);

    // No duplicate key error could hide a second load: count the rows.
    assert_eq!(db.items().await.len(), 3);
    assert_eq!(db.ledger().await.len(), 1);
    assert!(!dropbox.exists("b.manifest.json"));
    assert!(dropbox.exists("archive/b.manifest.json"));
}

#[tokio::test]
async fn never_loads_a_batch_twice_postgres() {
    never_loads_a_batch_twice(Db::Postgres).await;
}

#[tokio::test]
async fn never_loads_a_batch_twice_mariadb() {
    never_loads_a_batch_twice(Db::Mysql).await;
}

#[tokio::test]
async fn never_loads_a_batch_twice_sqlite() {
    never_loads_a_batch_twice(Db::Sqlite).await;
}

/// Ledger written, then the importer died after moving the data files:
/// the next pass finds the ledger row and finishes the archive.
#[tokio::test]
async fn a_crash_between_commit_and_archive_is_finished_later() {
    let db = Scratch::new(Db::Sqlite).await;
    let dropbox = Dropbox::new();
    let manifest = dropbox.drop_csv("b", "r1");
    let importer = importer(
        &dropbox,
        job("items", db_target(&db.url, serde_json::json!({}))),
    );
    importer.run_once().await.unwrap();
    // Put the manifest back as if its move had not happened.
    std::fs::rename(
        dropbox.path("archive/b.manifest.json"),
        dropbox.path("b.manifest.json"),
    )
    .unwrap();
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.skipped, vec!["b".to_owned()], "{report:?}");
    assert!(report.refused.is_empty());
    assert!(dropbox.exists("archive/b.manifest.json"));
    assert!(dropbox.exists(&format!("archive/b/{}", manifest.files[0].name)));
    assert_eq!(db.items().await.len(), 3);
}

/// One byte changed in a data file: refused with a reason naming the file
/// and the mismatch, nothing loaded, and a later batch still loads.
async fn refuses_a_corrupted_file(kind: Db) {
    let db = Scratch::new(kind).await;
    let dropbox = Dropbox::new();
    dropbox.drop_csv("a", "r1");
    let mut bytes = std::fs::read(dropbox.path("a-1.csv")).unwrap();
    let at = bytes.iter().position(|b| *b == b'p').unwrap();
    bytes[at] = b'q';
    std::fs::write(dropbox.path("a-1.csv"), &bytes).unwrap();
    let later = CSV
        .replace("\r\n1,", "\r\n41,")
        .replace("\r\n2,", "\r\n42,")
        .replace("\r\n9223372036854775807,", "\r\n43,");
    dropbox.drop_batch(
        "b",
        "r1",
        FileFormat::Csv,
        false,
        &[("b-1.csv", later.into_bytes(), 3)],
    );
    let importer = importer(
        &dropbox,
        job("items", db_target(&db.url, serde_json::json!({}))),
    );
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert_eq!(report.refused[0].batch, "a");
    let reason = std::fs::read_to_string(dropbox.path("error/a.reason.txt")).unwrap();
    assert!(
        reason.contains("a-1.csv") && reason.contains("SHA-256"),
        "{reason}"
    );
    assert_eq!(reason.trim_end(), report.refused[0].reason);
    assert!(dropbox.exists("error/a-1.csv") && dropbox.exists("error/a.manifest.json"));
    assert!(!dropbox.exists("a.manifest.json") && !dropbox.exists("a-1.csv"));
    assert_eq!(report.imported.len(), 1);
    assert_eq!(ids(&db.items().await), ["41", "42", "43"]);
}

#[tokio::test]
async fn refuses_a_corrupted_file_postgres() {
    refuses_a_corrupted_file(Db::Postgres).await;
}

#[tokio::test]
async fn refuses_a_corrupted_file_sqlite() {
    refuses_a_corrupted_file(Db::Sqlite).await;
}

/// The manifest promises more rows than the file holds (checksums agree):
/// the load is rolled back and the batch refused.
async fn refuses_a_row_count_mismatch(kind: Db) {
    let db = Scratch::new(kind).await;
    let dropbox = Dropbox::new();
    dropbox.drop_batch(
        "b",
        "r1",
        FileFormat::Csv,
        false,
        &[("b-1.csv", CSV.as_bytes().to_vec(), 4)],
    );
    let importer = importer(
        &dropbox,
        job("items", db_target(&db.url, serde_json::json!({}))),
    );
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(
        report.refused[0]
            .reason
            .contains("b-1.csv has 3 rows, the manifest says 4"),
        "{}",
        report.refused[0].reason
    );
    assert!(db.items().await.is_empty());
    assert!(db.ledger().await.is_empty());
    assert!(dropbox.exists("error/b.reason.txt"));
}

#[tokio::test]
async fn refuses_a_row_count_mismatch_postgres() {
    refuses_a_row_count_mismatch(Db::Postgres).await;
}

#[tokio::test]
async fn refuses_a_row_count_mismatch_mariadb() {
    refuses_a_row_count_mismatch(Db::Mysql).await;
}

#[tokio::test]
async fn refuses_a_row_count_mismatch_sqlite() {
    refuses_a_row_count_mismatch(Db::Sqlite).await;
}

/// A batch of many rows whose last one a constraint of the target refuses
/// (the load fails after COPY, or after many INSERT statements): nothing
/// is kept, the batch stays, and once the constraint is gone it loads.
async fn a_failed_load_keeps_nothing_and_is_retried(kind: Db) {
    let db = Scratch::new(kind).await;
    let check = match kind {
        Db::Sqlite => {
            // SQLite cannot add a constraint to a table: make it anew.
            db.exec("DROP TABLE items; CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, note TEXT, amount TEXT, at TEXT, ok INTEGER, raw BLOB, CHECK (id <> 2500))").await;
            None
        }
        _ => {
            db.exec("ALTER TABLE items ADD CONSTRAINT not_last CHECK (id <> 2500)")
                .await;
            Some("ALTER TABLE items DROP CONSTRAINT not_last")
        }
    };
    let mut csv = String::from("id,name,note,amount,at,ok,raw\r\n");
    for id in 1..=2500 {
        csv.push_str(&format!(
            "{id},n{id},,1.5,2026-12-06T01:00:00.000000Z,true,\\x01\r\n"
        ));
    }
    let dropbox = Dropbox::new();
    dropbox.drop_batch(
        "b",
        "r1",
        FileFormat::Csv,
        false,
        &[("b-1.csv", csv.into_bytes(), 2500)],
    );
    let importer = importer(
        &dropbox,
        job("items", db_target(&db.url, serde_json::json!({}))),
    );
    let failure = importer.run_once().await.unwrap_err();
    assert!(failure.is_retryable(), "{failure:?}");
    assert!(failure.message.contains("batch b"), "{}", failure.message);
    assert!(db.items().await.is_empty());
    assert!(db.ledger().await.is_empty());
    assert!(dropbox.exists("b.manifest.json") && dropbox.exists("b-1.csv"));
    assert!(!dropbox.exists("error/b.reason.txt"));

    match check {
        Some(drop) => db.exec(drop).await,
        None => {
            db.exec("DROP TABLE items; CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, note TEXT, amount TEXT, at TEXT, ok INTEGER, raw BLOB)").await
        }
    }
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.imported[0].rows, 2500);
    assert_eq!(db.items().await.len(), 2500);
}

#[tokio::test]
async fn a_failed_load_keeps_nothing_postgres() {
    a_failed_load_keeps_nothing_and_is_retried(Db::Postgres).await;
}

#[tokio::test]
async fn a_failed_load_keeps_nothing_mariadb() {
    a_failed_load_keeps_nothing_and_is_retried(Db::Mysql).await;
}

#[tokio::test]
async fn a_failed_load_keeps_nothing_sqlite() {
    a_failed_load_keeps_nothing_and_is_retried(Db::Sqlite).await;
}

/// PostgreSQL's connection cut while COPY runs: nothing kept, retried.
#[tokio::test]
async fn a_connection_cut_mid_copy_keeps_nothing_postgres() {
    let db = Scratch::new(Db::Postgres).await;
    // A trigger that stalls the load long enough to be cut.
    db.exec(
        "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.id = 2500 THEN PERFORM pg_sleep(30); END IF; RETURN NEW; END $$;
         CREATE TRIGGER stall BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION stall();",
    )
    .await;
    let mut csv = String::from("id,name,note,amount,at,ok,raw\r\n");
    for id in 1..=2500 {
        csv.push_str(&format!(
            "{id},n,,1,2026-12-06T01:00:00.000000Z,true,\\x\r\n"
        ));
    }
    let dropbox = Dropbox::new();
    dropbox.drop_batch(
        "b",
        "r1",
        FileFormat::Csv,
        false,
        &[("b-1.csv", csv.into_bytes(), 2500)],
    );
    let importer = Arc::new(importer(
        &dropbox,
        job("items", db_target(&db.url, serde_json::json!({}))),
    ));
    let pass = tokio::spawn({
        let importer = importer.clone();
        async move { importer.run_once().await }
    });
    // Wait until the load sleeps in the trigger, then end its session.
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut killed = false;
    for _ in 0..200 {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event = 'PgSleep'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if n > 0 {
            killed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(killed, "the load never reached the last row");
    let failure = pass.await.unwrap().unwrap_err();
    assert!(failure.is_retryable(), "{failure:?}");
    assert!(db.items().await.is_empty());
    assert!(db.ledger().await.is_empty());
    assert!(dropbox.exists("b.manifest.json"));
    db.exec("DROP TRIGGER stall ON items").await;
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.imported[0].rows, 2500);
    assert_eq!(db.items().await.len(), 2500);
}

/// Upsert: rows with a known key are updated, new ones inserted, others
/// left alone.
async fn upserts_by_key(kind: Db) {
    let db = Scratch::new(kind).await;
    db.exec("INSERT INTO items (id, name) VALUES (1, 'old'), (5, 'keep')")
        .await;
    let dropbox = Dropbox::new();
    dropbox.drop_csv("b", "r1");
    let target = db_target(
        &db.url,
        serde_json::json!({ "conflict": "upsert", "key": ["id"] }),
    );
    let importer = importer(&dropbox, job("items", target));
    assert_eq!(importer.run_once().await.unwrap().imported.len(), 1);
    let mut want = expected();
    want.insert(
        2,
        vec![
            Some("5".into()),
            Some("keep".into()),
            None,
            None,
            None,
            None,
            None,
        ],
    );
    assert_eq!(db.items().await, want);
}

#[tokio::test]
async fn upserts_by_key_postgres() {
    upserts_by_key(Db::Postgres).await;
}

#[tokio::test]
async fn upserts_by_key_mariadb() {
    upserts_by_key(Db::Mysql).await;
}

#[tokio::test]
async fn upserts_by_key_sqlite() {
    upserts_by_key(Db::Sqlite).await;
}

/// replace_window: rows whose `at` is inside the manifest's window are
/// replaced by the batch; rows outside it, on both edges, stay.
async fn replaces_the_window(kind: Db) {
    let db = Scratch::new(kind).await;
    let at = |t: &str| match kind {
        Db::Mysql => format!("'{}'", t.replace('T', " ").trim_end_matches('Z')),
        _ => format!("'{t}'"),
    };
    db.exec(&format!(
        "INSERT INTO items (id, name, at) VALUES
           (100, 'before', {}), (101, 'first in', {}), (102, 'last in', {}), (103, 'end', {})",
        at("2026-12-05T23:59:59.999999Z"),
        at("2026-12-06T00:00:00.000000Z"),
        at("2026-12-06T23:59:59.999999Z"),
        at("2026-12-07T00:00:00.000000Z"),
    ))
    .await;
    // The batch: its rows, all inside the window (the 1970 row moved in).
    let csv = CSV.replace("1970-01-01T00:00:00.000000Z", "2026-12-06T12:00:00.000000Z");
    let dropbox = Dropbox::new();
    dropbox.drop_batch(
        "b",
        "r1",
        FileFormat::Csv,
        false,
        &[("b-1.csv", csv.into_bytes(), 3)],
    );
    let target = db_target(
        &db.url,
        serde_json::json!({ "conflict": "replace_window", "window_column": "at" }),
    );
    let importer = importer(&dropbox, job("items", target));
    assert_eq!(importer.run_once().await.unwrap().imported.len(), 1);
    assert_eq!(
        ids(&db.items().await),
        ["1", "2", "100", "103", "9223372036854775807"]
    );
}

#[tokio::test]
async fn replaces_the_window_postgres() {
    replaces_the_window(Db::Postgres).await;
}

#[tokio::test]
async fn replaces_the_window_mariadb() {
    replaces_the_window(Db::Mysql).await;
}

#[tokio::test]
async fn replaces_the_window_sqlite() {
    replaces_the_window(Db::Sqlite).await;
}

/// A file column mapped to a differently named table column loads; a
/// column the table lacks refuses the batch.
#[tokio::test]
async fn maps_columns_and_refuses_unknown_ones() {
    let db = Scratch::new(Db::Postgres).await;
    db.exec("ALTER TABLE items RENAME COLUMN name TO title")
        .await;
    let dropbox = Dropbox::new();
    dropbox.drop_csv("a", "r1");
    let plain = importer(
        &dropbox,
        job("items", db_target(&db.url, serde_json::json!({}))),
    );
    let report = plain.run_once().await.unwrap();
    assert_eq!(report.refused.len(), 1);
    assert!(
        report.refused[0]
            .reason
            .contains("\"name\" is not a column of table items"),
        "{}",
        report.refused[0].reason
    );
    assert!(db.items_titles().await.is_empty());

    dropbox.drop_csv("b", "r1");
    let mapped = importer(
        &dropbox,
        job(
            "items",
            db_target(
                &db.url,
                serde_json::json!({ "columns": { "name": "title" } }),
            ),
        ),
    );
    assert_eq!(mapped.run_once().await.unwrap().imported.len(), 1);
    assert_eq!(
        db.items_titles().await,
        ["plain", "", "héllo ünïcödé 日本 🚢"]
    );
}

impl Scratch {
    async fn items_titles(&self) -> Vec<String> {
        self.cells("SELECT title FROM items ORDER BY items.id", 1)
            .await
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect()
    }
}

/// Manifests that cannot be trusted, files missing or malformed: each
/// refused with its reason, nothing loaded, the good batch after them
/// loaded.
#[tokio::test]
async fn refuses_bad_manifests_missing_files_and_malformed_rows() {
    let db = Scratch::new(Db::Sqlite).await;
    let dropbox = Dropbox::new();
    // a: a manifest of an unknown format version.
    let mut a = dropbox.drop_csv("a", "r1");
    a.format_version = 99;
    dropbox.write_manifest("a", &a);
    // b: not JSON.
    std::fs::write(dropbox.path("b.manifest.json"), "{ not json").unwrap();
    // c: a data file missing.
    dropbox.drop_csv("c", "r1");
    std::fs::remove_file(dropbox.path("c-1.csv")).unwrap();
    // d: a malformed row (an unterminated quote), checksums right.
    dropbox.drop_batch(
        "d",
        "r1",
        FileFormat::Csv,
        false,
        &[(
            "d-1.csv",
            b"id,name,note,amount,at,ok,raw\r\n7,\"open,,1,2026-12-06T01:00:00.000000Z,true,\\x\r\n".to_vec(),
            1,
        )],
    );
    // e: good.
    dropbox.drop_csv("e", "r1");
    let importer = importer(
        &dropbox,
        job("items", db_target(&db.url, serde_json::json!({}))),
    );
    let report = importer.run_once().await.unwrap();
    let refused: Vec<&str> = report.refused.iter().map(|r| r.batch.as_str()).collect();
    assert_eq!(refused, ["a", "b", "c", "d"], "{report:?}");
    let reason =
        |b: &str| std::fs::read_to_string(dropbox.path(&format!("error/{b}.reason.txt"))).unwrap();
    assert!(reason("a").contains("format_version 99"), "{}", reason("a"));
    assert!(
        reason("b").contains("malformed manifest"),
        "{}",
        reason("b")
    );
    assert!(
        reason("c").contains("c-1.csv") && reason("c").contains("missing"),
        "{}",
        reason("c")
    );
    assert!(reason("d").contains("d-1.csv"), "{}", reason("d"));
    assert!(dropbox.exists("error/a-1.csv") && dropbox.exists("error/a.manifest.json"));
    assert!(dropbox.exists("error/b.manifest.json"));
    assert_eq!(report.imported.len(), 1);
    assert_eq!(report.imported[0].batch, "e");
    assert_eq!(db.items().await, expected());
}

/// The target database down: the pass fails as unavailable and the batch
/// stays where it is.
#[tokio::test]
async fn an_unavailable_database_leaves_the_batch() {
    let port = ferry_testkit::nats_server::free_port();
    let dropbox = Dropbox::new();
    dropbox.drop_csv("b", "r1");
    let url = format!("postgres://postgres@127.0.0.1:{port}/none");
    let importer = importer(
        &dropbox,
        job("items", db_target(&url, serde_json::json!({}))),
    );
    let failure = importer.run_once().await.unwrap_err();
    assert_eq!(failure.kind, ErrorKind::Unavailable, "{failure:?}");
    assert!(dropbox.exists("b.manifest.json") && dropbox.exists("b-1.csv"));
    assert!(!dropbox.incoming().join("error").exists());
}

#[tokio::test]
async fn archive_retention_deletes_old_batches_only() {
    let db = Scratch::new(Db::Sqlite).await;
    let dropbox = Dropbox::new();
    let mut old = dropbox.drop_csv("old", "r1");
    old.created_at = Utc::now() - Duration::days(40);
    dropbox.write_manifest("old", &old);
    dropbox.drop_batch(
        "new",
        "r1",
        FileFormat::Csv,
        false,
        &[(
            "new-1.csv",
            CSV.replace("\r\n1,", "\r\n11,")
                .replace("\r\n2,", "\r\n12,")
                .replace("\r\n9223372036854775807,", "\r\n13,")
                .into_bytes(),
            3,
        )],
    );
    let mut job = job("items", db_target(&db.url, serde_json::json!({})));
    job.archive_retention = Some(std::time::Duration::from_secs(30 * 86400));
    let importer = importer(&dropbox, job);
    assert_eq!(importer.run_once().await.unwrap().imported.len(), 2);
    assert!(dropbox.exists("archive/old/old-1.csv"));
    assert_eq!(importer.apply_retention().await.unwrap(), 1);
    assert!(!dropbox.exists("archive/old/old-1.csv"));
    assert!(!dropbox.exists("archive/old.manifest.json"));
    assert!(dropbox.exists("archive/new/new-1.csv"));
    assert!(dropbox.exists("archive/new.manifest.json"));
    assert_eq!(importer.apply_retention().await.unwrap(), 0);
}

#[tokio::test]
async fn run_polls_until_shut_down() {
    let db = Scratch::new(Db::Sqlite).await;
    let dropbox = Dropbox::new();
    let mut job = job("items", db_target(&db.url, serde_json::json!({})));
    job.poll_interval = std::time::Duration::from_millis(50);
    let importer = importer(&dropbox, job);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(importer.run(shutdown.clone()));
    dropbox.drop_csv("b", "r1");
    for _ in 0..200 {
        if dropbox.exists("archive/b.manifest.json") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(db.items().await, expected());
    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn config_refuses_unknown_keys_and_missing_companions() {
    let base = serde_json::json!({
        "name": "j",
        "source": { "url": "file:///x" },
        "target": { "database": { "url": "sqlite://x.db", "table": "t" } },
    });
    let job: ImportJob = serde_json::from_value(base.clone()).unwrap();
    assert_eq!(job.archive, "archive");
    assert_eq!(job.error, "error");
    assert!(job.validate().is_ok());
    let mut unknown = base.clone();
    unknown["targets"] = serde_json::json!(1);
    assert!(serde_json::from_value::<ImportJob>(unknown).is_err());
    let mut typo = base.clone();
    typo["target"]["database"]["tabel"] = serde_json::json!("t");
    assert!(serde_json::from_value::<ImportJob>(typo).is_err());
    let mut upsert = base.clone();
    upsert["target"]["database"]["conflict"] = serde_json::json!("upsert");
    let upsert: ImportJob = serde_json::from_value(upsert).unwrap();
    let err = upsert.validate().unwrap_err();
    assert!(err.message.contains("key"), "{}", err.message);
    let mut window = base.clone();
    window["target"]["database"]["conflict"] = serde_json::json!("replace_window");
    let window: ImportJob = serde_json::from_value(window).unwrap();
    assert!(window
        .validate()
        .unwrap_err()
        .message
        .contains("window_column"));
    let mut retention = base;
    retention["archive_retention"] = serde_json::json!("30d");
    let retention: ImportJob = serde_json::from_value(retention).unwrap();
    assert_eq!(
        retention.archive_retention,
        Some(std::time::Duration::from_secs(30 * 86400))
    );
}

// --------------------------------------------------------------- HTTP target

#[derive(Clone, Default)]
struct Endpoint {
    /// (Idempotency-Key, body) of every request, in arrival order.
    requests: Arc<Mutex<Vec<(String, String)>>>,
    /// Requests to answer 503 before answering normally.
    fail_first: Arc<AtomicUsize>,
    /// Answer 400 to everything.
    refuse: Arc<std::sync::atomic::AtomicBool>,
}

impl Endpoint {
    async fn start(&self) -> String {
        use axum::http::{HeaderMap, StatusCode};
        let state = self.clone();
        let app = axum::Router::new()
            .route(
                "/bulk",
                axum::routing::post(
                    |axum::extract::State(s): axum::extract::State<Endpoint>,
                     headers: HeaderMap,
                     body: String| async move {
                        let key = headers
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        s.requests.lock().unwrap().push((key, body));
                        if s.refuse.load(Ordering::SeqCst) {
                            return StatusCode::BAD_REQUEST;
                        }
                        if s.fail_first
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                        {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        StatusCode::OK
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/bulk")
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.requests.lock().unwrap().clone()
    }
}

fn http_job(url: &str) -> ImportJob {
    job(
        "items-http",
        serde_json::json!({ "http": { "url": url, "chunk_rows": 2, "attempts": 3 } }),
    )
}

#[tokio::test]
async fn posts_json_lines_chunks_with_stable_idempotency_keys() {
    let endpoint = Endpoint::default();
    endpoint.fail_first.store(1, Ordering::SeqCst);
    let url = endpoint.start().await;
    let dropbox = Dropbox::new();
    dropbox.drop_csv("b", "r1");
    let importer = importer(&dropbox, http_job(&url));
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.imported[0].rows, 3);
    let requests = endpoint.requests();
    // Chunk 1 answered 503 once, then sent again with the same key.
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(requests[0], requests[1]);
    assert_ne!(requests[1].0, requests[2].0);
    let body: String = requests[1..].iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(body, JSONL);
    assert_eq!(requests[1].1.lines().count(), 2);
    assert!(dropbox.exists("archive/b.manifest.json"));

    // Re-sent under a new run id: the same keys, so the endpoint can
    // apply each chunk once.
    dropbox.drop_csv("b", "r2");
    importer.run_once().await.unwrap();
    let again = endpoint.requests();
    assert_eq!(again.len(), 5);
    assert_eq!(again[3].0, requests[1].0);
    assert_eq!(again[4].0, requests[2].0);
}

#[tokio::test]
async fn an_endpoint_refusing_a_chunk_refuses_the_batch() {
    let endpoint = Endpoint::default();
    endpoint.refuse.store(true, Ordering::SeqCst);
    let url = endpoint.start().await;
    let dropbox = Dropbox::new();
    dropbox.drop_csv("b", "r1");
    let importer = importer(&dropbox, http_job(&url));
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.refused.len(), 1);
    assert!(
        report.refused[0].reason.contains("400"),
        "{}",
        report.refused[0].reason
    );
    assert!(dropbox.exists("error/b.reason.txt"));
    assert_eq!(endpoint.requests().len(), 1);
}

#[tokio::test]
async fn an_endpoint_down_leaves_the_batch() {
    let endpoint = Endpoint::default();
    endpoint.fail_first.store(100, Ordering::SeqCst);
    let url = endpoint.start().await;
    let dropbox = Dropbox::new();
    dropbox.drop_csv("b", "r1");
    let importer = importer(&dropbox, http_job(&url));
    let failure = importer.run_once().await.unwrap_err();
    assert_eq!(failure.kind, ErrorKind::Unavailable);
    assert_eq!(endpoint.requests().len(), 3);
    assert!(dropbox.exists("b.manifest.json"));
}

/// Two importers of one job take the same batch at once (here from two
/// folders, into a table without a key that would catch a double load):
/// one loads it, the other finds the ledger row and loads nothing.
async fn racing_importers_load_once(kind: Db) {
    let db = Scratch::new(kind).await;
    db.exec("CREATE TABLE items_nokey AS SELECT * FROM items WHERE 1 = 0")
        .await;
    let (one, two) = (Dropbox::new(), Dropbox::new());
    one.drop_csv("b", "r1");
    two.drop_csv("b", "r2");
    let target = serde_json::json!({ "database": { "url": db.url, "table": "items_nokey" } });
    let first = importer(&one, job("items", target.clone()));
    let second = importer(&two, job("items", target));
    let (a, b) = tokio::join!(first.run_once(), second.run_once());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.imported.len() + b.imported.len(), 1, "{a:?} {b:?}");
    assert_eq!(a.skipped.len() + b.skipped.len(), 1, "{a:?} {b:?}");
    let text = match kind {
        Db::Mysql => "CHAR",
        _ => "TEXT",
    };
    let rows = db
        .cells(
            &format!("SELECT CAST(COUNT(*) AS {text}) FROM items_nokey"),
            1,
        )
        .await;
    assert_eq!(rows, vec![vec![Some("3".to_owned())]]);
    assert_eq!(db.ledger().await.len(), 1);
}

#[tokio::test]
async fn racing_importers_load_once_postgres() {
    racing_importers_load_once(Db::Postgres).await;
}

#[tokio::test]
async fn racing_importers_load_once_mariadb() {
    racing_importers_load_once(Db::Mysql).await;
}

#[tokio::test]
async fn racing_importers_load_once_sqlite() {
    racing_importers_load_once(Db::Sqlite).await;
}

/// `Importer::new` opens the job's own source location from its URL.
#[tokio::test]
async fn new_opens_the_configured_source() {
    let db = Scratch::new(Db::Sqlite).await;
    let dropbox = Dropbox::new();
    dropbox.drop_csv("b", "r1");
    let mut job = job("items", db_target(&db.url, serde_json::json!({})));
    job.source =
        ferry_batch::location::LocationConfig::new(format!("file://{}", dropbox.root.0.display()));
    let importer = Importer::new(job).await.unwrap();
    assert_eq!(importer.run_once().await.unwrap().imported.len(), 1);
    assert_eq!(db.items().await, expected());

    let mut bad = self::job("items", db_target(&db.url, serde_json::json!({})));
    bad.source = ferry_batch::location::LocationConfig::new("ftp://example.com/x");
    let err = Importer::new(bad).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
}

/// A value the table's column cannot hold (text in a BIGINT column):
/// refused with the database's reason, nothing loaded, the next batch
/// still loads.
async fn refuses_a_value_the_table_cannot_hold(kind: Db) {
    let db = Scratch::new(kind).await;
    let dropbox = Dropbox::new();
    dropbox.drop_batch(
        "a",
        "r1",
        FileFormat::Csv,
        false,
        &[(
            "a-1.csv",
            CSV.replace("\r\n2,", "\r\nnot-a-number,").into_bytes(),
            3,
        )],
    );
    dropbox.drop_csv("b", "r1");
    let importer = importer(
        &dropbox,
        job("items", db_target(&db.url, serde_json::json!({}))),
    );
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert_eq!(report.refused[0].batch, "a");
    assert!(
        report.refused[0].reason.contains("not-a-number")
            && report.refused[0].reason.contains("a-1.csv"),
        "{}",
        report.refused[0].reason
    );
    assert_eq!(report.imported.len(), 1);
    assert_eq!(db.items().await, expected());
    assert_eq!(db.ledger().await.len(), 1);
}

#[tokio::test]
async fn refuses_a_value_the_table_cannot_hold_postgres() {
    refuses_a_value_the_table_cannot_hold(Db::Postgres).await;
}

#[tokio::test]
async fn refuses_a_value_the_table_cannot_hold_mariadb() {
    refuses_a_value_the_table_cannot_hold(Db::Mysql).await;
}

/// A folder location that counts its listings (one per pass).
struct CountingFolder {
    inner: FolderLocation,
    lists: Arc<AtomicUsize>,
}

impl ferry_batch::Location for CountingFolder {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put_file<'a>(
        &'a self,
        local: &'a std::path::Path,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), ferry_core::Failure>> {
        self.inner.put_file(local, name)
    }
    fn list<'a>(
        &'a self,
        folder: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<ferry_batch::Entry>, ferry_core::Failure>> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(folder)
    }
    fn get_file<'a>(
        &'a self,
        name: &'a str,
        local: &'a std::path::Path,
    ) -> futures::future::BoxFuture<'a, Result<u64, ferry_core::Failure>> {
        self.inner.get_file(name, local)
    }
    fn rename<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), ferry_core::Failure>> {
        self.inner.rename(from, to)
    }
    fn delete<'a>(
        &'a self,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), ferry_core::Failure>> {
        self.inner.delete(name)
    }
}

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn count(&self, text: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(text)
            .count()
    }
}

/// `run` logs a failure when it starts, not at every poll, and its end
/// once.
#[tokio::test]
async fn run_logs_a_failure_once_per_change() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The database's folder does not exist yet: every pass fails.
    let dir = TempDir::new();
    let path = dir.0.join("later").join("target.db");
    let url = format!("sqlite://{}", path.display());
    let dropbox = Dropbox::new();
    dropbox.drop_csv("b", "r1");
    let lists = Arc::new(AtomicUsize::new(0));
    let location = CountingFolder {
        inner: FolderLocation::new(&dropbox.root.0),
        lists: lists.clone(),
    };
    let mut job = job("items", db_target(&url, serde_json::json!({})));
    job.poll_interval = std::time::Duration::from_millis(10);
    let importer = Importer::with_location(job, Arc::new(location)).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(importer.run(shutdown.clone()));

    // Let the runtime run the importer while waiting.
    for _ in 0..1000 {
        if lists.load(Ordering::SeqCst) >= 6 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(lists.load(Ordering::SeqCst) >= 6);
    assert_eq!(logs.count("import job failed"), 1);
    assert_eq!(logs.count("works again"), 0);

    // The database appears, table and all at once (made aside, then its
    // folder renamed into place): the batch loads, the recovery is logged.
    let aside = dir.0.join("aside");
    std::fs::create_dir_all(&aside).unwrap();
    let mut c = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}?mode=rwc",
        aside.join("target.db").display()
    ))
    .await
    .unwrap();
    sqlx::raw_sql("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, note TEXT, amount TEXT, at TEXT, ok INTEGER, raw BLOB)")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
    std::fs::rename(&aside, path.parent().unwrap()).unwrap();
    for _ in 0..1000 {
        if dropbox.exists("archive/b.manifest.json") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let passes = lists.load(Ordering::SeqCst);
    for _ in 0..1000 {
        if lists.load(Ordering::SeqCst) >= passes + 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(logs.count("works again"), 1);
    assert_eq!(logs.count("import job failed"), 1);
    assert_eq!(logs.count("imported batch"), 1);
    shutdown.cancel();
    running.await.unwrap();
}

/// The job as an operator writes it in Ferry's TOML config.
#[test]
fn config_reads_from_toml() {
    let job: ImportJob = toml::from_str(
        r#"
        name = "orders"
        folder = "incoming"
        archive_retention = "30d"
        poll_interval = "1m"

        [source]
        url = "sftp://ferry@files.example.com:22/outgoing"
        private_key = "/etc/ferry/id_ed25519"

        [target.database]
        url = "postgres://ferry@db/warehouse"
        table = "sales.orders"
        conflict = "replace_window"
        window_column = "created_at"
        columns = { order_id = "id" }
        "#,
    )
    .unwrap();
    job.validate().unwrap();
    assert_eq!(job.poll_interval, std::time::Duration::from_secs(60));
    match &job.target {
        ferry_batch::import::ImportTarget::Database(t) => {
            assert_eq!(t.conflict, ferry_batch::import::Conflict::ReplaceWindow);
            assert_eq!(t.columns["order_id"], "id");
            assert_eq!(t.table, "sales.orders");
        }
        other => panic!("{other:?}"),
    }
    let http: ImportJob = toml::from_str(
        r#"
        name = "to-crm"
        source = { url = "/srv/batches" }
        target = { http = { url = "https://crm.example.com/bulk", chunk_rows = 500, headers = { Authorization = "Bearer x" } } }
        "#,
    )
    .unwrap();
    http.validate().unwrap();
    assert!(!format!("{http:?}").contains("Bearer x"));
    assert!(!format!(
        "{:?}",
        self::job(
            "j",
            db_target("postgres://u:secret@h/d", serde_json::json!({}))
        )
    )
    .contains("u:secret@"));
    let err = toml::from_str::<ImportJob>(
        r#"
        name = "x"
        source = { url = "/srv" }
        target = { database = { url = "sqlite://x.db", table = "t", conflcit = "upsert" } }
        "#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("conflcit"), "{err}");
}

/// PostgreSQL cannot upsert one key twice in a statement: a batch holding
/// a key twice is refused, not retried for ever.
#[tokio::test]
async fn an_upsert_batch_with_a_key_twice_is_refused_postgres() {
    let db = Scratch::new(Db::Postgres).await;
    let dropbox = Dropbox::new();
    dropbox.drop_batch(
        "b",
        "r1",
        FileFormat::Csv,
        false,
        &[("b-1.csv", CSV.replace("\r\n2,", "\r\n1,").into_bytes(), 3)],
    );
    let target = db_target(
        &db.url,
        serde_json::json!({ "conflict": "upsert", "key": ["id"] }),
    );
    let importer = importer(&dropbox, job("items", target));
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(db.items().await.is_empty());
    assert!(dropbox.exists("error/b.reason.txt"));
}

// ------------------------------------------- over SFTP and S3 (real servers)

/// Puts the local batch files `names` (from `local`'s incoming folder) to
/// `incoming/` of `location`, in the order given.
async fn upload(local: &Dropbox, location: &dyn ferry_batch::Location, names: &[&str]) {
    for name in names {
        location
            .put_file(&local.path(name), &format!("incoming/{name}"))
            .await
            .unwrap();
    }
}

async fn names(location: &dyn ferry_batch::Location, folder: &str) -> Vec<String> {
    location
        .list(folder)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect()
}

/// The receiver over a remote source: a corrupted batch refused to
/// `error/`, a good one loaded and archived, then re-sent and skipped.
async fn imports_over(source: ferry_batch::location::LocationConfig) {
    let db = Scratch::new(Db::Sqlite).await;
    let location = ferry_batch::location::open(&source).await.unwrap();
    let local = Dropbox::new();
    local.drop_csv("a", "r1");
    let mut bytes = std::fs::read(local.path("a-1.csv")).unwrap();
    bytes[40] ^= 1;
    std::fs::write(local.path("a-1.csv"), &bytes).unwrap();
    local.drop_csv("b", "r1");
    upload(
        &local,
        location.as_ref(),
        &["a-1.csv", "a.manifest.json", "b-1.csv", "b.manifest.json"],
    )
    .await;
    let mut job = job("items", db_target(&db.url, serde_json::json!({})));
    job.source = source;
    let importer = Importer::new(job).await.unwrap();
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(report.refused[0].reason.contains("a-1.csv"));
    assert_eq!(report.imported.len(), 1, "{report:?}");
    assert_eq!(db.items().await, expected());
    assert!(names(location.as_ref(), "incoming").await.is_empty());
    assert_eq!(
        names(location.as_ref(), "incoming/archive").await,
        ["incoming/archive/b.manifest.json"]
    );
    assert_eq!(
        names(location.as_ref(), "incoming/archive/b").await,
        ["incoming/archive/b/b-1.csv"]
    );
    assert_eq!(
        names(location.as_ref(), "incoming/error").await,
        [
            "incoming/error/a-1.csv",
            "incoming/error/a.manifest.json",
            "incoming/error/a.reason.txt"
        ]
    );

    local.drop_csv("b", "r2");
    upload(&local, location.as_ref(), &["b-1.csv", "b.manifest.json"]).await;
    let report = importer.run_once().await.unwrap();
    assert_eq!(report.skipped, ["b"]);
    assert_eq!(db.items().await.len(), 3);
}

#[tokio::test]
async fn imports_over_sftp() {
    let sshd = ferry_testkit::sftp::PrivateSshd::start();
    let source = ferry_batch::location::LocationConfig {
        private_key: Some(sshd.client_key()),
        known_hosts: Some(sshd.known_hosts()),
        ..ferry_batch::location::LocationConfig::new(format!(
            "sftp://{}@{}:{}{}",
            sshd.user(),
            sshd.host(),
            sshd.port(),
            sshd.root().display()
        ))
    };
    imports_over(source).await;
}

#[tokio::test]
async fn imports_over_s3() {
    let bucket = ferry_testkit::s3::S3TestBucket::create().await;
    let source = ferry_batch::location::LocationConfig {
        endpoint: Some(bucket.endpoint.clone()),
        allow_http: true,
        region: Some("us-east-1".to_owned()),
        access_key_id: Some("ferry-test".to_owned()),
        secret_access_key: Some("ferry-test-secret".to_owned()),
        ..ferry_batch::location::LocationConfig::new(format!("s3://{}/batches", bucket.bucket))
    };
    imports_over(source).await;
}
