//! Applies a capture's changes to another database (SQLite, PostgreSQL or
//! MariaDB), each committed source transaction exactly once.
//!
//! # What a change becomes
//!
//! * `c`, `r`, `u`: an upsert of the row by the target table's primary key
//!   (`INSERT … ON CONFLICT (key) DO UPDATE` on PostgreSQL and SQLite,
//!   `INSERT … ON DUPLICATE KEY UPDATE` on MariaDB), of the columns the
//!   change carries: a column the source did not send (PostgreSQL's
//!   unchanged TOAST values) keeps its value. An update whose `before`
//!   holds another key than its `key` first deletes the row of the old key.
//! * `d`: a delete by the change's key.
//! * `t`: every row of the target table removed, in the same transaction
//!   (`TRUNCATE` on PostgreSQL, `DELETE` on MariaDB, where `TRUNCATE` would
//!   commit, and on SQLite).
//!
//! Values are bound so that the column's type takes them: on PostgreSQL
//! as text cast to the column's type (`CAST($1 AS numeric(12,2))`), on
//! MariaDB and SQLite numbers and booleans as such and everything else as
//! text (MariaDB `DATETIME`/`TIMESTAMP` columns get times with an offset
//! in UTC). Binary columns are written as the text the change carries
//! (base64 from MariaDB, `\x…` hex from PostgreSQL, hex from SQLite's
//! triggers), not decoded.
//!
//! # Target tables
//!
//! Ferry does not create target tables: each must exist, with a primary
//! key, and with a column for every source column that is not
//! [dropped](ColumnMapping::drop) (under its [new name](ColumnMapping::rename)
//! if renamed). A missing table stops apply with an error naming it;
//! a missing column, with an error naming the column. Tables and columns
//! are looked up when a table's first change comes, and again when a
//! change has a column the target table did not have then. Ferry creates
//! its own table, [`APPLIED_TABLE`] (`ferry_cdc_applied`: `capture`
//! primary key, `checkpoint` text, `applied_at`), in the target's default
//! schema.
//!
//! # Exactly once
//!
//! Changes are written in stream order into one open target transaction,
//! which commits only at the end of a source transaction (its checkpoint)
//! once [`batch_size`](ApplyConfig::batch_size) changes are written or
//! the capture has nothing more at hand: a source transaction is never
//! split, however large (its rows are written as they come, the target
//! transaction just stays open). The same target transaction upserts the
//! checkpoint into `ferry_cdc_applied`; only after it committed is the
//! source [acknowledged](Capture::acknowledge).
//!
//! After a crash the source gives again everything after its last
//! acknowledged checkpoint, which may be before the target's. Apply then
//! reads the target's checkpoint and writes each replayed source
//! transaction in a target transaction of its own: at its checkpoint, if
//! that is [at or before](checkpoint_order) the target's, the transaction
//! is rolled back (the target has it) and acknowledged; the first one
//! after it commits, and apply goes on as usual. A replayed transaction
//! the target would refuse is skipped all the same. The same happens
//! after a lost target connection, whose last commit may or may not have
//! happened.
//!
//! # Failures
//!
//! A lost target connection (or a deadlock, a busy SQLite file) rolls the
//! open transaction back; apply pauses with capped backoff (logged once
//! when the target goes down and once when it is back) and writes the
//! changes of the lost transaction again, which it keeps for that, up to
//! [`KEPT_CHANGES`] (or twice the batch size). A source transaction larger
//! than that, interrupted, ends apply with [`ApplyError::Interrupted`]:
//! restarted, the source replays it. A change the target refuses for good
//! (a type it cannot read, a constraint) stops apply with
//! [`ApplyError::Refused`], naming the change, the table and the
//! database's message; nothing after the last committed transaction is
//! acknowledged.
//!
//! # Limits
//!
//! * Exactly once rests on ordered checkpoints: trigger mode, PostgreSQL
//!   log mode and MariaDB binlog mode ([`checkpoint_order`]). Where two
//!   checkpoints do not compare, the replayed transaction is applied
//!   again rather than skipped: two chunks of one initial snapshot
//!   (PostgreSQL's or MariaDB's: after a restart the source reads the rest
//!   from a fresh snapshot, at least once anyway), and pull mode, whose
//!   checkpoints are state rather than a position. Their changes are row
//!   states, so the rows end the same; a row is written more than once.
//! * Schema changes are not applied: a column added at the source needs
//!   its target column (or a `drop`).
//! * One apply per capture name and target.

mod config;
mod mariadb;
mod order;
mod postgres;
mod sqlite;
mod target;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_delivery::Health;
use ferry_store::Database;
use sqlx::error::BoxDynError;
use sqlx::{Pool, Transaction};
use tokio_util::sync::CancellationToken;

pub use config::{ApplyConfig, ColumnMapping};
pub use order::{checkpoint_order, CheckpointOrder};
pub use writer::APPLIED_TABLE;

use crate::capture::{Capture, CaptureError, Captured, Checkpoint};
use crate::change::{Change, Op, Row, TableId};
use crate::runner::ShipStats;
use target::{Target, TargetName};
use writer::Cell;

/// Changes of an open target transaction kept to write them again after a
/// lost connection (at least; twice the batch size when that is more).
pub const KEPT_CHANGES: usize = 10_000;

/// How long a read waits for changes when there are none.
const READ_WAIT: Duration = Duration::from_millis(200);

/// Why apply stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The config cannot work.
    #[error("apply {name}: invalid config: {reason}")]
    Config {
        /// The capture.
        name: String,
        /// What to change.
        reason: String,
    },
    /// The capture refused to go on.
    #[error("capture {name}: {}", source.describe())]
    Capture {
        /// The capture.
        name: String,
        /// Why.
        source: CaptureError,
    },
    /// A change's target table does not exist.
    #[error(
        "apply {name}: target table {table} (for {source_table}) does not exist: Ferry does not \
         create target tables; create it, or map {source_table} to an existing table in `tables`"
    )]
    MissingTable {
        /// The capture.
        name: String,
        /// The target table.
        table: String,
        /// The source table whose change needed it.
        source_table: String,
    },
    /// A change's columns do not fit its target table.
    #[error("apply {name}: {source_table} into {table}: {reason}")]
    Mapping {
        /// The capture.
        name: String,
        /// The target table.
        table: String,
        /// The source table.
        source_table: String,
        /// What does not fit, and what to change.
        reason: String,
    },
    /// The target refused a change for good (a type mismatch, a
    /// constraint).
    #[error(transparent)]
    Refused(Box<RefusedChange>),
    /// The target refused what apply needs besides the changes (its
    /// `ferry_cdc_applied` table, a commit), or holds a checkpoint it
    /// cannot read.
    #[error("apply {name}: {what}")]
    Target {
        /// The capture.
        name: String,
        /// What failed.
        what: String,
        /// The error.
        #[source]
        source: BoxDynError,
    },
    /// The target holds a checkpoint of another kind of capture under this
    /// capture's name.
    #[error(
        "apply {name}: the target's {APPLIED_TABLE} holds checkpoint {stored} for this capture, \
         not of the same kind as the capture's {got}: is the name used by another capture? \
         Delete that row to apply this capture from its start"
    )]
    OtherCapture {
        /// The capture.
        name: String,
        /// The checkpoint the target holds.
        stored: String,
        /// A checkpoint the capture gave.
        got: String,
    },
    /// The target connection was lost in a source transaction too large
    /// to keep for writing it again.
    #[error(
        "apply {name}: the target connection was lost within a source transaction of more than \
         {kept} changes; restart apply: the source gives the transaction again from its last \
         acknowledged checkpoint"
    )]
    Interrupted {
        /// The capture.
        name: String,
        /// Changes kept at most.
        kept: usize,
    },
}

/// A change the target refused for good: which, where it goes, and what
/// the database said.
#[derive(Debug, thiserror::Error)]
#[error(
    "apply {name}: the target refused change {change} ({op} of {source_table} at {position}, \
     key {key}) into {table}: {message}"
)]
pub struct RefusedChange {
    /// The capture.
    pub name: String,
    /// The change's id.
    pub change: String,
    /// Its operation.
    pub op: Op,
    /// Its position in the source's stream.
    pub position: String,
    /// Its key, as JSON.
    pub key: String,
    /// The source table.
    pub source_table: String,
    /// The target table.
    pub table: String,
    /// The database's message.
    pub message: String,
    /// The error.
    #[source]
    pub source: sqlx::Error,
}

/// Applies `capture`'s changes to `target` until `shutdown` (then returns
/// `Ok`) or an error. See the [module docs](self) for what each change
/// becomes and why each committed source transaction is applied once.
///
/// `stats` counts changes read (`read`), applied and committed
/// (`delivered`, `per_table`, `last_commit_ms`), lost target transactions
/// (`failed`) and acknowledgements.
pub async fn apply<C: Capture>(
    capture: C,
    target: Database,
    config: ApplyConfig,
    stats: Arc<ShipStats>,
    shutdown: CancellationToken,
) -> Result<(), ApplyError> {
    if let Err(reason) = config.validate() {
        return Err(ApplyError::Config {
            name: config.capture,
            reason,
        });
    }
    match target {
        Database::Postgres(pool) => {
            Engine::new(capture, pool, config, stats, shutdown)
                .run()
                .await
        }
        Database::Sqlite(pool) => {
            Engine::new(capture, pool, config, stats, shutdown)
                .run()
                .await
        }
        Database::Mysql(pool) => {
            Engine::new(capture, pool, config, stats, shutdown)
                .run()
                .await
        }
    }
}

/// Why writing a change (or committing) did not succeed.
enum Failure {
    /// The target did not answer, or asked to try again: the open
    /// transaction is lost, its changes are written again.
    Lost(String),
    /// Apply cannot go on.
    Stop(ApplyError),
    /// The target refused the change for good: apply stops, unless the
    /// change is of a replayed transaction that the target already has.
    Refused(ApplyError),
}

/// A target table, looked up.
struct Route {
    name: TargetName,
    quoted: String,
    columns: HashMap<String, String>,
    /// The target's primary key.
    key: Vec<String>,
    mapping: ColumnMapping,
}

/// Replaying what the target may already hold.
struct Resume {
    /// The target's checkpoint.
    checkpoint: Checkpoint,
    order: Option<CheckpointOrder>,
    /// Changes skipped so far.
    skipped: u64,
}

/// The loop behind [`apply`], for one kind of target database.
struct Engine<DB: Target, C: Capture> {
    capture: C,
    pool: Pool<DB>,
    config: ApplyConfig,
    /// PostgreSQL to PostgreSQL: a table's default target keeps its schema.
    keep_schema: bool,
    stats: Arc<ShipStats>,
    shutdown: CancellationToken,
    target_health: Health,
    source_health: Health,
    routes: HashMap<TableId, Arc<Route>>,
    /// `ferry_cdc_applied` exists.
    created: bool,
    /// The target's checkpoint was read since the last lost connection.
    ready: bool,
    resume: Option<Resume>,
    /// The first refusal in the replayed transaction being written.
    refused: Option<ApplyError>,
    tx: Option<Transaction<'static, DB>>,
    /// Changes read and not yet written.
    queue: VecDeque<Captured>,
    /// The changes written in the open transaction, to write again after a
    /// lost connection.
    written: Vec<Captured>,
    /// `written` could not keep them all.
    overflow: bool,
    /// How many `written` keeps at most.
    kept: usize,
    /// Changes in the open transaction, in all and per source table.
    in_tx: usize,
    tx_tables: HashMap<TableId, u64>,
    tx_commit_time: Option<DateTime<Utc>>,
    /// The last checkpoint written in the open transaction.
    tx_checkpoint: Option<Checkpoint>,
    /// Applied (or found applied) and not yet acknowledged to the source.
    unacked: Option<Checkpoint>,
}

impl<DB: Target, C: Capture> Engine<DB, C> {
    fn new(
        capture: C,
        pool: Pool<DB>,
        config: ApplyConfig,
        stats: Arc<ShipStats>,
        shutdown: CancellationToken,
    ) -> Self {
        let keep_schema =
            DB::KIND == ferry_store::DatabaseKind::Postgres && capture.connector() == "postgresql";
        // On MariaDB a bare source table name means the capture's database.
        let config = if capture.connector() == "mysql" {
            config.scoped(capture.database())
        } else {
            config
        };
        let target_health = Health::new("target database", &config.capture, &config.backoff);
        let source_health = Health::new("source", &config.capture, &config.backoff);
        let kept = KEPT_CHANGES.max(config.batch_size.saturating_mul(2));
        Self {
            capture,
            pool,
            keep_schema,
            stats,
            shutdown,
            target_health,
            source_health,
            routes: HashMap::new(),
            created: false,
            ready: false,
            resume: None,
            refused: None,
            tx: None,
            queue: VecDeque::new(),
            written: Vec::new(),
            overflow: false,
            kept,
            in_tx: 0,
            tx_tables: HashMap::new(),
            tx_commit_time: None,
            tx_checkpoint: None,
            unacked: None,
            config,
        }
    }

    fn name(&self) -> &str {
        &self.config.capture
    }

    async fn run(mut self) -> Result<(), ApplyError> {
        tracing::info!(capture = %self.name(), "apply started");
        loop {
            if self.shutdown.is_cancelled() {
                return self.stop(None).await;
            }
            let pause = self
                .target_health
                .pause_left()
                .or_else(|| self.source_health.pause_left());
            if let Some(pause) = pause {
                sleep_or(pause, &self.shutdown).await;
                continue;
            }
            if !self.ready {
                match self.prepare().await {
                    Ok(()) => {}
                    Err(Failure::Lost(what)) => {
                        self.target_health.failed(&what);
                        continue;
                    }
                    Err(Failure::Stop(e) | Failure::Refused(e)) => return self.stop(Some(e)).await,
                }
            }
            if self.queue.is_empty() {
                // An acknowledgement that failed is tried again.
                self.acknowledge().await;
                let batch = self.config.batch_size;
                let read = tokio::select! {
                    r = self.capture.read(batch, READ_WAIT) => Some(r),
                    _ = self.shutdown.cancelled() => None,
                };
                match read {
                    None => continue,
                    Some(Ok(changes)) => {
                        self.source_health.succeeded();
                        self.stats
                            .read
                            .fetch_add(changes.len() as u64, AtomicOrdering::Relaxed);
                        self.queue.extend(changes);
                    }
                    Some(Err(e)) if e.is_retryable() => {
                        self.source_health.failed(&e.describe());
                        continue;
                    }
                    Some(Err(source)) => {
                        let name = self.name().to_owned();
                        return self.stop(Some(ApplyError::Capture { name, source })).await;
                    }
                }
            }
            while let Some(c) = self.queue.pop_front() {
                match self.feed(c).await {
                    Ok(()) => {}
                    Err(Failure::Lost(what)) => {
                        if let Err(e) = self.lost(&what) {
                            return self.stop(Some(e)).await;
                        }
                        break;
                    }
                    Err(Failure::Stop(e) | Failure::Refused(e)) => return self.stop(Some(e)).await,
                }
            }
        }
    }

    /// Creates `ferry_cdc_applied` (once) and reads the target's
    /// checkpoint: replayed transactions up to it are skipped.
    async fn prepare(&mut self) -> Result<(), Failure> {
        if !self.created {
            writer::create_applied(&self.pool)
                .await
                .map_err(|e| self.target_failure(e, format!("creating {APPLIED_TABLE} failed")))?;
            self.created = true;
        }
        let stored = writer::load_applied(&self.pool, self.name())
            .await
            .map_err(|e| self.target_failure(e, format!("reading {APPLIED_TABLE} failed")))?;
        self.resume = match stored {
            None => None,
            Some(text) => {
                let value = serde_json::from_str(&text).map_err(|e| {
                    Failure::Stop(ApplyError::Target {
                        name: self.name().to_owned(),
                        what: format!(
                            "{APPLIED_TABLE}.checkpoint of this capture is not JSON: {text:?}"
                        ),
                        source: Box::new(e),
                    })
                })?;
                let checkpoint = Checkpoint(value);
                tracing::info!(capture = %self.name(), checkpoint = %checkpoint.0,
                    "the target holds changes up to this checkpoint; replayed ones up to it are skipped");
                Some(Resume {
                    order: checkpoint_order(&checkpoint),
                    checkpoint,
                    skipped: 0,
                })
            }
        };
        self.ready = true;
        Ok(())
    }

    /// Writes one change into the open transaction, and commits (or,
    /// replaying, skips) at the end of its source transaction.
    async fn feed(&mut self, c: Captured) -> Result<(), Failure> {
        let checkpoint = c.checkpoint.clone();
        let table = c.change.source.table.clone();
        let commit_time = c.change.source.commit_time;
        // Replaying a transaction the target refused: the rest of it waits
        // for its checkpoint to say whether it is skipped.
        if self.refused.is_none() {
            match self.write(&c.change).await {
                Ok(()) => {}
                Err(Failure::Refused(e)) if self.resume.is_some() => self.refused = Some(e),
                Err(Failure::Lost(what)) => {
                    // Kept, to be written again with the rest.
                    self.keep(c);
                    return Err(Failure::Lost(what));
                }
                Err(f) => return Err(f),
            }
        }
        self.keep(c);
        self.in_tx += 1;
        *self.tx_tables.entry(table).or_default() += 1;
        if commit_time.is_some() {
            self.tx_commit_time = self.tx_commit_time.max(commit_time);
        }
        match checkpoint {
            None => Ok(()),
            Some(cp) => self.end_of_source_transaction(cp).await,
        }
    }

    fn keep(&mut self, c: Captured) {
        if self.written.len() < self.kept {
            self.written.push(c);
        } else {
            self.overflow = true;
        }
    }

    async fn end_of_source_transaction(&mut self, cp: Checkpoint) -> Result<(), Failure> {
        self.tx_checkpoint = Some(cp.clone());
        let Some(resume) = &self.resume else {
            if self.in_tx >= self.config.batch_size || self.queue.is_empty() {
                return self.commit().await;
            }
            return Ok(());
        };
        let order = checkpoint_order(&cp);
        if let (Some(got), Some(stored)) = (&order, &resume.order) {
            if !got.same_kind(stored) {
                return Err(Failure::Stop(ApplyError::OtherCapture {
                    name: self.name().to_owned(),
                    stored: resume.checkpoint.0.to_string(),
                    got: cp.0.to_string(),
                }));
            }
        }
        // Without an order, the transaction is applied: written again
        // rather than lost (and never skipped after earlier ones were
        // written again, which would leave their older rows).
        let cmp = match (&order, &resume.order) {
            (Some(got), Some(stored)) => got.partial_cmp(stored),
            _ => None,
        };
        match cmp {
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal) => {
                // The target has this transaction: written again only to
                // find out, rolled back.
                if let Some(tx) = self.tx.take() {
                    let _ = tx.rollback().await;
                }
                let skipped = self.in_tx as u64;
                self.clear_tx();
                self.refused = None;
                if let Some(r) = &mut self.resume {
                    r.skipped += skipped;
                }
                self.unacked = Some(cp);
                self.acknowledge().await;
                if cmp == Some(std::cmp::Ordering::Equal) {
                    self.replayed();
                }
                Ok(())
            }
            _ => {
                if let Some(e) = self.refused.take() {
                    return Err(Failure::Stop(e));
                }
                self.replayed();
                self.commit().await
            }
        }
    }

    /// The replay has reached what the target does not have.
    fn replayed(&mut self) {
        if let Some(r) = self.resume.take() {
            tracing::info!(capture = %self.name(), skipped = r.skipped, checkpoint = %r.checkpoint.0,
                "caught up with the target's checkpoint");
        }
    }

    /// Records the checkpoint, commits, acknowledges.
    async fn commit(&mut self) -> Result<(), Failure> {
        let (Some(tx), Some(cp)) = (self.tx.as_mut(), self.tx_checkpoint.clone()) else {
            return Ok(());
        };
        let name = self.config.capture.clone();
        if let Err(e) = writer::save_applied(tx, &name, &cp.0.to_string()).await {
            return Err(self.target_failure(e, format!("recording the checkpoint {} failed", cp.0)));
        }
        let tx = self.tx.take().expect("open transaction");
        if let Err(e) = tx.commit().await {
            return Err(self.target_failure(
                e,
                format!(
                    "committing the transaction ending at checkpoint {} failed",
                    cp.0
                ),
            ));
        }
        self.target_health.succeeded();
        let stats = &self.stats;
        stats
            .delivered
            .fetch_add(self.in_tx as u64, AtomicOrdering::Relaxed);
        if let Some(t) = self.tx_commit_time {
            stats
                .last_commit_ms
                .fetch_max(t.timestamp_millis(), AtomicOrdering::Relaxed);
        }
        if let Ok(mut m) = stats.per_table.lock() {
            for (t, n) in self.tx_tables.drain() {
                *m.entry(t).or_default() += n;
            }
        }
        tracing::debug!(capture = %name, changes = self.in_tx, checkpoint = %cp.0, "applied");
        self.clear_tx();
        self.unacked = Some(cp);
        self.acknowledge().await;
        Ok(())
    }

    fn clear_tx(&mut self) {
        self.written.clear();
        self.overflow = false;
        self.in_tx = 0;
        self.tx_tables.clear();
        self.tx_commit_time = None;
        self.tx_checkpoint = None;
    }

    /// The open transaction is lost: its changes go back to the queue, to
    /// be written again once the target's checkpoint is read again (the
    /// commit may have happened).
    fn lost(&mut self, what: &str) -> Result<(), ApplyError> {
        self.stats.failed.fetch_add(1, AtomicOrdering::Relaxed);
        self.target_health.failed(what);
        self.tx = None;
        if self.overflow {
            return Err(ApplyError::Interrupted {
                name: self.name().to_owned(),
                kept: self.kept,
            });
        }
        let mut queue: VecDeque<Captured> = self.written.drain(..).collect();
        queue.append(&mut self.queue);
        self.queue = queue;
        self.clear_tx();
        self.refused = None;
        self.ready = false;
        Ok(())
    }

    /// Acknowledges what the target has, if anything; on failure it is
    /// kept for the next time.
    async fn acknowledge(&mut self) {
        let Some(cp) = self.unacked.take() else {
            return;
        };
        match self.capture.acknowledge(&cp).await {
            Ok(()) => {
                self.stats
                    .acknowledged
                    .fetch_add(1, AtomicOrdering::Relaxed);
            }
            Err(e) => {
                self.source_health.failed(&format!(
                    "acknowledging the position failed: {}",
                    e.describe()
                ));
                self.unacked = Some(cp);
            }
        }
    }

    async fn stop(mut self, error: Option<ApplyError>) -> Result<(), ApplyError> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.rollback().await;
        }
        self.acknowledge().await;
        let applied = self.stats.delivered.load(AtomicOrdering::Relaxed);
        match error {
            None => {
                tracing::info!(capture = %self.name(), applied, "apply stopped");
                Ok(())
            }
            Some(e) => {
                tracing::error!(capture = %self.name(), applied, error = %e, "apply stopped");
                Err(e)
            }
        }
    }

    /// A failure of the target outside a change: lost, or a stop naming
    /// `what`.
    fn target_failure(&self, e: sqlx::Error, what: String) -> Failure {
        if is_transient(&e) {
            return Failure::Lost(format!("{what}: {e}"));
        }
        Failure::Stop(ApplyError::Target {
            name: self.name().to_owned(),
            what,
            source: Box::new(e),
        })
    }

    /// Writes `change` into the open transaction (begun if need be).
    async fn write(&mut self, change: &Change) -> Result<(), Failure> {
        if self.tx.is_none() {
            let tx =
                self.pool.begin().await.map_err(|e| {
                    self.target_failure(e, "beginning a transaction failed".to_owned())
                })?;
            self.tx = Some(tx);
        }
        let table = &change.source.table;
        let mut route = self.route(table, false).await?;
        let plan = match plan(&route, change) {
            Ok(p) => p,
            Err(_) => {
                // The table may have changed since it was looked up.
                route = self.route(table, true).await?;
                plan(&route, change).map_err(|reason| {
                    Failure::Stop(ApplyError::Mapping {
                        name: self.name().to_owned(),
                        table: route.name.to_string(),
                        source_table: table.to_string(),
                        reason,
                    })
                })?
            }
        };
        let tx = self.tx.as_mut().expect("open transaction");
        let result = match plan {
            Plan::Truncate => writer::truncate(tx, &route.quoted).await,
            Plan::Delete(key) => writer::delete(tx, &route.quoted, &key).await,
            Plan::Upsert { old_key, row } => {
                let mut r = Ok(());
                if let Some(old) = old_key {
                    r = writer::delete(tx, &route.quoted, &old).await;
                }
                if r.is_ok() {
                    r = writer::upsert(tx, &route.quoted, &route.key, &row).await;
                }
                r
            }
        };
        result.map_err(|e| self.refused(e, change, &route))
    }

    fn refused(&self, e: sqlx::Error, change: &Change, route: &Route) -> Failure {
        if is_transient(&e) {
            return Failure::Lost(format!("writing to {} failed: {e}", route.name));
        }
        let message = match &e {
            sqlx::Error::Database(db) => db.message().to_owned(),
            other => other.to_string(),
        };
        Failure::Refused(ApplyError::Refused(Box::new(RefusedChange {
            name: self.name().to_owned(),
            change: change.id(&self.config.capture).to_string(),
            op: change.op,
            position: change.source.position.to_string(),
            key: change.key_text(),
            source_table: change.source.table.to_string(),
            table: route.name.to_string(),
            message,
            source: e,
        })))
    }

    /// The target table of `table`, looked up (again when `refresh`).
    async fn route(&mut self, table: &TableId, refresh: bool) -> Result<Arc<Route>, Failure> {
        if !refresh {
            if let Some(r) = self.routes.get(table) {
                return Ok(r.clone());
            }
        }
        let name = match self.config.table_for(table) {
            Some(t) => TargetName::parse(t),
            None => TargetName {
                schema: self.keep_schema.then(|| table.schema.clone()),
                name: table.name.clone(),
            },
        };
        let tx = self.tx.as_mut().expect("open transaction");
        let conn: &mut DB::Connection = tx;
        let shape = match DB::describe(conn, &name).await {
            Ok(s) => s,
            Err(e) => {
                return Err(self.target_failure(e, format!("looking up target table {name} failed")))
            }
        };
        let Some(shape) = shape else {
            return Err(Failure::Stop(ApplyError::MissingTable {
                name: self.name().to_owned(),
                table: name.to_string(),
                source_table: table.to_string(),
            }));
        };
        if shape.key.is_empty() {
            return Err(Failure::Stop(ApplyError::Mapping {
                name: self.name().to_owned(),
                table: name.to_string(),
                source_table: table.to_string(),
                reason: format!(
                    "target table {name} has no primary key: changes are upserted and deleted by it"
                ),
            }));
        }
        let route = Arc::new(Route {
            quoted: name.quoted::<DB>(),
            name,
            columns: shape.columns,
            key: shape.key,
            mapping: self.config.columns_for(table).cloned().unwrap_or_default(),
        });
        self.routes.insert(table.clone(), route.clone());
        Ok(route)
    }
}

/// What a change becomes.
enum Plan<'a> {
    Truncate,
    Delete(Vec<Cell<'a>>),
    Upsert {
        /// An update that moved the row to another key: the old one.
        old_key: Option<Vec<Cell<'a>>>,
        row: Vec<Cell<'a>>,
    },
}

/// `change` as statements on `route`'s table, or why its columns do not
/// fit.
fn plan<'a>(route: &'a Route, change: &'a Change) -> Result<Plan<'a>, String> {
    match change.op {
        Op::Truncate => Ok(Plan::Truncate),
        Op::Delete => {
            if change.key.is_empty() {
                return Err("a delete without a key".into());
            }
            Ok(Plan::Delete(key_cells(route, &change.key, &change.key)?))
        }
        Op::Create | Op::Read | Op::Update => {
            let after = change.after.as_ref().ok_or("a change without its row")?;
            let mut row = Vec::with_capacity(after.len());
            for (column, value) in after {
                row.extend(cell(route, column, value, false)?);
            }
            // Key columns the row lacks are taken from the key.
            for (column, value) in &change.key {
                if !after.contains_key(column) {
                    row.extend(cell(route, column, value, true)?);
                }
            }
            if let Some(k) = route.key.iter().find(|k| !row.iter().any(|c| c.name == *k)) {
                return Err(format!(
                    "the target's key column {k} gets no value from the change's columns \
                     ({}): rename a source column to it in `columns`",
                    after.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            let mut old_key = None;
            if let (Op::Update, Some(before)) = (change.op, &change.before) {
                let moved = change
                    .key
                    .iter()
                    .any(|(k, v)| before.get(k).is_some_and(|old| old != v));
                if moved {
                    old_key = Some(key_cells(route, &change.key, before)?);
                }
            }
            Ok(Plan::Upsert { old_key, row })
        }
    }
}

/// The target column of source column `column`, with `value`; `None` when
/// the column is dropped (an error for a `key` column).
fn cell<'a>(
    route: &'a Route,
    column: &str,
    value: &'a serde_json::Value,
    key: bool,
) -> Result<Option<Cell<'a>>, String> {
    let Some(target) = route.mapping.target(column) else {
        if key {
            return Err(format!(
                "key column {column} is dropped by the column mapping; the key is needed"
            ));
        }
        return Ok(None);
    };
    let Some((name, ty)) = route.columns.get_key_value(target) else {
        return Err(format!(
            "column {column} goes to column {target}, which the target table lacks: add it, or \
             rename or drop {column} in `columns`"
        ));
    };
    Ok(Some(Cell {
        name: name.as_str(),
        ty: ty.as_str(),
        value,
    }))
}

/// The cells of the key columns of `key`, with their values from `row`.
fn key_cells<'a>(route: &'a Route, key: &Row, row: &'a Row) -> Result<Vec<Cell<'a>>, String> {
    let mut out = Vec::with_capacity(key.len());
    for column in key.keys() {
        let value = row
            .get(column)
            .ok_or_else(|| format!("the row lacks its key column {column}"))?;
        out.extend(cell(route, column, value, true)?);
    }
    Ok(out)
}

/// A lost connection, or an answer that says to try again (a deadlock, a
/// serialization failure, a busy SQLite file, a server shutting down):
/// what `StoreError::is_retryable` names for connecting, and the conflicts
/// that roll a transaction back.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                // Deadlock, lock wait timeout, and what StoreError retries
                // (too many connections, shutdown, killed).
                return matches!(my.number(), 1213 | 1205 | 1040 | 1203 | 1053 | 1927);
            }
            let code = db.code().unwrap_or_default();
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                return code.parse::<i32>().is_ok_and(|c| matches!(c % 256, 5 | 6));
            }
            code.starts_with("08")
                || code.starts_with("57P")
                || matches!(code.as_ref(), "53300" | "40001" | "40P01")
        }
        _ => false,
    }
}

async fn sleep_or(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}
