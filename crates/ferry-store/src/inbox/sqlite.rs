//! The inbox on SQLite.

use std::time::Duration;

use ferry_core::MessageId;
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::Recorded;
use crate::outbox::{before_now, sqlite::format_time};
use crate::StoreError;

/// Records that `consumer` applies message `id`, inside `tx`; see
/// [`super::InboxDatabase::record`].
pub async fn record(
    tx: &mut Transaction<'_, Sqlite>,
    consumer: &str,
    id: MessageId,
) -> Result<Recorded, StoreError> {
    let done = sqlx::query(
        "INSERT INTO ferry_inbox (consumer, message_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(id.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(super::recorded(done.rows_affected()))
}

/// Deletes rows received longer than `older_than` ago; returns how many.
pub async fn prune(pool: &SqlitePool, older_than: Duration) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM ferry_inbox WHERE received_at < ?")
        .bind(format_time(before_now(older_than)))
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
