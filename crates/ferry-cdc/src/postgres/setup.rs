//! The server side of a capture: what it checks before reading, the
//! publication and the slot it creates, drops and reports on.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, Row as _};

use ferry_store::Database;

use super::config::{PgLogConfig, SnapshotMode};
use super::store_failure;
use crate::capture::CaptureError;
use crate::change::TableId;
use crate::offsets::Offsets;

/// How long connecting to the server may take before it counts as
/// unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A pool of one connection to the captured database, for the checks and
/// the catalog look-ups the replication connection cannot make.
pub async fn pool(config: &PgLogConfig) -> Result<PgPool, CaptureError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(CONNECT_TIMEOUT)
        .idle_timeout(Duration::from_secs(60))
        .connect_lazy(&config.url)
        .map_err(|e| sql_failure("postgres capture: url", e))?;
    // Connect now: an unreachable server is reported by the constructor.
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| sql_failure("postgres capture: cannot connect", e))?;
    conn.ping()
        .await
        .map_err(|e| sql_failure("postgres capture: cannot connect", e))?;
    Ok(pool)
}

/// The capture's slot as [`prepare`] left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// It existed already.
    Existing,
    /// Created now (with `snapshot = "never"`).
    Created,
    /// Missing, to be created by the caller over the replication protocol
    /// so that it exports its snapshot (`snapshot = "initial"`).
    Missing,
}

/// Checks that the server can be captured as configured, and creates the
/// publication when it is missing and `create` is set, the slot too unless
/// the initial snapshot needs it created otherwise. Returns the database's
/// name and the slot's state.
pub async fn prepare(config: &PgLogConfig, pool: &PgPool) -> Result<(String, Slot), CaptureError> {
    let q = |e| sql_failure("postgres capture: checking the server", e);
    let (wal_level, database, user, can_replicate): (String, String, String, bool) =
        sqlx::query_as(
            "SELECT current_setting('wal_level'), current_database()::text, current_user::text, \
             (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
        )
        .fetch_one(pool)
        .await
        .map_err(q)?;
    if wal_level != "logical" {
        return Err(CaptureError::permanent(format!(
            "postgres capture: wal_level is {wal_level}; set wal_level = logical in \
             postgresql.conf and restart PostgreSQL"
        )));
    }
    if !can_replicate {
        return Err(CaptureError::permanent(format!(
            "postgres capture: role {user} lacks the REPLICATION attribute; \
             ALTER ROLE {} REPLICATION",
            quote_ident(&user)
        )));
    }
    ensure_publication(config, pool).await?;
    let slot = ensure_slot(config, pool, &database).await?;
    Ok((database, slot))
}

/// The publication: checked, or created (with its tables checked) when
/// missing and `create` is set.
async fn ensure_publication(config: &PgLogConfig, pool: &PgPool) -> Result<(), CaptureError> {
    let name = config.publication_name();
    let q = |e| sql_failure("postgres capture: reading the publication", e);
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(&name)
            .fetch_one(pool)
            .await
            .map_err(q)?;
    if exists {
        return check_identities(pool, &name).await;
    }
    if !config.create {
        return Err(CaptureError::permanent(format!(
            "postgres capture: publication {name} does not exist; create it \
             (CREATE PUBLICATION {name} FOR TABLE ...) or set create = true"
        )));
    }
    let target = if config.tables.include.is_empty() {
        "ALL TABLES".to_owned()
    } else {
        let tables = included_tables(config, pool).await?;
        if tables.is_empty() {
            return Err(CaptureError::permanent(format!(
                "postgres capture: no table matches tables.include {:?}",
                config.tables.include
            )));
        }
        let list: Vec<String> = tables
            .iter()
            .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
            .collect();
        format!("TABLE {}", list.join(", "))
    };
    // Created and checked in one transaction: a table that cannot be
    // published leaves no publication behind.
    let c = |e| sql_failure("postgres capture: creating the publication", e);
    let mut tx = pool.begin().await.map_err(c)?;
    let created = sqlx::query(&format!(
        "CREATE PUBLICATION {} FOR {target}",
        quote_ident(&name)
    ))
    .execute(&mut *tx)
    .await;
    match created {
        Ok(_) => {}
        // Created meanwhile by another capture of the same name.
        Err(e) if sql_state(&e).as_deref() == Some("42710") => {
            let _ = tx.rollback().await;
            return check_identities(pool, &name).await;
        }
        Err(e) => return Err(c(e)),
    }
    check_identities(&mut *tx, &name).await?;
    tx.commit().await.map_err(c)
}

/// The tables `tables.include` names, as they exist now.
async fn included_tables(
    config: &PgLogConfig,
    pool: &PgPool,
) -> Result<Vec<TableId>, CaptureError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' AND NOT c.relispartition \
         AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
         ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| sql_failure("postgres capture: listing tables", e))?;
    Ok(rows
        .into_iter()
        .map(|(s, n)| TableId::new(s, n))
        .filter(|t| config.tables.captures(t))
        .collect())
}

/// Refuses a published table whose updates and deletes cannot be
/// replicated: no primary key under `REPLICA IDENTITY DEFAULT`, or
/// `REPLICA IDENTITY NOTHING`. PostgreSQL itself then fails every UPDATE
/// and DELETE of that table while it is published.
async fn check_identities<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    publication: &str,
) -> Result<(), CaptureError> {
    let rows: Vec<(String, String, String, bool)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text, c.relreplident::text, \
         EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
         FROM pg_publication_tables p \
         JOIN pg_namespace n ON n.nspname = p.schemaname \
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
         WHERE p.pubname = $1 AND c.relkind = 'r' \
         AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
           (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
         ORDER BY 1, 2",
    )
    .bind(publication)
    .fetch_all(conn)
    .await
    .map_err(|e| sql_failure("postgres capture: checking replica identities", e))?;
    let Some((schema, table, identity, _)) = rows.into_iter().next() else {
        return Ok(());
    };
    let name = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
    let why = if identity == "n" {
        "has REPLICA IDENTITY NOTHING"
    } else {
        "has no primary key and REPLICA IDENTITY DEFAULT"
    };
    Err(CaptureError::permanent(format!(
        "postgres capture: table {name} {why}, so its updates and deletes cannot be captured \
         (and fail while it is published); add a primary key or \
         ALTER TABLE {name} REPLICA IDENTITY FULL"
    )))
}

/// The slot: checked (logical, `pgoutput`, this database), or, when missing
/// and `create` is set, created (`snapshot = "never"`) or left to the
/// caller (`snapshot = "initial"`).
async fn ensure_slot(
    config: &PgLogConfig,
    pool: &PgPool,
    database: &str,
) -> Result<Slot, CaptureError> {
    let name = config.slot_name();
    for _ in 0..2 {
        let q = |e| sql_failure("postgres capture: reading the replication slot", e);
        let slot: Option<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT plugin::text, database::text FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&name)
        .fetch_optional(pool)
        .await
        .map_err(q)?;
        match slot {
            Some((Some(plugin), Some(db))) if plugin == "pgoutput" && db == database => {
                return Ok(Slot::Existing)
            }
            Some((plugin, db)) => {
                return Err(CaptureError::permanent(format!(
                    "postgres capture: replication slot {name} is not a pgoutput slot of \
                     database {database} (plugin {}, database {}); name another slot",
                    plugin.as_deref().unwrap_or("none, a physical slot"),
                    db.as_deref().unwrap_or("none"),
                )))
            }
            None if !config.create => {
                return Err(CaptureError::permanent(format!(
                    "postgres capture: replication slot {name} does not exist; create it \
                     (SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')) \
                     or set create = true"
                )))
            }
            None if config.snapshot == SnapshotMode::Initial => return Ok(Slot::Missing),
            None => {}
        }
        let created = sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(&name)
            .execute(pool)
            .await;
        match created {
            Ok(_) => return Ok(Slot::Created),
            // Created meanwhile: check it on the next turn.
            Err(e) if sql_state(&e).as_deref() == Some("42710") => continue,
            Err(e) => {
                return Err(sql_failure(
                    &format!("postgres capture: creating replication slot {name}"),
                    e,
                ))
            }
        }
    }
    Err(CaptureError::transient(format!(
        "postgres capture: replication slot {name} keeps appearing and vanishing"
    )))
}

/// The slot's `confirmed_flush_lsn`: for a slot nothing was confirmed to
/// yet, its consistent point.
pub async fn slot_lsn(pool: &PgPool, slot: &str) -> Result<u64, CaptureError> {
    let lsn: Option<i64> = sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint FROM pg_replication_slots \
         WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .map_err(|e| sql_failure("postgres capture: reading the replication slot", e))?
    .flatten();
    lsn.and_then(|l| u64::try_from(l).ok()).ok_or_else(|| {
        CaptureError::transient(format!(
            "postgres capture: replication slot {slot} vanished or has no position"
        ))
    })
}

/// The primary key's columns of relation `oid`, in key order (empty when
/// it has none).
pub async fn primary_key(pool: &PgPool, oid: u32) -> Result<Vec<String>, CaptureError> {
    sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
         WHERE i.indrelid::bigint = $1 AND i.indisprimary \
         ORDER BY array_position(i.indkey::int2[], a.attnum)",
    )
    .bind(i64::from(oid))
    .fetch_all(pool)
    .await
    .map_err(|e| sql_failure("postgres capture: reading a primary key", e))
}

/// Removes the capture's replication slot and publication (`ferry cdc
/// drop`): the server stops retaining WAL for it. The snapshot's saved
/// progress goes too, so that a new slot snapshots afresh. What is absent
/// already is skipped; a slot in use (a capture still reading) is refused.
pub async fn drop(config: &PgLogConfig) -> Result<(), CaptureError> {
    config.validate()?;
    let pool = pool(config).await?;
    let slot = config.slot_name();
    let dropped = sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = $1",
    )
    .bind(&slot)
    .execute(&pool)
    .await;
    if let Err(e) = dropped {
        return Err(if sql_state(&e).as_deref() == Some("55006") {
            CaptureError::unavailable(format!(
                "postgres capture: replication slot {slot} is in use; stop the capture \
                 reading it first"
            ))
            .with_source(e)
        } else {
            sql_failure(
                &format!("postgres capture: dropping replication slot {slot}"),
                e,
            )
        });
    }
    let publication = config.publication_name();
    sqlx::query(&format!(
        "DROP PUBLICATION IF EXISTS {}",
        quote_ident(&publication)
    ))
    .execute(&pool)
    .await
    .map_err(|e| {
        sql_failure(
            &format!("postgres capture: dropping publication {publication}"),
            e,
        )
    })?;
    // Only where a capture created the table: dropping creates nothing.
    let kept: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(crate::offsets::TABLE)
        .fetch_one(&pool)
        .await
        .map_err(|e| sql_failure("postgres capture: looking for saved progress", e))?;
    if kept {
        let offsets = Offsets::open(Database::Postgres(pool.clone()))
            .await
            .map_err(|e| store_failure(e, "postgres capture: opening the saved progress"))?;
        offsets
            .delete(&config.name)
            .await
            .map_err(|e| store_failure(e, "postgres capture: deleting the saved progress"))?;
    }
    pool.close().await;
    Ok(())
}

/// A replication slot as the server reports it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SlotStatus {
    /// The slot's name.
    pub slot: String,
    /// Whether a connection is reading it now.
    pub active: bool,
    /// The position up to which the capture confirmed delivery.
    pub confirmed_flush_lsn: Option<u64>,
    /// WAL the server keeps for the slot: `pg_current_wal_lsn() -
    /// restart_lsn`, in bytes. It shrinks at checkpoints once the capture
    /// confirms.
    pub retained_wal_bytes: Option<u64>,
    /// How far confirmation trails the server: `pg_current_wal_lsn() -
    /// confirmed_flush_lsn`, in bytes.
    pub lag_bytes: Option<u64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (the server dropped
    /// WAL the slot needed: the capture cannot resume).
    pub wal_status: Option<String>,
    /// While a capture reads the slot: how long the server last waited
    /// between flushing WAL and the capture confirming it
    /// (`pg_stat_replication.flush_lag`), in seconds; none when idle.
    pub lag_seconds: Option<f64>,
}

/// The capture's slot as the server reports it (`ferry cdc status`), or
/// `None` when it does not exist.
pub async fn status(config: &PgLogConfig) -> Result<Option<SlotStatus>, CaptureError> {
    config.validate()?;
    let pool = pool(config).await?;
    let status = slot_status(&pool, &config.slot_name()).await;
    pool.close().await;
    status
}

/// Slot `slot` as the server reports it, read on `pool`.
pub async fn slot_status(pool: &PgPool, slot: &str) -> Result<Option<SlotStatus>, CaptureError> {
    let row = sqlx::query(
        "SELECT slot_name::text AS slot, active, \
         pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint AS confirmed, \
         pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained, \
         pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag, \
         wal_status::text AS wal_status, \
         (SELECT EXTRACT(EPOCH FROM r.flush_lag)::float8 FROM pg_stat_replication r \
          WHERE r.pid = s.active_pid) AS lag_seconds \
         FROM pg_replication_slots s WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(pool)
    .await
    .map_err(|e| sql_failure("postgres capture: reading the replication slot", e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let bytes = |column: &str| -> Result<Option<u64>, CaptureError> {
        let v: Option<i64> = row
            .try_get(column)
            .map_err(|e| sql_failure("postgres capture: reading the replication slot", e))?;
        Ok(v.map(|v| v.max(0) as u64))
    };
    Ok(Some(SlotStatus {
        slot: row
            .try_get("slot")
            .map_err(|e| sql_failure("postgres capture: reading the replication slot", e))?,
        active: row
            .try_get("active")
            .map_err(|e| sql_failure("postgres capture: reading the replication slot", e))?,
        confirmed_flush_lsn: bytes("confirmed")?,
        retained_wal_bytes: bytes("retained")?,
        lag_bytes: bytes("lag")?,
        wal_status: row
            .try_get("wal_status")
            .map_err(|e| sql_failure("postgres capture: reading the replication slot", e))?,
        lag_seconds: row
            .try_get("lag_seconds")
            .map_err(|e| sql_failure("postgres capture: reading the replication slot", e))?,
    }))
}

/// `"name"`, quoted for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn sql_state(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A failed statement, by what it says about trying again: the server out
/// of reach is unavailable; refused credentials, a missing database or a
/// missing privilege are permanent; anything else transient.
pub fn sql_failure(context: &str, e: sqlx::Error) -> CaptureError {
    let kind = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => ferry_core::ErrorKind::Unavailable,
        sqlx::Error::Configuration(_) => ferry_core::ErrorKind::Permanent,
        sqlx::Error::Database(_) => match sql_state(&e).as_deref().unwrap_or("") {
            s if s.starts_with("08") || s.starts_with("57P") || s == "53300" => {
                ferry_core::ErrorKind::Unavailable
            }
            s if s.starts_with("28") || s == "3D000" || s == "42501" => {
                ferry_core::ErrorKind::Permanent
            }
            _ => ferry_core::ErrorKind::Transient,
        },
        _ => ferry_core::ErrorKind::Transient,
    };
    CaptureError::new(kind, context).with_source(e)
}
