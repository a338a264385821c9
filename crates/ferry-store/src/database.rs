use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::pool::PoolOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{MySqlPool, PgPool, Pool, SqlitePool};

use crate::dialect::{with_pool, Dialect, ReadFirst, Stmt};
use crate::{migrate, StoreError};

/// Which database a URL points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseKind {
    /// `postgres://…` or `postgresql://…`
    Postgres,
    /// `sqlite://path/to/file.db` or `sqlite:path`
    Sqlite,
    /// `mysql://user@host:port/db` or `mariadb://…`: MariaDB 10.10 or newer.
    Mysql,
}

/// A connection pool to one of the databases Ferry supports.
#[derive(Clone, Debug)]
pub enum Database {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite (one file, opened in WAL mode).
    Sqlite(SqlitePool),
    /// MariaDB.
    Mysql(MySqlPool),
}

/// How to open a pool.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Largest number of connections in the pool.
    pub max_connections: u32,
    /// PostgreSQL and MariaDB: the server ends a session that sits idle
    /// inside a transaction for longer than this, releasing its row locks
    /// (PostgreSQL's `idle_in_transaction_session_timeout`; MariaDB's
    /// `idle_transaction_timeout`, in whole seconds, rounded up). The relay
    /// uses it as the lease on a claimed batch: a relay that hangs or is cut
    /// off loses its claim after this long and another relay takes over.
    pub lease: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            lease: None,
        }
    }
}

impl DatabaseKind {
    /// The kind of database `url` points at.
    pub fn of(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => Ok(DatabaseKind::Postgres),
            "sqlite" => Ok(DatabaseKind::Sqlite),
            "mysql" | "mariadb" => Ok(DatabaseKind::Mysql),
            _ => Err(invalid(
                url,
                "expected postgres://…, mysql://… (MariaDB) or sqlite://…",
            )),
        }
    }
}

fn invalid(url: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidUrl {
        url: redact(url),
        reason: reason.into(),
    }
}

/// `url` fit for messages and logs: Ferry's one redaction policy,
/// [`ferry_core::redact_url`].
pub use ferry_core::redact_url as redact;

impl Database {
    /// Opens a pool with default options.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// Opens a pool. A SQLite file is created when missing unless the URL
    /// says otherwise (`?mode=ro`, `?mode=rw`), and opened in WAL mode; an
    /// open that finds the file locked by another connection (several
    /// processes opening a new file at once) is tried again for up to 10 s.
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Self, StoreError> {
        match DatabaseKind::of(url)? {
            DatabaseKind::Postgres => {
                let connect =
                    PgConnectOptions::from_str(url).map_err(|e| invalid(url, e.to_string()))?;
                let set_lease = options.lease.map(|lease| {
                    format!(
                        "SET idle_in_transaction_session_timeout = {}",
                        lease.as_millis().max(1)
                    )
                });
                let pool = pool_options(options, set_lease)
                    .connect_with(connect)
                    .await?;
                Ok(Database::Postgres(pool))
            }
            DatabaseKind::Sqlite => {
                let mut connect =
                    SqliteConnectOptions::from_str(url).map_err(|e| invalid(url, e.to_string()))?;
                if !url.contains("mode=") {
                    connect = connect.create_if_missing(true);
                }
                let connect = connect
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(SQLITE_PATIENCE)
                    .foreign_keys(true);
                Ok(Database::Sqlite(open_sqlite(options, connect).await?))
            }
            DatabaseKind::Mysql => {
                // sqlx knows the `mysql` scheme only.
                let url_for_sqlx = match url.strip_prefix("mariadb:") {
                    Some(rest) => format!("mysql:{rest}"),
                    None => url.to_owned(),
                };
                let connect = MySqlConnectOptions::from_str(&url_for_sqlx)
                    .map_err(|e| invalid(url, e.to_string()))?;
                let set_lease = options.lease.map(|lease| {
                    format!(
                        "SET SESSION idle_transaction_timeout = {}",
                        lease_seconds(lease)
                    )
                });
                let pool = pool_options(options, set_lease)
                    .connect_with(connect)
                    .await?;
                Ok(Database::Mysql(pool))
            }
        }
    }

    /// Which database this is.
    pub fn kind(&self) -> DatabaseKind {
        match self {
            Database::Postgres(_) => DatabaseKind::Postgres,
            Database::Sqlite(_) => DatabaseKind::Sqlite,
            Database::Mysql(_) => DatabaseKind::Mysql,
        }
    }

    /// Applies Ferry's migrations that are not applied yet; returns their
    /// versions. Safe to run from several processes at once.
    pub fn migrate(&self) -> futures::future::BoxFuture<'_, Result<Vec<i64>, StoreError>> {
        // Boxed so that callers can spawn it: sqlx's executor lifetimes
        // otherwise defeat the compiler's `Send` proof in generic contexts.
        with_pool!(self, |pool| Box::pin(migrate::run(pool)))
    }

    /// The newest Ferry migration applied, or `None` when Ferry's tables do
    /// not exist yet.
    pub async fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        with_pool!(self, |pool| schema_version(pool).await)
    }

    /// Checks, without changing anything, that Ferry's schema is exactly
    /// the one this build knows: [`StoreError::SchemaMissing`] before the
    /// first migration, [`StoreError::SchemaTooOld`] when migrations of this
    /// build were not run yet (run [`Database::migrate`] or `ferry
    /// migrate`), [`StoreError::SchemaTooNew`] after a newer Ferry migrated
    /// the database. None of them goes away by retrying.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let known = with_pool!(self, |pool| migrate::migrations(pool));
        match self.schema_version().await? {
            None => Err(StoreError::SchemaMissing),
            Some(found) => migrate::check_current(found, known),
        }
    }

    /// Writes `messages` to the outbox in one transaction of their own, for
    /// a producer whose business change lives elsewhere. Inside your own
    /// transaction use [`crate::outbox::postgres::enqueue`],
    /// [`crate::outbox::mysql::enqueue`] or [`crate::outbox::sqlite::enqueue`]
    /// instead. (An in-process SQLite or MariaDB relay is not woken: it finds
    /// them at its next poll.)
    pub async fn enqueue(&self, messages: &[ferry_core::Message]) -> Result<(), StoreError> {
        match self {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                crate::outbox::postgres::enqueue_many(&mut tx, messages).await?;
                tx.commit().await?;
            }
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for m in messages {
                    crate::outbox::sqlite::enqueue(&mut tx, m).await?;
                }
                tx.commit().await?;
            }
            Database::Mysql(pool) => {
                let mut tx = pool.begin().await?;
                crate::outbox::mysql::enqueue_many(&mut tx, messages).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Deletes inbox rows received longer than `older_than` ago; returns
    /// how many. A message redelivered after its row is gone is applied
    /// again: keep the window longer than any redelivery (docs/inbox.md).
    pub async fn prune_inbox(&self, older_than: Duration) -> Result<u64, StoreError> {
        use crate::inbox::InboxDatabase;
        with_pool!(self, |pool| InboxDatabase::prune(pool, older_than).await)
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }
}

/// How long a SQLite statement waits for a lock (`busy_timeout`), and how
/// long an open is tried again while another connection holds the file.
const SQLITE_PATIENCE: Duration = Duration::from_secs(10);

/// Opens a SQLite pool, trying again while the file is busy.
///
/// Two processes opening the same new file at once both switch it to WAL.
/// SQLite answers one of them `SQLITE_BUSY` at once, without waiting in its
/// busy handler, where waiting could deadlock; an open a moment later finds
/// the file in WAL mode and succeeds.
async fn open_sqlite(
    options: &ConnectOptions,
    connect: SqliteConnectOptions,
) -> Result<SqlitePool, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + SQLITE_PATIENCE;
    let mut pause = Duration::from_millis(5);
    loop {
        match pool_options(options, None)
            .connect_with(connect.clone())
            .await
        {
            Err(e) if is_sqlite_busy(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            opened => return opened,
        }
    }
}

/// `SQLITE_BUSY` or `SQLITE_LOCKED`, with any extended code.
fn is_sqlite_busy(e: &sqlx::Error) -> bool {
    let Some(code) = e.as_database_error().and_then(|d| d.code()) else {
        return false;
    };
    matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(5 | 6))
}

/// A pool's options: `options`' size, a ten-second wait for a connection,
/// and `on_connect` (setting the lease) run on every new connection.
fn pool_options<DB: Dialect>(
    options: &ConnectOptions,
    on_connect: Option<String>,
) -> PoolOptions<DB> {
    let pool = PoolOptions::<DB>::new()
        .max_connections(options.max_connections)
        .acquire_timeout(Duration::from_secs(10));
    let Some(sql) = on_connect else {
        return pool;
    };
    let sql: Arc<str> = sql.into();
    pool.after_connect(move |conn, _| {
        let sql = sql.clone();
        Box::pin(async move {
            Stmt::<DB>::new(&sql).execute(conn).await?;
            Ok(())
        })
    })
}

async fn schema_version<DB: Dialect>(pool: &Pool<DB>) -> Result<Option<i64>, StoreError> {
    let mut conn = pool.acquire().await?;
    let tables: i64 = Stmt::<DB>::new(DB::TABLE_EXISTS)
        .bind("ferry_schema_migrations")
        .fetch_one(&mut conn)
        .await?
        .read_first()?;
    if tables == 0 {
        return Ok(None);
    }
    let version = Stmt::<DB>::new("SELECT MAX(version) FROM ferry_schema_migrations")
        .fetch_one(&mut conn)
        .await?
        .read_first()?;
    Ok(version)
}

/// A lease as MariaDB's `idle_transaction_timeout`: whole seconds, rounded
/// up (never shorter than asked), at least 1 (0 would switch it off), at
/// most the variable's largest value (a year).
fn lease_seconds(lease: Duration) -> u64 {
    let secs = lease
        .as_secs()
        .saturating_add(u64::from(lease.subsec_nanos() > 0));
    secs.clamp(1, 31_536_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_urls() {
        assert_eq!(
            DatabaseKind::of("postgres://u@h:5432/db").unwrap(),
            DatabaseKind::Postgres
        );
        assert_eq!(
            DatabaseKind::of("postgresql://h/db").unwrap(),
            DatabaseKind::Postgres
        );
        assert_eq!(
            DatabaseKind::of("sqlite://a/b.db?mode=rwc").unwrap(),
            DatabaseKind::Sqlite
        );
        for url in ["mysql://root@127.0.0.1:3306/test", "mariadb://h/db"] {
            assert_eq!(DatabaseKind::of(url).unwrap(), DatabaseKind::Mysql);
        }
        let err = DatabaseKind::of("redis://x").unwrap_err().to_string();
        assert!(err.contains("expected postgres://"), "{err}");
    }

    #[test]
    fn leases_round_up_to_whole_seconds() {
        assert_eq!(lease_seconds(Duration::from_millis(300)), 1);
        assert_eq!(lease_seconds(Duration::from_secs(60)), 60);
        assert_eq!(lease_seconds(Duration::from_millis(60_001)), 61);
        assert_eq!(lease_seconds(Duration::ZERO), 1);
        assert_eq!(lease_seconds(Duration::MAX), 31_536_000);
    }
}
