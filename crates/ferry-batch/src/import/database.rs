//! Loading a verified batch into a table, with its ledger row in the same
//! transaction.
//!
//! * PostgreSQL: `COPY … FROM STDIN WITH (FORMAT csv)`; a CSV file's
//!   (gunzipped) bytes are streamed in as they are, JSON Lines rows are
//!   written as CSV on the way. Upserts COPY into a temporary table, then
//!   `INSERT … SELECT … ON CONFLICT (key) DO UPDATE`.
//! * MariaDB: multi-row `INSERT` statements with bound values (a few
//!   hundred rows each), `ON DUPLICATE KEY UPDATE` for upserts; the
//!   session's time zone is UTC.
//! * SQLite: one prepared `INSERT` (`ON CONFLICT … DO UPDATE` for upserts)
//!   per row.
//!
//! Each file's row count is compared with the manifest before the
//! transaction commits. A value the database refuses as malformed
//! (PostgreSQL's class 22, MariaDB's incorrect-value errors) refuses the
//! batch; any other database error (a constraint, a lost connection) rolls
//! the transaction back and leaves the batch for the next poll.

use chrono::{DateTime, SecondsFormat, Utc};
use ferry_core::Failure;
use ferry_store::dialect::Dialect;
use ferry_store::{ConnectOptions, Database};
use sqlx::{Connection, MySqlPool, PgPool, Row as _, SqlitePool};
use tokio::sync::OnceCell;

use super::batch::{Batch, Problem};
use super::config::{Conflict, DatabaseTarget};
use super::ledger;
use super::stream;
use crate::{FileFormat, ValueKind};

/// What loading a batch did.
#[derive(Debug)]
pub(crate) enum Loaded {
    /// Loaded with this many rows, ledger row written.
    Imported(u64),
    /// The ledger already holds the batch: nothing loaded.
    AlreadyImported,
}

/// A database target, connected on first use.
pub(crate) struct DatabaseLoader {
    target: DatabaseTarget,
    db: OnceCell<Database>,
}

/// The batch's columns as the table names them, with what they hold.
struct Plan {
    /// Table columns, in file order, quoted.
    columns: Vec<String>,
    /// The values' kinds, in file order.
    kinds: Vec<ValueKind>,
    /// Quoted key columns (upsert).
    key: Vec<String>,
    /// The quoted window column and its SQL type (replace_window).
    window: Option<(String, String)>,
}

impl DatabaseLoader {
    pub(crate) fn new(target: DatabaseTarget) -> Self {
        Self {
            target,
            db: OnceCell::new(),
        }
    }

    /// The target database, connected and its ledger created.
    async fn database(&self) -> Result<&Database, Failure> {
        self.db
            .get_or_try_init(|| async {
                let url = ferry_core::redact_url(&self.target.url);
                let options = ConnectOptions {
                    max_connections: 2,
                    lease: None,
                };
                let db = Database::connect_with(&self.target.url, &options)
                    .await
                    .map_err(|e| {
                        let f = if e.is_retryable() {
                            Failure::unavailable(format!("cannot connect to the target database {url}"))
                        } else {
                            Failure::permanent(format!("cannot connect to the target database {url} (check the URL, user and database)"))
                        };
                        f.with_source(e)
                    })?;
                let created = match &db {
                    Database::Postgres(p) => ledger::create::<sqlx::Postgres>(p).await,
                    Database::Sqlite(p) => ledger::create::<sqlx::Sqlite>(p).await,
                    Database::Mysql(p) => ledger::create::<sqlx::MySql>(p).await,
                };
                created.map_err(|e| {
                    Failure::unavailable(format!(
                        "cannot create the ledger {} in {url}",
                        ledger::TABLE
                    ))
                    .with_source(e)
                })?;
                Ok(db)
            })
            .await
    }

    /// The latest `limit` batches `job` imported, newest first.
    pub(crate) async fn imported(
        &self,
        job: &str,
        limit: u32,
    ) -> Result<Vec<ledger::Imported>, Failure> {
        let db = self.database().await?;
        let listed = match db {
            Database::Postgres(p) => ledger::recent::<sqlx::Postgres>(p, job, limit).await,
            Database::Mysql(p) => ledger::recent::<sqlx::MySql>(p, job, limit).await,
            Database::Sqlite(p) => ledger::recent::<sqlx::Sqlite>(p, job, limit).await,
        };
        listed.map_err(|e| {
            Failure::unavailable(format!("cannot read the ledger {}", ledger::TABLE)).with_source(e)
        })
    }

    /// Whether the ledger holds the batch keyed `key` of `job`.
    pub(crate) async fn contains(&self, job: &str, key: &str) -> Result<bool, Problem> {
        let db = self.database().await?;
        let found = match db {
            Database::Postgres(pool) => match pool.acquire().await {
                Ok(mut c) => ledger::contains::<sqlx::Postgres>(&mut c, job, key).await,
                Err(e) => Err(e),
            },
            Database::Mysql(pool) => match pool.acquire().await {
                Ok(mut c) => ledger::contains::<sqlx::MySql>(&mut c, job, key).await,
                Err(e) => Err(e),
            },
            Database::Sqlite(pool) => match pool.acquire().await {
                Ok(mut c) => ledger::contains::<sqlx::Sqlite>(&mut c, job, key).await,
                Err(e) => Err(e),
            },
        };
        found.map_err(ledger_problem)
    }

    /// Loads `batch` for `job` with its ledger row, once.
    pub(crate) async fn load(&self, job: &str, batch: &Batch) -> Result<Loaded, Problem> {
        let db = self.database().await?;
        match db {
            Database::Postgres(pool) => load_postgres(pool, &self.target, job, batch).await,
            Database::Mysql(pool) => load_mysql(pool, &self.target, job, batch).await,
            Database::Sqlite(pool) => load_sqlite(pool, &self.target, job, batch).await,
        }
    }
}

/// What a database error means for the batch: a malformed value refuses
/// it, anything else leaves it for the next poll.
fn db_problem(e: sqlx::Error) -> Problem {
    if let sqlx::Error::Database(d) = &e {
        let code = d.code().unwrap_or_default();
        let malformed = if let Some(my) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
            // Incorrect value, truncated, out of range, too long, column
            // count, illegal value.
            matches!(
                my.number(),
                1366 | 1292 | 1264 | 1406 | 1265 | 1411 | 1367 | 1136 | 3140
            )
        } else if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
            // Datatype mismatch.
            code == "20"
        } else {
            // Data exceptions; a key twice in one upsert; a column the
            // table lacks.
            code.starts_with("22") || code == "21000" || code == "42703"
        };
        if malformed {
            return Problem::Refused(format!(
                "the target database refused a value: {}",
                d.message()
            ));
        }
        return Problem::Retry(
            Failure::transient("the target database refused the load").with_source(e),
        );
    }
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_) => Problem::Retry(
            Failure::unavailable("the target database is unavailable").with_source(e),
        ),
        e => Problem::Retry(Failure::transient("the target database failed").with_source(e)),
    }
}

fn ledger_problem(e: sqlx::Error) -> Problem {
    match db_problem(e) {
        // The ledger's own values are never malformed; whatever the
        // database says, trying again is the answer.
        Problem::Refused(reason) => Problem::Retry(Failure::transient(format!(
            "cannot write the ledger {}: {reason}",
            ledger::TABLE
        ))),
        other => other,
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Matches the batch's columns with the table's (`table_columns`: name and
/// SQL type); `exact` compares names case-sensitively.
fn plan(
    target: &DatabaseTarget,
    batch: &Batch,
    table_columns: &[(String, String)],
    exact: bool,
    quote: fn(&str) -> String,
) -> Result<Plan, Problem> {
    if table_columns.is_empty() {
        return Err(Problem::Retry(Failure::permanent(format!(
            "the target table {} does not exist (create it, or fix `target.database.table`)",
            target.table
        ))));
    }
    let find = |name: &str| {
        table_columns.iter().find(|(c, _)| {
            if exact {
                c == name
            } else {
                c.eq_ignore_ascii_case(name)
            }
        })
    };
    let mut columns = Vec::new();
    let mut kinds = Vec::new();
    let mut names = Vec::new();
    for column in &batch.manifest.columns {
        let name = target
            .columns
            .get(&column.name)
            .map_or(column.name.as_str(), String::as_str);
        if find(name).is_none() {
            let mapped = if name == column.name {
                String::new()
            } else {
                format!(" (file column {:?})", column.name)
            };
            return Err(Problem::Refused(format!(
                "column {name:?}{mapped} is not a column of table {}",
                target.table
            )));
        }
        if names.iter().any(|n: &String| n == name) {
            return Err(Problem::Refused(format!(
                "two file columns go to table column {name:?}"
            )));
        }
        names.push(name.to_owned());
        columns.push(quote(name));
        kinds.push(column.kind);
    }
    let mut key = Vec::new();
    if target.conflict == Conflict::Upsert {
        for k in &target.key {
            if !names.iter().any(|n| n == k) {
                return Err(Problem::Refused(format!(
                    "the batch has no value for key column {k:?}"
                )));
            }
            key.push(quote(k));
        }
    }
    let window = match (target.conflict, &target.window_column) {
        (Conflict::ReplaceWindow, Some(w)) => {
            let Some((name, sql_type)) = find(w) else {
                return Err(Problem::Retry(Failure::permanent(format!(
                    "window_column {w:?} is not a column of table {}",
                    target.table
                ))));
            };
            Some((quote(name), sql_type.clone()))
        }
        _ => None,
    };
    Ok(Plan {
        columns,
        kinds,
        key,
        window,
    })
}

fn quote_double(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_backtick(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A window bound that is an RFC 3339 time, in UTC.
fn window_time(bound: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(bound)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A value refused by the database, said of batch file `label`.
fn in_file(problem: Problem, label: &str) -> Problem {
    match problem {
        Problem::Refused(reason) if reason.starts_with("the target database") => {
            Problem::Refused(format!("file {label}: {reason}"))
        }
        other => other,
    }
}

fn row_count_mismatch(label: &str, found: u64, said: u64) -> Problem {
    Problem::Refused(format!(
        "file {label} has {found} rows, the manifest says {said}"
    ))
}

// ---------------------------------------------------------------- PostgreSQL

async fn pg_columns(pool: &PgPool, table: &str) -> Result<Vec<(String, String)>, Problem> {
    let rows = sqlx::query(
        "SELECT attname::text AS name, format_type(atttypid, atttypmod) AS type
           FROM pg_attribute
          WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
          ORDER BY attnum",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .map_err(|e| match db_problem(e) {
        Problem::Refused(r) => Problem::Retry(Failure::permanent(format!(
            "cannot read the columns of {table}: {r}"
        ))),
        p => p,
    })?;
    rows.iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get("type")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db_problem)
}

async fn load_postgres(
    pool: &PgPool,
    target: &DatabaseTarget,
    job: &str,
    batch: &Batch,
) -> Result<Loaded, Problem> {
    let table_columns = pg_columns(pool, &target.table).await?;
    let plan = plan(target, batch, &table_columns, true, quote_double)?;
    let columns = plan.columns.join(", ");
    let mut tx = pool.begin().await.map_err(db_problem)?;
    if claim::<sqlx::Postgres>(&mut tx, job, batch).await? {
        return Ok(Loaded::AlreadyImported);
    }
    let into = match target.conflict {
        Conflict::Insert => target.table.clone(),
        Conflict::ReplaceWindow => {
            if let Some((column, sql_type)) = &plan.window {
                sqlx::query(&format!(
                    "DELETE FROM {} WHERE {column} >= CAST($1 AS {sql_type}) AND {column} < CAST($2 AS {sql_type})",
                    target.table
                ))
                .bind(&batch.manifest.window.start)
                .bind(&batch.manifest.window.end)
                .execute(&mut *tx)
                .await
                .map_err(db_problem)?;
            }
            target.table.clone()
        }
        Conflict::Upsert => {
            sqlx::query(&format!(
                "CREATE TEMP TABLE ferry_import_stage ON COMMIT DROP AS SELECT {columns} FROM {} WITH NO DATA",
                target.table
            ))
            .execute(&mut *tx)
            .await
            .map_err(db_problem)?;
            "ferry_import_stage".to_owned()
        }
    };
    let mut total = 0;
    for (entry, path) in &batch.files {
        let label = entry.name.clone();
        let n = match batch.manifest.format {
            FileFormat::Csv => {
                let sql = format!("COPY {into} ({columns}) FROM STDIN WITH (FORMAT csv, HEADER)");
                stream::check_header(path.clone(), batch.manifest.clone(), label.clone()).await?;
                let rx = stream::bytes(path.clone(), batch.manifest.gzip, label.clone());
                copy_in(&mut tx, &sql, rx, |b| b)
                    .await
                    .map_err(|p| in_file(p, &label))?
            }
            FileFormat::Jsonl => {
                let sql = format!("COPY {into} ({columns}) FROM STDIN WITH (FORMAT csv)");
                let rx = stream::rows(path.clone(), batch.manifest.clone(), 1000, label.clone());
                copy_in(&mut tx, &sql, rx, |rows| csv_of(&rows))
                    .await
                    .map_err(|p| in_file(p, &label))?
            }
        };
        if n != entry.rows {
            return Err(row_count_mismatch(&label, n, entry.rows));
        }
        total += n;
    }
    if target.conflict == Conflict::Upsert {
        let updates: Vec<String> = plan
            .columns
            .iter()
            .filter(|c| !plan.key.contains(c))
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect();
        let action = if updates.is_empty() {
            "NOTHING".to_owned()
        } else {
            format!("UPDATE SET {}", updates.join(", "))
        };
        sqlx::query(&format!(
            "INSERT INTO {} ({columns}) SELECT {columns} FROM ferry_import_stage ON CONFLICT ({}) DO {action}",
            target.table,
            plan.key.join(", ")
        ))
        .execute(&mut *tx)
        .await
        .map_err(db_problem)?;
    }
    tx.commit().await.map_err(db_problem)?;
    Ok(Loaded::Imported(total))
}

/// Streams what `rx` yields (each item made bytes by `encode`) into a
/// `COPY … FROM STDIN`, returning the rows COPY took.
async fn copy_in<T>(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    mut rx: tokio::sync::mpsc::Receiver<Result<T, Problem>>,
    encode: impl Fn(T) -> Vec<u8>,
) -> Result<u64, Problem> {
    let mut copy = conn.copy_in_raw(sql).await.map_err(db_problem)?;
    while let Some(item) = rx.recv().await {
        match item {
            Ok(item) => {
                if let Err(e) = copy.send(encode(item)).await {
                    return Err(db_problem(e));
                }
            }
            Err(problem) => {
                let _ = copy.abort("the batch file was refused").await;
                return Err(problem);
            }
        }
    }
    copy.finish().await.map_err(db_problem)
}

/// Rows as CSV records for COPY: NULL an empty unquoted field, every
/// value quoted (so an empty string stays one).
fn csv_of(rows: &[stream::Row]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 64);
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if let Some(text) = cell {
                out.push(b'"');
                for b in text.bytes() {
                    if b == b'"' {
                        out.push(b'"');
                    }
                    out.push(b);
                }
                out.push(b'"');
            }
        }
        out.push(b'\n');
    }
    out
}

// ------------------------------------------------------------------- MariaDB

/// A value as MariaDB takes it.
enum MyValue {
    Null,
    Text(String),
    Bytes(Vec<u8>),
}

/// Canonical text (`label`: the column, for reasons) as MariaDB takes it:
/// times in UTC without the `T` and `Z`, booleans as 1/0, bytes as binary.
fn mysql_value(kind: ValueKind, text: Option<String>, column: &str) -> Result<MyValue, Problem> {
    let Some(text) = text else {
        return Ok(MyValue::Null);
    };
    let bad = |what: &str| Problem::Refused(format!("column {column:?}: {text:?} is not {what}"));
    Ok(match kind {
        ValueKind::Timestamp => {
            let t = window_time(&text).ok_or_else(|| bad("an RFC 3339 timestamp"))?;
            MyValue::Text(t.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
        }
        ValueKind::DateTime => MyValue::Text(text.replacen('T', " ", 1)),
        ValueKind::Boolean => match text.as_str() {
            "true" => MyValue::Text("1".into()),
            "false" => MyValue::Text("0".into()),
            _ => return Err(bad("true or false")),
        },
        ValueKind::Bytes => {
            MyValue::Bytes(hex_bytes(&text).ok_or_else(|| bad("\\x and hex digits"))?)
        }
        _ => MyValue::Text(text),
    })
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    hex::decode(text.strip_prefix("\\x")?).ok()
}

async fn mysql_columns(
    conn: &mut sqlx::MySqlConnection,
    table: &str,
) -> Result<Vec<(String, String)>, Problem> {
    let (schema, name) = match table.split_once('.') {
        Some((s, n)) => (Some(s.trim_matches('`')), n.trim_matches('`')),
        None => (None, table.trim_matches('`')),
    };
    let rows = sqlx::query(
        "SELECT CAST(column_name AS CHAR) AS name, CAST(column_type AS CHAR) AS type
           FROM information_schema.columns
          WHERE table_schema = COALESCE(?, DATABASE()) AND table_name = ?
          ORDER BY ordinal_position",
    )
    .bind(schema)
    .bind(name)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_problem)?;
    rows.iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get("type")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db_problem)
}

async fn load_mysql(
    pool: &MySqlPool,
    target: &DatabaseTarget,
    job: &str,
    batch: &Batch,
) -> Result<Loaded, Problem> {
    let mut conn = pool.acquire().await.map_err(db_problem)?;
    sqlx::query("SET time_zone = '+00:00'")
        .execute(&mut *conn)
        .await
        .map_err(db_problem)?;
    let table_columns = mysql_columns(&mut conn, &target.table).await?;
    let plan = plan(target, batch, &table_columns, false, quote_backtick)?;
    let columns = plan.columns.join(", ");
    let width = plan.columns.len();
    let mut tx = conn.begin().await.map_err(db_problem)?;
    if claim::<sqlx::MySql>(&mut tx, job, batch).await? {
        return Ok(Loaded::AlreadyImported);
    }
    if let Some((column, _)) = &plan.window {
        let bound = |b: &str| {
            window_time(b).map_or_else(
                || b.to_owned(),
                |t| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            )
        };
        sqlx::query(&format!(
            "DELETE FROM {} WHERE {column} >= ? AND {column} < ?",
            target.table
        ))
        .bind(bound(&batch.manifest.window.start))
        .bind(bound(&batch.manifest.window.end))
        .execute(&mut *tx)
        .await
        .map_err(db_problem)?;
    }
    let upsert = if target.conflict == Conflict::Upsert {
        let mut updates: Vec<String> = plan
            .columns
            .iter()
            .filter(|c| !plan.key.contains(c))
            .map(|c| format!("{c} = VALUES({c})"))
            .collect();
        if updates.is_empty() {
            updates.push(format!("{0} = {0}", plan.key[0]));
        }
        format!(" ON DUPLICATE KEY UPDATE {}", updates.join(", "))
    } else {
        String::new()
    };
    // Well under MariaDB's 65,535 placeholders per statement.
    let per_statement = (60_000 / width).clamp(1, 500);
    let tuple = format!("({})", vec!["?"; width].join(", "));
    let mut total = 0;
    for (entry, path) in &batch.files {
        let label = entry.name.clone();
        let mut rx = stream::rows(
            path.clone(),
            batch.manifest.clone(),
            per_statement,
            label.clone(),
        );
        let mut n = 0u64;
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            let sql = format!(
                "INSERT INTO {} ({columns}) VALUES {}{upsert}",
                target.table,
                vec![tuple.as_str(); chunk.len()].join(", ")
            );
            let mut query = sqlx::query(&sql);
            for row in chunk {
                for ((cell, kind), column) in row
                    .into_iter()
                    .zip(&plan.kinds)
                    .zip(&batch.manifest.columns)
                {
                    query = match mysql_value(*kind, cell, &column.name)? {
                        MyValue::Null => query.bind(None::<String>),
                        MyValue::Text(t) => query.bind(t),
                        MyValue::Bytes(b) => query.bind(b),
                    };
                }
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(|e| in_file(db_problem(e), &label))?;
        }
        if n != entry.rows {
            return Err(row_count_mismatch(&label, n, entry.rows));
        }
        total += n;
    }
    tx.commit().await.map_err(db_problem)?;
    Ok(Loaded::Imported(total))
}

// -------------------------------------------------------------------- SQLite

async fn sqlite_columns(pool: &SqlitePool, table: &str) -> Result<Vec<(String, String)>, Problem> {
    let rows = sqlx::query("SELECT name, type FROM pragma_table_info(?)")
        .bind(table.trim_matches('"'))
        .fetch_all(pool)
        .await
        .map_err(db_problem)?;
    rows.iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get("type")?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db_problem)
}

/// Inserts the batch's ledger row first in the load's transaction, on
/// every database: an importer racing on the same batch waits for this
/// transaction on the row's key, then finds it and loads nothing; when
/// the transaction rolls back, the row goes with it. `true` when the
/// ledger already holds the batch.
async fn claim<DB: Dialect>(
    tx: &mut DB::Connection,
    job: &str,
    batch: &Batch,
) -> Result<bool, Problem> {
    match ledger::record::<DB>(tx, job, batch, batch.manifest.rows()).await {
        Ok(()) => Ok(false),
        Err(e) if is_unique_violation(&e) => Ok(true),
        Err(e) => Err(ledger_problem(e)),
    }
}

/// Binds one cell of a SQLite row, as the column's kind is stored there.
fn bind_sqlite<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    cell: Option<String>,
    kind: ValueKind,
    column: &str,
) -> Result<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>, Problem> {
    Ok(match (cell, kind) {
        (None, _) => query.bind(None::<String>),
        (Some(t), ValueKind::Integer) => match t.parse::<i64>() {
            Ok(i) => query.bind(i),
            // Beyond 64 bits: kept as its digits.
            Err(_) => query.bind(t),
        },
        (Some(t), ValueKind::Float) => match t.parse::<f64>() {
            Ok(f) if f.is_finite() => query.bind(f),
            _ => query.bind(t),
        },
        (Some(t), ValueKind::Boolean) => match t.as_str() {
            "true" => query.bind(1i64),
            "false" => query.bind(0i64),
            _ => {
                return Err(Problem::Refused(format!(
                    "column {column:?}: {t:?} is not true or false"
                )))
            }
        },
        (Some(t), ValueKind::Bytes) => match hex_bytes(&t) {
            Some(b) => query.bind(b),
            None => {
                return Err(Problem::Refused(format!(
                    "column {column:?}: {t:?} is not \\x and hex digits"
                )))
            }
        },
        (Some(t), _) => query.bind(t),
    })
}

async fn load_sqlite(
    pool: &SqlitePool,
    target: &DatabaseTarget,
    job: &str,
    batch: &Batch,
) -> Result<Loaded, Problem> {
    let table_columns = sqlite_columns(pool, &target.table).await?;
    let plan = plan(target, batch, &table_columns, false, quote_double)?;
    let columns = plan.columns.join(", ");
    let mut tx = pool.begin().await.map_err(db_problem)?;
    if claim::<sqlx::Sqlite>(&mut tx, job, batch).await? {
        return Ok(Loaded::AlreadyImported);
    }
    if let Some((column, _)) = &plan.window {
        // Times compare as their canonical text does.
        let bound = |b: &str| {
            window_time(b).map_or_else(
                || b.to_owned(),
                |t| t.to_rfc3339_opts(SecondsFormat::Micros, true),
            )
        };
        sqlx::query(&format!(
            "DELETE FROM {} WHERE {column} >= ? AND {column} < ?",
            target.table
        ))
        .bind(bound(&batch.manifest.window.start))
        .bind(bound(&batch.manifest.window.end))
        .execute(&mut *tx)
        .await
        .map_err(db_problem)?;
    }
    let upsert = if target.conflict == Conflict::Upsert {
        let updates: Vec<String> = plan
            .columns
            .iter()
            .filter(|c| !plan.key.contains(c))
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let action = if updates.is_empty() {
            "NOTHING".to_owned()
        } else {
            format!("UPDATE SET {}", updates.join(", "))
        };
        format!(" ON CONFLICT ({}) DO {action}", plan.key.join(", "))
    } else {
        String::new()
    };
    // Many rows per statement (SQLite takes up to 32,766 parameters): one
    // statement per row made sqlx's per-statement cost most of the load.
    let width = plan.columns.len().max(1);
    let per_statement = (30_000 / width).clamp(1, 500);
    let tuple = format!("({})", vec!["?"; width].join(", "));
    let statement = |rows: usize| {
        format!(
            "INSERT INTO {} ({columns}) VALUES {}{upsert}",
            target.table,
            vec![tuple.as_str(); rows].join(", ")
        )
    };
    let full = statement(per_statement);
    let mut total = 0;
    for (entry, path) in &batch.files {
        let label = entry.name.clone();
        let mut rx = stream::rows(path.clone(), batch.manifest.clone(), 1000, label.clone());
        let mut n = 0u64;
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            let mut rows = chunk.into_iter().peekable();
            while rows.peek().is_some() {
                let group: Vec<_> = rows.by_ref().take(per_statement).collect();
                let partial;
                let sql = if group.len() == per_statement {
                    &full
                } else {
                    partial = statement(group.len());
                    &partial
                };
                let mut query = sqlx::query(sql);
                for row in group {
                    for ((cell, kind), column) in row
                        .into_iter()
                        .zip(&plan.kinds)
                        .zip(&batch.manifest.columns)
                    {
                        query = bind_sqlite(query, cell, *kind, &column.name)?;
                    }
                }
                query
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| in_file(db_problem(e), &label))?;
            }
        }
        if n != entry.rows {
            return Err(row_count_mismatch(&label, n, entry.rows));
        }
        total += n;
    }
    tx.commit().await.map_err(db_problem)?;
    Ok(Loaded::Imported(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_for_copy_keeps_null_apart_from_empty() {
        let rows = vec![vec![None, Some(String::new()), Some("a\"b,\nc".into())]];
        assert_eq!(csv_of(&rows), b",\"\",\"a\"\"b,\nc\"\n");
    }

    #[test]
    fn mariadb_values() {
        let v = |kind, text: &str| match mysql_value(kind, Some(text.into()), "c") {
            Ok(MyValue::Text(t)) => t,
            Ok(MyValue::Bytes(b)) => format!("bytes {b:?}"),
            Ok(MyValue::Null) => "null".into(),
            Err(_) => "refused".into(),
        };
        assert_eq!(
            v(ValueKind::Timestamp, "2026-12-07T02:00:00.123456Z"),
            "2026-12-07 02:00:00.123456"
        );
        assert_eq!(
            v(ValueKind::Timestamp, "2026-12-07T03:00:00+01:00"),
            "2026-12-07 02:00:00.000000"
        );
        assert_eq!(v(ValueKind::Boolean, "true"), "1");
        assert_eq!(v(ValueKind::Boolean, "false"), "0");
        assert_eq!(v(ValueKind::Bytes, "\\x00ff"), "bytes [0, 255]");
        assert_eq!(v(ValueKind::Bytes, "00ff"), "refused");
        assert_eq!(v(ValueKind::Timestamp, "yesterday"), "refused");
        assert_eq!(
            v(ValueKind::Integer, "123456789012345678901234567890"),
            "123456789012345678901234567890"
        );
    }
}
