//! Pause flags: pipelines an operator paused, by name. Every instance's
//! relays poll them, so a pause made on one instance holds on all.

use chrono::{DateTime, Utc};
use sqlx::Pool;

use crate::dialect::{select_text, sql, with_pool, Dialect, PerDialect, Read, Stmt};
use crate::{Database, StoreError};

/// A paused pipeline.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Pause {
    /// The pipeline's name.
    pub name: String,
    /// Who paused it (the token's name).
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
}

impl Database {
    /// Pauses the pipeline `name`; says whether it was newly paused (false:
    /// it was paused already, and stays paused by whoever paused it).
    pub async fn pause(&self, name: &str, by: &str) -> Result<bool, StoreError> {
        with_pool!(self, |pool| pause(pool, name, by).await)
    }

    /// Resumes the pipeline `name`; says whether it was paused.
    pub async fn resume(&self, name: &str) -> Result<bool, StoreError> {
        with_pool!(self, |pool| resume(pool, name).await)
    }

    /// The paused pipelines, by name.
    pub async fn paused(&self) -> Result<Vec<Pause>, StoreError> {
        with_pool!(self, |pool| paused(pool).await)
    }
}

struct Statements {
    pause: String,
    resume: String,
    paused: String,
}

fn statements<DB: Dialect>() -> &'static Statements {
    static STATEMENTS: PerDialect<Statements> = PerDialect::new();
    STATEMENTS.get::<DB>(|| Statements {
        pause: sql::<DB>(&format!(
            "INSERT INTO ferry_pauses (name, paused_by, paused_at) VALUES ($1, $2, {})",
            DB::NOW
        )),
        resume: sql::<DB>("DELETE FROM ferry_pauses WHERE name = $1"),
        paused: format!(
            "SELECT {}, {}, paused_at FROM ferry_pauses ORDER BY name",
            select_text::<DB>("name", "name"),
            select_text::<DB>("paused_by", "paused_by"),
        ),
    })
}

async fn pause<DB: Dialect>(pool: &Pool<DB>, name: &str, by: &str) -> Result<bool, StoreError> {
    let inserted = Stmt::<DB>::new(&statements::<DB>().pause)
        .bind(name)
        .bind(by)
        .execute(&mut *pool.acquire().await?)
        .await;
    match inserted {
        Ok(_) => Ok(true),
        // Paused already: the first pause stands.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn resume<DB: Dialect>(pool: &Pool<DB>, name: &str) -> Result<bool, StoreError> {
    let n = Stmt::<DB>::new(&statements::<DB>().resume)
        .bind(name)
        .execute(&mut *pool.acquire().await?)
        .await?;
    Ok(n > 0)
}

async fn paused<DB: Dialect>(pool: &Pool<DB>) -> Result<Vec<Pause>, StoreError> {
    let rows = Stmt::<DB>::new(&statements::<DB>().paused)
        .fetch_all(&mut *pool.acquire().await?)
        .await?;
    let pause = |r: &DB::Row| -> Result<Pause, sqlx::Error> {
        Ok(Pause {
            name: r.read("name")?,
            by: r.read("paused_by")?,
            at: DB::read_time(r, "paused_at")?,
        })
    };
    Ok(rows.iter().map(pause).collect::<Result<_, _>>()?)
}
