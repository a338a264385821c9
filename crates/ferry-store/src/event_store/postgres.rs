//! The event store on PostgreSQL.
//!
//! Sequence numbers are assigned by the insert trigger of `ferry_events`
//! under a transaction-level advisory lock (see the module docs of
//! [`crate::event_store`]); a statement-level trigger signals [`CHANNEL`]
//! after each insert, so readers that `LISTEN` learn of new events when
//! their transaction commits.

use sqlx::PgConnection;

use super::{check_offset, NewEvent};
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
    let mut traces: Vec<Option<String>> = Vec::with_capacity(n);
    for e in events {
        let (text, bytes) = split_payload(&e.payload);
        ids.push(e.id);
        types.push(&e.event_type);
        source_types.push(&e.source_type);
        source_ids.push(&e.source_id);
        content_types.push(&e.content_type);
        texts.push(text);
        blobs.push(bytes);
        traces.push(e.trace_context());
    }
    // Rows are inserted, and numbered by the trigger, in the order of the
    // arrays; RETURNING gives no order guarantee, hence the sort.
    let mut seqs: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO ferry_events
            (event_id, event_type, source_type, source_id, content_type, payload, payload_bytes,
             trace_context)
         SELECT i, t, st, si, ct, p, pb, tc
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[],
                     $8::text[])
              WITH ORDINALITY AS u(i, t, st, si, ct, p, pb, tc, n)
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
    .bind(traces)
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
