//! The run history: one row per export run in `ferry_batch_runs`, on
//! SQLite, PostgreSQL or MariaDB.
//!
//! The table is created on first use (`CREATE TABLE IF NOT EXISTS`), its
//! SQL written once over [`ferry_store::dialect::Dialect`]. A run's row is
//! inserted `running` before anything is written and updated to
//! `succeeded` or `failed` at the end; a row still `running` when an
//! exporter starts belongs to a run that was killed, and is marked
//! `failed` ("interrupted") so that its window is run again. A window
//! counts as done once any of its runs succeeded.

use chrono::{DateTime, Utc};
use ferry_core::Failure;
use ferry_store::dialect::{Bind, Dialect, Exec, Read};
use ferry_store::{Database, DatabaseKind, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::{Arguments, Pool};

use crate::{FileEntry, Window};

/// The table of export runs.
pub const TABLE: &str = "ferry_batch_runs";

/// Where a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started and not finished (or killed: see the module docs).
    Running,
    /// Every file and the manifest were handed over.
    Succeeded,
    /// Gave up after its attempts; the window is run again later.
    Failed,
}

/// Why a run happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Its window's tick.
    Schedule,
    /// A missed or failed window found later.
    CatchUp,
    /// Asked for by hand (`ferry export run JOB --window …`).
    Manual,
}

impl RunStatus {
    /// `running`, `succeeded` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, Failure> {
        match s {
            "running" => Ok(RunStatus::Running),
            "succeeded" => Ok(RunStatus::Succeeded),
            "failed" => Ok(RunStatus::Failed),
            other => Err(unreadable(format!("status {other:?}"))),
        }
    }
}

impl Trigger {
    /// `schedule`, `catch_up` or `manual`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
            Trigger::Manual => "manual",
        }
    }

    fn parse(s: &str) -> Result<Self, Failure> {
        match s {
            "schedule" => Ok(Trigger::Schedule),
            "catch_up" => Ok(Trigger::CatchUp),
            "manual" => Ok(Trigger::Manual),
            other => Err(unreadable(format!("trigger {other:?}"))),
        }
    }
}

/// One run, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    /// The run's id (a UUIDv7: sorts by start).
    pub run_id: String,
    /// The job's name.
    pub job: String,
    /// The window it covers.
    pub window: Window,
    /// Where it stands.
    pub status: RunStatus,
    /// Why it ran.
    pub trigger: Trigger,
    /// The manifest's name, once written (none for bulk runs).
    pub manifest: Option<String>,
    /// The files handed over (bulk: one entry per request, named by its
    /// idempotency key), with rows, bytes and SHA-256.
    pub files: Vec<FileEntry>,
    /// Rows exported.
    pub rows: u64,
    /// Bytes handed over (data files, not the manifest).
    pub bytes: u64,
    /// Attempts made (1 when the first succeeded).
    pub attempts: u32,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started (to the microsecond, as stored).
    pub started_at: DateTime<Utc>,
    /// When it finished (none while running).
    pub finished_at: Option<DateTime<Utc>>,
}

/// What the `files` column holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Files {
    manifest: Option<String>,
    files: Vec<FileEntry>,
}

/// A window's state over all its runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WindowState {
    pub window: Window,
    pub done: bool,
}

/// The run history in a state database.
#[derive(Clone, Debug)]
pub struct RunHistory {
    db: Database,
}

impl RunHistory {
    /// The history in `db`, creating its table when it does not exist.
    pub async fn open(db: Database) -> Result<Self, Failure> {
        match &db {
            Database::Postgres(pool) => create::<sqlx::Postgres>(pool).await,
            Database::Sqlite(pool) => create::<sqlx::Sqlite>(pool).await,
            Database::Mysql(pool) => create::<sqlx::MySql>(pool).await,
        }
        .map_err(store)?;
        Ok(Self { db })
    }

    /// The database it lives in.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Records `run` as started (its status should be running).
    pub(crate) async fn insert(&self, run: &RunRecord) -> Result<(), Failure> {
        match &self.db {
            Database::Postgres(pool) => insert::<sqlx::Postgres>(pool, run).await,
            Database::Sqlite(pool) => insert::<sqlx::Sqlite>(pool, run).await,
            Database::Mysql(pool) => insert::<sqlx::MySql>(pool, run).await,
        }
        .map_err(store)
    }

    /// Records how `run` ended.
    pub(crate) async fn finish(&self, run: &RunRecord) -> Result<(), Failure> {
        match &self.db {
            Database::Postgres(pool) => finish::<sqlx::Postgres>(pool, run).await,
            Database::Sqlite(pool) => finish::<sqlx::Sqlite>(pool, run).await,
            Database::Mysql(pool) => finish::<sqlx::MySql>(pool, run).await,
        }
        .map_err(store)
    }

    /// Marks `job`'s runs still `running` as failed with `reason`;
    /// returns how many there were.
    pub(crate) async fn interrupt(&self, job: &str, reason: &str) -> Result<u64, Failure> {
        match &self.db {
            Database::Postgres(pool) => interrupt::<sqlx::Postgres>(pool, job, reason).await,
            Database::Sqlite(pool) => interrupt::<sqlx::Sqlite>(pool, job, reason).await,
            Database::Mysql(pool) => interrupt::<sqlx::MySql>(pool, job, reason).await,
        }
        .map_err(store)
    }

    /// Every window `job` has run, in the order of its first run, with
    /// whether any run of it succeeded.
    pub(crate) async fn windows(&self, job: &str) -> Result<Vec<WindowState>, Failure> {
        match &self.db {
            Database::Postgres(pool) => windows::<sqlx::Postgres>(pool, job).await,
            Database::Sqlite(pool) => windows::<sqlx::Sqlite>(pool, job).await,
            Database::Mysql(pool) => windows::<sqlx::MySql>(pool, job).await,
        }
        .map_err(store)
    }

    /// The latest `limit` runs, newest first, of `job` or of every job.
    pub async fn list(&self, job: Option<&str>, limit: u32) -> Result<Vec<RunRecord>, Failure> {
        let rows = match &self.db {
            Database::Postgres(pool) => list::<sqlx::Postgres>(pool, job, limit).await,
            Database::Sqlite(pool) => list::<sqlx::Sqlite>(pool, job, limit).await,
            Database::Mysql(pool) => list::<sqlx::MySql>(pool, job, limit).await,
        }
        .map_err(store)?;
        rows.into_iter().map(RawRun::into_record).collect()
    }
}

/// The latest `limit` runs in `state`, newest first, of `job` or of every
/// job (for a status command); creates the table when missing.
pub async fn runs(
    state: &Database,
    job: Option<&str>,
    limit: u32,
) -> Result<Vec<RunRecord>, Failure> {
    RunHistory::open(state.clone())
        .await?
        .list(job, limit)
        .await
}

fn store(e: StoreError) -> Failure {
    let retryable = e.is_retryable();
    let f = format!("run history ({TABLE})");
    let f = if retryable {
        Failure::unavailable(f)
    } else {
        Failure::transient(f)
    };
    f.with_source(e)
}

fn unreadable(what: String) -> Failure {
    Failure::permanent(format!(
        "run history ({TABLE}): a row Ferry did not write: {what}"
    ))
}

fn p<DB: Dialect>(n: usize) -> String {
    if DB::NUMBERED_PARAMS {
        format!("${n}")
    } else {
        "?".to_owned()
    }
}

fn enc(e: sqlx::error::BoxDynError) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(e))
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn files_json(run: &RunRecord) -> String {
    serde_json::to_string(&Files {
        manifest: run.manifest.clone(),
        files: run.files.clone(),
    })
    .unwrap_or_else(|_| "{\"manifest\":null,\"files\":[]}".to_owned())
}

async fn create<DB: Dialect>(pool: &Pool<DB>) -> Result<(), StoreError> {
    let time = match DB::KIND {
        DatabaseKind::Postgres => "TIMESTAMPTZ",
        DatabaseKind::Sqlite => "TEXT",
        DatabaseKind::Mysql => "DATETIME(6)",
    };
    let table = format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (
            run_id VARCHAR(64) NOT NULL PRIMARY KEY,
            job VARCHAR(255) NOT NULL,
            window_start VARCHAR(255) NOT NULL,
            window_end VARCHAR(255) NOT NULL,
            status VARCHAR(16) NOT NULL,
            run_trigger VARCHAR(16) NOT NULL,
            files TEXT NOT NULL,
            row_count BIGINT NOT NULL,
            byte_count BIGINT NOT NULL,
            attempts INTEGER NOT NULL,
            error TEXT NULL,
            started_at {time} NOT NULL,
            finished_at {time} NULL
        )"
    );
    let index = format!("CREATE INDEX IF NOT EXISTS {TABLE}_job ON {TABLE} (job, started_at)");
    let mut conn = pool.acquire().await?;
    sqlx::query(&table).execute((*conn).executor()).await?;
    sqlx::query(&index).execute((*conn).executor()).await?;
    Ok(())
}

async fn insert<DB: Dialect>(pool: &Pool<DB>, run: &RunRecord) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO {TABLE} (run_id, job, window_start, window_end, status, run_trigger, files,
            row_count, byte_count, attempts, error, started_at, finished_at)
         VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, NULL, {}, NULL)",
        p::<DB>(1),
        p::<DB>(2),
        p::<DB>(3),
        p::<DB>(4),
        p::<DB>(5),
        p::<DB>(6),
        p::<DB>(7),
        p::<DB>(8),
        p::<DB>(9),
        p::<DB>(10),
        p::<DB>(11),
    );
    let mut args = DB::Arguments::default();
    args.bind_value(run.run_id.clone()).map_err(enc)?;
    args.bind_value(run.job.clone()).map_err(enc)?;
    args.bind_value(run.window.start.clone()).map_err(enc)?;
    args.bind_value(run.window.end.clone()).map_err(enc)?;
    args.bind_value(run.status.as_str().to_owned())
        .map_err(enc)?;
    args.bind_value(run.trigger.as_str().to_owned())
        .map_err(enc)?;
    args.bind_value(files_json(run)).map_err(enc)?;
    args.bind_value(int(run.rows)).map_err(enc)?;
    args.bind_value(int(run.bytes)).map_err(enc)?;
    args.bind_value(i32::try_from(run.attempts).unwrap_or(i32::MAX))
        .map_err(enc)?;
    args.add(DB::precise_time(run.started_at)).map_err(enc)?;
    let mut conn = pool.acquire().await?;
    sqlx::query_with(&sql, args)
        .execute((*conn).executor())
        .await?;
    Ok(())
}

async fn finish<DB: Dialect>(pool: &Pool<DB>, run: &RunRecord) -> Result<(), StoreError> {
    let sql = format!(
        "UPDATE {TABLE} SET status = {}, files = {}, row_count = {}, byte_count = {},
            attempts = {}, error = {}, finished_at = {} WHERE run_id = {}",
        p::<DB>(1),
        p::<DB>(2),
        p::<DB>(3),
        p::<DB>(4),
        p::<DB>(5),
        p::<DB>(6),
        p::<DB>(7),
        p::<DB>(8),
    );
    let mut args = DB::Arguments::default();
    args.bind_value(run.status.as_str().to_owned())
        .map_err(enc)?;
    args.bind_value(files_json(run)).map_err(enc)?;
    args.bind_value(int(run.rows)).map_err(enc)?;
    args.bind_value(int(run.bytes)).map_err(enc)?;
    args.bind_value(i32::try_from(run.attempts).unwrap_or(i32::MAX))
        .map_err(enc)?;
    args.bind_value(run.error.clone()).map_err(enc)?;
    args.add(DB::precise_time(run.finished_at.unwrap_or_else(Utc::now)))
        .map_err(enc)?;
    args.bind_value(run.run_id.clone()).map_err(enc)?;
    let mut conn = pool.acquire().await?;
    sqlx::query_with(&sql, args)
        .execute((*conn).executor())
        .await?;
    Ok(())
}

async fn interrupt<DB: Dialect>(
    pool: &Pool<DB>,
    job: &str,
    reason: &str,
) -> Result<u64, StoreError> {
    let sql = format!(
        "UPDATE {TABLE} SET status = 'failed', error = {}, finished_at = {}
         WHERE job = {} AND status = 'running'",
        p::<DB>(1),
        DB::NOW,
        p::<DB>(2),
    );
    let mut args = DB::Arguments::default();
    args.bind_value(reason.to_owned()).map_err(enc)?;
    args.bind_value(job.to_owned()).map_err(enc)?;
    let mut conn = pool.acquire().await?;
    let done = sqlx::query_with(&sql, args)
        .execute((*conn).executor())
        .await?;
    Ok(DB::rows_affected(&done))
}

async fn windows<DB: Dialect>(pool: &Pool<DB>, job: &str) -> Result<Vec<WindowState>, StoreError> {
    let sql = format!(
        "SELECT {} AS window_start, {} AS window_end, {} AS done, first_started FROM (
            SELECT window_start, window_end,
                MAX(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END) AS done,
                MIN(started_at) AS first_started
            FROM {TABLE} WHERE job = {} GROUP BY window_start, window_end
         ) w ORDER BY first_started, window_start",
        DB::text("w.window_start"),
        DB::text("w.window_end"),
        DB::cast_bigint("w.done"),
        p::<DB>(1),
    );
    let mut args = DB::Arguments::default();
    args.bind_value(job.to_owned()).map_err(enc)?;
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query_with(&sql, args)
        .fetch_all((*conn).executor())
        .await?;
    rows.iter()
        .map(|row| {
            let done: i64 = row.read("done")?;
            Ok(WindowState {
                window: Window {
                    start: row.read("window_start")?,
                    end: row.read("window_end")?,
                },
                done: done > 0,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::Database)
}

struct RawRun {
    run_id: String,
    job: String,
    window: Window,
    status: String,
    trigger: String,
    files: String,
    rows: i64,
    bytes: i64,
    attempts: i32,
    error: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
}

impl RawRun {
    fn into_record(self) -> Result<RunRecord, Failure> {
        let status = RunStatus::parse(&self.status)?;
        let files: Files = serde_json::from_str(&self.files)
            .map_err(|e| unreadable(format!("files of run {}: {e}", self.run_id)))?;
        Ok(RunRecord {
            run_id: self.run_id,
            job: self.job,
            window: self.window,
            status,
            trigger: Trigger::parse(&self.trigger)?,
            manifest: files.manifest,
            files: files.files,
            rows: u64::try_from(self.rows).unwrap_or(0),
            bytes: u64::try_from(self.bytes).unwrap_or(0),
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            error: self.error,
            started_at: self.started_at,
            finished_at: (status != RunStatus::Running).then_some(self.finished_at),
        })
    }
}

async fn list<DB: Dialect>(
    pool: &Pool<DB>,
    job: Option<&str>,
    limit: u32,
) -> Result<Vec<RawRun>, StoreError> {
    let filter = if job.is_some() {
        format!("WHERE job = {}", p::<DB>(1))
    } else {
        String::new()
    };
    let sql = format!(
        "SELECT {run_id} AS run_id, {job} AS job, {ws} AS window_start, {we} AS window_end,
            {status} AS status, {trigger} AS run_trigger, {files} AS files,
            row_count, byte_count, attempts, {error} AS error, started_at,
            COALESCE(finished_at, started_at) AS finished_at
         FROM {TABLE} {filter} ORDER BY started_at DESC, run_id DESC LIMIT {limit}",
        run_id = DB::text("run_id"),
        job = DB::text("job"),
        ws = DB::text("window_start"),
        we = DB::text("window_end"),
        status = DB::text("status"),
        trigger = DB::text("run_trigger"),
        files = DB::text("files"),
        error = DB::text("error"),
    );
    let mut args = DB::Arguments::default();
    if let Some(job) = job {
        args.bind_value(job.to_owned()).map_err(enc)?;
    }
    let mut conn = pool.acquire().await?;
    let rows = sqlx::query_with(&sql, args)
        .fetch_all((*conn).executor())
        .await?;
    rows.iter()
        .map(|row| {
            Ok(RawRun {
                run_id: row.read("run_id")?,
                job: row.read("job")?,
                window: Window {
                    start: row.read("window_start")?,
                    end: row.read("window_end")?,
                },
                status: row.read("status")?,
                trigger: row.read("run_trigger")?,
                files: row.read("files")?,
                rows: row.read("row_count")?,
                bytes: row.read("byte_count")?,
                attempts: row.read("attempts")?,
                error: row.read("error")?,
                started_at: DB::read_time(row, "started_at")?,
                finished_at: DB::read_time(row, "finished_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::Database)
}
