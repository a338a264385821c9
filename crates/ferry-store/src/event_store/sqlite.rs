//! The event store on SQLite.
//!
//! SQLite has one writer at a time, so `AUTOINCREMENT` numbers are handed
//! out in commit order without any lock of Ferry's own. A `seq` given by a
//! plain-SQL client is refused (a trigger cannot replace it here).

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::{check_offset, EventFailure, EventQuery, NewEvent, StoredEvent};
use crate::{text_columns, StoreError};

/// Rows per multi-row `INSERT` (six parameters each, well below SQLite's
/// 32,766).
const INSERT_CHUNK: usize = 1000;

/// Appends `events` inside the caller's transaction (`conn` is the
/// transaction); returns their sequence numbers, in order. From here until
/// the transaction ends, other transactions' appends wait (see the module
/// docs of [`crate::event_store`]).
pub async fn append(
    conn: &mut SqliteConnection,
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
        // Numbered in VALUES order (one writer); RETURNING's order is
        // unspecified, hence the sort.
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

/// The page and the head, read by one statement and so in one snapshot.
pub(super) async fn read_events(
    pool: &SqlitePool,
    query: &EventQuery,
) -> Result<(Vec<StoredEvent>, i64), StoreError> {
    let (filters, values) = query.filters(|_| "?".to_owned());
    let sql = format!(
        "SELECT h.head, e.seq, e.event_id, e.event_type, e.source_type, e.source_id,
                e.content_type, CAST(e.payload AS BLOB) AS payload, e.recorded_at
         FROM (SELECT COALESCE(MAX(seq), 0) AS head FROM ferry_events) h
         LEFT JOIN (
             SELECT * FROM ferry_events
             WHERE seq > ?{filters}
             ORDER BY seq
             LIMIT ?
         ) e ON 1
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
fn event_from_row(row: &SqliteRow) -> Result<Option<StoredEvent>, sqlx::Error> {
    let Some(seq) = row.try_get::<Option<i64>, _>("seq")? else {
        return Ok(None);
    };
    let id: String = row.try_get("event_id")?;
    let recorded_at: String = row.try_get("recorded_at")?;
    Ok(Some(StoredEvent {
        seq,
        id: text_columns::uuid("event_id", &id)?,
        event_type: row.try_get("event_type")?,
        source_type: row.try_get("source_type")?,
        source_id: row.try_get("source_id")?,
        content_type: row.try_get("content_type")?,
        payload: row.try_get("payload")?,
        recorded_at: text_columns::time("recorded_at", &recorded_at)?,
    }))
}

pub(super) async fn record_failure(
    pool: &SqlitePool,
    reader: &str,
    event: &StoredEvent,
    attempts: i32,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ferry_event_failures (reader, seq, event_id, attempts, last_error)
         VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (reader, seq) DO UPDATE
             SET event_id = excluded.event_id, attempts = excluded.attempts,
                 last_error = excluded.last_error,
                 failed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
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
    pool: &SqlitePool,
    reader: Option<&str>,
) -> Result<Vec<EventFailure>, StoreError> {
    let rows = sqlx::query(
        "SELECT reader, seq, event_id, attempts, last_error, failed_at
         FROM ferry_event_failures
         WHERE ?1 IS NULL OR reader = ?1
         ORDER BY failed_at, reader, seq",
    )
    .bind(reader)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let event_id: String = row.try_get("event_id")?;
        let failed_at: String = row.try_get("failed_at")?;
        out.push(EventFailure {
            reader: row.try_get("reader")?,
            seq: row.try_get("seq")?,
            event_id: text_columns::uuid("event_id", &event_id)?,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
            failed_at: text_columns::time("failed_at", &failed_at)?,
        });
    }
    Ok(out)
}

pub(super) async fn discard_failure(
    pool: &SqlitePool,
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
