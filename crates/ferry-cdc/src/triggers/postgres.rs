//! Trigger mode on PostgreSQL: one trigger function for every table
//! (`to_jsonb` of the whole row, so new columns need nothing), a
//! transaction-level advisory lock for commit-ordered ids, and `TRUNCATE`
//! recorded as a `t` change.

use std::collections::{HashMap, HashSet};

use sqlx::{PgPool, Row};

use super::{change_rows, is_trigger_of, literal, quote, trigger_name, TableInfo};
use crate::change::TableId;

/// The advisory lock that orders the change table's ids ("ferrycdc").
const LOCK: i64 = 0x6665_7272_7963_6463;

/// Every table, with its columns and primary key, in one query.
const TABLES: &str = "
SELECT n.nspname AS schema_name, c.relname AS table_name,
  (SELECT COALESCE(json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod))
                            ORDER BY a.attnum), '[]')::text
     FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
  (SELECT COALESCE(json_agg(a.attname ORDER BY array_position(i.indkey::int2[], a.attnum)), '[]')::text
     FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
     WHERE i.indrelid = c.oid AND i.indisprimary) AS key
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY 1, 2";

pub(crate) async fn tables(pool: &PgPool) -> Result<Vec<TableInfo>, sqlx::Error> {
    let rows = sqlx::query(TABLES).fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let columns: String = r.try_get("columns")?;
        let key: String = r.try_get("key")?;
        let decode = |e: serde_json::Error| sqlx::Error::Decode(Box::new(e));
        out.push(TableInfo {
            id: TableId::new(
                r.try_get::<String, _>("schema_name")?,
                r.try_get::<String, _>("table_name")?,
            ),
            columns: serde_json::from_str(&columns).map_err(decode)?,
            key: serde_json::from_str(&key).map_err(decode)?,
        });
    }
    Ok(out)
}

/// The schema Ferry's change table and function live in: the first of the
/// installing session's search path, written out in full in the function
/// so that writers with another search path find it.
async fn home(pool: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(pool)
        .await
}

fn function_sql(schema: &str) -> String {
    let changes = format!("{}.ferry_cdc_changes", quote('"', schema));
    format!(
        "CREATE OR REPLACE FUNCTION {}.ferry_cdc_record() RETURNS trigger LANGUAGE plpgsql AS $ferry$
BEGIN
  PERFORM pg_advisory_xact_lock({LOCK});
  IF TG_OP = 'TRUNCATE' THEN
    INSERT INTO {changes} (capture, schema_name, table_name, op, tx_id)
    VALUES (TG_ARGV[0], TG_TABLE_SCHEMA, TG_TABLE_NAME, 't', txid_current()::text);
  ELSE
    INSERT INTO {changes} (capture, schema_name, table_name, op, tx_id, old_row, new_row)
    VALUES (TG_ARGV[0], TG_TABLE_SCHEMA, TG_TABLE_NAME,
            CASE TG_OP WHEN 'INSERT' THEN 'c' WHEN 'UPDATE' THEN 'u' ELSE 'd' END,
            txid_current()::text,
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
  END IF;
  RETURN NULL;
END
$ferry$",
        quote('"', schema)
    )
}

/// The capture's triggers: (schema, table, trigger name).
async fn existing(pool: &PgPool, capture: &str) -> Result<Vec<(TableId, String)>, sqlx::Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text, t.tgname::text
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT t.tgisinternal AND t.tgname LIKE 'ferry\\_cdc\\_%'",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|(_, _, name)| is_trigger_of(name, capture))
        .map(|(s, t, name)| (TableId::new(s, t), name))
        .collect())
}

/// Creates the change table and function, and the triggers of `wanted`
/// that are missing (copying a new table's rows as reads when
/// `snapshot`, in the same transaction); drops this capture's triggers on
/// tables no longer wanted.
pub(super) async fn install(
    pool: &PgPool,
    capture: &str,
    wanted: &[TableInfo],
    _known: &HashMap<TableId, TableInfo>,
    snapshot: bool,
) -> Result<(), sqlx::Error> {
    let schema = home(pool).await?;
    let have = existing(pool, capture).await?;
    let have_names: HashSet<&str> = have.iter().map(|(_, n)| n.as_str()).collect();
    let missing: Vec<&TableInfo> = wanted
        .iter()
        .filter(|t| !have_names.contains(trigger_name(capture, &t.id, "r").as_str()))
        .collect();
    let wanted_ids: HashSet<&TableId> = wanted.iter().map(|t| &t.id).collect();
    let stale: Vec<&(TableId, String)> = have
        .iter()
        .filter(|(t, _)| !wanted_ids.contains(t))
        .collect();
    let table_exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = $1 AND c.relname = 'ferry_cdc_changes')",
    )
    .bind(&schema)
    .fetch_one(pool)
    .await?;
    if missing.is_empty() && stale.is_empty() && table_exists {
        return Ok(());
    }
    let changes = format!("{}.ferry_cdc_changes", quote('"', &schema));
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {changes} (
            id BIGSERIAL PRIMARY KEY,
            capture TEXT NOT NULL,
            schema_name TEXT NOT NULL,
            table_name TEXT NOT NULL,
            op TEXT NOT NULL,
            tx_id TEXT,
            old_row JSONB,
            new_row JSONB,
            changed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
        )"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "CREATE INDEX IF NOT EXISTS ferry_cdc_changes_capture ON {changes} (capture, id)"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&function_sql(&schema))
        .execute(&mut *tx)
        .await?;
    let function = format!("{}.ferry_cdc_record", quote('"', &schema));
    for table in missing {
        let target = format!(
            "{}.{}",
            quote('"', &table.id.schema),
            quote('"', &table.id.name)
        );
        let rows = trigger_name(capture, &table.id, "r");
        let truncate = trigger_name(capture, &table.id, "t");
        sqlx::query(&format!(
            "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {target}
             FOR EACH ROW EXECUTE FUNCTION {function}({})",
            quote('"', &rows),
            literal(capture)
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "CREATE TRIGGER {} AFTER TRUNCATE ON {target}
             FOR EACH STATEMENT EXECUTE FUNCTION {function}({})",
            quote('"', &truncate),
            literal(capture)
        ))
        .execute(&mut *tx)
        .await?;
        if snapshot {
            copy_rows(&mut tx, capture, &changes, table).await?;
        }
    }
    for (table, name) in stale {
        sqlx::query(&format!(
            "DROP TRIGGER IF EXISTS {} ON {}.{}",
            quote('"', name),
            quote('"', &table.schema),
            quote('"', &table.name)
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// `table`'s rows as `r` changes, in key order, in `tx` (which holds the
/// triggers' lock).
async fn copy_rows(
    tx: &mut sqlx::PgConnection,
    capture: &str,
    changes: &str,
    table: &TableInfo,
) -> Result<u64, sqlx::Error> {
    let target = format!(
        "{}.{}",
        quote('"', &table.id.schema),
        quote('"', &table.id.name)
    );
    let order: Vec<String> = table
        .key
        .iter()
        .map(|k| format!("t.{}", quote('"', k)))
        .collect();
    Ok(sqlx::query(&format!(
        "INSERT INTO {changes} (capture, schema_name, table_name, op, new_row)
         SELECT $1, $2, $3, 'r', to_jsonb(t) FROM {target} t ORDER BY {}",
        order.join(", ")
    ))
    .bind(capture)
    .bind(&table.id.schema)
    .bind(&table.id.name)
    .execute(&mut *tx)
    .await?
    .rows_affected())
}

/// Copies `table`'s rows as `r` changes in one transaction, under the
/// triggers' lock: they take their place in commit order.
pub(super) async fn backfill(
    pool: &PgPool,
    capture: &str,
    table: &TableInfo,
) -> Result<u64, sqlx::Error> {
    let schema = home(pool).await?;
    let changes = format!("{}.ferry_cdc_changes", quote('"', &schema));
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut *tx)
        .await?;
    let copied = copy_rows(&mut tx, capture, &changes, table).await?;
    tx.commit().await?;
    Ok(copied)
}

/// The tables capture `capture` has triggers on.
pub(super) async fn installed(pool: &PgPool, capture: &str) -> Result<Vec<TableId>, sqlx::Error> {
    Ok(existing(pool, capture)
        .await?
        .into_iter()
        .map(|(t, _)| t)
        .collect())
}

pub(super) async fn fetch(
    pool: &PgPool,
    capture: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<super::ChangeRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, schema_name, table_name, op, tx_id, old_row::text AS old_row,
                new_row::text AS new_row,
                to_char(changed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS changed_at
         FROM ferry_cdc_changes WHERE capture = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(capture)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    change_rows!(rows)
}

pub(super) async fn prune(pool: &PgPool, capture: &str, upto: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM ferry_cdc_changes WHERE capture = $1 AND id <= $2")
        .bind(capture)
        .bind(upto)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn backlog(
    pool: &PgPool,
    capture: &str,
) -> Result<(i64, Option<f64>), sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('ferry_cdc_changes') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok((0, None));
    }
    let row = sqlx::query(
        "SELECT COUNT(*) AS n,
                EXTRACT(EPOCH FROM clock_timestamp() - MIN(changed_at))::float8 AS age
         FROM ferry_cdc_changes WHERE capture = $1",
    )
    .bind(capture)
    .fetch_one(pool)
    .await?;
    Ok((row.try_get("n")?, row.try_get("age")?))
}

pub(super) async fn uninstall(pool: &PgPool, capture: &str) -> Result<(), sqlx::Error> {
    let have = existing(pool, capture).await?;
    let schema = home(pool).await?;
    let mut tx = pool.begin().await?;
    for (table, name) in &have {
        sqlx::query(&format!(
            "DROP TRIGGER IF EXISTS {} ON {}.{}",
            quote('"', name),
            quote('"', &table.schema),
            quote('"', &table.name)
        ))
        .execute(&mut *tx)
        .await?;
    }
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('ferry_cdc_changes') IS NOT NULL")
        .fetch_one(&mut *tx)
        .await?;
    if exists {
        sqlx::query("DELETE FROM ferry_cdc_changes WHERE capture = $1")
            .bind(capture)
            .execute(&mut *tx)
            .await?;
    }
    // Another capture's triggers still use the table and the function.
    let others: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'ferry\\_cdc\\_%'",
    )
    .fetch_one(&mut *tx)
    .await?;
    if others == 0 {
        sqlx::query(&format!(
            "DROP FUNCTION IF EXISTS {}.ferry_cdc_record() CASCADE",
            quote('"', &schema)
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "DROP TABLE IF EXISTS {}.ferry_cdc_changes",
            quote('"', &schema)
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}
