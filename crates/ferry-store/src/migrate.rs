//! Ferry's own tiny migration runner.
//!
//! Ferry shares the application's database, so it keeps its own history
//! table (`ferry_schema_migrations`) instead of `_sqlx_migrations`, where
//! its version numbers would collide with the application's.

use sqlx::{
    Connection, Executor, MySqlConnection, MySqlPool, PgConnection, PgPool, SqliteConnection,
    SqlitePool,
};

use crate::dialect::{Dialect, ReadFirst, Stmt};
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

/// The same migrations on every database, one directory each.
macro_rules! migrations {
    ($dir:literal) => {
        &[
            Migration {
                version: 1,
                name: "outbox",
                sql: include_str!(concat!("../migrations/", $dir, "/0001_outbox.sql")),
            },
            Migration {
                version: 2,
                name: "inbox",
                sql: include_str!(concat!("../migrations/", $dir, "/0002_inbox.sql")),
            },
            Migration {
                version: 3,
                name: "dead_letters",
                sql: include_str!(concat!("../migrations/", $dir, "/0003_dead_letters.sql")),
            },
            Migration {
                version: 4,
                name: "event_store",
                sql: include_str!(concat!("../migrations/", $dir, "/0004_event_store.sql")),
            },
            Migration {
                version: 5,
                name: "task_failures",
                sql: include_str!(concat!("../migrations/", $dir, "/0005_task_failures.sql")),
            },
        ]
    };
}

pub(crate) const POSTGRES: &[Migration] = migrations!("postgres");
pub(crate) const SQLITE: &[Migration] = migrations!("sqlite");
pub(crate) const MYSQL: &[Migration] = migrations!("mysql");

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
    let applied = applied::<sqlx::Postgres>(&mut *conn, POSTGRES).await?;
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
    let applied = applied::<sqlx::Sqlite>(&mut conn, SQLITE).await?;
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

/// The MariaDB migration lock: named after the database, since `GET_LOCK`
/// names are server-wide (hashed: a name may be at most 64 characters).
const MYSQL_LOCK: &str = "CONCAT('ferry_migrate_', MD5(DATABASE()))";

/// MariaDB. DDL commits by itself there, so a migration is not atomic: its
/// statements are written to be run again (`IF NOT EXISTS`), and one that
/// failed half-way completes on the next run. `GET_LOCK` serialises
/// concurrent runs; it is held by the session and released when it ends.
pub(crate) async fn mysql(pool: &MySqlPool) -> Result<Vec<i64>, StoreError> {
    let mut conn = pool.acquire().await?;
    // 1: taken; 0: timed out (a day: another run is stuck); NULL: error.
    let locked: Option<i64> = sqlx::query_scalar(&format!("SELECT GET_LOCK({MYSQL_LOCK}, 86400)"))
        .fetch_one(&mut *conn)
        .await?;
    if locked != Some(1) {
        return Err(StoreError::MigrationLock);
    }
    let result = mysql_locked(&mut conn).await;
    let unlocked = sqlx::query(&format!("DO RELEASE_LOCK({MYSQL_LOCK})"))
        .execute(&mut *conn)
        .await;
    let Err(unlock) = unlocked else {
        return result;
    };
    conn.close_on_drop();
    match result {
        Ok(_) => Err(unlock.into()),
        Err(e) => {
            tracing::warn!(error = %unlock, "releasing the migration lock failed");
            Err(e)
        }
    }
}

async fn mysql_locked(conn: &mut MySqlConnection) -> Result<Vec<i64>, StoreError> {
    let applied = applied::<sqlx::MySql>(&mut *conn, MYSQL).await?;
    let mut done = Vec::new();
    for m in MYSQL.iter().filter(|m| !applied.contains(&m.version)) {
        Executor::execute(&mut *conn, m.sql)
            .await
            .map_err(|e| m.failed(e))?;
        sqlx::query("INSERT INTO ferry_schema_migrations (version, name, applied_at) VALUES (?, ?, DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%fZ'))")
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *conn)
            .await?;
        done.push(m.version);
    }
    Ok(done)
}

/// Creates the history table when missing and returns the versions
/// applied, refusing a schema newer than `known`.
async fn applied<DB: Dialect>(
    conn: &mut DB::Connection,
    known: &[Migration],
) -> Result<Vec<i64>, StoreError> {
    Stmt::<DB>::new(HISTORY).execute(conn).await?;
    let applied = Stmt::<DB>::new("SELECT version FROM ferry_schema_migrations ORDER BY version")
        .fetch_all(conn)
        .await?
        .iter()
        .map(ReadFirst::read_first)
        .collect::<Result<Vec<i64>, _>>()?;
    check_not_newer(&applied, known)?;
    Ok(applied)
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

/// For [`crate::Database::check_schema`]: the newest applied version
/// `found` must be the newest this build knows, neither older nor newer.
pub(crate) fn check_current(found: i64, known: &[Migration]) -> Result<(), StoreError> {
    check_not_newer(&[found], known)?;
    let newest_known = known.iter().map(|m| m.version).max().unwrap_or(0);
    if found < newest_known {
        return Err(StoreError::SchemaTooOld {
            found,
            known: newest_known,
        });
    }
    Ok(())
}
