//! MariaDB and SQLite: rows streamed from the driver, each value
//! converted to its canonical text.

use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use ferry_core::Failure;
use futures::TryStreamExt;
use sqlx::mysql::{MySqlPool, MySqlRow};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{Column as _, Connection, Executor, Row, Statement, TypeInfo, ValueRef};

use super::sql::{db_failure, param, translate, Dialect};
use super::{row_failure, Param, Parts, PartsSpec, Query, Written};
use crate::format::text;
use crate::format::{PartFile, RowWriter};
use crate::{Column, ValueKind};

/// Rows between two progress calls.
const PROGRESS_EVERY: u64 = 10_000;

/// The query with `?` for each placeholder, and the parameters in order.
fn positional(query: &Query, dialect: Dialect) -> Result<(String, Vec<&Param>), Failure> {
    let mut params = Vec::new();
    let sql = query.sql.trim_end().trim_end_matches(';');
    let sql = translate(sql, dialect, |name, out| {
        params.push(param(&query.params, name)?);
        out.push('?');
        Ok(())
    })?;
    Ok((sql, params))
}

fn decode_failure(column: &Column, e: sqlx::Error) -> Failure {
    db_failure(&format!("export query: column {:?}", column.name), e)
}

fn mysql_kind(name: &str) -> ValueKind {
    match name.trim_end_matches(" UNSIGNED") {
        "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" | "YEAR" => ValueKind::Integer,
        "BOOLEAN" => ValueKind::Boolean,
        "DECIMAL" => ValueKind::Decimal,
        "FLOAT" | "DOUBLE" => ValueKind::Float,
        "TIMESTAMP" => ValueKind::Timestamp,
        "DATETIME" => ValueKind::DateTime,
        "DATE" => ValueKind::Date,
        "TIME" => ValueKind::Time,
        "JSON" => ValueKind::Json,
        "BINARY" | "VARBINARY" | "BLOB" | "TINYBLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BIT"
        | "GEOMETRY" => ValueKind::Bytes,
        _ => ValueKind::Text,
    }
}

pub(super) async fn write_mysql(
    pool: &MySqlPool,
    query: &Query,
    spec: &PartsSpec,
    dir: &Path,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<Written, Failure> {
    let (sql, params) = positional(query, Dialect::Mysql)?;
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| db_failure("cannot connect to MariaDB", e))?;
    let result: Result<Written, Failure> = async {
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| db_failure("cannot start a transaction", e))?;
        let mut columns: Vec<Column> = {
            let statement = (&mut *tx)
                .prepare(sql.as_str())
                .await
                .map_err(|e| db_failure("export query", e))?;
            statement
                .columns()
                .iter()
                .map(|c| Column {
                    name: c.name().to_owned(),
                    db_type: c.type_info().name().to_owned(),
                    kind: mysql_kind(c.type_info().name()),
                })
                .collect()
        };
        let mut q = sqlx::query(&sql);
        for p in params {
            q = match p {
                Param::Null => q.bind(None::<i64>),
                Param::Int(v) => q.bind(*v),
                Param::Text(v) => q.bind(v.as_str()),
                Param::Time(v) => q.bind(*v),
            };
        }
        let mut parts = Parts::new(dir, spec, columns.clone());
        let mut text = String::new();
        {
            let mut rows = q.fetch(&mut *tx);
            let mut n = 0u64;
            while let Some(row) = rows
                .try_next()
                .await
                .map_err(|e| db_failure("export query", e))?
            {
                if n == 0 {
                    // A row's types can differ from the prepared
                    // statement's (a parameter's, say): the row's hold.
                    columns = row
                        .columns()
                        .iter()
                        .zip(&columns)
                        .map(|(c, prepared)| Column {
                            name: prepared.name.clone(),
                            db_type: c.type_info().name().to_owned(),
                            kind: mysql_kind(c.type_info().name()),
                        })
                        .collect();
                    parts = Parts::new(dir, spec, columns.clone());
                }
                let w = parts.row()?;
                for (i, c) in columns.iter().enumerate() {
                    mysql_cell(&row, i, c, &mut text, w)?;
                }
                w.end_row().map_err(|e| row_failure(e, dir))?;
                n += 1;
                if n.is_multiple_of(PROGRESS_EVERY) {
                    let (r, b) = parts.progress();
                    progress(r, b);
                }
            }
        }
        let written = parts.finish()?;
        tx.rollback()
            .await
            .map_err(|e| db_failure("cannot end the transaction", e))?;
        Ok(written)
    }
    .await;
    if result.is_err() {
        conn.close_on_drop();
    }
    let written = result?;
    progress(
        written.parts.iter().map(|p| p.rows).sum(),
        written.parts.iter().map(|p| p.bytes).sum(),
    );
    Ok(written)
}

fn mysql_cell(
    row: &MySqlRow,
    i: usize,
    column: &Column,
    out: &mut String,
    w: &mut RowWriter<PartFile>,
) -> Result<(), Failure> {
    let bad = |e| decode_failure(column, e);
    if row.try_get_raw(i).map_err(bad)?.is_null() {
        w.cell(None);
        return Ok(());
    }
    out.clear();
    match column.kind {
        ValueKind::Integer if column.db_type.ends_with("UNSIGNED") => {
            let _ = write!(out, "{}", row.try_get_unchecked::<u64, _>(i).map_err(bad)?);
        }
        ValueKind::Integer => {
            let _ = write!(out, "{}", row.try_get_unchecked::<i64, _>(i).map_err(bad)?);
        }
        ValueKind::Boolean => match row.try_get_unchecked::<i64, _>(i).map_err(bad)? {
            0 => out.push_str("false"),
            1 => out.push_str("true"),
            v => {
                let _ = write!(out, "{v}");
            }
        },
        ValueKind::Float if column.db_type == "FLOAT" => {
            text::float4(row.try_get::<f32, _>(i).map_err(bad)?, out)
        }
        ValueKind::Float => text::float8(row.try_get::<f64, _>(i).map_err(bad)?, out),
        ValueKind::Timestamp => {
            text::timestamp(&row.try_get::<DateTime<Utc>, _>(i).map_err(bad)?, out)
        }
        ValueKind::DateTime => {
            text::datetime(&row.try_get::<NaiveDateTime, _>(i).map_err(bad)?, out)
        }
        ValueKind::Date => text::date(&row.try_get::<NaiveDate, _>(i).map_err(bad)?, out),
        ValueKind::Time => text::time(&row.try_get::<NaiveTime, _>(i).map_err(bad)?, out),
        ValueKind::Bytes => text::bytes(row.try_get_unchecked::<&[u8], _>(i).map_err(bad)?, out),
        ValueKind::Decimal | ValueKind::Text | ValueKind::Json => {
            w.cell(Some(row.try_get_unchecked::<&str, _>(i).map_err(bad)?));
            return Ok(());
        }
    }
    w.cell(Some(out));
    Ok(())
}

/// A column's kind from its type as sqlx reads the declared type (INTEGER,
/// REAL, TEXT, BLOB affinities; BOOLEAN: Boolean; DATE, TIME and
/// DATETIME, stored as the text they were given: Text), or from a
/// value's storage class when sqlx knows no declared type.
fn sqlite_kind(name: &str) -> ValueKind {
    match name {
        "INTEGER" => ValueKind::Integer,
        "REAL" => ValueKind::Float,
        "NUMERIC" => ValueKind::Decimal,
        "BOOLEAN" => ValueKind::Boolean,
        "BLOB" => ValueKind::Bytes,
        _ => ValueKind::Text,
    }
}

pub(super) async fn write_sqlite(
    pool: &SqlitePool,
    query: &Query,
    spec: &PartsSpec,
    dir: &Path,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<Written, Failure> {
    let (sql, params) = positional(query, Dialect::Sqlite)?;
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| db_failure("cannot open SQLite", e))?;
    let mut columns: Vec<Column> = {
        let statement = (&mut *conn)
            .prepare(sql.as_str())
            .await
            .map_err(|e| db_failure("export query", e))?;
        statement
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name().to_owned(),
                db_type: c.type_info().name().to_owned(),
                kind: sqlite_kind(c.type_info().name()),
            })
            .collect()
    };
    let mut q = sqlx::query(&sql);
    for p in params {
        q = match p {
            Param::Null => q.bind(None::<i64>),
            Param::Int(v) => q.bind(*v),
            Param::Text(v) => q.bind(v.as_str()),
            Param::Time(v) => q.bind(sqlite_time(v)),
        };
    }
    let mut parts = Parts::new(dir, spec, columns.clone());
    let mut text = String::new();
    {
        // One statement reads one snapshot; no transaction needed.
        let mut rows = q.fetch(&mut *conn);
        let mut n = 0u64;
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| db_failure("export query", e))?
        {
            if n == 0 && columns.iter().any(|c| c.db_type == "NULL") {
                // No declared type sqlx knows (NUMERIC, DECIMAL, an
                // expression): the first row's storage class decides.
                for (i, c) in columns.iter_mut().enumerate() {
                    if c.db_type == "NULL" {
                        let raw = row.try_get_raw(i).map_err(|e| decode_failure(c, e))?;
                        if !raw.is_null() {
                            c.db_type = raw.type_info().name().to_owned();
                            c.kind = sqlite_kind(&c.db_type);
                        }
                    }
                }
                parts = Parts::new(dir, spec, columns.clone());
            }
            let w = parts.row()?;
            for (i, c) in columns.iter().enumerate() {
                sqlite_cell(&row, i, c, &mut text, w)?;
            }
            w.end_row().map_err(|e| row_failure(e, dir))?;
            n += 1;
            if n.is_multiple_of(PROGRESS_EVERY) {
                let (r, b) = parts.progress();
                progress(r, b);
            }
        }
    }
    let written = parts.finish()?;
    progress(
        written.parts.iter().map(|p| p.rows).sum(),
        written.parts.iter().map(|p| p.bytes).sum(),
    );
    Ok(written)
}

/// A value in its own storage class's text, whatever its column's
/// affinity: nothing is lost.
fn sqlite_cell(
    row: &SqliteRow,
    i: usize,
    column: &Column,
    out: &mut String,
    w: &mut RowWriter<PartFile>,
) -> Result<(), Failure> {
    let bad = |e| decode_failure(column, e);
    let raw = row.try_get_raw(i).map_err(bad)?;
    if raw.is_null() {
        w.cell(None);
        return Ok(());
    }
    let storage = raw.type_info().name().to_owned();
    out.clear();
    match storage.as_str() {
        "INTEGER" => {
            let v = row.try_get_unchecked::<i64, _>(i).map_err(bad)?;
            match (column.kind, v) {
                (ValueKind::Boolean, 0) => out.push_str("false"),
                (ValueKind::Boolean, 1) => out.push_str("true"),
                _ => {
                    let _ = write!(out, "{v}");
                }
            }
        }
        "REAL" => text::float8(row.try_get_unchecked::<f64, _>(i).map_err(bad)?, out),
        "BLOB" => text::bytes(row.try_get_unchecked::<&[u8], _>(i).map_err(bad)?, out),
        _ => {
            w.cell(Some(row.try_get_unchecked::<&str, _>(i).map_err(bad)?));
            return Ok(());
        }
    }
    w.cell(Some(out));
    Ok(())
}

/// A time as SQLite's own functions write it (`datetime()`,
/// `CURRENT_TIMESTAMP`): `YYYY-MM-DD HH:MM:SS`, in UTC, with a fraction only
/// when there is one. SQLite has no time type, so a window's bounds compare
/// with a column as text: in this layout they order correctly against
/// values written by those functions (and against any text of the same
/// layout, fractions included), where RFC 3339's `T` would sort after
/// every value of the same day.
fn sqlite_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.f").to_string()
}
