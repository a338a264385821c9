//! Trigger mode on MariaDB: triggers that name their columns
//! (`JSON_OBJECT`), ids from a one-row counter whose row lock orders them
//! by commit.

use std::collections::HashMap;

use sqlx::{Executor, MySqlPool, Row};

use super::{change_rows, is_trigger_of, literal, quote, trigger_name, TableInfo};
use crate::change::TableId;

const CHANGE_TABLE: &str = "CREATE TABLE IF NOT EXISTS ferry_cdc_changes (
    id BIGINT NOT NULL PRIMARY KEY,
    capture VARCHAR(64) NOT NULL,
    schema_name VARCHAR(64) NOT NULL,
    table_name VARCHAR(64) NOT NULL,
    op CHAR(1) NOT NULL,
    tx_id VARCHAR(64),
    old_row LONGTEXT,
    new_row LONGTEXT,
    changed_at DATETIME(6) NOT NULL DEFAULT UTC_TIMESTAMP(6),
    KEY ferry_cdc_changes_capture (capture, id)
) ENGINE = InnoDB";

const SEQUENCE_TABLE: &str = "CREATE TABLE IF NOT EXISTS ferry_cdc_sequence (
    one TINYINT NOT NULL PRIMARY KEY,
    last BIGINT NOT NULL
) ENGINE = InnoDB";

pub(crate) async fn tables(pool: &MySqlPool) -> Result<Vec<TableInfo>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT CAST(c.TABLE_NAME AS CHAR) AS t, CAST(c.COLUMN_NAME AS CHAR) AS c,
                CAST(c.DATA_TYPE AS CHAR) AS ty,
                CAST(COALESCE(k.ORDINAL_POSITION, 0) AS SIGNED) AS pk
         FROM information_schema.COLUMNS c
         JOIN information_schema.TABLES t
           ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME AND t.TABLE_TYPE = 'BASE TABLE'
         LEFT JOIN information_schema.KEY_COLUMN_USAGE k
           ON k.TABLE_SCHEMA = c.TABLE_SCHEMA AND k.TABLE_NAME = c.TABLE_NAME
          AND k.COLUMN_NAME = c.COLUMN_NAME AND k.CONSTRAINT_NAME = 'PRIMARY'
         WHERE c.TABLE_SCHEMA = DATABASE()
         ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION",
    )
    .fetch_all(pool)
    .await?;
    let schema: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(pool)
        .await?;
    let mut out: Vec<TableInfo> = Vec::new();
    let mut keys: Vec<Vec<(i64, String)>> = Vec::new();
    for r in rows {
        let table: String = r.try_get("t")?;
        let column: String = r.try_get("c")?;
        let ty: String = r.try_get("ty")?;
        let pk: i64 = r.try_get("pk")?;
        if out.last().is_none_or(|t| t.id.name != table) {
            out.push(TableInfo {
                id: TableId::new(schema.clone(), table),
                columns: Vec::new(),
                key: Vec::new(),
            });
            keys.push(Vec::new());
        }
        if pk > 0 {
            keys.last_mut().expect("pushed").push((pk, column.clone()));
        }
        out.last_mut()
            .expect("pushed")
            .columns
            .push((column, ty.to_ascii_lowercase()));
    }
    for (t, mut k) in out.iter_mut().zip(keys) {
        k.sort();
        t.key = k.into_iter().map(|(_, c)| c).collect();
    }
    Ok(out)
}

/// `JSON_OBJECT(…)` of `row`'s (`NEW` or `OLD`) columns: binary columns as
/// hex, `BIT` as a number.
pub(crate) fn row_json(row: &str, columns: &[(String, String)]) -> String {
    let args: Vec<String> = columns
        .iter()
        .map(|(c, ty)| {
            let v = format!("{row}.{}", quote('`', c));
            let v = match ty.as_str() {
                "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                    format!("HEX({v})")
                }
                "bit" => format!("CAST({v} AS UNSIGNED)"),
                _ => v,
            };
            format!("{}, {v}", literal(c))
        })
        .collect();
    format!("JSON_OBJECT({})", args.join(", "))
}

/// The body of a trigger recording `op` of `table`: the next id from the
/// counter (its row lock held until commit), then the change.
fn body(capture: &str, table: &TableInfo, op: &str, old: &str, new: &str) -> String {
    format!(
        "BEGIN DECLARE ferry_id BIGINT; \
         UPDATE ferry_cdc_sequence SET last = last + 1 WHERE one = 1; \
         SELECT last INTO ferry_id FROM ferry_cdc_sequence WHERE one = 1; \
         INSERT INTO ferry_cdc_changes (id, capture, schema_name, table_name, op, old_row, new_row) \
         VALUES (ferry_id, {}, {}, {}, '{op}', {old}, {new}); END",
        literal(capture),
        literal(&table.id.schema),
        literal(&table.id.name)
    )
}

/// The three triggers of `table`: (name, event, body).
fn triggers(capture: &str, table: &TableInfo) -> Vec<(String, &'static str, String)> {
    let old = row_json("OLD", &table.columns);
    let new = row_json("NEW", &table.columns);
    vec![
        (
            trigger_name(capture, &table.id, "i"),
            "INSERT",
            body(capture, table, "c", "NULL", &new),
        ),
        (
            trigger_name(capture, &table.id, "u"),
            "UPDATE",
            body(capture, table, "u", &old, &new),
        ),
        (
            trigger_name(capture, &table.id, "d"),
            "DELETE",
            body(capture, table, "d", &old, "NULL"),
        ),
    ]
}

/// The capture's triggers: name → (table, body).
async fn existing(
    pool: &MySqlPool,
    capture: &str,
) -> Result<HashMap<String, (String, String)>, sqlx::Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT CAST(TRIGGER_NAME AS CHAR), CAST(EVENT_OBJECT_TABLE AS CHAR),
                CAST(ACTION_STATEMENT AS CHAR)
         FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(n, _, _)| is_trigger_of(n, capture))
        .map(|(n, t, b)| (n, (t, b)))
        .collect())
}

/// Creates the change table and counter, brings the triggers of `wanted`
/// up to date, and copies a newly captured table's rows as reads (when
/// `snapshot`) right after its triggers exist, under the counter's lock.
/// MariaDB commits each `CREATE TRIGGER` by itself.
pub(super) async fn install(
    pool: &MySqlPool,
    capture: &str,
    wanted: &[TableInfo],
    _known: &HashMap<TableId, TableInfo>,
    snapshot: bool,
) -> Result<(), sqlx::Error> {
    pool.execute(CHANGE_TABLE).await?;
    pool.execute(SEQUENCE_TABLE).await?;
    pool.execute("INSERT IGNORE INTO ferry_cdc_sequence (one, last) VALUES (1, 0)")
        .await?;
    let have = existing(pool, capture).await?;
    let mut keep: Vec<String> = Vec::new();
    for table in wanted {
        let wanted_triggers = triggers(capture, table);
        let new_table = wanted_triggers
            .iter()
            .all(|(n, _, _)| !have.contains_key(n));
        for (name, event, body) in &wanted_triggers {
            keep.push(name.clone());
            if have.get(name).is_some_and(|(_, b)| b == body) {
                continue;
            }
            // Replaced in one statement, so that no change slips between
            // a DROP and a CREATE.
            let sql = format!(
                "CREATE OR REPLACE TRIGGER {} AFTER {event} ON {} FOR EACH ROW {body}",
                quote('`', name),
                quote('`', &table.id.name)
            );
            pool.execute(sql.as_str()).await?;
        }
        if new_table && snapshot {
            copy_rows(pool, capture, table).await?;
        }
    }
    for (name, (table, _)) in have.iter().filter(|(n, _)| !keep.contains(n)) {
        let _ = table;
        pool.execute(format!("DROP TRIGGER IF EXISTS {}", quote('`', name)).as_str())
            .await?;
    }
    Ok(())
}

/// `table`'s rows as `r` changes, numbered from the counter, whose lock
/// keeps writers out until they are recorded.
pub(super) async fn copy_rows(
    pool: &MySqlPool,
    capture: &str,
    table: &TableInfo,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let base: i64 =
        sqlx::query_scalar("SELECT last FROM ferry_cdc_sequence WHERE one = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    let order: Vec<String> = table
        .key
        .iter()
        .map(|k| format!("ferry_row.{}", quote('`', k)))
        .collect();
    let copied = sqlx::query(&format!(
        "INSERT INTO ferry_cdc_changes (id, capture, schema_name, table_name, op, new_row)
         SELECT ? + ROW_NUMBER() OVER (ORDER BY {}), ?, ?, ?, 'r', {} FROM {} AS ferry_row",
        order.join(", "),
        row_json("ferry_row", &table.columns),
        quote('`', &table.id.name)
    ))
    .bind(base)
    .bind(capture)
    .bind(&table.id.schema)
    .bind(&table.id.name)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("UPDATE ferry_cdc_sequence SET last = ? WHERE one = 1")
        .bind(base + i64::try_from(copied).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(copied)
}

/// The tables capture `capture` has triggers on.
pub(super) async fn installed(pool: &MySqlPool, capture: &str) -> Result<Vec<String>, sqlx::Error> {
    Ok(existing(pool, capture)
        .await?
        .into_values()
        .map(|(table, _)| table)
        .collect())
}

pub(super) async fn fetch(
    pool: &MySqlPool,
    capture: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<super::ChangeRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, CAST(schema_name AS CHAR) AS schema_name, CAST(table_name AS CHAR) AS table_name,
                CAST(op AS CHAR) AS op, CAST(tx_id AS CHAR) AS tx_id,
                CAST(old_row AS CHAR) AS old_row, CAST(new_row AS CHAR) AS new_row,
                DATE_FORMAT(changed_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS changed_at
         FROM ferry_cdc_changes WHERE capture = ? AND id > ? ORDER BY id LIMIT ?",
    )
    .bind(capture)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    change_rows!(rows)
}

pub(super) async fn prune(pool: &MySqlPool, capture: &str, upto: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM ferry_cdc_changes WHERE capture = ? AND id <= ?")
        .bind(capture)
        .bind(upto)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn backlog(
    pool: &MySqlPool,
    capture: &str,
) -> Result<(i64, Option<f64>), sqlx::Error> {
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TABLES
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'ferry_cdc_changes'",
    )
    .fetch_one(pool)
    .await?;
    if exists == 0 {
        return Ok((0, None));
    }
    let row = sqlx::query(
        "SELECT COUNT(*) AS n,
                CAST(TIMESTAMPDIFF(MICROSECOND, MIN(changed_at), UTC_TIMESTAMP(6)) / 1e6 AS DOUBLE) AS age
         FROM ferry_cdc_changes WHERE capture = ?",
    )
    .bind(capture)
    .fetch_one(pool)
    .await?;
    Ok((row.try_get("n")?, row.try_get("age")?))
}

pub(super) async fn uninstall(pool: &MySqlPool, capture: &str) -> Result<(), sqlx::Error> {
    for name in existing(pool, capture).await?.keys() {
        pool.execute(format!("DROP TRIGGER IF EXISTS {}", quote('`', name)).as_str())
            .await?;
    }
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TABLES
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'ferry_cdc_changes'",
    )
    .fetch_one(pool)
    .await?;
    if exists == 0 {
        return Ok(());
    }
    sqlx::query("DELETE FROM ferry_cdc_changes WHERE capture = ?")
        .bind(capture)
        .execute(pool)
        .await?;
    let others: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TRIGGERS
         WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE 'ferry\\_cdc\\_%'",
    )
    .fetch_one(pool)
    .await?;
    if others == 0 {
        pool.execute("DROP TABLE IF EXISTS ferry_cdc_changes")
            .await?;
        pool.execute("DROP TABLE IF EXISTS ferry_cdc_sequence")
            .await?;
    }
    Ok(())
}
