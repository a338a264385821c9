//! Backfill in PostgreSQL log mode: chunks read between two watermarks
//! written into the log with `pg_logical_emit_message` (see
//! [`crate::backfill`] for the method and its guarantee).
//!
//! One chunk is in flight at a time: the next is read once the last is
//! acknowledged, so the saved progress never runs ahead of what was
//! delivered. A chunk's rows are held in memory (`snapshot_chunk` of
//! them) from its select until the stream reaches its high watermark.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use pg_walstream::connection::PgReplicationConnection;
use serde_json::json;
use uuid::Uuid;

use super::setup::{self, sql_failure};
use super::snapshot::{self, Plan, Setup};
use super::{replication_failure, store_failure, PgLogConfig};
use crate::backfill::{Backfills, Cursor, Job, Ledger, Message, Request, Window, PREFIX};
use crate::capture::{CaptureError, Captured, Checkpoint};
use crate::change::{Change, TableId};
use crate::offsets::Offsets;

/// A capture's backfill jobs and the chunk in flight.
pub(super) struct Backfiller {
    name: String,
    setup: Setup,
    offsets: Offsets,
    /// The jobs; the chunk in flight ends at an LSN.
    ledger: Ledger<u64>,
    reader: Option<PgReplicationConnection>,
    window: Option<Window>,
    chunks: u64,
}

impl Backfiller {
    /// The jobs saved for capture `name`.
    pub async fn load(name: &str, setup: Setup, offsets: Offsets) -> Result<Self, CaptureError> {
        let saved = Backfills::load(&offsets, name)
            .await
            .map_err(|e| store_failure(e, "postgres capture: loading the backfill jobs"))?;
        Ok(Self {
            name: name.to_owned(),
            setup,
            offsets,
            ledger: Ledger::new(saved),
            reader: None,
            window: None,
            chunks: 0,
        })
    }

    /// Whether a chunk should be read now: a job waits and no chunk is in
    /// flight.
    pub fn wants_chunk(&self) -> bool {
        self.window.is_none() && !self.ledger.in_flight() && self.ledger.next().is_some()
    }

    /// Whether a job is unfinished (a chunk in flight, or to read).
    pub fn active(&self) -> bool {
        self.window.is_some() || self.ledger.in_flight() || !self.ledger.live.jobs.is_empty()
    }

    /// Forgets the chunk in flight (the stream is read again from the last
    /// acknowledged position): the job goes on from what was acknowledged.
    pub fn reset(&mut self) {
        self.window = None;
        self.ledger.reset();
    }

    /// Queues `job` and saves it; `false` when it was known.
    pub async fn add(&mut self, job: Job) -> Result<bool, CaptureError> {
        if !self.ledger.add(job) {
            return Ok(false);
        }
        self.save().await?;
        Ok(true)
    }

    /// A message of Ferry's read from the stream.
    pub async fn message(&mut self, content: &[u8]) -> Result<(), CaptureError> {
        match Message::parse(content) {
            Some(Message::Request(request)) => self.request(request).await,
            Some(Message::Watermark { mark, high }) => {
                if let Some(w) = self.window.as_mut() {
                    w.watermark(mark, high);
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn request(&mut self, request: Request) -> Result<(), CaptureError> {
        if request.capture != self.name {
            return Ok(());
        }
        let (taken, refused): (Vec<TableId>, Vec<TableId>) = request
            .tables
            .iter()
            .cloned()
            .partition(|t| self.setup.filter.captures(t));
        if !refused.is_empty() {
            tracing::warn!(
                capture = %self.name,
                request = %request.id,
                tables = ?refused.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "cdc backfill: tables this capture does not capture are left out"
            );
        }
        let mut job = Job::of(&request);
        job.tables = taken;
        if self.add(job).await? {
            tracing::info!(
                capture = %self.name,
                request = %request.id,
                tables = ?request.tables.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "cdc backfill requested"
            );
        }
        Ok(())
    }

    /// Changes the stream just decoded: while a chunk's watermarks are
    /// open, each drops the chunk's row it supersedes.
    pub fn observe<'a>(&mut self, changes: impl Iterator<Item = &'a Captured>) {
        if let Some(w) = self.window.as_mut() {
            for c in changes {
                w.observe(&c.change);
            }
        }
    }

    /// A transaction ended at `end_lsn`: when it was the chunk's high
    /// watermark's, the chunk's rows left are queued in `out`, the last
    /// with the checkpoint `{"lsn": end_lsn, "backfill": chunk}`.
    pub async fn commit(
        &mut self,
        end_lsn: u64,
        out: &mut VecDeque<Captured>,
    ) -> Result<(), CaptureError> {
        if !self.window.as_ref().is_some_and(|w| w.high) {
            return Ok(());
        }
        let Some(window) = self.window.take() else {
            return Ok(());
        };
        let (rows, mut cursor): (Vec<Change>, Cursor) = window.into_rows();
        cursor.rows = rows.len() as u64;
        if rows.is_empty() {
            return self.skip(cursor).await;
        }
        self.chunks += 1;
        let n = rows.len();
        for (i, change) in rows.into_iter().enumerate() {
            let checkpoint = (i + 1 == n)
                .then(|| Checkpoint(json!({ "lsn": end_lsn, "backfill": self.chunks })));
            out.push_back(Captured { change, checkpoint });
        }
        self.ledger.hand(end_lsn, cursor);
        Ok(())
    }

    /// Everything up to `lsn` was delivered: when that covers the chunk
    /// in flight, saves the progress after it.
    pub async fn acknowledge(&mut self, lsn: u64) -> Result<(), CaptureError> {
        if self.ledger.acknowledge(&lsn) {
            self.save().await?;
        }
        Ok(())
    }

    /// Reads the next chunk of the current job between two watermarks.
    pub async fn open_window(&mut self, pool: &sqlx::PgPool) -> Result<(), CaptureError> {
        let Some((job, table)) = self.ledger.next() else {
            return Ok(());
        };
        let (job_id, label, index, after) = (job.id, job.label, job.table, job.after);
        if self.reader.is_none() {
            let reader = PgReplicationConnection::connect_async(&self.setup.url)
                .await
                .map_err(|e| replication_failure("opening the backfill's connection", e))?;
            self.reader = Some(reader);
        }
        let version = self.reader.as_ref().map_or(0, |r| r.server_version());
        let next_table = Cursor {
            job: job_id.clone(),
            table: index + 1,
            after: None,
            rows: 0,
        };
        let plan: Plan = match snapshot::plan(pool, version, &table, &self.setup).await? {
            Some(plan) if plan.keyed() => plan,
            Some(_) => {
                tracing::error!(capture = %self.name, %table, "cdc backfill: the table has no primary key (nor replica identity index) to read it by; skipped");
                return self.skip(next_table).await;
            }
            None => {
                tracing::warn!(capture = %self.name, %table, "cdc backfill: the table is gone or not published; skipped");
                return self.skip(next_table).await;
            }
        };
        let limit = self.setup.chunk.max(1);
        let sql = plan.chunk(after.as_deref(), limit)?;
        let mark = Uuid::now_v7();
        emit(pool, &Message::watermark(mark, false)).await?;
        let started: DateTime<Utc> = Utc::now();
        let result = match self.reader.as_mut() {
            Some(reader) => {
                snapshot::exec(reader, &sql, &format!("reading {table} for a backfill"))
                    .await
                    .inspect_err(|_| self.reader = None)?
            }
            None => return Ok(()),
        };
        let mut rows = Vec::with_capacity(result.ntuples().max(0) as usize);
        let mut last = None;
        for row in 0..result.ntuples() {
            let (change, key) =
                snapshot::row_change(&plan, &result, row, &self.setup, &label, started)?;
            rows.push(change);
            last = key;
        }
        drop(result);
        if rows.is_empty() {
            return self.skip(next_table).await;
        }
        let cursor = if rows.len() < limit {
            next_table
        } else {
            Cursor {
                job: job_id,
                table: index,
                after: last,
                rows: 0,
            }
        };
        emit(pool, &Message::watermark(mark, true)).await?;
        tracing::debug!(capture = %self.name, %table, rows = rows.len(), "cdc backfill chunk read");
        self.window = Some(Window::new(mark, table, rows, cursor));
        Ok(())
    }

    /// Moves on without delivering anything (nothing is in flight).
    async fn skip(&mut self, cursor: Cursor) -> Result<(), CaptureError> {
        self.ledger.skip(&cursor);
        self.save().await
    }

    async fn save(&mut self) -> Result<(), CaptureError> {
        self.ledger.save(&self.offsets, &self.name).await
    }

    /// The tables the capture reads, in name order, from `from` on.
    pub async fn tables_from(
        &mut self,
        from: Option<&TableId>,
    ) -> Result<Vec<TableId>, CaptureError> {
        let mut reader = PgReplicationConnection::connect_async(&self.setup.url)
            .await
            .map_err(|e| replication_failure("opening the backfill's connection", e))?;
        let tables = snapshot::list_tables(&mut reader, &self.setup).await?;
        Ok(tables
            .into_iter()
            .filter(|t| from.is_none_or(|f| t >= f))
            .collect())
    }
}

/// Writes `content` into the log as a transactional message of Ferry's.
pub(super) async fn emit(pool: &sqlx::PgPool, content: &str) -> Result<(), CaptureError> {
    sqlx::query("SELECT pg_logical_emit_message(true, $1, $2)::text")
        .bind(PREFIX)
        .bind(content)
        .execute(pool)
        .await
        .map_err(|e| sql_failure("postgres capture: writing a backfill watermark", e))?;
    Ok(())
}

/// Asks capture `config.name` to backfill `tables`: checks that its slot
/// exists, that the server sends logical decoding messages (PostgreSQL 14
/// on) and that each table exists with a primary key (or replica identity
/// index), then writes the request into the log, where the capture reads
/// it in order, now or when it next starts.
pub async fn request(config: &PgLogConfig, tables: &[TableId]) -> Result<Request, CaptureError> {
    config.validate()?;
    let pool = setup::pool(config).await?;
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int4")
        .fetch_one(&pool)
        .await
        .map_err(|e| sql_failure("postgres capture: reading the server's version", e))?;
    if version < 140000 {
        return Err(CaptureError::permanent(
            "postgres capture: a backfill needs PostgreSQL 14 or later (logical decoding \
             messages in pgoutput)",
        ));
    }
    if setup::status(config).await?.is_none() {
        return Err(CaptureError::permanent(format!(
            "postgres capture: no capture named {} here (replication slot {} absent); start it \
             first (`ferry cdc --from … --name {}`)",
            config.name,
            config.slot_name(),
            config.name
        )));
    }
    for table in tables {
        let keyed: Option<bool> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid \
               AND (i.indisprimary OR i.indisreplident)) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
        )
        .bind(&table.schema)
        .bind(&table.name)
        .fetch_optional(&pool)
        .await
        .map_err(|e| sql_failure("postgres capture: looking up a table to backfill", e))?;
        match keyed {
            None => {
                return Err(CaptureError::permanent(format!(
                    "postgres capture: no table {table} to backfill"
                )))
            }
            Some(false) => {
                return Err(CaptureError::permanent(format!(
                    "postgres capture: {table} has no primary key (nor replica identity index): \
                     a backfill reads it in key order; add one"
                )))
            }
            Some(true) => {}
        }
    }
    let request = Request::new(&config.name, tables.to_vec());
    emit(&pool, &request.to_message()).await?;
    Ok(request)
}

/// Capture `config.name`'s backfill jobs as acknowledged.
pub async fn jobs(config: &PgLogConfig) -> Result<Backfills, CaptureError> {
    let pool = setup::pool(config).await?;
    let offsets = Offsets::open(ferry_store::Database::Postgres(pool))
        .await
        .map_err(|e| store_failure(e, "postgres capture: opening the saved progress"))?;
    Backfills::load(&offsets, &config.name)
        .await
        .map_err(|e| store_failure(e, "postgres capture: loading the backfill jobs"))
}
