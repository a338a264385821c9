//! The event store on MariaDB (10.10 or newer).
//!
//! Sequence numbers come from the one-row counter `ferry_event_head`, which
//! the insert trigger of `ferry_events` increments: its row lock is held by
//! the appending transaction until it ends (see the module docs of
//! [`crate::event_store`]). Numbers have no gaps: a rollback undoes the
//! increment. MariaDB has no LISTEN/NOTIFY: readers poll.

use chrono::{DateTime, Utc};
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlConnection, MySqlPool, Row};

use super::{check_offset, EventFailure, EventQuery, NewEvent, StoredEvent};
use crate::StoreError;

/// Rows per multi-row `INSERT` (six placeholders each, well below the
/// protocol's 65,535).
const INSERT_CHUNK: usize = 1000;

/// Appends `events` inside the caller's transaction (`conn` is the
/// transaction); returns their sequence numbers, in order. From here until
/// the transaction ends, other transactions' appends wait (see the module
/// docs of [`crate::event_store`]); InnoDB's `innodb_lock_wait_timeout`
/// bounds that wait.
pub async fn append(
    conn: &mut MySqlConnection,
    events: &[NewEvent],
) -> Result<Vec<i64>, StoreError> {
    let mut seqs = Vec::with_capacity(events.len());
    for chunk in events.chunks(INSERT_CHUNK) {
        let rows = vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT INTO ferry_events
                (event_id, event_type, source_type, source_id, content_type, payload)
             VALUES {rows}
             RETURNING seq"
        );
        let mut query = sqlx::query_scalar::<_, i64>(&sql);
        for e in chunk {
            query = query
                .bind(e.id.to_string())
                .bind(&e.event_type)
                .bind(&e.source_type)
                .bind(&e.source_id)
                .bind(&e.content_type)
                .bind(e.payload.as_slice());
        }
        // The trigger numbers rows in VALUES order; sorted to be sure.
        let mut chunk_seqs = query.fetch_all(&mut *conn).await?;
        chunk_seqs.sort_unstable();
        seqs.extend(chunk_seqs);
    }
    Ok(seqs)
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

/// The page and the head, read by one statement and so in one read view.
/// Text columns are read through `CAST(… AS CHAR)`: with their binary
/// collation (and the `UUID` type) they reach the client flagged as
/// binary, which sqlx will not decode as a string.
pub(super) async fn read_events(
    pool: &MySqlPool,
    query: &EventQuery,
) -> Result<(Vec<StoredEvent>, i64), StoreError> {
    let (filters, values) = query.filters(|_| "?".to_owned());
    let sql = format!(
        "SELECT h.head, e.seq, CAST(e.event_id AS CHAR) AS event_id,
                CAST(e.event_type AS CHAR) AS event_type,
                CAST(e.source_type AS CHAR) AS source_type,
                CAST(e.source_id AS CHAR) AS source_id,
                CAST(e.content_type AS CHAR) AS content_type,
                e.payload, e.recorded_at
         FROM (SELECT CAST(COALESCE(MAX(seq), 0) AS SIGNED) AS head FROM ferry_events) h
         LEFT JOIN (
             SELECT * FROM ferry_events
             WHERE seq > ?{filters}
             ORDER BY seq
             LIMIT ?
         ) e ON TRUE
         ORDER BY e.seq"
    );
    let mut q = sqlx::query(&sql).bind(query.offset);
    for v in values {
        q = q.bind(v);
    }
    let rows = q.bind(i64::from(query.limit)).fetch_all(pool).await?;
    let head = match rows.first() {
        Some(row) => row.try_get("head")?,
        None => 0,
    };
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(event) = event_from_row(row)? {
            events.push(event);
        }
    }
    Ok((events, head))
}

/// The event in `row`, `None` for the head-only row of an empty page.
fn event_from_row(row: &MySqlRow) -> Result<Option<StoredEvent>, sqlx::Error> {
    let Some(seq) = row.try_get::<Option<i64>, _>("seq")? else {
        return Ok(None);
    };
    let id: String = row.try_get("event_id")?;
    Ok(Some(StoredEvent {
        seq,
        id: crate::text_columns::uuid("event_id", &id)?,
        event_type: row.try_get("event_type")?,
        source_type: row.try_get("source_type")?,
        source_id: row.try_get("source_id")?,
        content_type: row.try_get("content_type")?,
        payload: row.try_get("payload")?,
        recorded_at: row.try_get::<DateTime<Utc>, _>("recorded_at")?,
    }))
}

pub(super) async fn record_failure(
    pool: &MySqlPool,
    reader: &str,
    event: &StoredEvent,
    attempts: i32,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ferry_event_failures (reader, seq, event_id, attempts, last_error)
         VALUES (?, ?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE
             event_id = VALUES(event_id), attempts = VALUES(attempts),
             last_error = VALUES(last_error), failed_at = CURRENT_TIMESTAMP(6)",
    )
    .bind(reader)
    .bind(event.seq)
    .bind(event.id.to_string())
    .bind(attempts)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn failures(
    pool: &MySqlPool,
    reader: Option<&str>,
) -> Result<Vec<EventFailure>, StoreError> {
    let rows = sqlx::query(
        "SELECT CAST(reader AS CHAR) AS reader, seq, CAST(event_id AS CHAR) AS event_id,
                attempts, CAST(last_error AS CHAR) AS last_error, failed_at
         FROM ferry_event_failures
         WHERE ? IS NULL OR reader = ?
         ORDER BY failed_at, reader, seq",
    )
    .bind(reader)
    .bind(reader)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let event_id: String = row.try_get("event_id")?;
        out.push(EventFailure {
            reader: row.try_get("reader")?,
            seq: row.try_get("seq")?,
            event_id: crate::text_columns::uuid("event_id", &event_id)?,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
            failed_at: row.try_get::<DateTime<Utc>, _>("failed_at")?,
        });
    }
    Ok(out)
}

pub(super) async fn discard_failure(
    pool: &MySqlPool,
    reader: &str,
    seq: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM ferry_event_failures WHERE reader = ? AND seq = ?")
        .bind(reader)
        .bind(seq)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}
