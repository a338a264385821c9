//! The initial snapshot: every captured table's rows, read in key order
//! from one `REPEATABLE READ` transaction, one chunk at a time.
//!
//! On a first start the transaction imports the snapshot the slot's
//! creation exported (`SET TRANSACTION SNAPSHOT`): it sees exactly the
//! transactions committed before the slot's consistent point, and the
//! stream, started at that point afterwards, exactly those after it. The
//! connection that created the slot stays open and idle meanwhile (the
//! export lives as long as it does), so a reader that lost its connection
//! imports the same snapshot again.
//!
//! Rows are read with the same client library as the stream (libpq, through
//! `pg_walstream`'s plain connection) and in text, so that each value is the
//! text the type's output function prints under the same session settings,
//! mapped by its type OID exactly as a streamed value is
//! ([`value::from_text`]).
//!
//! # Chunks and resuming
//!
//! A table with a primary key (the replica identity index under `REPLICA
//! IDENTITY USING INDEX`) is read through a cursor in key order; every chunk
//! ends with a checkpoint holding the table and the chunk's last key. A
//! capture restarted mid-snapshot no longer has the exported snapshot: from
//! PostgreSQL 14 on it reads the rest as a backfill (module `backfill`);
//! before, it opens a fresh `REPEATABLE READ` transaction here and goes on
//! after the saved key. Rows read then may already show changes that the
//! stream, started at the first snapshot's consistent point, delivers as
//! well: at least once, never a gap, and the final state converges.
//!
//! A table without such a key (published with `REPLICA IDENTITY FULL`) has
//! no order to resume in: it is read in one pass, its chunks carry no
//! checkpoint until its last, and a restart reads it whole again. Its rows'
//! positions are their `ctid`: stable while the snapshot is, not across a
//! restart.
//!
//! At most one snapshot of a slot is read at a time: the reader holds a
//! session advisory lock named after the slot.
//!
//! # Reading ahead
//!
//! While the capture hands one chunk over, the next is on its way: a task
//! of its own holds the connection and `FETCH`es the cursor a chunk at a
//! time, so that the server's work and the client's overlap (the snapshot
//! of 2026-12-06 waited for each `FETCH` in turn). It keeps at most two
//! fetched chunks ahead of the one handed over. The chunks handed over, and their checkpoints, are the
//! same as read one at a time: rows are handed over `limit` at a time
//! whatever the fetches' size, and a read that fails drops what was read
//! ahead (the next reads it again after the last chunk handed over).

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pg_walstream::connection::{PgReplicationConnection, PgResult};
use pg_walstream::sql_builder::quote_literal;
use serde_json::Value;
use sqlx::postgres::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::progress::{ChunkCheckpoint, Progress};
use super::replication_failure;
use super::setup::{quote_ident, sql_failure};
use super::value;
use crate::capture::{CaptureError, Captured};
use crate::change::{Change, Op, Position, Row, Source, TableId};
use crate::filter::Filter;
use crate::json;

/// How often progress is logged while a table is read.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// How long opening the reader waits for another reader of the same
/// slot's snapshot (a capture that just stopped) to let go.
const LOCK_WAIT: Duration = Duration::from_secs(15);

/// The cursor each table is read through.
const CURSOR: &str = "ferry_snapshot";

/// What a snapshot reads and how.
pub struct Setup {
    /// The captured database's URL (libpq reads it as the stream does).
    pub url: String,
    /// The database's name (`source.db`).
    pub database: String,
    /// The slot: names the advisory lock and the messages.
    pub slot: String,
    /// The publication whose tables are read.
    pub publication: String,
    /// Tables and columns captured.
    pub filter: Filter,
    /// Rows per chunk.
    pub chunk: usize,
    /// For the current catalog (the columns to read).
    pub pool: PgPool,
}

/// A snapshot being read.
pub struct Snapshot {
    setup: Setup,
    /// The consistent point as text: every row's position label.
    label: String,
    /// The exported snapshot, while it may still be imported.
    export: Option<String>,
    /// The connection holding the snapshot's transaction, while no
    /// [`Prefetch`] holds it.
    reader: Option<PgReplicationConnection>,
    /// The current table's rows being read ahead (holding the connection).
    prefetch: Option<Prefetch>,
    /// The captured tables, in name order (listed when the reader first
    /// opens).
    tables: Option<Vec<TableId>>,
    /// Where a new table list goes on from (the saved progress).
    resume: Option<(Option<TableId>, Option<Vec<String>>)>,
    next: usize,
    /// The last key handed out from `tables[next]`.
    after: Option<Vec<String>>,
    /// The table being read, its cursor open.
    plan: Option<Plan>,
    /// When the snapshot was begun: the `commit_time` of its rows.
    started: DateTime<Utc>,
    /// Chunks with a checkpoint handed out.
    chunks: u64,
    /// Rows of `tables[next]` handed out by this capture, and the
    /// catalog's estimate of its rows.
    rows: u64,
    total: Option<u64>,
    logged: Instant,
}

/// A table as the snapshot reads it.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) table: TableId,
    /// Selected columns: the published ones and the key's.
    columns: Vec<PlanColumn>,
    /// The key's columns (indexes into `columns`) in index order; empty
    /// without a key.
    key: Vec<usize>,
    /// The publication's row filter, if any.
    row_filter: Option<String>,
    /// The catalog's estimate of its rows.
    total: Option<u64>,
}

#[derive(Debug)]
struct PlanColumn {
    name: String,
    type_oid: u32,
    /// `atttypid::regtype` as text: the cast of a key literal.
    type_name: String,
    published: bool,
}

impl Snapshot {
    /// Opens the reader: on `export` when given (a first start), else on a
    /// fresh snapshot, going on from `progress`.
    pub async fn begin(
        setup: Setup,
        progress: Progress,
        export: Option<String>,
    ) -> Result<Self, CaptureError> {
        let exact = export.is_some();
        let mut snapshot = Self {
            setup,
            label: progress.lsn.clone(),
            export,
            reader: None,
            prefetch: None,
            tables: None,
            resume: Some((progress.table, progress.after)),
            next: 0,
            after: None,
            plan: None,
            started: Utc::now(),
            chunks: 0,
            rows: 0,
            total: None,
            logged: Instant::now(),
        };
        snapshot.open_reader().await?;
        let tables = snapshot.tables.as_deref().unwrap_or_default();
        tracing::info!(
            slot = %snapshot.setup.slot,
            at = %snapshot.label,
            tables = tables.len(),
            from = %tables.get(snapshot.next).map(ToString::to_string).unwrap_or_default(),
            exported = exact,
            "postgres capture snapshot started"
        );
        Ok(snapshot)
    }

    /// The table being read, its rows handed out by this capture, and the
    /// catalog's estimate of its rows (`pg_class.reltuples`, absent before
    /// the table's first `ANALYZE`).
    pub fn progress(&self) -> Option<(TableId, u64, Option<u64>)> {
        let table = self.tables.as_ref()?.get(self.next)?;
        Some((table.clone(), self.rows, self.total))
    }

    /// The next chunk, at most `max` (and `snapshot_chunk`) rows; empty
    /// once every table is read. A failure drops the reader: the next call
    /// opens another and goes on after the last chunk handed out.
    pub async fn read(&mut self, max: usize) -> Result<Vec<Captured>, CaptureError> {
        let limit = max.min(self.setup.chunk).max(1);
        loop {
            let read_all = |s: &Self| s.tables.as_ref().is_some_and(|t| s.next >= t.len());
            if read_all(self) {
                return Ok(Vec::new());
            }
            if self.reader.is_none() && self.prefetch.is_none() {
                self.open_reader().await?;
                continue;
            }
            match self.read_chunk(limit).await {
                Ok(Some(chunk)) => return Ok(chunk),
                Ok(None) => continue,
                Err(e) => {
                    self.reader = None;
                    self.prefetch = None;
                    self.plan = None;
                    return Err(e);
                }
            }
        }
    }

    /// Ends the transaction and closes the reader.
    pub async fn close(mut self) {
        if let Some(prefetch) = self.prefetch.take() {
            self.reader = prefetch.stop().await;
        }
        if let Some(mut reader) = self.reader.take() {
            let _ = reader.exec_async("COMMIT").await;
        }
    }

    /// Connects, takes the slot's snapshot lock, opens the transaction (on
    /// the export while it lasts), lists the tables the first time.
    async fn open_reader(&mut self) -> Result<(), CaptureError> {
        self.plan = None;
        self.prefetch = None;
        let mut reader = PgReplicationConnection::connect_async(&self.setup.url)
            .await
            .map_err(|e| replication_failure("opening the snapshot's connection", e))?;
        lock(&mut reader, &self.setup.slot).await?;
        exec(
            &mut reader,
            "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY",
            "opening the snapshot's transaction",
        )
        .await?;
        if let Some(name) = self.export.clone() {
            let imported = reader
                .exec_async(&format!("SET TRANSACTION SNAPSHOT {}", literal(&name)?))
                .await;
            if let Err(e) = imported {
                let failure = replication_failure("importing the slot's snapshot", e);
                if failure.kind == ferry_core::ErrorKind::Unavailable {
                    return Err(failure);
                }
                // The slot's connection is gone and its export with it: go on
                // at least once from a snapshot of now.
                tracing::warn!(
                    slot = %self.setup.slot,
                    error = %failure.describe(),
                    "postgres capture: the slot's exported snapshot is gone; the rest is read \
                     from a fresh snapshot (rows may show changes the stream delivers again)"
                );
                self.export = None;
                exec(
                    &mut reader,
                    "ROLLBACK",
                    "opening the snapshot's transaction",
                )
                .await?;
                exec(
                    &mut reader,
                    "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY",
                    "opening the snapshot's transaction",
                )
                .await?;
            }
        }
        if self.tables.is_none() {
            let tables = list_tables(&mut reader, &self.setup).await?;
            self.position(tables);
        }
        self.reader = Some(reader);
        Ok(())
    }

    /// Sets the first table list, at the saved progress: the table it
    /// stopped at, or the first after it (one dropped since is skipped).
    fn position(&mut self, tables: Vec<TableId>) {
        if let Some((Some(table), after)) = self.resume.take() {
            self.next = tables
                .iter()
                .position(|t| *t >= table)
                .unwrap_or(tables.len());
            if tables.get(self.next) == Some(&table) {
                self.after = after;
            }
        }
        self.tables = Some(tables);
    }

    /// Reads one chunk of the current table; `None` when it has no more
    /// rows (the next table is then current).
    async fn read_chunk(&mut self, limit: usize) -> Result<Option<Vec<Captured>>, CaptureError> {
        let Some(table) = self.tables.as_ref().and_then(|t| t.get(self.next)).cloned() else {
            return Ok(None);
        };
        if self.plan.is_none() && !self.start_table(&table).await? {
            return Ok(None);
        }
        let (Some(plan), Some(prefetch)) = (self.plan.as_ref(), self.prefetch.as_mut()) else {
            return Ok(None);
        };
        let keyed = plan.keyed();
        let (out, last_key) = prefetch
            .take(limit, plan, &self.setup, &self.label, self.started)
            .await?;
        let n = out.len();
        let mut out: Vec<Captured> = out;
        self.rows += n as u64;
        let finished = n < limit;
        if finished {
            // The cursor is read to its end and closed: the connection is
            // free again.
            let prefetch = self.prefetch.take();
            if let Some(prefetch) = prefetch {
                self.reader = Some(prefetch.finish().await?);
            }
            tracing::info!(%table, rows = self.rows, "postgres capture snapshot: table read");
            self.next_table();
        } else if keyed {
            self.after = last_key;
        }
        self.log_progress();
        if out.is_empty() {
            return Ok(None);
        }
        if keyed || finished {
            self.chunks += 1;
            let next = self.tables.as_ref().and_then(|t| t.get(self.next)).cloned();
            let checkpoint = ChunkCheckpoint {
                done: next.is_none(),
                progress: Progress {
                    lsn: self.label.clone(),
                    table: next,
                    after: self.after.clone(),
                },
                chunk: self.chunks,
            };
            if let Some(last) = out.last_mut() {
                last.checkpoint = Some(checkpoint.to_checkpoint());
            }
        }
        Ok(Some(out))
    }

    /// Plans `table`, opens its cursor after the last key handed over and
    /// starts reading it ahead; `false` when it is gone (the next table is
    /// then current).
    async fn start_table(&mut self, table: &TableId) -> Result<bool, CaptureError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(false);
        };
        let version = reader.server_version();
        let Some(plan) = plan(&self.setup.pool, version, table, &self.setup).await? else {
            // Dropped or unpublished since the listing: nothing to read.
            self.next_table();
            return Ok(false);
        };
        if self
            .after
            .as_ref()
            .is_some_and(|a| a.len() != plan.key.len())
        {
            // The key changed shape since the progress was saved.
            tracing::warn!(%table, "postgres capture: snapshot key changed; table read again");
            self.after = None;
        }
        if plan.key.is_empty() {
            // Read in one pass: what this capture handed out of it
            // before is read again.
            self.after = None;
            self.rows = 0;
        }
        let sql = plan.declare(self.after.as_deref())?;
        exec(reader, &sql, &format!("reading {table} for the snapshot")).await?;
        self.total = plan.total;
        let Some(reader) = self.reader.take() else {
            return Ok(false);
        };
        self.prefetch = Some(Prefetch::start(reader, table, self.setup.chunk.max(1)));
        self.plan = Some(plan);
        Ok(true)
    }

    fn next_table(&mut self) {
        self.next += 1;
        self.after = None;
        self.plan = None;
        self.rows = 0;
        self.total = None;
    }

    fn log_progress(&mut self) {
        if self.logged.elapsed() < LOG_EVERY {
            return;
        }
        self.logged = Instant::now();
        if let Some((table, rows, total)) = self.progress() {
            tracing::info!(
                slot = %self.setup.slot,
                %table,
                rows,
                total = total.map(|t| t.to_string()).unwrap_or_else(|| "unknown".into()),
                "postgres capture snapshot progress"
            );
        }
    }
}

/// One `FETCH` read ahead.
struct Fetched {
    result: PgResult,
    /// The cursor's last rows (fewer than asked); it is closed.
    end: bool,
}

/// A table's rows fetched ahead by a task that holds the connection.
///
/// The rows become changes here, as they are handed over, rather than in
/// that task: a change is dropped where it was made (freeing another
/// thread's allocations cost more than making them here).
struct Prefetch {
    fetched: mpsc::Receiver<Result<Fetched, CaptureError>>,
    /// Gives the connection back once the cursor is read and closed (or
    /// the receiver is gone); `None` after a failure.
    task: JoinHandle<Option<PgReplicationConnection>>,
    /// Fetches received and not all handed over, and the next row of the
    /// first.
    results: VecDeque<PgResult>,
    next_row: i32,
    /// Rows received and not handed over yet.
    buffered: usize,
    /// The cursor's end was received.
    ended: bool,
}

impl Prefetch {
    /// Starts fetching the open cursor, `fetch` rows at a time.
    fn start(reader: PgReplicationConnection, table: &TableId, fetch: usize) -> Self {
        // One fetch waiting here, one being read: two chunks ahead.
        let (tx, fetched) = mpsc::channel(1);
        let doing = format!("reading {table} for the snapshot");
        let task = tokio::spawn(fetch_ahead(reader, fetch, doing, tx));
        Self {
            fetched,
            task,
            results: VecDeque::new(),
            next_row: 0,
            buffered: 0,
            ended: false,
        }
    }

    /// The next `limit` rows as read changes (see [`read_change`]), fewer
    /// only at the cursor's end, and the last one's key as text.
    async fn take(
        &mut self,
        limit: usize,
        plan: &Plan,
        setup: &Setup,
        label: &str,
        time: DateTime<Utc>,
    ) -> Result<(Vec<Captured>, Option<Vec<String>>), CaptureError> {
        while self.buffered < limit && !self.ended {
            match self.fetched.recv().await {
                Some(Ok(f)) => {
                    self.ended = f.end;
                    let rows = f.result.ntuples().max(0) as usize;
                    if rows > 0 {
                        self.buffered += rows;
                        self.results.push_back(f.result);
                    }
                }
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(CaptureError::unavailable(
                        "postgres capture: the snapshot's reader stopped",
                    ))
                }
            }
        }
        let n = limit.min(self.buffered);
        let mut out = Vec::with_capacity(n);
        let mut last_key = None;
        while out.len() < n {
            let Some(result) = self.results.front() else {
                break;
            };
            let rows = result.ntuples();
            while self.next_row < rows && out.len() < n {
                let change = read_change(
                    plan,
                    result,
                    self.next_row,
                    &setup.database,
                    &setup.filter,
                    label,
                    time,
                )?;
                out.push(Captured {
                    change,
                    checkpoint: None,
                });
                self.next_row += 1;
            }
            if out.len() == n && plan.keyed() {
                last_key = Some(key_text(plan, result, self.next_row - 1)?);
            }
            if self.next_row >= rows {
                self.results.pop_front();
                self.next_row = 0;
            }
        }
        self.buffered -= out.len();
        Ok((out, last_key))
    }

    /// The connection, once the cursor was read to its end.
    async fn finish(self) -> Result<PgReplicationConnection, CaptureError> {
        match self.task.await {
            Ok(Some(reader)) => Ok(reader),
            _ => Err(CaptureError::unavailable(
                "postgres capture: the snapshot's reader stopped",
            )),
        }
    }

    /// Stops fetching; the connection, unless it failed.
    async fn stop(self) -> Option<PgReplicationConnection> {
        drop(self.fetched);
        self.task.await.ok().flatten()
    }
}

/// Fetches the open cursor `fetch` rows at a time into `tx` until its
/// end, which it closes; returns the connection (`None` after a failure,
/// which it sent).
async fn fetch_ahead(
    mut reader: PgReplicationConnection,
    fetch: usize,
    doing: String,
    tx: mpsc::Sender<Result<Fetched, CaptureError>>,
) -> Option<PgReplicationConnection> {
    let sql = format!("FETCH FORWARD {fetch} FROM {CURSOR}");
    loop {
        let fetched = async {
            let result = exec(&mut reader, &sql, &doing).await?;
            let end = (result.ntuples().max(0) as usize) < fetch;
            if end {
                exec(
                    &mut reader,
                    &format!("CLOSE {CURSOR}"),
                    "closing the snapshot's cursor",
                )
                .await?;
            }
            Ok(Fetched { result, end })
        }
        .await;
        let stop = !matches!(fetched, Ok(Fetched { end: false, .. }));
        let failed = fetched.is_err();
        if tx.send(fetched).await.is_err() || stop {
            // At the end, after a failure, or nobody reads any more (the
            // capture stopped or failed).
            return (!failed).then_some(reader);
        }
    }
}

/// Row `row` of a result of `plan`'s query as a read change labelled
/// `label` (its position's, hence its id's), and its key as text (in index
/// order) when the table has one.
pub(super) fn row_change(
    plan: &Plan,
    result: &PgResult,
    row: i32,
    setup: &Setup,
    label: &str,
    time: DateTime<Utc>,
) -> Result<(Change, Option<Vec<String>>), CaptureError> {
    let change = read_change(
        plan,
        result,
        row,
        &setup.database,
        &setup.filter,
        label,
        time,
    )?;
    let key = if plan.keyed() {
        Some(key_text(plan, result, row)?)
    } else {
        None
    };
    Ok((change, key))
}

/// Row `row` of a result of `plan`'s query as a read change labelled
/// `label`.
fn read_change(
    plan: &Plan,
    result: &PgResult,
    row: i32,
    database: &str,
    filter: &Filter,
    label: &str,
    time: DateTime<Utc>,
) -> Result<Change, CaptureError> {
    let keyed = plan.keyed();
    // Without a key the first column is the row's ctid.
    let offset = i32::from(!keyed);
    let mut after = Row::new();
    let mut key = Row::new();
    for (i, column) in plan.columns.iter().enumerate() {
        let text = text(result, row, i as i32 + offset, &plan.table, &column.name)?;
        let value = text
            .map(|t| value::from_text(column.type_oid, t))
            .unwrap_or(Value::Null);
        let in_key = keyed && plan.key.contains(&i);
        match (column.published, in_key) {
            (true, true) => {
                key.insert(column.name.clone(), value.clone());
                after.insert(column.name.clone(), value);
            }
            (true, false) => {
                after.insert(column.name.clone(), value);
            }
            (false, true) => {
                key.insert(column.name.clone(), value);
            }
            (false, false) => {}
        }
    }
    let mut position = Vec::with_capacity(32);
    if keyed {
        json::write(&mut position, &key);
    } else {
        let ctid = text(result, row, 0, &plan.table, "ctid")?.unwrap_or_default();
        position.extend_from_slice(b"{\"ctid\":");
        json::write(&mut position, ctid);
        position.push(b'}');
        key = after.clone();
    }
    let mut change = Change {
        op: Op::Read,
        key,
        before: None,
        after: Some(after),
        source: Source {
            db: database.to_owned(),
            table: plan.table.clone(),
            position: Position::Snapshot {
                snapshot: label.to_owned(),
                key: json::into_string(position),
            },
            tx_id: None,
            commit_time: Some(time),
        },
        tx: None,
        unchanged: vec![],
    };
    filter.strip(&mut change);
    Ok(change)
}

/// The key of row `row` as text, in index order: where a chunk read
/// after it starts.
fn key_text(plan: &Plan, result: &PgResult, row: i32) -> Result<Vec<String>, CaptureError> {
    plan.key
        .iter()
        .map(|&i| {
            let name = &plan.columns[i].name;
            // A keyed plan selects no ctid: columns are at their index.
            Ok(text(result, row, i as i32, &plan.table, name)?
                .unwrap_or_default()
                .to_owned())
        })
        .collect()
}

impl Plan {
    /// Whether the table has a key to read it in chunks by.
    pub(super) fn keyed(&self) -> bool {
        !self.key.is_empty()
    }

    /// The cursor over the table's rows after `after` (from the first
    /// without), in key order; without a key, in whatever order the scan
    /// gives, each row with its ctid.
    fn declare(&self, after: Option<&[String]>) -> Result<String, CaptureError> {
        Ok(format!(
            "DECLARE {CURSOR} NO SCROLL CURSOR FOR {}",
            self.query(after)?
        ))
    }

    /// The first `limit` rows after `after`, in key order.
    pub(super) fn chunk(
        &self,
        after: Option<&[String]>,
        limit: usize,
    ) -> Result<String, CaptureError> {
        Ok(format!("{} LIMIT {limit}", self.query(after)?))
    }

    /// The query of the rows after `after`.
    fn query(&self, after: Option<&[String]>) -> Result<String, CaptureError> {
        let mut select: Vec<String> = Vec::new();
        if self.key.is_empty() {
            select.push("ctid::text".to_owned());
        }
        select.extend(self.columns.iter().map(|c| quote_ident(&c.name)));
        let mut sql = format!(
            "SELECT {} FROM {}.{}",
            select.join(", "),
            quote_ident(&self.table.schema),
            quote_ident(&self.table.name)
        );
        let mut conditions = Vec::new();
        if let Some(filter) = &self.row_filter {
            conditions.push(format!("({filter})"));
        }
        let key: Vec<String> = self
            .key
            .iter()
            .map(|&i| quote_ident(&self.columns[i].name))
            .collect();
        if let Some(after) = after.filter(|_| !key.is_empty()) {
            let values = self
                .key
                .iter()
                .zip(after)
                .map(|(&i, v)| Ok(format!("{}::{}", literal(v)?, self.columns[i].type_name)))
                .collect::<Result<Vec<_>, CaptureError>>()?;
            conditions.push(format!("({}) > ({})", key.join(", "), values.join(", ")));
        }
        if !conditions.is_empty() {
            sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
        }
        if !key.is_empty() {
            sql.push_str(&format!(" ORDER BY {}", key.join(", ")));
        }
        Ok(sql)
    }
}

/// Takes the session advisory lock of the slot's snapshot, waiting a
/// while for a reader that just stopped.
pub(super) async fn lock(
    reader: &mut PgReplicationConnection,
    slot: &str,
) -> Result<(), CaptureError> {
    let sql = format!(
        "SELECT pg_try_advisory_lock(hashtext('ferry_cdc_snapshot'), hashtext({}))",
        literal(slot)?
    );
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let result = exec(reader, &sql, "locking the slot's snapshot").await?;
        if result.get_value(0, 0).as_deref() == Some("t") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CaptureError::unavailable(format!(
                "postgres capture: replication slot {}'s snapshot is in use by another \
                 connection (another capture of the same slot?)",
                slot
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The publication's tables that the filter captures, in name order.
pub(super) async fn list_tables(
    reader: &mut PgReplicationConnection,
    setup: &Setup,
) -> Result<Vec<TableId>, CaptureError> {
    let sql = format!(
        "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
         WHERE pubname = {} ORDER BY 1, 2",
        literal(&setup.publication)?
    );
    let result = exec(reader, &sql, "listing the published tables").await?;
    let mut tables = Vec::new();
    for row in 0..result.ntuples() {
        let (Some(schema), Some(name)) = (result.get_value(row, 0), result.get_value(row, 1))
        else {
            continue;
        };
        let table = TableId::new(schema, name);
        if setup.filter.captures(&table) {
            tables.push(table);
        }
    }
    tables.sort();
    Ok(tables)
}

/// The table's columns as the stream sends them (not dropped, not
/// generated; those of the publication's column list), and its key as the
/// stream's: the primary key (the replica identity index under `REPLICA
/// IDENTITY USING INDEX`). `None` when the table is gone or no longer
/// published.
///
/// Read from the current catalog (on `pool`), not the snapshot's: the
/// cursor is planned against the current one, so a column dropped since
/// the snapshot's point must not be named.
pub(super) async fn plan(
    pool: &PgPool,
    server_version: i32,
    table: &TableId,
    setup: &Setup,
) -> Result<Option<Plan>, CaptureError> {
    // Column lists and row filters exist from PostgreSQL 15 on.
    let (published, row_filter) = if server_version >= 150000 {
        (
            "COALESCE(a.attname = ANY (p.attnames), false)",
            "p.rowfilter",
        )
    } else {
        ("p.tablename IS NOT NULL", "NULL::text")
    };
    let sql = format!(
        "SELECT a.attname::text, a.atttypid::int8, a.atttypid::regtype::text, \
         array_position(k.cols, a.attnum)::int8, {published}, {row_filter}, \
         c.reltuples::int8 \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid \
         LEFT JOIN LATERAL (SELECT i.indkey::int2[] AS cols FROM pg_index i \
           WHERE i.indrelid = c.oid AND CASE WHEN c.relreplident = 'i' \
           THEN i.indisreplident ELSE i.indisprimary END LIMIT 1) k ON true \
         LEFT JOIN pg_publication_tables p ON p.pubname = $1 \
           AND p.schemaname = n.nspname AND p.tablename = c.relname \
         WHERE n.nspname = $2 AND c.relname = $3 \
         AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
         ORDER BY a.attnum"
    );
    type Column = (String, i64, String, Option<i64>, bool, Option<String>, i64);
    let rows: Vec<Column> = sqlx::query_as(&sql)
        .bind(&setup.publication)
        .bind(&table.schema)
        .bind(&table.name)
        .fetch_all(pool)
        .await
        .map_err(|e| {
            sql_failure(
                &format!("postgres capture: reading the columns of {table}"),
                e,
            )
        })?;
    let mut columns = Vec::new();
    let mut key: Vec<(i64, usize)> = Vec::new();
    let mut row_filter = None;
    let mut total = None;
    for (name, type_oid, type_name, position, published, filter, reltuples) in rows {
        row_filter = filter.filter(|f| !f.is_empty());
        // Negative before the table's first ANALYZE: unknown.
        total = u64::try_from(reltuples).ok();
        // A column that never leaves is not read, unless the key needs it.
        let leaves = published && !setup.filter.drops_column(table, &name);
        if !leaves && position.is_none() {
            continue;
        }
        if let Some(p) = position {
            key.push((p, columns.len()));
        }
        columns.push(PlanColumn {
            name,
            type_oid: u32::try_from(type_oid).unwrap_or_default(),
            type_name,
            published,
        });
    }
    if !columns.iter().any(|c| c.published) {
        return Ok(None);
    }
    key.sort();
    Ok(Some(Plan {
        table: table.clone(),
        columns,
        key: key.into_iter().map(|(_, i)| i).collect(),
        row_filter,
        total,
    }))
}

/// Runs `sql` on the reader.
pub(super) async fn exec(
    reader: &mut PgReplicationConnection,
    sql: &str,
    doing: &str,
) -> Result<PgResult, CaptureError> {
    reader
        .exec_async(sql)
        .await
        .map_err(|e| replication_failure(doing, e))
}

/// A column's text, `None` for NULL.
fn text<'r>(
    result: &'r PgResult,
    row: i32,
    column: i32,
    table: &TableId,
    name: &str,
) -> Result<Option<&'r str>, CaptureError> {
    match result.get_bytes(row, column) {
        None => Ok(None),
        Some(bytes) => std::str::from_utf8(bytes).map(Some).map_err(|_| {
            CaptureError::transient(format!(
                "postgres capture: {table}.{name} is not UTF-8 in the snapshot"
            ))
        }),
    }
}

/// `value` as an SQL string literal.
pub(super) fn literal(value: &str) -> Result<String, CaptureError> {
    quote_literal(value).map_err(|e| {
        CaptureError::permanent("postgres capture: a value cannot be written as SQL").with_source(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(key: &[usize]) -> Plan {
        let column = |name: &str, type_name: &str| PlanColumn {
            name: name.into(),
            type_oid: 23,
            type_name: type_name.into(),
            published: true,
        };
        Plan {
            table: TableId::new("public", "Items"),
            columns: vec![
                column("a", "integer"),
                column("b", "text"),
                column("v", "text"),
            ],
            key: key.to_vec(),
            row_filter: None,
            total: None,
        }
    }

    #[test]
    fn keyed_tables_are_read_in_key_order_after_the_last_key() {
        assert_eq!(
            plan(&[1, 0]).declare(None).unwrap(),
            "DECLARE ferry_snapshot NO SCROLL CURSOR FOR SELECT \"a\", \"b\", \"v\" \
             FROM \"public\".\"Items\" ORDER BY \"b\", \"a\""
        );
        let mut p = plan(&[1, 0]);
        p.row_filter = Some("(a > 5)".into());
        assert_eq!(
            p.declare(Some(&["it's".into(), "7".into()])).unwrap(),
            "DECLARE ferry_snapshot NO SCROLL CURSOR FOR SELECT \"a\", \"b\", \"v\" \
             FROM \"public\".\"Items\" WHERE ((a > 5)) AND (\"b\", \"a\") > \
             ('it''s'::text, '7'::integer) ORDER BY \"b\", \"a\""
        );
    }

    /// `row_change` as it was until 2026-12-06 (kept verbatim): what the
    /// changes and keys read now must equal.
    fn reference_row_change(
        plan: &Plan,
        result: &PgResult,
        row: i32,
        setup: &Setup,
        label: &str,
        time: DateTime<Utc>,
    ) -> Result<(Change, Option<Vec<String>>), CaptureError> {
        let keyed = !plan.key.is_empty();
        let offset = i32::from(!keyed);
        let mut after = Row::new();
        let mut values = Vec::with_capacity(plan.columns.len());
        for (i, column) in plan.columns.iter().enumerate() {
            let text = text(result, row, i as i32 + offset, &plan.table, &column.name)?;
            let value = text
                .map(|t| value::from_text(column.type_oid, t))
                .unwrap_or(Value::Null);
            if column.published {
                after.insert(column.name.clone(), value.clone());
            }
            values.push((text, value));
        }
        let (key, position_key, key_text) = if keyed {
            let key: Row = plan
                .key
                .iter()
                .map(|&i| (plan.columns[i].name.clone(), values[i].1.clone()))
                .collect();
            let text: Vec<String> = plan
                .key
                .iter()
                .map(|&i| values[i].0.unwrap_or_default().to_owned())
                .collect();
            let position = Value::Object(key.clone()).to_string();
            (key, position, Some(text))
        } else {
            let ctid = text(result, row, 0, &plan.table, "ctid")?.unwrap_or_default();
            let position = serde_json::json!({ "ctid": ctid }).to_string();
            (after.clone(), position, None)
        };
        let mut change = Change {
            op: Op::Read,
            key,
            before: None,
            after: Some(after),
            source: Source {
                db: setup.database.clone(),
                table: plan.table.clone(),
                position: Position::Snapshot {
                    snapshot: label.to_owned(),
                    key: position_key,
                },
                tx_id: None,
                commit_time: Some(time),
            },
            tx: None,
            unchanged: vec![],
        };
        setup.filter.strip(&mut change);
        Ok((change, key_text))
    }

    /// Rows of many types, NULLs and odd text, in keyed (composite key,
    /// a key column not published, excluded columns) and keyless tables:
    /// read as before, change for change, key for key, id for id.
    #[tokio::test]
    async fn rows_read_as_before() {
        let db = ferry_testkit::PgTestDb::create().await;
        let pool = PgPool::connect(&db.url).await.unwrap();
        let statements = [
            "CREATE TABLE \"Odd \"\"t\" (k2 text, k1 int, i8 int8, f float8, b bool, j jsonb,
               n numeric(30,10), t text, ts timestamptz, secret text, PRIMARY KEY (k1, k2))",
            "INSERT INTO \"Odd \"\"t\" SELECT 'k\"' || g || E'\\t\\n\\\\é', g % 3, g::int8 * 1000000007,
               CASE WHEN g % 4 = 0 THEN 'NaN'::float8 ELSE g / 3.0 END, g % 2 = 0,
               CASE WHEN g % 5 = 0 THEN NULL ELSE jsonb_build_object('a', g, 'b', array[1.5, g]) END,
               g * 1.0000000001, CASE WHEN g % 3 = 0 THEN NULL ELSE 'v' || g END,
               '2026-12-06 10:00:00+00'::timestamptz + g * interval '1 second', 's'
               FROM generate_series(1, 60) g",
            "CREATE TABLE keyless (a int, b text)",
            "ALTER TABLE keyless REPLICA IDENTITY FULL",
            "INSERT INTO keyless SELECT g, 'x' || g FROM generate_series(1, 20) g",
            "CREATE PUBLICATION rows_read_as_before FOR TABLE \"Odd \"\"t\" (k1, i8, f, b, j, n, t, ts, secret), keyless",
        ];
        for sql in statements {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        let mut reader = PgReplicationConnection::connect_async(&db.url)
            .await
            .unwrap();
        let version = reader.server_version();
        let filters = [
            Filter::default(),
            Filter {
                exclude_columns: vec!["*.secret".into(), "*.k2".into(), "keyless.b".into()],
                ..Filter::default()
            },
        ];
        let time = Utc::now();
        for filter in filters {
            let setup = Setup {
                url: db.url.clone(),
                database: "shop".into(),
                slot: "s".into(),
                publication: "rows_read_as_before".into(),
                filter,
                chunk: 1000,
                pool: pool.clone(),
            };
            for table in [
                TableId::new("public", "Odd \"t"),
                TableId::new("public", "keyless"),
            ] {
                let plan = super::plan(&pool, version, &table, &setup)
                    .await
                    .unwrap()
                    .unwrap();
                let result = exec(&mut reader, &plan.query(None).unwrap(), "test")
                    .await
                    .unwrap();
                assert!(result.ntuples() >= 20);
                for row in 0..result.ntuples() {
                    let got = row_change(&plan, &result, row, &setup, "0/1A2B", time).unwrap();
                    let want =
                        reference_row_change(&plan, &result, row, &setup, "0/1A2B", time).unwrap();
                    assert_eq!(got, want);
                    assert_eq!(got.0.id("cap"), want.0.id("cap"));
                    if plan.keyed() && setup.filter.exclude_columns.is_empty() {
                        // k2: in the key, not published.
                        let after = got.0.after.as_ref().unwrap();
                        assert!(got.0.key.contains_key("k2") && !after.contains_key("k2"));
                        assert!(after.contains_key("secret"));
                    }
                    if let Some(key) = &want.1 {
                        assert_eq!(&key_text(&plan, &result, row).unwrap(), key);
                    }
                }
            }
        }
    }

    /// What one read of the snapshot gave: each row's key (the `a` column)
    /// and its checkpoint.
    type Read = Vec<(i64, Option<crate::capture::Checkpoint>)>;

    /// The reads a reader that `FETCH`es `min(max, chunk)` rows per read,
    /// one fetch at a time (the reader until 2026-12-06), gives for tables
    /// of `rows` rows each (keyed unless named in `keyless`), keys `1..`,
    /// asked `maxes` in turn.
    fn one_fetch_at_a_time(
        tables: &[(TableId, i64)],
        keyless: &[&TableId],
        chunk: usize,
        maxes: &[usize],
    ) -> Vec<Read> {
        let mut reads = Vec::new();
        let (mut next, mut done_rows, mut chunks) = (0, 0_i64, 0_u64);
        let mut asks = maxes.iter().cycle();
        while next < tables.len() {
            let limit = (*asks.next().unwrap()).min(chunk).max(1);
            // One call: chunks of `limit` until one is not empty.
            while let Some((table, rows)) = tables.get(next) {
                let keyed = !keyless.contains(&table);
                let n = (limit as i64).min(rows - done_rows);
                let keys: Vec<i64> = (done_rows + 1..=done_rows + n).collect();
                done_rows += n;
                let finished = (n as usize) < limit;
                let mut after = None;
                if finished {
                    next += 1;
                    done_rows = 0;
                } else if keyed {
                    after = Some(vec![done_rows.to_string()]);
                }
                if keys.is_empty() {
                    continue;
                }
                let mut read: Read = keys.into_iter().map(|k| (k, None)).collect();
                if keyed || finished {
                    chunks += 1;
                    let table = tables.get(next).map(|t| t.0.clone());
                    let checkpoint = ChunkCheckpoint {
                        done: table.is_none(),
                        progress: Progress {
                            lsn: "0/1".into(),
                            table,
                            after,
                        },
                        chunk: chunks,
                    };
                    read.last_mut().unwrap().1 = Some(checkpoint.to_checkpoint());
                }
                reads.push(read);
                break;
            }
        }
        reads
    }

    /// Reading ahead hands over the same chunks with the same checkpoints
    /// as reading one fetch at a time, whatever each read asks for: tables
    /// ending on a chunk's edge, empty, keyless.
    #[tokio::test]
    async fn chunks_and_checkpoints_are_those_of_one_fetch_at_a_time() {
        let db = ferry_testkit::PgTestDb::create().await;
        let pool = PgPool::connect(&db.url).await.unwrap();
        let sizes = [
            ("t1", 2345),
            ("t2", 2000),
            ("t3", 0),
            ("t4", 1200),
            ("t5", 999),
        ];
        for (name, rows) in sizes {
            let statements = [
                format!("CREATE TABLE {name} (a int8 PRIMARY KEY, b text)"),
                format!("INSERT INTO {name} SELECT g, 'x' || g FROM generate_series(1, {rows}) g"),
            ];
            for sql in statements {
                sqlx::query(&sql).execute(&pool).await.unwrap();
            }
        }
        // A keyless table is read in whatever order the scan gives: one
        // written in order, never updated, is read in that order.
        for sql in [
            "ALTER TABLE t4 DROP CONSTRAINT t4_pkey",
            "ALTER TABLE t4 REPLICA IDENTITY FULL",
            "CREATE PUBLICATION chunks_test FOR ALL TABLES",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        let tables: Vec<(TableId, i64)> = sizes
            .iter()
            .map(|(n, rows)| (TableId::new("public", *n), *rows))
            .collect();
        let keyless = TableId::new("public", "t4");
        for (chunk, maxes) in [
            (1000, vec![1000]),
            (1000, vec![700, 1000, 5000, 300, 1000, 1]),
            (500, vec![1000, 499, 500]),
            (7, vec![3, 7, 8]),
        ] {
            let setup = Setup {
                url: db.url.clone(),
                database: "shop".into(),
                slot: format!("chunks_{chunk}"),
                publication: "chunks_test".into(),
                filter: Filter::default(),
                chunk,
                pool: pool.clone(),
            };
            let progress = Progress {
                lsn: "0/1".into(),
                table: None,
                after: None,
            };
            let mut snapshot = Snapshot::begin(setup, progress, None).await.unwrap();
            let mut got = Vec::new();
            for max in maxes.iter().cycle() {
                let read = snapshot.read(*max).await.unwrap();
                if read.is_empty() {
                    break;
                }
                got.push(
                    read.into_iter()
                        .map(|c| (c.change.after.unwrap()["a"].as_i64().unwrap(), c.checkpoint))
                        .collect::<Read>(),
                );
            }
            snapshot.close().await;
            let want = one_fetch_at_a_time(&tables, &[&keyless], chunk, &maxes);
            assert_eq!(got.len(), want.len(), "chunk {chunk}, asked {maxes:?}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "read {i}, chunk {chunk}, asked {maxes:?}");
            }
        }
    }

    #[test]
    fn keyless_tables_are_read_whole_with_their_ctid() {
        assert_eq!(
            plan(&[]).declare(Some(&["1".into()])).unwrap(),
            "DECLARE ferry_snapshot NO SCROLL CURSOR FOR SELECT ctid::text, \"a\", \"b\", \"v\" \
             FROM \"public\".\"Items\""
        );
    }
}
