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

impl InboxDatabase for sqlx::Sqlite {
    fn record<'a, 'c>(
        tx: &'a mut sqlx::Transaction<'c, Self>,
        consumer: &'a str,
        id: ferry_core::MessageId,
    ) -> BoxFuture<'a, Result<Recorded, StoreError>> {
        Box::pin(sqlite::record(tx, consumer, id))
    }

    fn prune<'a>(
        pool: &'a sqlx::Pool<Self>,
        older_than: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(sqlite::prune(pool, older_than))
    }
}

impl InboxDatabase for sqlx::Postgres {
    fn record<'a, 'c>(
        tx: &'a mut sqlx::Transaction<'c, Self>,
        consumer: &'a str,
        id: ferry_core::MessageId,
    ) -> BoxFuture<'a, Result<Recorded, StoreError>> {
        Box::pin(postgres::record(tx, consumer, id))
    }

    fn prune<'a>(
        pool: &'a sqlx::Pool<Self>,
        older_than: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(postgres::prune(pool, older_than))
    }
}

impl InboxDatabase for sqlx::MySql {
    fn record<'a, 'c>(
        tx: &'a mut sqlx::Transaction<'c, Self>,
        consumer: &'a str,
        id: ferry_core::MessageId,
    ) -> BoxFuture<'a, Result<Recorded, StoreError>> {
        Box::pin(mysql::record(tx, consumer, id))
    }

    fn prune<'a>(
        pool: &'a sqlx::Pool<Self>,
        older_than: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(mysql::prune(pool, older_than))
    }
}

/// One row inserted: the first; none: a duplicate.
fn recorded(rows_affected: u64) -> Recorded {
    if rows_affected == 0 {
        Recorded::Duplicate
    } else {
        Recorded::First
    }
}
