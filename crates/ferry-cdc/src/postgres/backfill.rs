//! Backfill in PostgreSQL log mode: chunks read between two watermarks
//! written into the log with `pg_logical_emit_message` (see
//! [`crate::backfill`] for the method and its guarantee).
//!
//! One chunk is in flight at a time: the next is read once the last is
//! acknowledged, so the saved progress never runs ahead of what was
//! delivered. A chunk's rows are held in memory (`snapshot_chunk` of
//! them) from its select until the stream reaches its high watermark.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use pg_walstream::connection::PgReplicationConnection;
use serde_json::json;
use uuid::Uuid;

use super::setup::{self, sql_failure};
use super::snapshot::{self, Plan, Setup};
use super::{replication_failure, store_failure, PgLogConfig};
use crate::backfill::{Backfills, Cursor, Job, Message, Request, PREFIX};
use crate::capture::{CaptureError, Captured, Checkpoint};
use crate::change::{Change, Op, Row, TableId};
use crate::offsets::Offsets;

/// A chunk between its watermarks.
struct Window {
    mark: Uuid,
    low: bool,
    high: bool,
    table: TableId,
    /// The chunk's rows in key order; `None` once a streamed change
    /// superseded one.
    rows: Vec<Option<Change>>,
    /// Key text → index in `rows`.
    index: HashMap<String, usize>,
    /// Where the job stands once the chunk is delivered.
    cursor: Cursor,
}

impl Window {
    /// Drops the chunk's row that `change` supersedes (by its key, and by
    /// its old key when an update moved the row).
    fn observe(&mut self, change: &Change) {
        if change.source.table != self.table {
            return;
        }
        if change.op == Op::Truncate {
            self.rows.iter_mut().for_each(|r| *r = None);
            return;
        }
        let mut keys = vec![change.key_text()];
        if let Some(before) = &change.before {
            let old: Option<Row> = change
                .key
                .keys()
                .map(|k| before.get(k).map(|v| (k.clone(), v.clone())))
                .collect();
            if let Some(old) = old {
                keys.push(serde_json::Value::Object(old).to_string());
            }
        }
        for key in keys {
            if let Some(&i) = self.index.get(&key) {
                self.rows[i] = None;
            }
        }
    }
}

/// A capture's backfill jobs and the chunk in flight.
pub(super) struct Backfiller {
    name: String,
    setup: Setup,
    offsets: Offsets,
    /// As read: the next chunk starts here.
    live: Backfills,
    /// As acknowledged: what is saved.
    saved: Backfills,
    reader: Option<PgReplicationConnection>,
    window: Option<Window>,
    /// The end LSN of the chunk handed over and not acknowledged yet.
    handed: Option<(u64, Cursor)>,
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
            live: saved.clone(),
            saved,
            reader: None,
            window: None,
            handed: None,
            chunks: 0,
        })
    }

    /// Whether a chunk should be read now: a job waits and no chunk is in
    /// flight.
    pub fn wants_chunk(&self) -> bool {
        self.window.is_none() && self.handed.is_none() && self.live.current().is_some()
    }

    /// Whether a job is unfinished (a chunk in flight, or to read).
    pub fn active(&self) -> bool {
        self.window.is_some() || self.handed.is_some() || !self.live.jobs.is_empty()
    }

    /// Forgets the chunk in flight (the stream is read again from the last
    /// acknowledged position): the job goes on from what was acknowledged.
    pub fn reset(&mut self) {
        self.window = None;
        self.handed = None;
        self.live = self.saved.clone();
    }

    /// Queues `job` and saves it; `false` when it was known.
    pub async fn add(&mut self, job: Job) -> Result<bool, CaptureError> {
        if !self.saved.add(job.clone()) {
            return Ok(false);
        }
        self.live.add(job);
        self.save().await?;
        Ok(true)
    }

    /// A message of Ferry's read from the stream.
    pub async fn message(&mut self, content: &[u8]) -> Result<(), CaptureError> {
        match Message::parse(content) {
            Some(Message::Request(request)) => self.request(request).await,
            Some(Message::Watermark { mark, high }) => {
                if let Some(w) = self.window.as_mut().filter(|w| w.mark == mark) {
                    if high {
                        w.high = true;
                    } else {
                        w.low = true;
                    }
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
        if let Some(w) = self.window.as_mut().filter(|w| w.low && !w.high) {
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
        let rows: Vec<Change> = window.rows.into_iter().flatten().collect();
        let mut cursor = window.cursor;
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
        self.live.advance(&cursor);
        self.handed = Some((end_lsn, cursor));
        Ok(())
    }

    /// Everything up to `lsn` was delivered: when that covers the chunk
    /// in flight, saves the progress after it.
    pub async fn acknowledge(&mut self, lsn: u64) -> Result<(), CaptureError> {
        let Some((end, cursor)) = self.handed.take() else {
            return Ok(());
        };
        if lsn < end {
            self.handed = Some((end, cursor));
            return Ok(());
        }
        self.saved.advance(&cursor);
        self.save().await
    }

    /// Reads the next chunk of the current job between two watermarks.
    pub async fn open_window(&mut self, pool: &sqlx::PgPool) -> Result<(), CaptureError> {
        let Some((job, table)) = self.live.current() else {
            return Ok(());
        };
        let (job_id, label, index, after) = (
            job.id.clone(),
            job.label.clone(),
            job.table,
            job.after.clone(),
        );
        let table = table.clone();
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
        let mut index_of = HashMap::new();
        let mut last = None;
        for row in 0..result.ntuples() {
            let (change, key) =
                snapshot::row_change(&plan, &result, row, &self.setup, &label, started)?;
            index_of.insert(change.key_text(), rows.len());
            rows.push(Some(change));
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
        self.window = Some(Window {
            mark,
            low: false,
            high: false,
            table,
            rows,
            index: index_of,
            cursor,
        });
        Ok(())
    }

    /// Moves on without delivering anything (nothing is in flight).
    async fn skip(&mut self, cursor: Cursor) -> Result<(), CaptureError> {
        self.live.advance(&cursor);
        self.saved.advance(&cursor);
        self.save().await
    }

    async fn save(&mut self) -> Result<(), CaptureError> {
        self.saved
            .save(&self.offsets, &self.name)
            .await
            .map_err(|e| store_failure(e, "postgres capture: saving the backfill jobs"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Position, Source};

    fn change(op: Op, table: &str, id: i64, before: Option<i64>) -> Change {
        let key: Row = [("id".to_owned(), json!(id))].into_iter().collect();
        Change {
            op,
            key: key.clone(),
            before: before.map(|b| [("id".to_owned(), json!(b))].into_iter().collect()),
            after: Some(key),
            source: Source {
                db: "d".into(),
                table: TableId::new("public", table),
                position: Position::ChangeId { id },
                tx_id: None,
                commit_time: None,
            },
            tx: None,
            unchanged: vec![],
        }
    }

    fn window(ids: &[i64]) -> Window {
        let rows: Vec<Option<Change>> = ids
            .iter()
            .map(|&i| Some(change(Op::Read, "items", i, None)))
            .collect();
        let index = rows
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_ref().unwrap().key_text(), i))
            .collect();
        Window {
            mark: Uuid::now_v7(),
            low: true,
            high: false,
            table: TableId::new("public", "items"),
            rows,
            index,
            cursor: Cursor {
                job: "j".into(),
                table: 0,
                after: None,
                rows: 0,
            },
        }
    }

    fn left(w: &Window) -> Vec<i64> {
        w.rows
            .iter()
            .flatten()
            .map(|c| c.key["id"].as_i64().unwrap())
            .collect()
    }

    #[test]
    fn a_streamed_change_drops_the_row_it_supersedes() {
        let mut w = window(&[1, 2, 3, 4]);
        w.observe(&change(Op::Update, "items", 2, None));
        w.observe(&change(Op::Delete, "items", 3, None));
        w.observe(&change(Op::Update, "other", 1, None));
        w.observe(&change(Op::Create, "items", 9, None));
        assert_eq!(left(&w), [1, 4]);
        // A key moved from 4 to 8: the old row is gone too.
        w.observe(&change(Op::Update, "items", 8, Some(4)));
        assert_eq!(left(&w), [1]);
        let mut t = change(Op::Truncate, "items", 0, None);
        t.key.clear();
        w.observe(&t);
        assert!(left(&w).is_empty());
    }
}
