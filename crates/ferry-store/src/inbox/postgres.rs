//! The inbox on PostgreSQL.

use std::time::Duration;

use ferry_core::MessageId;
use sqlx::{PgPool, Postgres, Transaction};

use super::Recorded;
use crate::outbox::before_now;
use crate::StoreError;

/// Records that `consumer` applies message `id`, inside `tx`; see
/// [`super::InboxDatabase::record`]. `ON CONFLICT DO NOTHING`: a duplicate
/// is not an error, which would abort the caller's transaction. (At
/// `REPEATABLE READ` or above, a duplicate committed by a concurrent
/// transaction surfaces as a serialization failure instead: retry.)
pub async fn record(
    tx: &mut Transaction<'_, Postgres>,
    consumer: &str,
    id: MessageId,
) -> Result<Recorded, StoreError> {
    let done = sqlx::query(
        "INSERT INTO ferry_inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(id.0)
    .execute(&mut **tx)
    .await?;
    Ok(super::recorded(done.rows_affected()))
}

/// Deletes rows received longer than `older_than` ago; returns how many.
pub async fn prune(pool: &PgPool, older_than: Duration) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM ferry_inbox WHERE received_at < $1")
        .bind(before_now(older_than))
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
