//! The statements apply runs, written once over [`Target`]: the upsert,
//! the delete by key, the truncate, and the target's record of the
//! position it has applied up to.

use ferry_store::dialect::{Bind, Exec, Read};
use serde_json::Value;
use sqlx::{Pool, Transaction};

use super::target::{param, Target};
use crate::triggers::quote;

/// The table in the target that holds, per capture, the checkpoint of the
/// last source transaction applied.
pub const APPLIED_TABLE: &str = "ferry_cdc_applied";

/// A value for a target column: the column's name and type, and the
/// value.
pub(crate) struct Cell<'a> {
    pub name: &'a str,
    pub ty: &'a str,
    pub value: &'a Value,
}

/// Creates `ferry_cdc_applied` when it does not exist.
pub(crate) async fn create_applied<DB: Target>(pool: &Pool<DB>) -> Result<(), sqlx::Error> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {APPLIED_TABLE} (
            capture VARCHAR(255) NOT NULL PRIMARY KEY,
            checkpoint TEXT NOT NULL,
            applied_at {} NOT NULL
        )",
        DB::TIME
    );
    let mut conn = pool.acquire().await?;
    sqlx::query(&sql).execute((*conn).executor()).await?;
    Ok(())
}

/// The checkpoint text the target holds for `capture`.
pub(crate) async fn load_applied<DB: Target>(
    pool: &Pool<DB>,
    capture: &str,
) -> Result<Option<String>, sqlx::Error> {
    let sql = format!(
        "SELECT {} AS checkpoint FROM {APPLIED_TABLE} WHERE capture = {}",
        DB::text("checkpoint"),
        param::<DB>(1)
    );
    let mut args = DB::Arguments::default();
    args.bind_value(capture.to_owned())
        .map_err(sqlx::Error::Encode)?;
    let mut conn = pool.acquire().await?;
    let row = sqlx::query_with(&sql, args)
        .fetch_optional((*conn).executor())
        .await?;
    row.map(|r| r.read("checkpoint")).transpose()
}

/// Records `checkpoint` as `capture`'s, in the open transaction.
pub(crate) async fn save_applied<DB: Target>(
    tx: &mut Transaction<'static, DB>,
    capture: &str,
    checkpoint: &str,
) -> Result<(), sqlx::Error> {
    let upsert = DB::on_conflict(
        "capture",
        &format!(
            "checkpoint = {}, applied_at = {}",
            DB::excluded("checkpoint"),
            DB::excluded("applied_at")
        ),
    );
    let sql = format!(
        "INSERT INTO {APPLIED_TABLE} (capture, checkpoint, applied_at) VALUES ({}, {}, {}) {upsert}",
        param::<DB>(1),
        param::<DB>(2),
        DB::NOW
    );
    let mut args = DB::Arguments::default();
    args.bind_value(capture.to_owned())
        .map_err(sqlx::Error::Encode)?;
    args.bind_value(checkpoint.to_owned())
        .map_err(sqlx::Error::Encode)?;
    let conn: &mut DB::Connection = tx;
    sqlx::query_with(&sql, args)
        .execute(conn.executor())
        .await?;
    Ok(())
}

/// Inserts the row `cells` into `table` (quoted), or updates the row of
/// the same `key` (the table's primary key).
pub(crate) async fn upsert<DB: Target>(
    tx: &mut Transaction<'static, DB>,
    table: &str,
    key: &[String],
    cells: &[Cell<'_>],
) -> Result<(), sqlx::Error> {
    let q = |c: &str| quote(DB::QUOTE, c);
    let placeholders: Vec<String> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| DB::placeholder(i + 1, c.ty))
        .collect();
    // Every column but the key's is set on a conflict; a table of key
    // columns alone sets them to themselves, so that the row is still
    // written (and its triggers fire) as a change of it.
    let mut assignments: Vec<String> = cells
        .iter()
        .filter(|c| !key.iter().any(|k| k == c.name))
        .map(|c| format!("{} = {}", q(c.name), DB::excluded(&q(c.name))))
        .collect();
    if assignments.is_empty() {
        assignments = key
            .iter()
            .map(|k| format!("{} = {}", q(k), DB::excluded(&q(k))))
            .collect();
    }
    let columns: Vec<String> = cells.iter().map(|c| q(c.name)).collect();
    let key: Vec<String> = key.iter().map(|k| q(k)).collect();
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES ({}) {}",
        columns.join(", "),
        placeholders.join(", "),
        DB::on_conflict(&key.join(", "), &assignments.join(", "))
    );
    let args = bind_all::<DB>(cells)?;
    let conn: &mut DB::Connection = tx;
    sqlx::query_with(&sql, args)
        .execute(conn.executor())
        .await?;
    Ok(())
}

/// Deletes the row of `table` (quoted) whose key is `key`.
pub(crate) async fn delete<DB: Target>(
    tx: &mut Transaction<'static, DB>,
    table: &str,
    key: &[Cell<'_>],
) -> Result<(), sqlx::Error> {
    let conditions: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "{} = {}",
                quote(DB::QUOTE, c.name),
                DB::placeholder(i + 1, c.ty)
            )
        })
        .collect();
    let sql = format!("DELETE FROM {table} WHERE {}", conditions.join(" AND "));
    let args = bind_all::<DB>(key)?;
    let conn: &mut DB::Connection = tx;
    sqlx::query_with(&sql, args)
        .execute(conn.executor())
        .await?;
    Ok(())
}

/// Removes every row of `table` (quoted).
pub(crate) async fn truncate<DB: Target>(
    tx: &mut Transaction<'static, DB>,
    table: &str,
) -> Result<(), sqlx::Error> {
    let conn: &mut DB::Connection = tx;
    sqlx::query(&DB::truncate(table))
        .execute(conn.executor())
        .await?;
    Ok(())
}

/// The values of `cells`, in order, bound as their columns' types take
/// them.
fn bind_all<'q, DB: Target>(cells: &[Cell<'_>]) -> Result<DB::Arguments<'q>, sqlx::Error> {
    let mut args = DB::Arguments::default();
    for c in cells {
        DB::bind(&mut args, c.value, c.ty).map_err(sqlx::Error::Encode)?;
    }
    Ok(args)
}
