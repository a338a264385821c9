//! Ferry's own tiny migration runner.
//!
//! Ferry shares the application's database, so it keeps its own history
//! table (`ferry_schema_migrations`) instead of `_sqlx_migrations`, where
//! its version numbers would collide with the application's.

use sqlx::{Connection, Executor, PgConnection, PgPool, SqliteConnection, SqlitePool};

use crate::StoreError;

pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// The error for this migration's own SQL failing.
    fn failed(&self, source: sqlx::Error) -> StoreError {
        StoreError::Migration {
            version: self.version,
            name: self.name,
            source,
        }
    }
}

pub(crate) const POSTGRES: &[Migration] = &[Migration {
    version: 1,
    name: "outbox",
    sql: include_str!("../migrations/postgres/0001_outbox.sql"),
}];

pub(crate) const SQLITE: &[Migration] = &[Migration {
    version: 1,
    name: "outbox",
    sql: include_str!("../migrations/sqlite/0001_outbox.sql"),
}];

const HISTORY: &str = "CREATE TABLE IF NOT EXISTS ferry_schema_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL
)";

/// Any fixed number: serialises concurrent `migrate` runs on one database.
const PG_LOCK: i64 = 0x6665_7272_795f_6d69;

pub(crate) async fn postgres(pool: &PgPool) -> Result<Vec<i64>, StoreError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(PG_LOCK)
        .execute(&mut *conn)
        .await?;
    let result = postgres_locked(&mut conn).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(PG_LOCK)
        .execute(&mut *conn)
        .await;
    let Err(unlock) = unlocked else {
        return result;
    };
    // Ending the session releases the lock whatever state it is in.
    conn.close_on_drop();
    match result {
        Ok(_) => Err(unlock.into()),
        Err(e) => {
            // The migration's own error is the one to report.
            tracing::warn!(error = %unlock, "releasing the migration lock failed");
            Err(e)
        }
    }
}

async fn postgres_locked(conn: &mut PgConnection) -> Result<Vec<i64>, StoreError> {
    sqlx::query(HISTORY).execute(&mut *conn).await?;
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM ferry_schema_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await?;
    check_not_newer(&applied, POSTGRES)?;
    let mut done = Vec::new();
    for m in POSTGRES.iter().filter(|m| !applied.contains(&m.version)) {
        let mut tx = conn.begin().await?;
        // A bare &str runs as a simple query, several statements at once.
        Executor::execute(&mut *tx, m.sql)
            .await
            .map_err(|e| m.failed(e))?;
        sqlx::query("INSERT INTO ferry_schema_migrations (version, name, applied_at) VALUES ($1, $2, now()::text)")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        done.push(m.version);
    }
    Ok(done)
}

pub(crate) async fn sqlite(pool: &SqlitePool) -> Result<Vec<i64>, StoreError> {
    let mut conn = pool.acquire().await?;
    sqlx::query(HISTORY).execute(&mut *conn).await?;
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM ferry_schema_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await?;
    check_not_newer(&applied, SQLITE)?;
    let mut done = Vec::new();
    for m in SQLITE.iter().filter(|m| !applied.contains(&m.version)) {
        // IMMEDIATE: take the write lock up front so two processes migrating
        // at once serialise instead of failing half-way.
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        match sqlite_step(&mut conn, m).await {
            Ok(applied) => {
                sqlx::query("COMMIT").execute(&mut *conn).await?;
                if applied {
                    done.push(m.version);
                }
            }
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// Applies `m` unless another process did while we waited for the lock;
/// says whether it applied it.
async fn sqlite_step(conn: &mut SqliteConnection, m: &Migration) -> Result<bool, StoreError> {
    let again: Option<i64> =
        sqlx::query_scalar("SELECT version FROM ferry_schema_migrations WHERE version = ?")
            .bind(m.version)
            .fetch_optional(&mut *conn)
            .await?;
    if again.is_some() {
        return Ok(false);
    }
    Executor::execute(&mut *conn, m.sql)
        .await
        .map_err(|e| m.failed(e))?;
    sqlx::query("INSERT INTO ferry_schema_migrations (version, name, applied_at) VALUES (?, ?, datetime('now'))")
        .bind(m.version)
        .bind(m.name)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

pub(crate) fn check_not_newer(applied: &[i64], known: &[Migration]) -> Result<(), StoreError> {
    let newest_known = known.iter().map(|m| m.version).max().unwrap_or(0);
    match applied.iter().max() {
        Some(&found) if found > newest_known => Err(StoreError::SchemaTooNew {
            found,
            known: newest_known,
        }),
        _ => Ok(()),
    }
}
