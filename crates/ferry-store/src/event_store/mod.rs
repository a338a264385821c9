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

use chrono::{DateTime, Utc};
use uuid::Uuid;

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
}

impl NewEvent {
    /// An event of type `event_type` with a JSON (or other) payload, a new
    /// UUIDv7 id, no source, content type `application/json`.
    pub fn new(event_type: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            source_type: String::new(),
            source_id: String::new(),
            content_type: "application/json".to_owned(),
            payload: payload.into(),
        }
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

    /// The `AND …` conditions for the filters that are set, with `param`
    /// giving the database's placeholder for the n-th filter value
    /// (counting from 0), and the values in order. Only the filters in use
    /// appear, so each combination gets a plan that can use its index.
    fn filters(&self, param: impl Fn(usize) -> String) -> (String, Vec<&str>) {
        let mut sql = String::new();
        let mut values = Vec::new();
        for (column, value) in [
            ("event_type", &self.event_type),
            ("source_type", &self.source_type),
            ("source_id", &self.source_id),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = {}", param(values.len())));
                values.push(v.as_str());
            }
        }
        (sql, values)
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
        match self {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let seqs = postgres::append(&mut tx, events).await?;
                tx.commit().await?;
                Ok(seqs)
            }
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let seqs = sqlite::append(&mut tx, events).await?;
                tx.commit().await?;
                Ok(seqs)
            }
            Database::Mysql(pool) => {
                let mut tx = pool.begin().await?;
                let seqs = mysql::append(&mut tx, events).await?;
                tx.commit().await?;
                Ok(seqs)
            }
        }
    }

    /// A page of committed events after `query.offset`; see [`EventPage`].
    /// Never returns an event while a lower sequence number could still
    /// commit. Fails with [`StoreError::InvalidPageLimit`] or
    /// [`StoreError::NegativeOffset`] on a bad query.
    pub async fn read_events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        query.validate()?;
        let (events, head) = match self {
            Database::Postgres(pool) => postgres::read_events(pool, query).await?,
            Database::Sqlite(pool) => sqlite::read_events(pool, query).await?,
            Database::Mysql(pool) => mysql::read_events(pool, query).await?,
        };
        Ok(EventPage::new(query, events, head))
    }

    /// The highest sequence number committed (0 for an empty store).
    pub async fn event_head(&self) -> Result<i64, StoreError> {
        let head: i64 = match self {
            Database::Postgres(pool) => sqlx::query_scalar(HEAD).fetch_one(pool).await?,
            Database::Sqlite(pool) => sqlx::query_scalar(HEAD).fetch_one(pool).await?,
            Database::Mysql(pool) => sqlx::query_scalar(HEAD).fetch_one(pool).await?,
        };
        Ok(head)
    }

    /// The stored offset of `reader`, 0 if it has none.
    pub async fn load_offset(&self, reader: &str) -> Result<i64, StoreError> {
        let offset: Option<i64> = match self {
            Database::Postgres(pool) => {
                sqlx::query_scalar("SELECT position FROM ferry_event_offsets WHERE reader = $1")
                    .bind(reader)
                    .fetch_optional(pool)
                    .await?
            }
            Database::Sqlite(pool) => {
                sqlx::query_scalar("SELECT position FROM ferry_event_offsets WHERE reader = ?")
                    .bind(reader)
                    .fetch_optional(pool)
                    .await?
            }
            Database::Mysql(pool) => {
                sqlx::query_scalar("SELECT position FROM ferry_event_offsets WHERE reader = ?")
                    .bind(reader)
                    .fetch_optional(pool)
                    .await?
            }
        };
        Ok(offset.unwrap_or(0))
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
        match self {
            Database::Postgres(pool) => {
                postgres::record_failure(pool, reader, event, attempts, error).await
            }
            Database::Sqlite(pool) => {
                sqlite::record_failure(pool, reader, event, attempts, error).await
            }
            Database::Mysql(pool) => {
                mysql::record_failure(pool, reader, event, attempts, error).await
            }
        }
    }

    /// Events readers gave up on, oldest first; `reader` narrows to one.
    pub async fn event_failures(
        &self,
        reader: Option<&str>,
    ) -> Result<Vec<EventFailure>, StoreError> {
        match self {
            Database::Postgres(pool) => postgres::failures(pool, reader).await,
            Database::Sqlite(pool) => sqlite::failures(pool, reader).await,
            Database::Mysql(pool) => mysql::failures(pool, reader).await,
        }
    }

    /// Forgets a recorded failure (after it was handled by hand or
    /// replayed); returns whether there was one.
    pub async fn discard_event_failure(&self, reader: &str, seq: i64) -> Result<bool, StoreError> {
        match self {
            Database::Postgres(pool) => postgres::discard_failure(pool, reader, seq).await,
            Database::Sqlite(pool) => sqlite::discard_failure(pool, reader, seq).await,
            Database::Mysql(pool) => mysql::discard_failure(pool, reader, seq).await,
        }
    }
}

/// The head: the highest committed sequence number, 0 when empty.
const HEAD: &str = "SELECT COALESCE(MAX(seq), 0) FROM ferry_events";
