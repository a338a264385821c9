//! The inbox on PostgreSQL.

use std::time::Duration;

use ferry_core::MessageId;
use sqlx::{PgPool, Postgres, Transaction};

use super::Recorded;
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
    super::record_unless_there(tx, consumer, id).await
}

/// Deletes rows received longer than `older_than` ago; returns how many.
pub async fn prune(pool: &PgPool, older_than: Duration) -> Result<u64, StoreError> {
    super::prune(pool, older_than).await
}
