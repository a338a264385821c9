//! The event store: an append-only, ordered log of domain events.
//!
//! An application appends events inside the transaction that makes the
//! state change ([`postgres::append`], [`mysql::append`], [`sqlite::append`]),
//! so an event exists if and only if its change committed. Readers page
//! through the log by offset ([`Database::read_events`]); a forwarder keeps
//! its offset in `ferry_event_offsets` ([`Database::save_offset`]), which only
//! moves forward.
//!
//! # Read horizon
//!
//! A reader that has seen event `N` never later finds a new event `≤ N`:
//! sequence numbers are handed out in commit order. On PostgreSQL and
//! MariaDB an append takes a store-wide lock that its transaction holds
//! until it commits or rolls back (PostgreSQL: a transaction-level advisory
//! lock taken by the insert trigger before `nextval`; MariaDB: the row lock
//! on `ferry_event_head`, whose counter the insert trigger increments), so
//! two transactions that append never overlap between their first append
//! and their end. SQLite has one writer at a time. The cost is that appends
//! of concurrent transactions are serialised: append as late in the
//! transaction as possible. See `docs/event-store.md`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ferry_core::{trace, BoxFuture};
use sqlx::Pool;
use uuid::Uuid;

use crate::dialect::{
    select_text, sql, values, with_pool, Dialect, PerDialect, Read, ReadFirst, Stmt,
};
use crate::{Database, StoreError};

pub mod mysql;
pub mod postgres;
pub mod sqlite;

/// The largest page [`Database::read_events`] returns.
pub const MAX_PAGE: u32 = 10_000;

/// An event to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique id, given to receivers as the idempotency key (`ce-id`).
    /// A UUIDv7 by default.
    pub id: Uuid,
    /// What happened, e.g. `order.cancelled`. Not empty.
    pub event_type: String,
    /// The kind of aggregate the event is about, e.g. `order` (may be empty).
    pub source_type: String,
    /// The aggregate's id, e.g. `42` (may be empty).
    pub source_id: String,
    /// MIME type of the payload; `application/json` by default.
    pub content_type: String,
    /// The event's body.
    pub payload: Vec<u8>,
    /// The W3C `traceparent` of the span that made the event, so that the
    /// forwarder's deliveries continue its trace; see [`NewEvent::new`].
    pub traceparent: Option<String>,
    /// The W3C `tracestate` going with [`NewEvent::traceparent`].
    pub tracestate: Option<String>,
}

impl NewEvent {
    /// An event of type `event_type` with a JSON (or other) payload, a new
    /// UUIDv7 id, no source, content type `application/json`, and the
    /// trace context of the current [`tracing`] span when it has an
    /// OpenTelemetry one (see [`ferry_core::trace`]; none otherwise).
    pub fn new(event_type: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            source_type: String::new(),
            source_id: String::new(),
            content_type: "application/json".to_owned(),
            payload: payload.into(),
            traceparent: None,
            tracestate: None,
        }
        .with_current_trace()
    }

    /// Sets the trace context from the current span, replacing an earlier
    /// one (e.g. for an event built outside the span that appends it).
    /// Leaves it as it is when the current span has no OpenTelemetry
    /// context.
    pub fn with_current_trace(mut self) -> Self {
        let mut headers = BTreeMap::new();
        if trace::inject(&tracing::Span::current(), &mut headers) {
            self.traceparent = headers.remove(trace::TRACEPARENT);
            self.tracestate = headers.remove(trace::TRACESTATE);
        }
        self
    }

    /// Sets the trace context: a W3C `traceparent` value and, optionally,
    /// a `tracestate`. Fails with [`StoreError::InvalidArgument`] when
    /// `traceparent` is not a valid one (a `tracestate` is kept as given;
    /// an unreadable one is dropped by the readers).
    pub fn with_trace_context(
        mut self,
        traceparent: impl Into<String>,
        tracestate: Option<String>,
    ) -> Result<Self, StoreError> {
        let traceparent = traceparent.into();
        if trace::parse_traceparent(&traceparent, None).is_none() {
            return Err(StoreError::InvalidArgument {
                parameter: "traceparent",
                value: traceparent,
                expected: "a W3C traceparent, 00-<32 hex>-<16 hex>-<2 hex>",
            });
        }
        self.traceparent = Some(traceparent.trim().to_owned());
        self.tracestate = tracestate.filter(|s| !s.trim().is_empty());
        Ok(self)
    }

    /// Removes the trace context: the forwarder's deliveries of the event
    /// start traces of their own.
    pub fn without_trace(mut self) -> Self {
        self.traceparent = None;
        self.tracestate = None;
        self
    }

    /// The `trace_context` column: the traceparent, then one space and
    /// the tracestate when there is one; `None` without a traceparent.
    fn trace_context(&self) -> Option<String> {
        let parent = self.traceparent.as_deref()?;
        Some(match self.tracestate.as_deref() {
            Some(state) => format!("{parent} {state}"),
            None => parent.to_owned(),
        })
    }

    /// The aggregate the event is about.
    pub fn with_source(
        mut self,
        source_type: impl Into<String>,
        source_id: impl Into<String>,
    ) -> Self {
        self.source_type = source_type.into();
        self.source_id = source_id.into();
        self
    }

    /// The payload's MIME type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// The event's id (to make an append idempotent, say).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the log: 1, 2, 3, … in commit order (PostgreSQL may skip
    /// numbers a rolled-back append took; never reuses them).
    pub seq: i64,
    /// Unique id.
    pub id: Uuid,
    /// What happened.
    pub event_type: String,
    /// Kind of aggregate (may be empty).
    pub source_type: String,
    /// Aggregate id (may be empty).
    pub source_id: String,
    /// MIME type of the payload.
    pub content_type: String,
    /// The body.
    pub payload: Vec<u8>,
    /// When it was appended (the database's clock).
    pub recorded_at: DateTime<Utc>,
    /// The W3C `traceparent` of the span that appended it, if any.
    pub traceparent: Option<String>,
    /// The W3C `tracestate` going with the traceparent, if any.
    pub tracestate: Option<String>,
}

/// Splits a stored `trace_context` (see [`NewEvent::trace_context`]) into
/// traceparent and tracestate.
fn split_trace_context(stored: Option<String>) -> (Option<String>, Option<String>) {
    let Some(stored) = stored.filter(|s| !s.trim().is_empty()) else {
        return (None, None);
    };
    match stored.trim().split_once(' ') {
        Some((parent, state)) => {
            let state = state.trim();
            (
                Some(parent.to_owned()),
                (!state.is_empty()).then(|| state.to_owned()),
            )
        }
        None => (Some(stored.trim().to_owned()), None),
    }
}

/// A page request: events after `offset`, in sequence order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Return events with `seq > offset`; 0 reads from the start.
    pub offset: i64,
    /// At most this many events (1..=[`MAX_PAGE`]).
    pub limit: u32,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events whose source type is this.
    pub source_type: Option<String>,
    /// Only events whose source id is this (usually with `source_type`).
    pub source_id: Option<String>,
}

/// A page of events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventPage {
    /// The events, in sequence order.
    pub events: Vec<StoredEvent>,
    /// The offset to ask for next. The last event's `seq` when the page is
    /// full; otherwise the highest sequence committed when the page was
    /// read (so a filtered reader skips what did not match), never less
    /// than the request's offset.
    pub next_offset: i64,
}

/// An event a reader gave up on and stepped over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFailure {
    /// The reader (forwarder) name.
    pub reader: String,
    /// The event's sequence number.
    pub seq: i64,
    /// The event's id.
    pub event_id: Uuid,
    /// Attempts made.
    pub attempts: i32,
    /// The last error.
    pub last_error: String,
    /// When it was recorded.
    pub failed_at: DateTime<Utc>,
}

impl EventQuery {
    /// Refuses a limit outside 1..=[`MAX_PAGE`] and a negative offset.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.limit == 0 || self.limit > MAX_PAGE {
            return Err(StoreError::InvalidPageLimit {
                limit: self.limit,
                max: MAX_PAGE,
            });
        }
        if self.offset < 0 {
            return Err(StoreError::NegativeOffset(self.offset));
        }
        Ok(())
    }

    /// The filters, by column, and their values when set.
    fn filters(&self) -> [(&'static str, Option<&str>); 3] {
        [
            ("event_type", self.event_type.as_deref()),
            ("source_type", self.source_type.as_deref()),
            ("source_id", self.source_id.as_deref()),
        ]
    }
}

impl EventPage {
    /// Builds a page from the events read and the head read in the same
    /// snapshot; see [`EventPage::next_offset`].
    fn new(query: &EventQuery, events: Vec<StoredEvent>, head: i64) -> Self {
        let last = events.last().map(|e| e.seq);
        let next_offset = match last {
            Some(seq) if events.len() >= query.limit as usize => seq,
            _ => head.max(last.unwrap_or(0)).max(query.offset),
        };
        Self {
            events,
            next_offset,
        }
    }
}

fn check_offset(offset: i64) -> Result<(), StoreError> {
    if offset < 0 {
        return Err(StoreError::NegativeOffset(offset));
    }
    Ok(())
}

impl Database {
    /// Appends `events` in one transaction of their own; returns their
    /// sequence numbers. To append with a state change, use the module
    /// function of the database inside the caller's transaction.
    pub async fn append_events(&self, events: &[NewEvent]) -> Result<Vec<i64>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        with_pool!(self, |pool| append_alone(pool, events).await)
    }

    /// A page of committed events after `query.offset`; see [`EventPage`].
    /// Never returns an event while a lower sequence number could still
    /// commit. Fails with [`StoreError::InvalidPageLimit`] or
    /// [`StoreError::NegativeOffset`] on a bad query.
    pub async fn read_events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        query.validate()?;
        let (events, head) = with_pool!(self, |pool| read_events(pool, query).await)?;
        Ok(EventPage::new(query, events, head))
    }

    /// The highest sequence number committed (0 for an empty store).
    pub async fn event_head(&self) -> Result<i64, StoreError> {
        with_pool!(self, |pool| event_head(pool).await)
    }

    /// The stored offset of `reader`, 0 if it has none.
    pub async fn load_offset(&self, reader: &str) -> Result<i64, StoreError> {
        with_pool!(self, |pool| load_offset(pool, reader).await)
    }

    /// Moves `reader`'s offset forward to `offset`. An offset at or below
    /// the stored one changes nothing (offsets never move back); returns
    /// the stored offset afterwards. To save it with a handler's own writes,
    /// use the module function of the database in that transaction.
    pub async fn save_offset(&self, reader: &str, offset: i64) -> Result<i64, StoreError> {
        match self {
            Database::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                postgres::save_offset(&mut conn, reader, offset).await
            }
            Database::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                sqlite::save_offset(&mut conn, reader, offset).await
            }
            Database::Mysql(pool) => {
                // Its upsert and the read-back are two statements.
                let mut tx = pool.begin().await?;
                let stored = mysql::save_offset(&mut tx, reader, offset).await?;
                tx.commit().await?;
                Ok(stored)
            }
        }
    }

    /// Records that `reader` gave up on event `seq` after `attempts`
    /// attempts, with `error`. Recording the same event again updates it.
    pub async fn record_event_failure(
        &self,
        reader: &str,
        event: &StoredEvent,
        attempts: i32,
        error: &str,
    ) -> Result<(), StoreError> {
        with_pool!(self, |pool| record_failure(
            pool, reader, event, attempts, error
        )
        .await)
    }

    /// Events readers gave up on, oldest first; `reader` narrows to one.
    pub async fn event_failures(
        &self,
        reader: Option<&str>,
    ) -> Result<Vec<EventFailure>, StoreError> {
        with_pool!(self, |pool| failures(pool, reader).await)
    }

    /// Forgets a recorded failure (after it was handled by hand or
    /// replayed); returns whether there was one.
    pub async fn discard_event_failure(&self, reader: &str, seq: i64) -> Result<bool, StoreError> {
        with_pool!(self, |pool| discard_failure(pool, reader, seq).await)
    }
}

/// A database the event store lives in: PostgreSQL ([`sqlx::Postgres`]),
/// SQLite ([`sqlx::Sqlite`]) or MariaDB ([`sqlx::MySql`]), as seen from
/// inside a transaction, so that units of work and transactional
/// forwarders can be generic over the database. (`ferry_events` re-exports
/// it.)
pub trait EventDatabase: sqlx::Database {
    /// Appends `events` inside the transaction `conn` (see
    /// [`postgres::append`]); from then until the transaction ends, other
    /// transactions' appends wait.
    fn append<'a>(
        conn: &'a mut Self::Connection,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>>;

    /// Moves `reader`'s offset forward to `offset` inside the transaction
    /// `conn`; never moves it back. Returns the offset afterwards.
    fn save_offset<'a>(
        conn: &'a mut Self::Connection,
        reader: &'a str,
        offset: i64,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// Takes `reader`'s offset row for the rest of the transaction `conn`
    /// (creating it at 0 when missing) and returns the stored offset.
    ///
    /// A no-op upsert: on PostgreSQL and MariaDB it write-locks the row
    /// until the transaction ends, so a second transaction of the same
    /// reader waits here and then sees what the first committed; on SQLite
    /// it makes the transaction the single writer. A transactional
    /// forwarder calls it first in each transaction and passes by the
    /// events at or below the result, which is what keeps its writes
    /// exactly once when its own view of the offset is stale (a COMMIT
    /// whose acknowledgement was lost, a second instance of one name).
    fn lock_offset<'a>(
        conn: &'a mut Self::Connection,
        reader: &'a str,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Self::save_offset(conn, reader, 0)
    }

    /// `pool` as a [`Database`].
    fn database(pool: &sqlx::Pool<Self>) -> Database;
}

/// The per-database halves of [`EventDatabase`]: each module's `append`
/// and `save_offset`.
macro_rules! event_database {
    ($db:ty, $module:ident) => {
        impl EventDatabase for $db {
            fn append<'a>(
                conn: &'a mut Self::Connection,
                events: &'a [NewEvent],
            ) -> BoxFuture<'a, Result<Vec<i64>, StoreError>> {
                Box::pin($module::append(conn, events))
            }

            fn save_offset<'a>(
                conn: &'a mut Self::Connection,
                reader: &'a str,
                offset: i64,
            ) -> BoxFuture<'a, Result<i64, StoreError>> {
                Box::pin($module::save_offset(conn, reader, offset))
            }

            fn database(pool: &sqlx::Pool<Self>) -> Database {
                <$db as Dialect>::database(pool)
            }
        }
    };
}

event_database!(sqlx::Postgres, postgres);
event_database!(sqlx::Sqlite, sqlite);
event_database!(sqlx::MySql, mysql);

async fn append_alone<DB: EventDatabase>(
    pool: &Pool<DB>,
    events: &[NewEvent],
) -> Result<Vec<i64>, StoreError> {
    let mut tx = pool.begin().await?;
    let seqs = DB::append(&mut *tx, events).await?;
    tx.commit().await?;
    Ok(seqs)
}

/// Rows per multi-row `INSERT` of [`append_rows`] (seven parameters each,
/// well below SQLite's 32,766 and MariaDB's 65,535).
const INSERT_CHUNK: usize = 1000;

/// Appends with multi-row `INSERT … RETURNING seq`, for databases that
/// number rows in `VALUES` order as they insert them (SQLite, one writer
/// at a time; MariaDB, whose insert trigger takes the counter's row lock).
/// `RETURNING`'s order is unspecified, hence the sort. (One string per
/// chunk size, as sqlx's `QueryBuilder` would build; its arguments cannot
/// outlive the builder in code generic over the database.)
async fn append_rows<DB: Dialect>(
    conn: &mut DB::Connection,
    events: &[NewEvent],
) -> Result<Vec<i64>, StoreError> {
    let mut seqs = Vec::with_capacity(events.len());
    for chunk in events.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO ferry_events
                (event_id, event_type, source_type, source_id, content_type, payload,
                 trace_context)
             VALUES {}
             RETURNING seq",
            values::<DB>(chunk.len(), 7)
        );
        let mut insert = Stmt::<DB>::new(&sql);
        for e in chunk {
            insert = insert
                .bind(DB::id(e.id))
                .bind(e.event_type.as_str())
                .bind(e.source_type.as_str())
                .bind(e.source_id.as_str())
                .bind(e.content_type.as_str())
                .bind(e.payload.as_slice())
                .bind(e.trace_context());
        }
        let rows = insert.fetch_all(conn).await?;
        let mut chunk_seqs = rows
            .iter()
            .map(ReadFirst::read_first)
            .collect::<Result<Vec<i64>, _>>()?;
        chunk_seqs.sort_unstable();
        seqs.extend(chunk_seqs);
    }
    Ok(seqs)
}

/// The event store's SQL that is the same on every database.
struct Statements {
    /// [`read_events`], by the set of filters in use (bit `i` for
    /// [`EventQuery::filters`]`[i]`): only the filters in use appear, so
    /// each combination gets a plan that can use its index.
    read: Vec<String>,
    head: String,
    load_offset: String,
    record_failure: String,
    failures: String,
    discard_failure: String,
}

fn statements<DB: Dialect>() -> &'static Statements {
    static STATEMENTS: PerDialect<Statements> = PerDialect::new();
    STATEMENTS.get::<DB>(|| {
        let filter_columns = EventQuery::default().filters().map(|(column, _)| column);
        // The page and the head, read by one statement and so in one
        // snapshot.
        let read = (0..1 << filter_columns.len())
            .map(|set| {
                let mut filters = String::new();
                let mut n = 1;
                for (i, column) in filter_columns.iter().enumerate() {
                    if set & (1 << i) != 0 {
                        n += 1;
                        filters.push_str(&format!(" AND {column} = ${n}"));
                    }
                }
                sql::<DB>(&format!(
                    "SELECT h.head, e.seq, {}, {}, {}, {}, {}, {}, e.recorded_at, {}
                     FROM (SELECT {} AS head FROM ferry_events) h
                     LEFT JOIN (
                         SELECT * FROM ferry_events
                         WHERE seq > $1{filters}
                         ORDER BY seq
                         LIMIT ${}
                     ) e ON 1 = 1
                     ORDER BY e.seq",
                    select_text::<DB>("e.event_id", "event_id"),
                    select_text::<DB>("e.event_type", "event_type"),
                    select_text::<DB>("e.source_type", "source_type"),
                    select_text::<DB>("e.source_id", "source_id"),
                    select_text::<DB>("e.content_type", "content_type"),
                    DB::payload("e"),
                    select_text::<DB>("e.trace_context", "trace_context"),
                    DB::cast_bigint("COALESCE(MAX(seq), 0)"),
                    n + 1,
                ))
            })
            .collect();
        let replace = ["event_id", "attempts", "last_error", "cause"]
            .map(|c| format!("{c} = {}", DB::excluded(c)))
            .join(", ");
        Statements {
            read,
            head: HEAD.to_owned(),
            load_offset: sql::<DB>("SELECT position FROM ferry_event_offsets WHERE reader = $1"),
            record_failure: sql::<DB>(&format!(
                "INSERT INTO ferry_event_failures (reader, seq, event_id, attempts, last_error, cause)
                 VALUES ($1, $2, $3, $4, $5, $6) {}",
                DB::on_conflict(
                    "reader, seq",
                    &format!("{replace}, failed_at = {}", DB::NOW)
                )
            )),
            failures: sql::<DB>(&format!(
                "SELECT {}, seq, {}, attempts, {}, failed_at
                 FROM ferry_event_failures
                 WHERE reader = COALESCE($1, reader)
                 ORDER BY failed_at, reader, seq",
                select_text::<DB>("reader", "reader"),
                select_text::<DB>("event_id", "event_id"),
                select_text::<DB>("last_error", "last_error"),
            )),
            discard_failure: sql::<DB>(
                "DELETE FROM ferry_event_failures WHERE reader = $1 AND seq = $2",
            ),
        }
    })
}

/// The page and the head.
async fn read_events<DB: Dialect>(
    pool: &Pool<DB>,
    query: &EventQuery,
) -> Result<(Vec<StoredEvent>, i64), StoreError> {
    let filters = query.filters();
    let set = filters
        .iter()
        .enumerate()
        .filter(|(_, (_, value))| value.is_some())
        .fold(0, |set, (i, _)| set | 1 << i);
    let mut stmt = Stmt::<DB>::new(&statements::<DB>().read[set]).bind(query.offset);
    for value in filters.into_iter().filter_map(|(_, value)| value) {
        stmt = stmt.bind(value);
    }
    let rows = stmt
        .bind(i64::from(query.limit))
        .fetch_all(&mut *pool.acquire().await?)
        .await?;
    let head = match rows.first() {
        Some(row) => row.read("head")?,
        None => 0,
    };
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(event) = event_from_row::<DB>(row)? {
            events.push(event);
        }
    }
    Ok((events, head))
}

/// The event in `row`, `None` for the head-only row of an empty page.
fn event_from_row<DB: Dialect>(row: &DB::Row) -> Result<Option<StoredEvent>, sqlx::Error> {
    let seq: Option<i64> = row.read("seq")?;
    let Some(seq) = seq else {
        return Ok(None);
    };
    let (traceparent, tracestate) = split_trace_context(row.read("trace_context")?);
    Ok(Some(StoredEvent {
        seq,
        id: DB::read_uuid(row, "event_id")?,
        event_type: row.read("event_type")?,
        source_type: row.read("source_type")?,
        source_id: row.read("source_id")?,
        content_type: row.read("content_type")?,
        payload: DB::read_payload(row)?,
        recorded_at: DB::read_time(row, "recorded_at")?,
        traceparent,
        tracestate,
    }))
}

async fn event_head<DB: Dialect>(pool: &Pool<DB>) -> Result<i64, StoreError> {
    let row = Stmt::<DB>::new(&statements::<DB>().head)
        .fetch_one(&mut *pool.acquire().await?)
        .await?;
    Ok(row.read("head")?)
}

async fn load_offset<DB: Dialect>(pool: &Pool<DB>, reader: &str) -> Result<i64, StoreError> {
    let row = Stmt::<DB>::new(&statements::<DB>().load_offset)
        .bind(reader)
        .fetch_optional(&mut *pool.acquire().await?)
        .await?;
    Ok(row.map(|r| r.read("position")).transpose()?.unwrap_or(0))
}

async fn record_failure<DB: Dialect>(
    pool: &Pool<DB>,
    reader: &str,
    event: &StoredEvent,
    attempts: i32,
    error: &str,
) -> Result<(), StoreError> {
    Stmt::<DB>::new(&statements::<DB>().record_failure)
        .bind(reader)
        .bind(event.seq)
        .bind(DB::id(event.id))
        .bind(attempts)
        .bind(error)
        .bind(crate::admin::cause_of(error))
        .execute(&mut *pool.acquire().await?)
        .await?;
    Ok(())
}

async fn failures<DB: Dialect>(
    pool: &Pool<DB>,
    reader: Option<&str>,
) -> Result<Vec<EventFailure>, StoreError> {
    let rows = Stmt::<DB>::new(&statements::<DB>().failures)
        .bind(reader)
        .fetch_all(&mut *pool.acquire().await?)
        .await?;
    let failure = |row: &DB::Row| -> Result<EventFailure, sqlx::Error> {
        Ok(EventFailure {
            reader: row.read("reader")?,
            seq: row.read("seq")?,
            event_id: DB::read_uuid(row, "event_id")?,
            attempts: row.read("attempts")?,
            last_error: row.read("last_error")?,
            failed_at: DB::read_time(row, "failed_at")?,
        })
    };
    Ok(rows.iter().map(failure).collect::<Result<_, _>>()?)
}

async fn discard_failure<DB: Dialect>(
    pool: &Pool<DB>,
    reader: &str,
    seq: i64,
) -> Result<bool, StoreError> {
    let done = Stmt::<DB>::new(&statements::<DB>().discard_failure)
        .bind(reader)
        .bind(seq)
        .execute(&mut *pool.acquire().await?)
        .await?;
    Ok(done > 0)
}

/// The head: the highest committed sequence number, 0 when empty.
const HEAD: &str = "SELECT COALESCE(MAX(seq), 0) AS head FROM ferry_events";
