//! The audit log: every change made through the admin API or console.

use chrono::{DateTime, Utc};
use sqlx::Pool;

use crate::admin::outbox_browser::check_limit;
use crate::dialect::{select_text, sql, with_pool, Dialect, PerDialect, Read, Stmt};
use crate::{Database, StoreError};

/// A change to record: who made it, what, on what, how many.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Who: the token's name.
    pub actor: String,
    /// What, e.g. `dead.replay`, `pipeline.pause`.
    pub action: String,
    /// On what: an id, a pipeline, or a filter's description.
    pub target: String,
    /// How many items it changed.
    pub count: i64,
    /// Anything else worth keeping (the filter as JSON, say).
    pub detail: Option<String>,
}

/// An entry as recorded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    /// Its number: higher is newer.
    pub id: i64,
    /// When it was recorded (the database's clock).
    pub at: DateTime<Utc>,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
}

impl Database {
    /// Records `entry`, in a transaction of its own.
    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        with_pool!(self, |pool| record(pool, entry).await)
    }

    /// Audit records newest first, with `id < before` (`None`: from the
    /// newest), at most `limit` (1 to
    /// [`MAX_ADMIN_PAGE`](crate::admin::MAX_ADMIN_PAGE)); keyset paging on
    /// the primary key.
    pub async fn audit_log(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        check_limit(limit)?;
        with_pool!(self, |pool| list(pool, before, limit).await)
    }
}

struct Statements {
    insert: String,
    list: String,
}

fn statements<DB: Dialect>() -> &'static Statements {
    static STATEMENTS: PerDialect<Statements> = PerDialect::new();
    STATEMENTS.get::<DB>(|| Statements {
        insert: sql::<DB>(&format!(
            "INSERT INTO ferry_audit_log (at, actor, action, target, count, detail)
             VALUES ({}, $1, $2, $3, $4, $5)",
            DB::NOW
        )),
        list: sql::<DB>(&format!(
            "SELECT id, at, {}, {}, {}, count, {} FROM ferry_audit_log
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
            select_text::<DB>("actor", "actor"),
            select_text::<DB>("action", "action"),
            select_text::<DB>("target", "target"),
            select_text::<DB>("detail", "detail"),
        )),
    })
}

async fn record<DB: Dialect>(pool: &Pool<DB>, e: &AuditEntry) -> Result<(), StoreError> {
    Stmt::<DB>::new(&statements::<DB>().insert)
        .bind(e.actor.as_str())
        .bind(e.action.as_str())
        .bind(e.target.as_str())
        .bind(e.count)
        .bind(e.detail.as_deref())
        .execute(&mut *pool.acquire().await?)
        .await?;
    Ok(())
}

async fn list<DB: Dialect>(
    pool: &Pool<DB>,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<AuditRecord>, StoreError> {
    let rows = Stmt::<DB>::new(&statements::<DB>().list)
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&mut *pool.acquire().await?)
        .await?;
    let record = |r: &DB::Row| -> Result<AuditRecord, sqlx::Error> {
        Ok(AuditRecord {
            id: r.read("id")?,
            at: DB::read_time(r, "at")?,
            entry: AuditEntry {
                actor: r.read("actor")?,
                action: r.read("action")?,
                target: r.read("target")?,
                count: r.read("count")?,
                detail: r.read("detail")?,
            },
        })
    };
    Ok(rows.iter().map(record).collect::<Result<_, _>>()?)
}
