//! Backfill in MariaDB log mode (see [`crate::backfill`] for the method
//! and its guarantee).
//!
//! MariaDB has no logical decoding messages, so requests and watermarks
//! travel as rows of a *signal table*, `ferry_cdc_signals` in the captured
//! database (as Debezium's signalling table does): each is inserted and
//! deleted again in one transaction, so the table stays empty while the
//! binary log keeps the insert, in commit order among the changes. The
//! reader ([`super::stream`]) picks those rows out of the stream whatever
//! the capture's table filter says; nothing of them reaches a sink.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Params, Value};
use uuid::Uuid;

use super::saved::KeyValue;
use super::server::{self, BinlogPosition, Schema};
use super::snapshot;
use crate::backfill::{Backfills, Cursor, Job, Ledger, Message, Request, Window};
use crate::capture::CaptureError;
use crate::change::TableId;
use crate::filter::Filter;
use crate::offsets::Offsets;

/// The signal table's name.
pub const SIGNALS: &str = "ferry_cdc_signals";

/// What the reader found in the stream for the backfill: the window it
/// watches, requests read, a chunk handed over, a lost connection.
#[derive(Debug, Default)]
pub struct Signals {
    /// The chunk between its watermarks.
    pub(crate) window: Option<Window>,
    /// Requests read, to be queued by the capture.
    pub requests: Vec<Request>,
    /// A chunk whose rows were queued (none when a streamed change
    /// superseded every one), ending at the position given.
    pub(crate) flushed: Option<(BinlogPosition, Cursor)>,
    /// The connection was lost: what was read since the last
    /// acknowledgement is read again.
    pub lost: bool,
}

impl Signals {
    /// A signal row's `content`, read at its place in the stream.
    pub fn signal(&mut self, content: &str) {
        match Message::parse(content.as_bytes()) {
            Some(Message::Request(request)) => self.requests.push(request),
            Some(Message::Watermark { mark, high }) => {
                if let Some(w) = self.window.as_mut() {
                    w.watermark(mark, high);
                }
            }
            None => {}
        }
    }
}

/// Creates the signal table when missing.
pub async fn ensure_table(conn: &mut Conn) -> Result<(), CaptureError> {
    conn.query_drop(format!(
        "CREATE TABLE IF NOT EXISTS {SIGNALS} (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            content TEXT NOT NULL,
            created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
        )"
    ))
    .await
    .map_err(|e| server::failure(e, "cannot create the backfill signal table"))
}

/// Writes `content` into the binary log as a signal row (inserted and
/// deleted in one transaction).
pub async fn signal(conn: &mut Conn, content: &str) -> Result<(), CaptureError> {
    let id = Uuid::now_v7().to_string();
    let doing = "cannot write a backfill signal";
    let mut tx = conn
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .map_err(|e| server::failure(e, doing))?;
    tx.exec_drop(
        format!("INSERT INTO {SIGNALS} (id, content) VALUES (?, ?)"),
        (id.as_str(), content),
    )
    .await
    .map_err(|e| server::failure(e, doing))?;
    tx.exec_drop(
        format!("DELETE FROM {SIGNALS} WHERE id = ?"),
        (id.as_str(),),
    )
    .await
    .map_err(|e| server::failure(e, doing))?;
    tx.commit().await.map_err(|e| server::failure(e, doing))
}

/// A capture's backfill jobs, and the connection chunks are read on.
pub struct Backfiller {
    name: String,
    opts: Opts,
    filter: Filter,
    chunk: usize,
    offsets: Offsets,
    ledger: Ledger<BinlogPosition>,
    conn: Option<Conn>,
    table_ready: bool,
}

impl Backfiller {
    /// The jobs saved for capture `name`.
    pub async fn load(
        name: &str,
        opts: Opts,
        filter: Filter,
        chunk: usize,
        offsets: Offsets,
    ) -> Result<Self, CaptureError> {
        let saved = Backfills::load(&offsets, name)
            .await
            .map_err(|e| super::store_failure(e, "cannot load the backfill jobs"))?;
        Ok(Self {
            name: name.to_owned(),
            opts,
            filter,
            chunk,
            offsets,
            ledger: Ledger::new(saved),
            conn: None,
            table_ready: false,
        })
    }

    /// Whether a chunk should be read now.
    pub fn wants_chunk(&self, window_open: bool) -> bool {
        !window_open && !self.ledger.in_flight() && self.ledger.next().is_some()
    }

    /// Whether a job is unfinished.
    pub fn active(&self, window_open: bool) -> bool {
        window_open || self.ledger.in_flight() || !self.ledger.live.jobs.is_empty()
    }

    /// Queues `job` and saves it; `false` when it was known.
    pub async fn add(&mut self, job: Job) -> Result<bool, CaptureError> {
        if !self.ledger.add(job) {
            return Ok(false);
        }
        self.save().await?;
        Ok(true)
    }

    /// What the reader found since the last read.
    pub async fn take(&mut self, signals: &mut Signals) -> Result<(), CaptureError> {
        if std::mem::take(&mut signals.lost) {
            self.ledger.reset();
        }
        for request in std::mem::take(&mut signals.requests) {
            if request.capture != self.name {
                continue;
            }
            let mut job = Job::of(&request);
            job.tables.retain(|t| server::captures(&self.filter, t));
            if job.tables.len() < request.tables.len() {
                tracing::warn!(capture = %self.name, request = %request.id,
                    "cdc backfill: tables this capture does not capture are left out");
            }
            if self.add(job).await? {
                tracing::info!(capture = %self.name, request = %request.id, "cdc backfill requested");
            }
        }
        if let Some((at, cursor)) = signals.flushed.take() {
            if cursor.rows == 0 {
                self.skip(&cursor).await?;
            } else {
                self.ledger.hand(at, cursor);
            }
        }
        Ok(())
    }

    /// Everything up to `at` was delivered.
    pub async fn acknowledge(&mut self, at: &BinlogPosition) -> Result<(), CaptureError> {
        if self.ledger.acknowledge(at) {
            self.save().await?;
        }
        Ok(())
    }

    /// Reads the next chunk between two watermarks; `None` when there was
    /// nothing to read (the job moved on).
    pub(crate) async fn open_window(
        &mut self,
        schema: &mut Schema,
    ) -> Result<Option<Window>, CaptureError> {
        let Some((job, table)) = self.ledger.next() else {
            return Ok(None);
        };
        let next_table = Cursor {
            job: job.id.clone(),
            table: job.table + 1,
            after: None,
            rows: 0,
        };
        let Some(info) = schema.info(&table).await? else {
            tracing::warn!(capture = %self.name, %table, "cdc backfill: the table is gone; skipped");
            self.skip(&next_table).await?;
            return Ok(None);
        };
        if info.key.is_empty() {
            tracing::error!(capture = %self.name, %table, "cdc backfill: the table has no primary key; skipped");
            self.skip(&next_table).await?;
            return Ok(None);
        }
        let after: Option<Vec<Value>> = job.after.as_ref().map(|keys| {
            keys.iter()
                .filter_map(|k| serde_json::from_str::<KeyValue>(k).ok())
                .filter_map(|k| k.to_value())
                .collect()
        });
        let limit = self.chunk.max(1);
        let (sql, params) = snapshot::chunk_query(&info, after.as_deref(), limit);
        let conn = self.conn().await?;
        let mark = Uuid::now_v7();
        signal(conn, &Message::watermark(mark, false)).await?;
        let started = chrono::Utc::now();
        let rows: Vec<mysql_async::Row> = match conn.exec(sql, Params::Positional(params)).await {
            Ok(rows) => rows,
            Err(e) => {
                self.conn = None;
                return Err(server::failure(
                    e,
                    &format!("cannot read {table} for a backfill"),
                ));
            }
        };
        let full = rows.len() == limit;
        let mut changes = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in rows {
            let (change, key) = snapshot::row_change(&info, row, &job.label, started, &self.filter);
            changes.push(change);
            last = Some(key);
        }
        if changes.is_empty() {
            self.skip(&next_table).await?;
            return Ok(None);
        }
        let cursor = if full {
            Cursor {
                job: job.id,
                table: job.table,
                after: last.map(|k| {
                    k.iter()
                        .map(|v| serde_json::to_string(&KeyValue::from(v)).unwrap_or_default())
                        .collect()
                }),
                rows: 0,
            }
        } else {
            next_table
        };
        signal(self.conn().await?, &Message::watermark(mark, true)).await?;
        Ok(Some(Window::new(mark, table, changes, cursor)))
    }

    /// The tables the capture reads, in name order, from `from` on.
    pub async fn tables_from(&mut self, from: &TableId) -> Result<Vec<TableId>, CaptureError> {
        let filter = self.filter.clone();
        let conn = self.conn().await?;
        let tables = server::captured_tables(conn, &filter).await?;
        Ok(tables.into_iter().filter(|t| t >= from).collect())
    }

    async fn conn(&mut self) -> Result<&mut Conn, CaptureError> {
        if self.conn.is_none() {
            let mut conn = server::connect(&self.opts).await?;
            conn.query_drop("SET SESSION time_zone = '+00:00'")
                .await
                .map_err(|e| server::failure(e, "cannot set the backfill's time zone"))?;
            self.conn = Some(conn);
        }
        if !self.table_ready {
            if let Some(conn) = self.conn.as_mut() {
                ensure_table(conn).await?;
            }
            self.table_ready = true;
        }
        self.conn
            .as_mut()
            .ok_or_else(|| CaptureError::unavailable("the backfill's connection is closed"))
    }

    async fn skip(&mut self, cursor: &Cursor) -> Result<(), CaptureError> {
        self.ledger.skip(cursor);
        self.save().await
    }

    async fn save(&mut self) -> Result<(), CaptureError> {
        self.ledger.save(&self.offsets, &self.name).await
    }
}
