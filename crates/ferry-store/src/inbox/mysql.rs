//! The inbox on MariaDB.

use std::time::Duration;

use ferry_core::MessageId;
use sqlx::{MySql, MySqlPool, Transaction};

use super::Recorded;
use crate::StoreError;

/// Records that `consumer` applies message `id`, inside `tx`; see
/// [`super::InboxDatabase::record`].
///
/// A plain `INSERT` whose duplicate-key error means [`Recorded::Duplicate`]:
/// on MariaDB a failed statement leaves the transaction usable, and unlike
/// `INSERT IGNORE` other errors (a consumer name too long) still fail. With
/// three or more deliveries of one id at once, InnoDB may report a deadlock
/// for one of them: that error rolls the caller's transaction back, and the
/// message is redelivered.
pub async fn record(
    tx: &mut Transaction<'_, MySql>,
    consumer: &str,
    id: MessageId,
) -> Result<Recorded, StoreError> {
    let inserted = sqlx::query("INSERT INTO ferry_inbox (consumer, message_id) VALUES (?, ?)")
        .bind(consumer)
        .bind(id.to_string())
        .execute(&mut **tx)
        .await;
    match inserted {
        Ok(_) => Ok(Recorded::First),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(Recorded::Duplicate),
        Err(e) => Err(e.into()),
    }
}

/// Deletes rows received longer than `older_than` ago; returns how many.
pub async fn prune(pool: &MySqlPool, older_than: Duration) -> Result<u64, StoreError> {
    super::prune(pool, older_than).await
}
