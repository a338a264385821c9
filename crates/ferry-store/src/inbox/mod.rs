//! The idempotent inbox: which messages each consumer has applied.
//!
//! A consumer calls `record` inside the transaction that applies a message
//! (the handler's own writes): the first delivery of a message id gets
//! [`Recorded::First`] and is applied; a redelivery gets
//! [`Recorded::Duplicate`] and is acknowledged without being applied again.
//! Because the inbox row commits or rolls back with the handler's writes,
//! each message is applied once in effect, although brokers deliver at least
//! once. See `docs/inbox.md`.
//!
//! # Concurrency
//!
//! Two transactions recording the same (consumer, id) at once: the second
//! waits for the first (the primary key's lock), then sees
//! [`Recorded::Duplicate`] if the first committed, or [`Recorded::First`] if
//! it rolled back. On PostgreSQL a duplicate never aborts the caller's
//! transaction (`ON CONFLICT DO NOTHING`). On SQLite the second writer waits
//! for the database's write lock instead.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::dialect::{sql, Dialect, PerDialect, Stmt};
use crate::outbox::before_now;
use crate::StoreError;

pub mod mysql;
pub mod postgres;
pub mod sqlite;

/// What [`InboxDatabase::record`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The first delivery of this message to this consumer: apply it.
    First,
    /// Already recorded by a committed transaction: do not apply it again.
    Duplicate,
}

/// The inbox on any of Ferry's databases, so that a consumer can be generic
/// over the database.
pub trait InboxDatabase: sqlx::Database {
    /// Records that `consumer` applies message `id`, inside the caller's
    /// transaction `tx`; see the [module docs](self) for what it returns.
    fn record<'a, 'c>(
        tx: &'a mut sqlx::Transaction<'c, Self>,
        consumer: &'a str,
        id: ferry_core::MessageId,
    ) -> BoxFuture<'a, Result<Recorded, StoreError>>;

    /// Deletes rows received longer than `older_than` ago; returns how many.
    fn prune<'a>(
        pool: &'a sqlx::Pool<Self>,
        older_than: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
}

/// Each database's [`InboxDatabase`]: its module's `record` and `prune`.
macro_rules! inbox_database {
    ($db:ty, $module:ident) => {
        impl InboxDatabase for $db {
            fn record<'a, 'c>(
                tx: &'a mut sqlx::Transaction<'c, Self>,
                consumer: &'a str,
                id: ferry_core::MessageId,
            ) -> BoxFuture<'a, Result<Recorded, StoreError>> {
                Box::pin($module::record(tx, consumer, id))
            }

            fn prune<'a>(
                pool: &'a sqlx::Pool<Self>,
                older_than: Duration,
            ) -> BoxFuture<'a, Result<u64, StoreError>> {
                Box::pin(prune::<$db>(pool, older_than))
            }
        }
    };
}

inbox_database!(sqlx::Sqlite, sqlite);
inbox_database!(sqlx::Postgres, postgres);
inbox_database!(sqlx::MySql, mysql);

/// `INSERT … ON CONFLICT DO NOTHING`: a duplicate is not an error, which
/// would abort the caller's transaction on PostgreSQL.
async fn record_unless_there<DB: Dialect>(
    tx: &mut sqlx::Transaction<'_, DB>,
    consumer: &str,
    id: ferry_core::MessageId,
) -> Result<Recorded, StoreError> {
    static INSERT: PerDialect<String> = PerDialect::new();
    let insert = INSERT.get::<DB>(|| {
        sql::<DB>(
            "INSERT INTO ferry_inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
    });
    let done = Stmt::<DB>::new(insert)
        .bind(consumer)
        .bind(DB::id(id.0))
        .execute(tx)
        .await?;
    Ok(recorded(done))
}

/// Deletes rows received longer than `older_than` ago; returns how many.
async fn prune<DB: Dialect>(
    pool: &sqlx::Pool<DB>,
    older_than: Duration,
) -> Result<u64, StoreError> {
    static DELETE: PerDialect<String> = PerDialect::new();
    let delete = DELETE.get::<DB>(|| sql::<DB>("DELETE FROM ferry_inbox WHERE received_at < $1"));
    Ok(Stmt::<DB>::new(delete)
        .bind(DB::time(before_now(older_than)))
        .execute(&mut *pool.acquire().await?)
        .await?)
}

/// One row inserted: the first; none: a duplicate.
fn recorded(rows_affected: u64) -> Recorded {
    if rows_affected == 0 {
        Recorded::Duplicate
    } else {
        Recorded::First
    }
}
