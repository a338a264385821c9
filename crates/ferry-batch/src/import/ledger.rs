//! The ledger of imported batches: `ferry_batch_imports` in the target
//! database, one row per (job, batch key), written in the transaction
//! that loads the batch. Its SQL is written once over
//! [`ferry_store::dialect::Dialect`]; only the time column's type differs.

use ferry_store::dialect::{Bind, Dialect, Exec, Read};
use ferry_store::DatabaseKind;
use sqlx::Pool;

use super::batch::Batch;

/// The ledger table.
pub const TABLE: &str = "ferry_batch_imports";

/// `$n` as the dialect writes parameter `n`.
pub(crate) fn param<DB: Dialect>(n: usize) -> String {
    if DB::NUMBERED_PARAMS {
        format!("${n}")
    } else {
        "?".to_owned()
    }
}

/// Creates the ledger when it does not exist.
pub(crate) async fn create<DB: Dialect>(pool: &Pool<DB>) -> Result<(), sqlx::Error> {
    let time = match DB::KIND {
        DatabaseKind::Postgres => "TIMESTAMPTZ",
        DatabaseKind::Sqlite => "TEXT",
        DatabaseKind::Mysql => "DATETIME(6)",
    };
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (
            job VARCHAR(255) NOT NULL,
            batch_key CHAR(64) NOT NULL,
            batch VARCHAR(1024) NOT NULL,
            window_start VARCHAR(255) NOT NULL,
            window_end VARCHAR(255) NOT NULL,
            row_count BIGINT NOT NULL,
            manifest_sha256 CHAR(64) NOT NULL,
            imported_at {time} NOT NULL,
            PRIMARY KEY (job, batch_key)
        )"
    );
    let mut conn = pool.acquire().await?;
    let mut tries = 0;
    loop {
        match sqlx::query(&sql).execute((*conn).executor()).await {
            Ok(_) => return Ok(()),
            // PostgreSQL: two sessions creating the table at once; the
            // loser fails on the catalog's unique index (23505), as a
            // duplicate table (42P07) or as a duplicate row type (42710,
            // "type ... already exists"), and its next try sees the table.
            Err(sqlx::Error::Database(d))
                if tries < 3
                    && (d.is_unique_violation()
                        || matches!(d.code().as_deref(), Some("42P07" | "42710"))) =>
            {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether `job` has imported the batch keyed `key`.
pub(crate) async fn contains<DB: Dialect>(
    conn: &mut DB::Connection,
    job: &str,
    key: &str,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "SELECT COUNT(*) AS n FROM {TABLE} WHERE job = {} AND batch_key = {}",
        param::<DB>(1),
        param::<DB>(2)
    );
    let mut args = DB::Arguments::default();
    bind::<DB, _>(&mut args, job)?;
    bind::<DB, _>(&mut args, key)?;
    let row = sqlx::query_with(&sql, args)
        .fetch_one(conn.executor())
        .await?;
    let n: i64 = row.read("n")?;
    Ok(n > 0)
}

/// Records `batch` as imported by `job` with `rows` rows.
pub(crate) async fn record<DB: Dialect>(
    conn: &mut DB::Connection,
    job: &str,
    batch: &Batch,
    rows: u64,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO {TABLE} (job, batch_key, batch, window_start, window_end, row_count, manifest_sha256, imported_at)
         VALUES ({}, {}, {}, {}, {}, {}, {}, {})",
        param::<DB>(1),
        param::<DB>(2),
        param::<DB>(3),
        param::<DB>(4),
        param::<DB>(5),
        param::<DB>(6),
        param::<DB>(7),
        DB::NOW
    );
    let mut args = DB::Arguments::default();
    bind::<DB, _>(&mut args, job)?;
    bind::<DB, _>(&mut args, batch.key.as_str())?;
    bind::<DB, _>(&mut args, batch.name.as_str())?;
    bind::<DB, _>(&mut args, batch.manifest.window.start.as_str())?;
    bind::<DB, _>(&mut args, batch.manifest.window.end.as_str())?;
    bind::<DB, _>(&mut args, i64::try_from(rows).unwrap_or(i64::MAX))?;
    bind::<DB, _>(&mut args, batch.manifest_sha256.as_str())?;
    sqlx::query_with(&sql, args)
        .execute(conn.executor())
        .await?;
    Ok(())
}

/// A batch the ledger holds: what `ferry batch status` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// The batch's name (its manifest's, without the suffix).
    pub batch: String,
    /// The manifest's window.
    pub window: crate::Window,
    /// Rows loaded.
    pub rows: u64,
    /// When the load committed.
    pub imported_at: chrono::DateTime<chrono::Utc>,
}

/// The latest `limit` batches `job` imported, newest first.
pub(crate) async fn recent<DB: Dialect>(
    pool: &Pool<DB>,
    job: &str,
    limit: u32,
) -> Result<Vec<Imported>, sqlx::Error> {
    let sql = format!(
        "SELECT {batch} AS batch, {ws} AS window_start, {we} AS window_end, row_count, imported_at
         FROM {TABLE} WHERE job = {} ORDER BY imported_at DESC, batch DESC LIMIT {limit}",
        param::<DB>(1),
        batch = DB::text("batch"),
        ws = DB::text("window_start"),
        we = DB::text("window_end"),
    );
    let mut args = DB::Arguments::default();
    bind::<DB, _>(&mut args, job)?;
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query_with(&sql, args)
        .fetch_all((*conn).executor())
        .await?;
    rows.iter()
        .map(|row| {
            let rows: i64 = row.read("row_count")?;
            Ok(Imported {
                batch: row.read("batch")?,
                window: crate::Window {
                    start: row.read("window_start")?,
                    end: row.read("window_end")?,
                },
                rows: u64::try_from(rows).unwrap_or_default(),
                imported_at: DB::read_time(row, "imported_at")?,
            })
        })
        .collect()
}

fn bind<'q, DB: Dialect, T>(args: &mut DB::Arguments<'q>, value: T) -> Result<(), sqlx::Error>
where
    DB::Arguments<'q>: Bind<'q, T>,
{
    args.bind_value(value).map_err(sqlx::Error::Encode)
}
