//! Pull mode: rows whose `updated_at` moved, found by polling, on SQLite,
//! PostgreSQL and MariaDB. Nothing is installed in the database and no
//! server setting is needed; the price is what polling cannot see.
//!
//! # Reading
//!
//! Each captured table is read in *passes*, in `(updated_at, primary
//! key)` order, in pages of `chunk_size` rows (a keyset: `WHERE
//! (updated_at, pk) > (last row read)`). A table's first pass starts at
//! its first row; every later pass starts `overlap` (default 5 s) before
//! the newest `updated_at` read so far, and runs to the table's end; a
//! table whose pass ended is polled again after `poll_interval`.
//!
//! Why the overlap: `updated_at` is the time of the write, not of the
//! commit. A transaction that writes at 10:00:07 and commits at 10:00:09
//! becomes visible after rows stamped 10:00:08 were read. Reading again
//! from `newest - overlap` finds it. The row versions read within the
//! window are remembered as `(primary key, updated_at)` and skipped when
//! read again, so the overlap sends nothing twice; only the versions
//! within the window are kept (older ones no pass reads again).
//!
//! # Changes
//!
//! * Without the row as it was, pull mode cannot tell an insert from an
//!   update: a row read is a `u` change with `before` empty and `after`
//!   the row, whatever happened to it.
//! * The rows a table holds when its first pass reads it are `r` (read)
//!   changes when `snapshot` is on (the default). With `snapshot` off, a
//!   table present at the capture's very first start is read from that
//!   start on; a table the capture meets later is read from its first
//!   row, as `u` changes (its rows were written after the capture
//!   started).
//! * With `soft_delete` set, a row that carries the mark (a `deleted_at`
//!   that is not null, a `deleted` that is true) is a `d` change whose
//!   `before` is the row and `after` empty. A soft-deleted row met by the
//!   first pass is not sent (it is not part of the table's contents). A
//!   row whose mark is cleared again is a `u`.
//! * The change's position is `cursor:{updated_at}:{key}`, so a row
//!   version read again (after a restart) has the same id. `updated_at`
//!   is written as the capture reads it: PostgreSQL and MariaDB
//!   `2024-05-01T10:00:00.123456` (PostgreSQL's `timestamptz` in UTC, with
//!   `Z`), SQLite the stored text. No transaction and no commit time are
//!   known.
//!
//! Changes come in `(updated_at, primary key)` order within a table,
//! except a late commit found by the overlap, which comes when it is
//! found. Tables are read in turn, a page each.
//!
//! # Checkpoints
//!
//! The last change of each page carries the capture's whole state: per
//! table the newest `updated_at` read, the pass under way, and the row
//! versions within the window. [`acknowledge`](Capture::acknowledge) saves
//! it in `ferry_cdc_offsets` (the source database unless `offsets` names
//! another); a restart resumes from it, reading the unacknowledged changes
//! again with the same ids.
//!
//! # Limits
//!
//! * **Hard deletes are invisible**: a `DELETE` leaves no row to read.
//!   Use soft deletes, or trigger or log mode.
//! * Every write must set `updated_at` (on insert and on update) to the
//!   time of the write: a write that leaves it alone is not seen. Two
//!   versions of a row with the same `updated_at` are one version: only
//!   the first read is sent (the column's precision counts: seconds in
//!   SQLite's `CURRENT_TIMESTAMP`, microseconds elsewhere).
//! * Only the state at each poll is seen: a row updated twice between two
//!   polls is sent once, in its last version.
//! * A transaction that commits more than `overlap` after it wrote
//!   `updated_at` (PostgreSQL's `now()` is the *transaction's* start) can
//!   be missed. A clock set back by more than `overlap` likewise.
//! * Rows whose `updated_at` is null are never read.
//! * Memory and the checkpoint hold every row version of the last
//!   `overlap`: millions of rows stamped alike (a bulk load in one
//!   transaction) make them large for as long.
//! * `updated_at` must be `timestamp`/`timestamptz` (PostgreSQL),
//!   `DATETIME`/`TIMESTAMP` (MariaDB, read in the session's time zone,
//!   which should have no daylight saving), or text in one ISO 8601 form
//!   per column on SQLite (`2024-05-01 10:00:00[.fff]`, `T` and a zone
//!   suffix allowed); a table without a primary key or without the
//!   column is refused.
//! * Primary keys are compared as the row's JSON gives them: binary keys
//!   (read as hex) are not supported.

mod config;
mod query;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ferry_core::ErrorKind;
use ferry_store::{Database, StoreError};
use serde_json::Value;
use tokio::time::Instant;

use crate::capture::{Capture, CaptureError, Captured, Checkpoint};
use crate::change::{Change, Op, Position, Row, Source, TableId};
use crate::json::parse_row;
use crate::offsets::Offsets;
use crate::triggers;

pub use config::{DeletedWhen, PullConfig, SoftDelete};

use self::query::{Dialect, From, Plan};
use self::state::{ScanAt, State, TableState};

/// How often the tables are listed again (new tables, new columns).
const SCHEMA_CHECK: Duration = Duration::from_secs(5);

/// A pull capture; see the [module docs](self).
pub struct PullCapture {
    db: Database,
    config: PullConfig,
    database_name: String,
    offsets: Offsets,
    plans: Vec<Plan>,
    state: State,
    /// When each table's next pass may start.
    next_pass: HashMap<TableId, Instant>,
    /// When the tables were last listed.
    listed: Instant,
    /// The table read first in the next round.
    turn: usize,
}

impl std::fmt::Debug for PullCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullCapture")
            .field("name", &self.config.name)
            .field("database", &self.database_name)
            .field("tables", &self.plans.len())
            .finish_non_exhaustive()
    }
}

impl PullCapture {
    /// Checks the captured tables, loads the saved state and gets ready to
    /// read from it.
    ///
    /// Permanent errors: a setting that cannot work, a captured table
    /// without a primary key or without its `updated_at` column (or one
    /// that is not a time). Unavailable: the database or the offsets'
    /// database cannot be reached.
    pub async fn start(db: Database, config: PullConfig) -> Result<Self, CaptureError> {
        config.validate()?;
        let database_name = database_name(&db).await?;
        let offsets = match &config.offsets {
            Some(url) => Offsets::connect(url).await,
            None => Offsets::open(db.clone()).await,
        }
        .map_err(|e| store_failure(e, "cannot open the capture's offsets"))?;
        let saved = offsets
            .load(&config.name)
            .await
            .map_err(|e| store_failure(e, "cannot load the capture's state"))?;
        let first_start = saved.is_none();
        let state = match &saved {
            Some(cp) => State::parse(cp)?,
            None => State::default(),
        };
        let mut capture = Self {
            db,
            config,
            database_name,
            offsets,
            plans: Vec::new(),
            state,
            next_pass: HashMap::new(),
            listed: Instant::now(),
            turn: 0,
        };
        capture.list_tables().await?;
        if first_start && !capture.config.snapshot {
            // Rows present now are not sent: the start is saved at once,
            // or a restart before the first acknowledgement would take a
            // later start and skip what was read in between.
            for i in 0..capture.plans.len() {
                capture.skip_existing(i).await?;
            }
            capture
                .offsets
                .save(&capture.config.name, &capture.state.checkpoint())
                .await
                .map_err(|e| store_failure(e, "cannot save the capture's state"))?;
        }
        Ok(capture)
    }

    /// The tables captured now.
    pub fn tables(&self) -> Vec<TableId> {
        self.plans.iter().map(|p| p.id.clone()).collect()
    }

    /// Forgets the saved state of the capture `config` names (in its
    /// offsets' database, `db` by default): the next start begins afresh.
    /// Returns whether there was one.
    pub async fn drop_capture(db: &Database, config: &PullConfig) -> Result<bool, CaptureError> {
        let offsets = match &config.offsets {
            Some(url) => Offsets::connect(url).await,
            None => Offsets::open(db.clone()).await,
        }
        .map_err(|e| store_failure(e, "cannot open the capture's offsets"))?;
        offsets
            .delete(&config.name)
            .await
            .map_err(|e| store_failure(e, "cannot delete the capture's state"))
    }

    /// Lists the captured tables, refusing those pull mode cannot read;
    /// a table new to the state starts afresh, a table gone is forgotten.
    async fn list_tables(&mut self) -> Result<(), CaptureError> {
        let found = match &self.db {
            Database::Sqlite(p) => triggers::sqlite::tables(p).await,
            Database::Postgres(p) => triggers::postgres::tables(p).await,
            Database::Mysql(p) => triggers::mariadb::tables(p).await,
        }
        .map_err(|e| unavailable(e, "cannot list the tables"))?;
        let dialect = Dialect::of(&self.db);
        let mut plans = Vec::new();
        for table in found.iter().filter(|t| self.config.tables.captures(&t.id)) {
            plans.push(Plan::new(
                dialect,
                table,
                self.config.updated_at_of(&table.id),
            )?);
        }
        plans.sort_by(|a, b| a.id.cmp(&b.id));
        let mut tables = BTreeMap::new();
        for plan in &plans {
            let state = self
                .state
                .tables
                .remove(&plan.id)
                .unwrap_or_else(|| TableState::fresh(self.config.snapshot));
            tables.insert(plan.id.clone(), state);
        }
        self.state.tables = tables;
        self.next_pass
            .retain(|t, _| self.state.tables.contains_key(t));
        self.plans = plans;
        self.listed = Instant::now();
        Ok(())
    }

    /// Marks the rows of table `i` up to its newest `updated_at` as read,
    /// without sending them (the first start without a snapshot).
    async fn skip_existing(&mut self, i: usize) -> Result<(), CaptureError> {
        let plan = self.plans[i].clone();
        let Some(newest) = plan.newest(&self.db).await? else {
            let state = self.table_mut(&plan.id);
            state.snapshot = false;
            return Ok(());
        };
        let mut state = TableState {
            high: Some(newest.clone()),
            ..TableState::default()
        };
        let start = self.window_start(&plan.id, &state)?;
        let mut scan: Option<ScanAt> = None;
        'pages: loop {
            let from = match &scan {
                Some(s) => From::After(s),
                None => From::AtLeast(&start),
            };
            let rows = plan.fetch(&self.db, from, self.config.chunk_size).await?;
            let full = rows.len() == self.config.chunk_size;
            for r in rows {
                if r.updated_at > newest {
                    break 'pages;
                }
                let (_, key, key_text) = self.parse(&plan, &r.row)?;
                state.seen.insert((r.updated_at.clone(), key_text));
                scan = Some(ScanAt {
                    updated_at: r.updated_at,
                    key,
                });
            }
            if !full {
                break;
            }
        }
        self.state.tables.insert(plan.id.clone(), state);
        Ok(())
    }

    fn table_mut(&mut self, table: &TableId) -> &mut TableState {
        self.state.tables.entry(table.clone()).or_default()
    }

    /// Where `state`'s next pass starts, or a permanent error for a time
    /// the capture cannot step back from.
    fn window_start(&self, table: &TableId, state: &TableState) -> Result<String, CaptureError> {
        match state.window_start(self.config.overlap) {
            Some(Ok(start)) => Ok(start),
            Some(Err(high)) => Err(CaptureError::permanent(format!(
                "`{}` of table {table} holds {high:?}, not a time pull mode can step back \
                 from: store times as ISO 8601 text (2024-05-01 10:00:00.123)",
                self.config.updated_at_of(table)
            ))),
            None => Err(CaptureError::permanent(format!(
                "table {table}: no time read yet"
            ))),
        }
    }

    /// A row's JSON: the row, its key, the key as JSON text.
    fn parse(&self, plan: &Plan, text: &str) -> Result<(Row, Row, String), CaptureError> {
        let row = parse_row(text).map_err(|e| {
            CaptureError::permanent(format!(
                "a row of table {} did not read as a JSON object",
                plan.id
            ))
            .with_source(e)
        })?;
        let mut key = Row::new();
        for k in &plan.key {
            let Some(v) = row.get(k) else {
                return Err(CaptureError::permanent(format!(
                    "a row of table {} lacks its key column `{k}`",
                    plan.id
                )));
            };
            key.insert(k.clone(), v.clone());
        }
        let key_text = Value::Object(key.clone()).to_string();
        Ok((row, key, key_text))
    }

    /// Whether table `i` has a pass under way or may start one.
    fn due(&self, i: usize, now: Instant) -> bool {
        let id = &self.plans[i].id;
        self.state.tables.get(id).is_some_and(|s| s.scan.is_some())
            || self.next_pass.get(id).is_none_or(|at| *at <= now)
    }

    /// One page of table `i`: the changes it holds that were not sent
    /// before, at most `room` (the page then stops at the last row taken),
    /// the last carrying the checkpoint.
    async fn page(&mut self, i: usize, room: usize) -> Result<Vec<Captured>, CaptureError> {
        let plan = self.plans[i].clone();
        let limit = self.config.chunk_size;
        let rows = {
            let state = self.state.tables.get(&plan.id);
            let start;
            let from = match state {
                Some(TableState {
                    scan: Some(scan), ..
                }) => From::After(scan),
                Some(s @ TableState { high: Some(_), .. }) => {
                    start = self.window_start(&plan.id, s)?;
                    From::AtLeast(&start)
                }
                _ => From::First,
            };
            plan.fetch(&self.db, from, limit).await?
        };
        // The page is read: from here on, only permanent errors.
        let mut ended = rows.len() < limit;
        let mut out = Vec::new();
        let mut state = self.state.tables.remove(&plan.id).unwrap_or_default();
        for r in rows {
            if out.len() == room {
                // The rest of the page is read again by the next one.
                ended = false;
                break;
            }
            let (row, key, key_text) = self.parse(&plan, &r.row)?;
            state.observe(&r.updated_at);
            state.scan = Some(ScanAt {
                updated_at: r.updated_at.clone(),
                key: key.clone(),
            });
            if !state.seen.insert((r.updated_at.clone(), key_text.clone())) {
                continue;
            }
            let deleted = self
                .config
                .soft_delete
                .as_ref()
                .is_some_and(|s| s.deleted(row.get(&s.column)));
            let (op, before, after) = match (deleted, state.snapshot) {
                (true, true) => continue,
                (true, false) => (Op::Delete, Some(row), None),
                (false, true) => (Op::Read, None, Some(row)),
                (false, false) => (Op::Update, None, Some(row)),
            };
            let mut change = Change {
                op,
                key,
                before,
                after,
                source: Source {
                    db: self.database_name.clone(),
                    table: plan.id.clone(),
                    position: Position::Cursor {
                        updated_at: r.updated_at,
                        key: key_text,
                    },
                    tx_id: None,
                    commit_time: None,
                },
                tx: None,
                unchanged: vec![],
            };
            self.config.tables.strip(&mut change);
            out.push(Captured {
                change,
                checkpoint: None,
            });
        }
        if ended {
            // The pass reached the table's end.
            state.scan = None;
            state.snapshot = false;
            self.next_pass
                .insert(plan.id.clone(), Instant::now() + self.config.poll_interval);
        }
        state.prune(self.config.overlap);
        self.state.tables.insert(plan.id.clone(), state);
        if let Some(last) = out.last_mut() {
            last.checkpoint = Some(self.state.checkpoint());
        }
        Ok(out)
    }
}

impl Capture for PullCapture {
    fn connector(&self) -> &'static str {
        match self.db {
            Database::Postgres(_) => "postgresql",
            Database::Mysql(_) => "mysql",
            Database::Sqlite(_) => "sqlite",
        }
    }

    fn database(&self) -> &str {
        &self.database_name
    }

    async fn read(&mut self, max: usize, wait: Duration) -> Result<Vec<Captured>, CaptureError> {
        let max = max.max(1);
        let deadline = Instant::now() + wait;
        let mut out: Vec<Captured> = Vec::new();
        loop {
            if self.listed.elapsed() >= SCHEMA_CHECK {
                self.list_tables().await?;
            }
            let n = self.plans.len();
            let now = Instant::now();
            let mut worked = false;
            for step in 0..n {
                if out.len() >= max {
                    break;
                }
                let i = (self.turn + step) % n;
                if !self.due(i, now) {
                    continue;
                }
                worked = true;
                match self.page(i, max - out.len()).await {
                    Ok(changes) => out.extend(changes),
                    // What was read stands; the failure comes back on the
                    // next read.
                    Err(e) if !out.is_empty() && e.is_retryable() => return Ok(out),
                    Err(e) => {
                        if e.is_retryable() {
                            // A column or table gone: list them again.
                            self.listed = Instant::now() - SCHEMA_CHECK;
                        }
                        return Err(e);
                    }
                }
            }
            if n > 0 {
                self.turn = (self.turn + 1) % n;
            }
            let now = Instant::now();
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            if !worked {
                let next = self
                    .next_pass
                    .values()
                    .min()
                    .copied()
                    .unwrap_or(deadline)
                    .min(deadline)
                    .min(self.listed + SCHEMA_CHECK);
                tokio::time::sleep_until(next.max(now + Duration::from_millis(1))).await;
            }
        }
    }

    async fn acknowledge(&mut self, checkpoint: &Checkpoint) -> Result<(), CaptureError> {
        State::parse(checkpoint)?;
        self.offsets
            .save(&self.config.name, checkpoint)
            .await
            .map_err(|e| store_failure(e, "cannot save the capture's state"))
    }
}

async fn database_name(db: &Database) -> Result<String, CaptureError> {
    let name = match db {
        Database::Sqlite(_) => return Ok("main".to_owned()),
        Database::Postgres(p) => {
            sqlx::query_scalar::<_, String>("SELECT current_database()")
                .fetch_one(p)
                .await
        }
        Database::Mysql(p) => sqlx::query_scalar::<_, Option<String>>("SELECT DATABASE()")
            .fetch_one(p)
            .await
            .map(Option::unwrap_or_default),
    };
    name.map_err(|e| unavailable(e, "the database did not answer"))
}

/// A database error while reading `table`: unavailable when the database
/// cannot be reached, permanent when a row cannot be decoded, transient
/// otherwise (a lock timeout, a column dropped under the capture: the
/// tables are listed again before the next try).
fn db_failure(e: sqlx::Error, table: &TableId) -> CaptureError {
    let decode = matches!(
        e,
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_)
    );
    let refused = matches!(e, sqlx::Error::Database(_));
    let e = StoreError::Database(e);
    let kind = if decode {
        ErrorKind::Permanent
    } else if refused && !e.is_retryable() {
        ErrorKind::Transient
    } else {
        ErrorKind::Unavailable
    };
    CaptureError::new(kind, format!("reading table {table} failed")).with_source(e)
}

fn unavailable(e: sqlx::Error, doing: &str) -> CaptureError {
    CaptureError::unavailable(doing.to_owned()).with_source(e)
}

/// A store error as a capture failure: unreachable is unavailable, a bad
/// URL permanent, anything else transient.
fn store_failure(e: StoreError, doing: &str) -> CaptureError {
    let kind = match &e {
        StoreError::InvalidUrl { .. } => ErrorKind::Permanent,
        e if e.is_retryable() => ErrorKind::Unavailable,
        _ => ErrorKind::Transient,
    };
    CaptureError::new(kind, doing).with_source(e)
}
