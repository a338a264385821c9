//! The event store on PostgreSQL.
//!
//! Sequence numbers are assigned by the insert trigger of `ferry_events`
//! under a transaction-level advisory lock (see the module docs of
//! [`crate::event_store`]); a statement-level trigger signals [`CHANNEL`]
//! after each insert, so readers that `LISTEN` learn of new events when
//! their transaction commits.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::{check_offset, EventFailure, EventQuery, NewEvent, StoredEvent};
use crate::StoreError;

/// The NOTIFY channel the event store's insert trigger signals (with an
/// empty payload) once per inserting statement; delivered when the
/// appending transaction commits, never when it rolls back.
pub const CHANNEL: &str = "ferry_events";

/// Appends `events` inside the caller's transaction (`conn` is the
/// transaction); returns their sequence numbers, in order. From here until
/// the transaction ends, other transactions' appends wait (see the module
/// docs of [`crate::event_store`]).
///
/// A payload that is valid UTF-8 without NUL bytes is stored in `payload`
/// (PostgreSQL text cannot hold a NUL), anything else in `payload_bytes`.
/// One statement for all events.
pub async fn append(conn: &mut PgConnection, events: &[NewEvent]) -> Result<Vec<i64>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let n = events.len();
    let mut ids = Vec::with_capacity(n);
    let mut types: Vec<&str> = Vec::with_capacity(n);
    let mut source_types: Vec<&str> = Vec::with_capacity(n);
    let mut source_ids: Vec<&str> = Vec::with_capacity(n);
    let mut content_types: Vec<&str> = Vec::with_capacity(n);
    let mut texts: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut blobs: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    for e in events {
        let (text, bytes) = split_payload(&e.payload);
        ids.push(e.id);
        types.push(&e.event_type);
        source_types.push(&e.source_type);
        source_ids.push(&e.source_id);
        content_types.push(&e.content_type);
        texts.push(text);
        blobs.push(bytes);
    }
    // Rows are inserted, and numbered by the trigger, in the order of the
    // arrays; RETURNING gives no order guarantee, hence the sort.
    let mut seqs: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO ferry_events
            (event_id, event_type, source_type, source_id, content_type, payload, payload_bytes)
         SELECT i, t, st, si, ct, p, pb
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[])
              WITH ORDINALITY AS u(i, t, st, si, ct, p, pb, n)
         ORDER BY n
         RETURNING seq",
    )
    .bind(ids)
    .bind(types)
    .bind(source_types)
    .bind(source_ids)
    .bind(content_types)
    .bind(texts)
    .bind(blobs)
    .fetch_all(conn)
    .await?;
    seqs.sort_unstable();
    Ok(seqs)
}

fn split_payload(payload: &[u8]) -> (Option<&str>, Option<&[u8]>) {
    match std::str::from_utf8(payload) {
        Ok(text) if !text.contains('\0') => (Some(text), None),
        _ => (None, Some(payload)),
    }
}

/// Moves `reader`'s offset forward to `offset` on `conn`, which may be the
/// transaction holding a handler's own writes: both then commit together
/// (exactly-once for handlers whose effects live in this database). An
/// offset at or below the stored one changes nothing; returns the stored
/// offset afterwards. The row stays locked until the transaction ends.
pub async fn save_offset(
    conn: &mut PgConnection,
    reader: &str,
    offset: i64,
) -> Result<i64, StoreError> {
    check_offset(offset)?;
    let stored: i64 = sqlx::query_scalar(
        "INSERT INTO ferry_event_offsets (reader, position) VALUES ($1, $2)
         ON CONFLICT (reader) DO UPDATE
             SET position = GREATEST(ferry_event_offsets.position, EXCLUDED.position),
                 updated_at = now()
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
    pool: &PgPool,
    query: &EventQuery,
) -> Result<(Vec<StoredEvent>, i64), StoreError> {
    let (filters, values) = query.filters(|i| format!("${}", i + 3));
    let sql = format!(
        "SELECT h.head, e.seq, e.event_id, e.event_type, e.source_type, e.source_id,
                e.content_type, e.payload, e.payload_bytes, e.recorded_at
         FROM (SELECT COALESCE(max(seq), 0) AS head FROM ferry_events) h
         LEFT JOIN (
             SELECT * FROM ferry_events
             WHERE seq > $1{filters}
             ORDER BY seq
             LIMIT $2
         ) e ON true
         ORDER BY e.seq"
    );
    let mut q = sqlx::query(&sql)
        .bind(query.offset)
        .bind(i64::from(query.limit));
    for v in values {
        q = q.bind(v);
    }
    let rows = q.fetch_all(pool).await?;
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
fn event_from_row(row: &PgRow) -> Result<Option<StoredEvent>, sqlx::Error> {
    let Some(seq) = row.try_get::<Option<i64>, _>("seq")? else {
        return Ok(None);
    };
    let text: Option<String> = row.try_get("payload")?;
    let bytes: Option<Vec<u8>> = row.try_get("payload_bytes")?;
    let id: Uuid = row.try_get("event_id")?;
    Ok(Some(StoredEvent {
        seq,
        id,
        event_type: row.try_get("event_type")?,
        source_type: row.try_get("source_type")?,
        source_id: row.try_get("source_id")?,
        content_type: row.try_get("content_type")?,
        // The table's check keeps exactly one of the two.
        payload: text.map(String::into_bytes).or(bytes).unwrap_or_default(),
        recorded_at: row.try_get("recorded_at")?,
    }))
}

pub(super) async fn record_failure(
    pool: &PgPool,
    reader: &str,
    event: &StoredEvent,
    attempts: i32,
    error: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ferry_event_failures (reader, seq, event_id, attempts, last_error)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (reader, seq) DO UPDATE
             SET event_id = EXCLUDED.event_id, attempts = EXCLUDED.attempts,
                 last_error = EXCLUDED.last_error, failed_at = now()",
    )
    .bind(reader)
    .bind(event.seq)
    .bind(event.id)
    .bind(attempts)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn failures(
    pool: &PgPool,
    reader: Option<&str>,
) -> Result<Vec<EventFailure>, StoreError> {
    let rows = sqlx::query(
        "SELECT reader, seq, event_id, attempts, last_error, failed_at
         FROM ferry_event_failures
         WHERE $1::text IS NULL OR reader = $1
         ORDER BY failed_at, reader, seq",
    )
    .bind(reader)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(EventFailure {
            reader: row.try_get("reader")?,
            seq: row.try_get("seq")?,
            event_id: row.try_get("event_id")?,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
            failed_at: row.try_get("failed_at")?,
        });
    }
    Ok(out)
}

pub(super) async fn discard_failure(
    pool: &PgPool,
    reader: &str,
    seq: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query("DELETE FROM ferry_event_failures WHERE reader = $1 AND seq = $2")
        .bind(reader)
        .bind(seq)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}
