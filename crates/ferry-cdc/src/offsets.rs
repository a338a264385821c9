//! Where a capture keeps its [`Checkpoint`]: one row per capture name in
//! `ferry_cdc_offsets`, on SQLite, PostgreSQL or MariaDB.
//!
//! The table is created by [`Offsets::open`] (`CREATE TABLE IF NOT
//! EXISTS`), so a capture needs no migration step and may keep its offsets
//! in the very database it reads (whose capture filters Ferry's own
//! `ferry_*` tables out). The SQL is written once over
//! [`ferry_store::dialect::Dialect`]; only the column types of the table
//! differ per database.

use ferry_store::dialect::{Bind, Dialect, Exec, Read};
use ferry_store::{Database, DatabaseKind, StoreError};
use sqlx::Pool;

use crate::capture::Checkpoint;

/// The table holding every capture's checkpoint.
pub const TABLE: &str = "ferry_cdc_offsets";

/// The checkpoints of captures, by capture name.
///
/// Saving is an upsert: the row of a capture holds its latest checkpoint,
/// the one its [`Capture`](crate::Capture) resumes after. Thread safe
/// (a clone shares the pool).
#[derive(Clone, Debug)]
pub struct Offsets {
    db: Database,
}

impl Offsets {
    /// Offsets in `db`, creating the table when it does not exist.
    pub async fn open(db: Database) -> Result<Self, StoreError> {
        match &db {
            Database::Postgres(pool) => create::<sqlx::Postgres>(pool).await?,
            Database::Sqlite(pool) => create::<sqlx::Sqlite>(pool).await?,
            Database::Mysql(pool) => create::<sqlx::MySql>(pool).await?,
        }
        Ok(Self { db })
    }

    /// Connects to `url` (a small pool of its own) and [opens](Self::open)
    /// the offsets there.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = ferry_store::ConnectOptions {
            max_connections: 2,
            lease: None,
        };
        Self::open(Database::connect_with(url, &options).await?).await
    }

    /// The database the offsets live in.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The checkpoint saved for `capture`, if any.
    pub async fn load(&self, capture: &str) -> Result<Option<Checkpoint>, StoreError> {
        let text = match &self.db {
            Database::Postgres(pool) => load::<sqlx::Postgres>(pool, capture).await?,
            Database::Sqlite(pool) => load::<sqlx::Sqlite>(pool, capture).await?,
            Database::Mysql(pool) => load::<sqlx::MySql>(pool, capture).await?,
        };
        let Some(text) = text else {
            return Ok(None);
        };
        // A row Ferry did not write (edited by hand) is reported as the
        // database error it is closest to: unreadable data.
        let value = serde_json::from_str(&text).map_err(|e| {
            StoreError::Database(sqlx::Error::Decode(
                format!("{TABLE}.checkpoint of capture `{capture}` is not JSON: {e}").into(),
            ))
        })?;
        Ok(Some(Checkpoint(value)))
    }

    /// Saves `checkpoint` as `capture`'s, replacing the one before.
    pub async fn save(&self, capture: &str, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let text = checkpoint.0.to_string();
        match &self.db {
            Database::Postgres(pool) => save::<sqlx::Postgres>(pool, capture, &text).await,
            Database::Sqlite(pool) => save::<sqlx::Sqlite>(pool, capture, &text).await,
            Database::Mysql(pool) => save::<sqlx::MySql>(pool, capture, &text).await,
        }
    }

    /// Forgets `capture`'s checkpoint; returns whether there was one.
    pub async fn delete(&self, capture: &str) -> Result<bool, StoreError> {
        match &self.db {
            Database::Postgres(pool) => delete::<sqlx::Postgres>(pool, capture).await,
            Database::Sqlite(pool) => delete::<sqlx::Sqlite>(pool, capture).await,
            Database::Mysql(pool) => delete::<sqlx::MySql>(pool, capture).await,
        }
    }
}

/// `$n` as the dialect writes parameter `n`.
fn param<DB: Dialect>(n: usize) -> String {
    if DB::NUMBERED_PARAMS {
        format!("${n}")
    } else {
        "?".to_owned()
    }
}

async fn create<DB: Dialect>(pool: &Pool<DB>) -> Result<(), StoreError> {
    // The only real difference: how each database types a time.
    let time = match DB::KIND {
        DatabaseKind::Postgres => "TIMESTAMPTZ",
        DatabaseKind::Sqlite => "TEXT",
        DatabaseKind::Mysql => "DATETIME(6)",
    };
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (
            capture VARCHAR(255) NOT NULL PRIMARY KEY,
            checkpoint TEXT NOT NULL,
            updated_at {time} NOT NULL
        )"
    );
    let mut conn = pool.acquire().await?;
    sqlx::query(&sql).execute((*conn).executor()).await?;
    Ok(())
}

async fn load<DB: Dialect>(pool: &Pool<DB>, capture: &str) -> Result<Option<String>, StoreError> {
    let sql = format!(
        "SELECT {} AS checkpoint FROM {TABLE} WHERE capture = {}",
        DB::text("checkpoint"),
        param::<DB>(1)
    );
    let mut args = DB::Arguments::default();
    bind::<DB, _>(&mut args, capture)?;
    let mut conn = pool.acquire().await?;
    let row = sqlx::query_with(&sql, args)
        .fetch_optional((*conn).executor())
        .await?;
    match row {
        Some(row) => Ok(Some(row.read("checkpoint")?)),
        None => Ok(None),
    }
}

async fn save<DB: Dialect>(
    pool: &Pool<DB>,
    capture: &str,
    checkpoint: &str,
) -> Result<(), StoreError> {
    let upsert = DB::on_conflict(
        "capture",
        &format!(
            "checkpoint = {}, updated_at = {}",
            DB::excluded("checkpoint"),
            DB::excluded("updated_at")
        ),
    );
    let sql = format!(
        "INSERT INTO {TABLE} (capture, checkpoint, updated_at) VALUES ({}, {}, {}) {upsert}",
        param::<DB>(1),
        param::<DB>(2),
        DB::NOW
    );
    let mut args = DB::Arguments::default();
    bind::<DB, _>(&mut args, capture)?;
    bind::<DB, _>(&mut args, checkpoint)?;
    let mut conn = pool.acquire().await?;
    sqlx::query_with(&sql, args)
        .execute((*conn).executor())
        .await?;
    Ok(())
}

async fn delete<DB: Dialect>(pool: &Pool<DB>, capture: &str) -> Result<bool, StoreError> {
    let sql = format!("DELETE FROM {TABLE} WHERE capture = {}", param::<DB>(1));
    let mut args = DB::Arguments::default();
    bind::<DB, _>(&mut args, capture)?;
    let mut conn = pool.acquire().await?;
    let done = sqlx::query_with(&sql, args)
        .execute((*conn).executor())
        .await?;
    Ok(DB::rows_affected(&done) > 0)
}

/// Appends `value` to `args`, as an encoding error when it does not bind.
fn bind<'q, DB: Dialect, T>(args: &mut DB::Arguments<'q>, value: T) -> Result<(), StoreError>
where
    DB::Arguments<'q>: Bind<'q, T>,
{
    args.bind_value(value)
        .map_err(|e| StoreError::Database(sqlx::Error::Encode(e)))
}
