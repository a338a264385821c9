//! The event store on SQLite.
//!
//! SQLite has one writer at a time, so `AUTOINCREMENT` numbers are handed
//! out in commit order without any lock of Ferry's own. A `seq` given by a
//! plain-SQL client is refused (a trigger cannot replace it here).

use sqlx::SqliteConnection;

use super::{check_offset, NewEvent};
use crate::StoreError;

/// Appends `events` inside the caller's transaction (`conn` is the
/// transaction); returns their sequence numbers, in order. From here until
/// the transaction ends, other transactions' appends wait (see the module
/// docs of [`crate::event_store`]).
pub async fn append(
    conn: &mut SqliteConnection,
    events: &[NewEvent],
) -> Result<Vec<i64>, StoreError> {
    super::append_rows::<sqlx::Sqlite>(conn, events).await
}

/// Moves `reader`'s offset forward to `offset` on `conn`, which may be the
/// transaction holding a handler's own writes: both then commit together
/// (exactly-once for handlers whose effects live in this database). An
/// offset at or below the stored one changes nothing; returns the stored
/// offset afterwards.
pub async fn save_offset(
    conn: &mut SqliteConnection,
    reader: &str,
    offset: i64,
) -> Result<i64, StoreError> {
    check_offset(offset)?;
    let stored: i64 = sqlx::query_scalar(
        "INSERT INTO ferry_event_offsets (reader, position) VALUES (?, ?)
         ON CONFLICT (reader) DO UPDATE
             SET position = MAX(position, excluded.position),
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         RETURNING position",
    )
    .bind(reader)
    .bind(offset)
    .fetch_one(conn)
    .await?;
    Ok(stored)
}
