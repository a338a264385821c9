//! The inbox on SQLite.

use std::time::Duration;

use ferry_core::MessageId;
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::Recorded;
use crate::StoreError;

/// Records that `consumer` applies message `id`, inside `tx`; see
/// [`super::InboxDatabase::record`].
pub async fn record(
    tx: &mut Transaction<'_, Sqlite>,
    consumer: &str,
    id: MessageId,
) -> Result<Recorded, StoreError> {
    super::record_unless_there(tx, consumer, id).await
}

/// Deletes rows received longer than `older_than` ago; returns how many.
pub async fn prune(pool: &SqlitePool, older_than: Duration) -> Result<u64, StoreError> {
    super::prune(pool, older_than).await
}
