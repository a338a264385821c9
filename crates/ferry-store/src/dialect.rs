//! One SQL layer over the databases Ferry supports.
//!
//! [`Dialect`] is implemented for [`sqlx::Postgres`], [`sqlx::Sqlite`] and
//! [`sqlx::MySql`] and holds only what really differs between them: how a
//! parameter is written (`$1` or `?`), the current time, how UUIDs and
//! times are bound and read back, how text columns are read, upserts, and
//! the outbox's notification. Queries that are the same on every database
//! are written once, generic over the dialect, with their SQL built once
//! per dialect ([`PerDialect`]) so that sqlx's statement cache sees one
//! string per query. [`with_pool!`] turns a [`Database`] into its pool and
//! runs such a query: the one place that matches on the database's kind.
//!
//! What is written per database is what genuinely differs: claiming from
//! the outbox (`FOR UPDATE SKIP LOCKED`, or none on SQLite), LISTEN/NOTIFY,
//! the event store's commit-order mechanism (its `append` and
//! `save_offset`), and migrations.
//!
//! # Adding a database
//!
//! One `Dialect` impl, a [`Database`] variant and a [`DatabaseKind`], its
//! migrations, and the few statements above (an outbox with its claim, the
//! event store's append and offset upsert, the inbox's record); everything
//! else (dead letters, task failures, reading the event store, the
//! operator's commands) then works unchanged.

use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::error::BoxDynError;
use sqlx::{Arguments, ColumnIndex, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};
use uuid::Uuid;

use crate::{text_columns, Database, DatabaseKind};

/// What differs between the SQL of the databases Ferry supports; see the
/// [module docs](self).
///
/// Its supertrait bounds say which Rust values every dialect binds and
/// reads ([`Bind`], [`Read`]), so that generic code needs no bounds of its
/// own beyond `DB: Dialect`.
pub trait Dialect:
    for<'q> sqlx::Database<
    Connection: Exec<Self>,
    Row: ReadFirst<i64>
             + ReadFirst<Option<i64>>
             + Read<i64>
             + Read<Option<i64>>
             + Read<i32>
             + Read<String>
             + Read<Option<String>>
             + Read<Option<f64>>
             + Read<Vec<u8>>,
    Arguments<'q>: IntoArguments<'q, Self>
                       + Bind<'q, i64>
                       + Bind<'q, i32>
                       + Bind<'q, &'q str>
                       + Bind<'q, Option<&'q str>>
                       + Bind<'q, String>
                       + Bind<'q, Option<String>>
                       + Bind<'q, &'q [u8]>,
>
{
    /// Which database this is.
    const KIND: DatabaseKind;

    /// Whether parameters are numbered (`$1`, `$2`, …) rather than `?`.
    /// Shared SQL is written with numbered parameters, in the order they
    /// appear, and [`sql`] rewrites them.
    const NUMBERED_PARAMS: bool;

    /// The current time, as the database writes it into a time column.
    const NOW: &'static str;

    /// Notifies relays that the outbox has messages (PostgreSQL's
    /// `pg_notify`; none elsewhere: relays poll).
    const NOTIFY_OUTBOX: Option<&'static str>;

    /// Counts the tables named `$1` in the connection's schema.
    const TABLE_EXISTS: &'static str;

    /// Whether `DELETE … RETURNING` returns the selected columns under
    /// their aliases (MariaDB drops them, which the casts of [`text`]
    /// need).
    ///
    /// [`text`]: Dialect::text
    const DELETE_RETURNING: bool;

    /// How a UUID is bound.
    type Id: for<'q> Encode<'q, Self> + Type<Self> + Send + 'static;
    /// How a time is bound.
    type Time: for<'q> Encode<'q, Self> + Type<Self> + Send + 'static;

    /// `id` to bind.
    fn id(id: Uuid) -> Self::Id;

    /// `t` to bind.
    fn time(t: DateTime<Utc>) -> Self::Time;

    /// `t` to bind where it is kept to the microsecond (the outbox's
    /// `created_at`).
    fn precise_time(t: DateTime<Utc>) -> Self::Time {
        Self::time(t)
    }

    /// The UUID in `column` (selected through [`text`](Dialect::text)).
    fn read_uuid(row: &Self::Row, column: &str) -> Result<Uuid, sqlx::Error>;

    /// The time in `column`.
    fn read_time(row: &Self::Row, column: &str) -> Result<DateTime<Utc>, sqlx::Error>;

    /// The time in `column`, which may be NULL.
    fn read_opt_time(row: &Self::Row, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error>;

    /// A text column compared and ordered byte by byte (PostgreSQL's
    /// default collation may not be; SQLite's and Ferry's MariaDB tables'
    /// are), so that an order the database makes is the order Rust makes.
    fn binary(expr: &str) -> String {
        expr.to_owned()
    }

    /// A text or UUID column as an expression sqlx decodes as a string
    /// (MariaDB flags binary-collated and `UUID` columns as binary).
    fn text(expr: &str) -> String {
        expr.to_owned()
    }

    /// Any value shown as text, as an operator reads it.
    fn cast_text(expr: &str) -> String;

    /// The payload column(s) of the outbox or the event store (aliased
    /// `alias`) as selected for [`read_payload`](Dialect::read_payload).
    fn payload(alias: &str) -> String {
        format!("{alias}.payload")
    }

    /// The payload selected by [`payload`](Dialect::payload).
    fn read_payload(row: &Self::Row) -> Result<Vec<u8>, sqlx::Error> {
        row.read("payload")
    }

    /// An integer expression as a `BIGINT` (an `i64`).
    fn cast_bigint(expr: &str) -> String {
        expr.to_owned()
    }

    /// A stored UUID column as compared with a bound [`Dialect::id`].
    fn stored_id(column: &str) -> String {
        column.to_owned()
    }

    /// The value the insert proposed for `column`, in [`on_conflict`].
    ///
    /// [`on_conflict`]: Dialect::on_conflict
    fn excluded(column: &str) -> String {
        format!("EXCLUDED.{column}")
    }

    /// The upsert clause: on a conflict on `key`, apply `assignments`.
    fn on_conflict(key: &str, assignments: &str) -> String {
        format!("ON CONFLICT ({key}) DO UPDATE SET {assignments}")
    }

    /// The clause that makes an insert conflicting on `key` change nothing.
    fn on_conflict_do_nothing(key: &str) -> String {
        format!("ON CONFLICT ({key}) DO NOTHING")
    }

    /// The seconds from the time `expr` until now, as a double.
    fn seconds_since(expr: &str) -> String;

    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// `pool` as a [`Database`].
    fn database(pool: &Pool<Self>) -> Database;
}

impl Dialect for sqlx::Postgres {
    const KIND: DatabaseKind = DatabaseKind::Postgres;
    const NUMBERED_PARAMS: bool = true;
    const NOW: &'static str = "now()";
    const NOTIFY_OUTBOX: Option<&'static str> = Some("SELECT pg_notify('ferry_outbox', '')");
    const DELETE_RETURNING: bool = true;
    const TABLE_EXISTS: &'static str = "SELECT COUNT(*) FROM information_schema.tables
         WHERE table_name = $1 AND table_schema = current_schema()";
    type Id = Uuid;
    type Time = DateTime<Utc>;

    fn id(id: Uuid) -> Uuid {
        id
    }

    fn time(t: DateTime<Utc>) -> DateTime<Utc> {
        t
    }

    fn read_uuid(row: &Self::Row, column: &str) -> Result<Uuid, sqlx::Error> {
        row.try_get(column)
    }

    fn read_time(row: &Self::Row, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        row.try_get(column)
    }

    fn read_opt_time(row: &Self::Row, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        row.try_get(column)
    }

    fn binary(expr: &str) -> String {
        format!("{expr} COLLATE \"C\"")
    }

    fn cast_text(expr: &str) -> String {
        format!("{expr}::text")
    }

    /// Text without NUL bytes in `payload` (PostgreSQL text cannot hold a
    /// NUL), anything else in `payload_bytes`.
    fn payload(alias: &str) -> String {
        format!("{alias}.payload, {alias}.payload_bytes")
    }

    fn read_payload(row: &Self::Row) -> Result<Vec<u8>, sqlx::Error> {
        let text: Option<String> = row.try_get("payload")?;
        let bytes: Option<Vec<u8>> = row.try_get("payload_bytes")?;
        // The tables' checks keep exactly one of the two.
        Ok(text.map(String::into_bytes).or(bytes).unwrap_or_default())
    }

    fn cast_bigint(expr: &str) -> String {
        format!("{expr}::bigint")
    }

    fn seconds_since(expr: &str) -> String {
        format!("EXTRACT(EPOCH FROM (now() - {expr}))::float8")
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    fn database(pool: &Pool<Self>) -> Database {
        Database::Postgres(pool.clone())
    }
}

/// SQLite keeps UUIDs and times as text (times as RFC 3339 with
/// milliseconds, which sorts as the time does).
impl Dialect for sqlx::Sqlite {
    const KIND: DatabaseKind = DatabaseKind::Sqlite;
    const NUMBERED_PARAMS: bool = false;
    const NOW: &'static str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
    const NOTIFY_OUTBOX: Option<&'static str> = None;
    const DELETE_RETURNING: bool = true;
    const TABLE_EXISTS: &'static str =
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?";
    type Id = String;
    type Time = String;

    fn id(id: Uuid) -> String {
        id.to_string()
    }

    fn time(t: DateTime<Utc>) -> String {
        format_time(t)
    }

    fn precise_time(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    fn read_uuid(row: &Self::Row, column: &str) -> Result<Uuid, sqlx::Error> {
        text_columns::uuid(column, row.try_get(column)?)
    }

    fn read_time(row: &Self::Row, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        text_columns::time(column, row.try_get(column)?)
    }

    fn read_opt_time(row: &Self::Row, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let text: Option<&str> = row.try_get(column)?;
        text.map(|s| text_columns::time(column, s)).transpose()
    }

    fn cast_text(expr: &str) -> String {
        expr.to_owned()
    }

    fn payload(alias: &str) -> String {
        format!("CAST({alias}.payload AS BLOB) AS payload")
    }

    /// A plain-SQL producer may write a UUID in capitals.
    fn stored_id(column: &str) -> String {
        format!("lower({column})")
    }

    fn seconds_since(expr: &str) -> String {
        format!("(julianday('now') - julianday({expr})) * 86400.0")
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    fn database(pool: &Pool<Self>) -> Database {
        Database::Sqlite(pool.clone())
    }
}

/// MariaDB: UUIDs bound as text, text read through `CAST(… AS CHAR)`,
/// `ON DUPLICATE KEY UPDATE` for upserts.
impl Dialect for sqlx::MySql {
    const KIND: DatabaseKind = DatabaseKind::Mysql;
    const NUMBERED_PARAMS: bool = false;
    const NOW: &'static str = "NOW(6)";
    const NOTIFY_OUTBOX: Option<&'static str> = None;
    const DELETE_RETURNING: bool = false;
    const TABLE_EXISTS: &'static str = "SELECT COUNT(*) FROM information_schema.tables
         WHERE table_name = ? AND table_schema = DATABASE()";
    type Id = String;
    type Time = DateTime<Utc>;

    fn id(id: Uuid) -> String {
        id.to_string()
    }

    fn time(t: DateTime<Utc>) -> DateTime<Utc> {
        t
    }

    fn read_uuid(row: &Self::Row, column: &str) -> Result<Uuid, sqlx::Error> {
        text_columns::uuid(column, row.try_get(column)?)
    }

    fn read_time(row: &Self::Row, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        row.try_get(column)
    }

    fn read_opt_time(row: &Self::Row, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        row.try_get(column)
    }

    fn text(expr: &str) -> String {
        format!("CAST({expr} AS CHAR)")
    }

    fn cast_text(expr: &str) -> String {
        format!("CAST({expr} AS CHAR)")
    }

    fn cast_bigint(expr: &str) -> String {
        format!("CAST({expr} AS SIGNED)")
    }

    fn excluded(column: &str) -> String {
        format!("VALUES({column})")
    }

    fn on_conflict(_key: &str, assignments: &str) -> String {
        format!("ON DUPLICATE KEY UPDATE {assignments}")
    }

    fn on_conflict_do_nothing(key: &str) -> String {
        format!("ON DUPLICATE KEY UPDATE {key} = {key}")
    }

    fn seconds_since(expr: &str) -> String {
        format!("TIMESTAMPDIFF(MICROSECOND, {expr}, NOW(6)) / 1e6")
    }

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    fn database(pool: &Pool<Self>) -> Database {
        Database::Mysql(pool.clone())
    }
}

/// Formats a time the way the SQLite schema stores it.
pub(crate) fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Runs `$body` with `$pool` bound to the pool of the [`Database`] `$db`,
/// whatever its kind: the body is usually a call of a function generic
/// over [`Dialect`].
macro_rules! with_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::Database::Postgres($pool) => $body,
            $crate::Database::Sqlite($pool) => $body,
            $crate::Database::Mysql($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

/// A text column `expr` selected as `alias`, read as a string.
pub(crate) fn select_text<DB: Dialect>(expr: &str, alias: &str) -> String {
    let text = DB::text(expr);
    if text == alias {
        text
    } else {
        format!("{text} AS {alias}")
    }
}

/// `rows` rows of `columns` parameters each, `(?, ?), (?, ?)` or
/// `($1, $2), ($3, $4)`, for a multi-row `INSERT … VALUES`.
pub(crate) fn values<DB: Dialect>(rows: usize, columns: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        out.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                out.push_str(", ");
            }
            if DB::NUMBERED_PARAMS {
                out.push_str(&format!("${}", row * columns + column + 1));
            } else {
                out.push('?');
            }
        }
        out.push(')');
    }
    out
}

/// SQL written with numbered parameters (`$1`, `$2`, … in the order they
/// appear, each once) in the dialect's own style.
pub(crate) fn sql<DB: Dialect>(numbered: &str) -> String {
    if DB::NUMBERED_PARAMS {
        return numbered.to_owned();
    }
    let mut out = String::with_capacity(numbered.len());
    let mut chars = numbered.chars().peekable();
    let mut expected = 1;
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut n = 0;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = n * 10 + d;
                chars.next();
            }
            debug_assert_eq!(n, expected, "parameters in order, each once: {numbered}");
            expected += 1;
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// A value per dialect, made on first use: the SQL of a query, built once.
pub(crate) struct PerDialect<T>([OnceLock<T>; 3]);

impl<T> PerDialect<T> {
    pub(crate) const fn new() -> Self {
        Self([const { OnceLock::new() }; 3])
    }

    pub(crate) fn get<DB: Dialect>(&self, make: impl FnOnce() -> T) -> &T {
        let slot = match DB::KIND {
            DatabaseKind::Postgres => 0,
            DatabaseKind::Sqlite => 1,
            DatabaseKind::Mysql => 2,
        };
        self.0[slot].get_or_init(make)
    }
}

/// A connection that sqlx can run statements on.
pub trait Exec<DB: sqlx::Database>: Send {
    /// The connection as an executor.
    fn executor(&mut self) -> impl Executor<'_, Database = DB>;
}

impl<DB: sqlx::Database, C: Send> Exec<DB> for C
where
    for<'c> &'c mut C: Executor<'c, Database = DB>,
{
    fn executor(&mut self) -> impl Executor<'_, Database = DB> {
        self
    }
}

/// Arguments that take a `T`.
pub trait Bind<'q, T> {
    /// Appends `value`.
    fn bind_value(&mut self, value: T) -> Result<(), BoxDynError>;
}

impl<'q, A, T> Bind<'q, T> for A
where
    A: Arguments<'q>,
    T: 'q + Encode<'q, A::Database> + Type<A::Database>,
{
    fn bind_value(&mut self, value: T) -> Result<(), BoxDynError> {
        self.add(value)
    }
}

/// A row that yields a `T`.
pub trait Read<T> {
    /// The value of `column`.
    fn read(&self, column: &str) -> Result<T, sqlx::Error>;
}

impl<R, T> Read<T> for R
where
    R: Row,
    T: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    for<'c> &'c str: ColumnIndex<R>,
{
    fn read(&self, column: &str) -> Result<T, sqlx::Error> {
        self.try_get(column)
    }
}

/// A row whose first column yields a `T` (MariaDB names the columns of
/// `INSERT … RETURNING` after their expressions, not their names).
pub trait ReadFirst<T> {
    /// The value of the first column.
    fn read_first(&self) -> Result<T, sqlx::Error>;
}

impl<R, T> ReadFirst<T> for R
where
    R: Row,
    T: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    usize: ColumnIndex<R>,
{
    fn read_first(&self) -> Result<T, sqlx::Error> {
        self.try_get(0)
    }
}

/// A statement with its arguments, for any dialect.
pub(crate) struct Stmt<'q, DB: Dialect> {
    sql: &'q str,
    args: DB::Arguments<'q>,
    error: Option<BoxDynError>,
}

impl<'q, DB: Dialect> Stmt<'q, DB> {
    pub(crate) fn new(sql: &'q str) -> Self {
        Self {
            sql,
            args: Default::default(),
            error: None,
        }
    }

    /// Binds the next parameter.
    pub(crate) fn bind<T>(mut self, value: T) -> Self
    where
        DB::Arguments<'q>: Bind<'q, T>,
    {
        if let Err(e) = self.args.bind_value(value) {
            self.error.get_or_insert(e);
        }
        self
    }

    fn query(self) -> Result<sqlx::query::Query<'q, DB, DB::Arguments<'q>>, sqlx::Error> {
        match self.error {
            Some(e) => Err(sqlx::Error::Encode(e)),
            None => Ok(sqlx::query_with(self.sql, self.args)),
        }
    }

    /// Runs it; returns how many rows it changed.
    pub(crate) async fn execute(self, conn: &mut DB::Connection) -> Result<u64, sqlx::Error> {
        Ok(DB::rows_affected(&self.execute_result(conn).await?))
    }

    /// Runs it; returns what the database said of it.
    pub(crate) async fn execute_result(
        self,
        conn: &mut DB::Connection,
    ) -> Result<DB::QueryResult, sqlx::Error> {
        self.query()?.execute(conn.executor()).await
    }

    pub(crate) async fn fetch_all(
        self,
        conn: &mut DB::Connection,
    ) -> Result<Vec<DB::Row>, sqlx::Error> {
        self.query()?.fetch_all(conn.executor()).await
    }

    pub(crate) async fn fetch_optional(
        self,
        conn: &mut DB::Connection,
    ) -> Result<Option<DB::Row>, sqlx::Error> {
        self.query()?.fetch_optional(conn.executor()).await
    }

    pub(crate) async fn fetch_one(self, conn: &mut DB::Connection) -> Result<DB::Row, sqlx::Error> {
        self.query()?.fetch_one(conn.executor()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_question_marks() {
        let numbered = "SELECT a FROM t WHERE b = $1 AND c = COALESCE($2, c) LIMIT $3";
        assert_eq!(sql::<sqlx::Postgres>(numbered), numbered);
        assert_eq!(
            sql::<sqlx::MySql>(numbered),
            "SELECT a FROM t WHERE b = ? AND c = COALESCE(?, c) LIMIT ?"
        );
        assert_eq!(values::<sqlx::MySql>(2, 2), "(?, ?), (?, ?)");
        assert_eq!(values::<sqlx::Postgres>(2, 2), "($1, $2), ($3, $4)");
        assert_eq!(
            sql::<sqlx::Sqlite>("strftime('%Y', 'now') = $1"),
            "strftime('%Y', 'now') = ?"
        );
    }
}
