//! Ferry's own tiny migration runner.
//!
//! Ferry shares the application's database, so it keeps its own history
//! table (`ferry_schema_migrations`) instead of `_sqlx_migrations`, where
//! its version numbers would collide with the application's.

use std::future::Future;

use sqlx::{Connection, Executor, MySqlConnection, PgConnection, Pool};

use crate::dialect::{sql, Dialect, Exec, ReadFirst, Stmt};
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

/// The same migrations on every database, one directory each: version,
/// file name's prefix, name.
macro_rules! migrations {
    ($dir:literal) => {
        migrations!(@ $dir,
            1 "0001" outbox,
            2 "0002" inbox,
            3 "0003" dead_letters,
            4 "0004" event_store,
            5 "0005" task_failures,
            6 "0006" admin)
    };
    (@ $dir:literal, $($version:literal $prefix:literal $name:ident),*) => {
        &[$(Migration {
            version: $version,
            name: stringify!($name),
            sql: include_str!(concat!(
                "../migrations/", $dir, "/", $prefix, "_", stringify!($name), ".sql"
            )),
        }),*]
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

/// What migrating differs in between the databases.
pub(crate) trait Migrate: Dialect {
    /// This database's migrations.
    const MIGRATIONS: &'static [Migration];

    /// The time a migration was applied, as text.
    const APPLIED_AT: &'static str;

    /// The statement that opens a migration's transaction; `None` where
    /// DDL commits by itself (MariaDB).
    const BEGIN: Option<&'static str>;

    /// Takes the lock that serialises concurrent runs, held by the
    /// session; none by default.
    fn lock(_conn: &mut Self::Connection) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// Releases it.
    fn unlock(
        _conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        async { Ok(()) }
    }
}

/// Any fixed number: serialises concurrent `migrate` runs on one database.
const PG_LOCK: i64 = 0x6665_7272_795f_6d69;

impl Migrate for sqlx::Postgres {
    const MIGRATIONS: &'static [Migration] = POSTGRES;
    const APPLIED_AT: &'static str = "now()::text";
    const BEGIN: Option<&'static str> = Some("BEGIN");

    async fn lock(conn: &mut PgConnection) -> Result<(), StoreError> {
        Stmt::<Self>::new("SELECT pg_advisory_lock($1)")
            .bind(PG_LOCK)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn unlock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        Stmt::<Self>::new("SELECT pg_advisory_unlock($1)")
            .bind(PG_LOCK)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// SQLite takes no lock for the whole run: each migration's transaction
/// is `IMMEDIATE`, taking the write lock up front so that two processes
/// migrating at once serialise instead of failing half-way.
impl Migrate for sqlx::Sqlite {
    const MIGRATIONS: &'static [Migration] = SQLITE;
    const APPLIED_AT: &'static str = "datetime('now')";
    const BEGIN: Option<&'static str> = Some("BEGIN IMMEDIATE");
}

/// The MariaDB migration lock: named after the database, since `GET_LOCK`
/// names are server-wide (hashed: a name may be at most 64 characters).
const MYSQL_LOCK: &str = "CONCAT('ferry_migrate_', MD5(DATABASE()))";

/// MariaDB. DDL commits by itself there, so a migration is not atomic: its
/// statements are written to be run again (`IF NOT EXISTS`), and one that
/// failed half-way completes on the next run. `GET_LOCK` serialises
/// concurrent runs; it is held by the session and released when it ends.
impl Migrate for sqlx::MySql {
    const MIGRATIONS: &'static [Migration] = MYSQL;
    const APPLIED_AT: &'static str = "DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%fZ')";
    const BEGIN: Option<&'static str> = None;

    async fn lock(conn: &mut MySqlConnection) -> Result<(), StoreError> {
        // 1: taken; 0: timed out (a day: another run is stuck); NULL: error.
        let sql = format!("SELECT GET_LOCK({MYSQL_LOCK}, 86400)");
        let locked: Option<i64> = Stmt::<Self>::new(&sql)
            .fetch_one(conn)
            .await?
            .read_first()?;
        if locked != Some(1) {
            return Err(StoreError::MigrationLock);
        }
        Ok(())
    }

    async fn unlock(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        let sql = format!("DO RELEASE_LOCK({MYSQL_LOCK})");
        Stmt::<Self>::new(&sql).execute(conn).await?;
        Ok(())
    }
}

/// Applies the migrations not applied yet, under the database's lock;
/// returns their versions.
pub(crate) async fn run<DB: Migrate>(pool: &Pool<DB>) -> Result<Vec<i64>, StoreError> {
    let mut conn = pool.acquire().await?;
    DB::lock(&mut conn).await?;
    let result = locked::<DB>(&mut conn).await;
    let Err(unlock) = DB::unlock(&mut conn).await else {
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

async fn locked<DB: Migrate>(conn: &mut DB::Connection) -> Result<Vec<i64>, StoreError> {
    let applied = applied::<DB>(&mut *conn, DB::MIGRATIONS).await?;
    let mut done = Vec::new();
    for m in DB::MIGRATIONS
        .iter()
        .filter(|m| !applied.contains(&m.version))
    {
        let applied = match DB::BEGIN {
            Some(begin) => {
                let mut tx = conn.begin_with(begin).await?;
                let applied = step::<DB>(&mut tx, m).await?;
                tx.commit().await?;
                applied
            }
            None => step::<DB>(conn, m).await?,
        };
        if applied {
            done.push(m.version);
        }
    }
    Ok(done)
}

/// Applies `m` unless another process did while we waited for the lock;
/// says whether it applied it.
async fn step<DB: Migrate>(conn: &mut DB::Connection, m: &Migration) -> Result<bool, StoreError> {
    let again = Stmt::<DB>::new(&sql::<DB>(
        "SELECT version FROM ferry_schema_migrations WHERE version = $1",
    ))
    .bind(m.version)
    .fetch_optional(conn)
    .await?;
    if again.is_some() {
        return Ok(false);
    }
    // A bare &str runs as a simple query, several statements at once.
    conn.executor()
        .execute(m.sql)
        .await
        .map_err(|e| m.failed(e))?;
    let record = sql::<DB>(&format!(
        "INSERT INTO ferry_schema_migrations (version, name, applied_at) VALUES ($1, $2, {})",
        DB::APPLIED_AT
    ));
    Stmt::<DB>::new(&record)
        .bind(m.version)
        .bind(m.name)
        .execute(conn)
        .await?;
    Ok(true)
}

/// The migrations this build knows for `pool`'s database.
pub(crate) fn migrations<DB: Migrate>(_pool: &Pool<DB>) -> &'static [Migration] {
    DB::MIGRATIONS
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
