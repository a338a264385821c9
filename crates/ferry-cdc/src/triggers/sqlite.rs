//! Trigger mode on SQLite: the only capture mode there, and the embedded
//! default. One writer at a time, so change ids are in commit order.

use std::collections::HashMap;

use sqlx::{Row, SqlitePool};

use super::{change_rows, is_trigger_of, literal, quote, trigger_name, TableInfo};
use crate::change::TableId;

const CHANGE_TABLE: &str = "CREATE TABLE IF NOT EXISTS ferry_cdc_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    capture TEXT NOT NULL,
    schema_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    op TEXT NOT NULL,
    tx_id TEXT,
    old_row TEXT,
    new_row TEXT,
    changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)";

const CHANGE_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS ferry_cdc_changes_capture ON ferry_cdc_changes (capture, id)";

/// SQLite's functions take at most 127 arguments: a row is built from
/// objects of this many columns, merged.
const COLUMNS_PER_OBJECT: usize = 60;

pub(crate) async fn tables(pool: &SqlitePool) -> Result<Vec<TableInfo>, sqlx::Error> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let rows = sqlx::query(&format!("PRAGMA table_info({})", quote('"', &name)))
            .fetch_all(pool)
            .await?;
        let mut columns = Vec::with_capacity(rows.len());
        let mut key: Vec<(i64, String)> = Vec::new();
        for r in rows {
            let column: String = r.try_get("name")?;
            let ty: String = r.try_get("type")?;
            let pk: i64 = r.try_get("pk")?;
            if pk > 0 {
                key.push((pk, column.clone()));
            }
            columns.push((column, ty.to_ascii_lowercase()));
        }
        key.sort();
        out.push(TableInfo {
            id: TableId::new("main", name),
            columns,
            key: key.into_iter().map(|(_, c)| c).collect(),
        });
    }
    Ok(out)
}

/// `json_object(…)` of `row`'s (`NEW` or `OLD`) columns; a BLOB as hex.
pub(crate) fn row_json(row: &str, columns: &[(String, String)]) -> String {
    let objects: Vec<String> = columns
        .chunks(COLUMNS_PER_OBJECT)
        .map(|chunk| {
            let args: Vec<String> = chunk
                .iter()
                .map(|(c, _)| {
                    let v = format!("{row}.{}", quote('"', c));
                    format!("{}, iif(typeof({v}) = 'blob', hex({v}), {v})", literal(c))
                })
                .collect();
            format!("json_object({})", args.join(", "))
        })
        .collect();
    objects
        .into_iter()
        .reduce(|a, b| format!("json_patch({a}, {b})"))
        .unwrap_or_else(|| "json_object()".to_owned())
}

/// The three triggers of `table`, as `(name, CREATE TRIGGER …)`.
fn triggers(capture: &str, table: &TableInfo) -> Vec<(String, String)> {
    let target = quote('"', &table.id.name);
    let record = |op: &str, old: &str, new: &str| {
        format!(
            "INSERT INTO ferry_cdc_changes (capture, schema_name, table_name, op, old_row, new_row) \
             VALUES ({}, 'main', {}, '{op}', {old}, {new});",
            literal(capture),
            literal(&table.id.name)
        )
    };
    let old = row_json("OLD", &table.columns);
    let new = row_json("NEW", &table.columns);
    [
        ("i", "INSERT", record("c", "NULL", &new)),
        ("u", "UPDATE", record("u", &old, &new)),
        ("d", "DELETE", record("d", &old, "NULL")),
    ]
    .into_iter()
    .map(|(short, event, body)| {
        let name = trigger_name(capture, &table.id, short);
        let sql = format!(
            "CREATE TRIGGER {} AFTER {event} ON {target} BEGIN {body} END",
            quote('"', &name)
        );
        (name, sql)
    })
    .collect()
}

/// Creates the change table and brings the triggers of `wanted` up to
/// date (a table whose triggers are new also gets its rows copied as
/// reads, when `snapshot`), dropping this capture's triggers on tables no
/// longer wanted. One transaction. Returns the schema version after.
pub(super) async fn install(
    pool: &SqlitePool,
    capture: &str,
    wanted: &[TableInfo],
    _known: &HashMap<TableId, TableInfo>,
    snapshot: bool,
) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(CHANGE_TABLE).execute(&mut *tx).await?;
    sqlx::query(CHANGE_INDEX).execute(&mut *tx).await?;
    let existing: HashMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'",
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .filter(|(n, _)| is_trigger_of(n, capture))
    .collect();
    let mut keep: Vec<String> = Vec::new();
    for table in wanted {
        let wanted_triggers = triggers(capture, table);
        let new_table = wanted_triggers
            .iter()
            .all(|(name, _)| !existing.contains_key(name));
        for (name, sql) in &wanted_triggers {
            keep.push(name.clone());
            if existing.get(name) == Some(sql) {
                continue;
            }
            if existing.contains_key(name) {
                sqlx::query(&format!("DROP TRIGGER {}", quote('"', name)))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(sql).execute(&mut *tx).await?;
        }
        if new_table && snapshot {
            sqlx::query(&copy_sql(capture, table))
                .execute(&mut *tx)
                .await?;
        }
    }
    for name in existing.keys().filter(|n| !keep.contains(n)) {
        sqlx::query(&format!("DROP TRIGGER {}", quote('"', name)))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    schema_version(pool).await
}

/// The statement copying `table`'s rows as `r` changes, in key order.
fn copy_sql(capture: &str, table: &TableInfo) -> String {
    format!(
        "INSERT INTO ferry_cdc_changes (capture, schema_name, table_name, op, new_row) \
         SELECT {}, 'main', {}, 'r', {} FROM {} AS ferry_row ORDER BY {}",
        literal(capture),
        literal(&table.id.name),
        row_json("ferry_row", &table.columns),
        quote('"', &table.id.name),
        table
            .key
            .iter()
            .map(|k| quote('"', k))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Copies `table`'s rows as `r` changes in one statement (SQLite has one
/// writer: they take their place in commit order).
pub(super) async fn backfill(
    pool: &SqlitePool,
    capture: &str,
    table: &TableInfo,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(&copy_sql(capture, table))
        .execute(pool)
        .await?
        .rows_affected())
}

/// The tables capture `capture` has triggers on.
pub(super) async fn installed(
    pool: &SqlitePool,
    capture: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'")
            .fetch_all(pool)
            .await?;
    let mut tables: Vec<String> = rows
        .into_iter()
        .filter(|(n, _)| is_trigger_of(n, capture))
        .map(|(_, t)| t)
        .collect();
    tables.dedup();
    Ok(tables)
}

pub(super) async fn schema_version(pool: &SqlitePool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("PRAGMA schema_version")
        .fetch_one(pool)
        .await
}

pub(super) async fn fetch(
    pool: &SqlitePool,
    capture: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<super::ChangeRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, schema_name, table_name, op, tx_id, old_row, new_row, changed_at
         FROM ferry_cdc_changes WHERE capture = ? AND id > ? ORDER BY id LIMIT ?",
    )
    .bind(capture)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    change_rows!(rows)
}

pub(super) async fn prune(pool: &SqlitePool, capture: &str, upto: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM ferry_cdc_changes WHERE capture = ? AND id <= ?")
        .bind(capture)
        .bind(upto)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn backlog(
    pool: &SqlitePool,
    capture: &str,
) -> Result<(i64, Option<f64>), sqlx::Error> {
    if !change_table_exists(pool).await? {
        return Ok((0, None));
    }
    let row = sqlx::query(
        "SELECT COUNT(*) AS n,
                (julianday('now') - julianday(MIN(changed_at))) * 86400.0 AS age
         FROM ferry_cdc_changes WHERE capture = ?",
    )
    .bind(capture)
    .fetch_one(pool)
    .await?;
    Ok((row.try_get("n")?, row.try_get("age")?))
}

async fn change_table_exists(pool: &SqlitePool) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'ferry_cdc_changes'",
    )
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

pub(super) async fn uninstall(pool: &SqlitePool, capture: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            .fetch_all(&mut *tx)
            .await?;
    for name in names.iter().filter(|n| is_trigger_of(n, capture)) {
        sqlx::query(&format!("DROP TRIGGER {}", quote('"', name)))
            .execute(&mut *tx)
            .await?;
    }
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'ferry_cdc_changes'",
    )
    .fetch_one(&mut *tx)
    .await?;
    if exists > 0 {
        sqlx::query("DELETE FROM ferry_cdc_changes WHERE capture = ?")
            .bind(capture)
            .execute(&mut *tx)
            .await?;
        // Another capture's triggers still write into it.
        let others = names
            .iter()
            .any(|n| n.starts_with("ferry_cdc_") && !is_trigger_of(n, capture));
        if !others {
            sqlx::query("DROP TABLE ferry_cdc_changes")
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await
}
