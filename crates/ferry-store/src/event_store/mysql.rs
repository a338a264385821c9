//! The event store on MariaDB (10.10 or newer).
//!
//! Sequence numbers come from the one-row counter `ferry_event_head`, which
//! the insert trigger of `ferry_events` increments: its row lock is held by
//! the appending transaction until it ends (see the module docs of
//! [`crate::event_store`]). Numbers have no gaps: a rollback undoes the
//! increment. MariaDB has no LISTEN/NOTIFY: readers poll.

use sqlx::MySqlConnection;

use super::{check_offset, NewEvent};
use crate::StoreError;

/// Appends `events` inside the caller's transaction (`conn` is the
/// transaction); returns their sequence numbers, in order. From here until
/// the transaction ends, other transactions' appends wait (see the module
/// docs of [`crate::event_store`]); InnoDB's `innodb_lock_wait_timeout`
/// bounds that wait.
pub async fn append(
    conn: &mut MySqlConnection,
    events: &[NewEvent],
) -> Result<Vec<i64>, StoreError> {
    super::append_rows::<sqlx::MySql>(conn, events).await
}

/// Moves `reader`'s offset forward to `offset` on `conn`, which may be the
/// transaction holding a handler's own writes: both then commit together
/// (exactly-once for handlers whose effects live in this database). An
/// offset at or below the stored one changes nothing; returns the stored
/// offset afterwards (read back by a second statement, so on a connection
/// outside a transaction it may already include a later save).
pub async fn save_offset(
    conn: &mut MySqlConnection,
    reader: &str,
    offset: i64,
) -> Result<i64, StoreError> {
    check_offset(offset)?;
    sqlx::query(
        "INSERT INTO ferry_event_offsets (reader, position) VALUES (?, ?)
         ON DUPLICATE KEY UPDATE
             position = GREATEST(position, VALUES(position)),
             updated_at = CURRENT_TIMESTAMP(6)",
    )
    .bind(reader)
    .bind(offset)
    .execute(&mut *conn)
    .await?;
    let stored: i64 =
        sqlx::query_scalar("SELECT position FROM ferry_event_offsets WHERE reader = ?")
            .bind(reader)
            .fetch_one(&mut *conn)
            .await?;
    Ok(stored)
}
