//! The exporter: runs a job's windows, names and hands over the files,
//! writes the manifest last, and records every run.
//!
//! A run of a window:
//!
//! 1. is recorded `running` in the [run history](mod@super::runs);
//! 2. runs the query into part files in a fresh folder under the job's
//!    `work_dir` (removed afterwards);
//! 3. names the parts by the job's `file_name` template and puts each at
//!    the location (atomic per the [`Location`] contract), then puts the
//!    manifest, named after `batch_name`: the manifest appears only after
//!    every data file is complete;
//! 4. retries what failed in a way worth retrying with the job's backoff
//!    (files already put are not put again; the query is not run again
//!    once its files are written), and
//! 5. is recorded `succeeded`, or `failed` with the reason once its
//!    attempts are exhausted or on a permanent failure. A failed window
//!    is run again at the next tick or start.
//!
//! A re-run of a window (by hand, or after a failure) binds the same
//! parameters, so with an `ORDER BY` in the query it writes the same
//! names and bytes; only the manifest's `run_id` and `created_at` differ
//! (unless a template names `{run_id}`).
//!
//! Catching up ([`Exporter::catch_up`]): scheduled windows follow the
//! job's [`CatchUp`] policy; windows run oldest first, and the first that
//! fails ends the catch-up (the rest stay due, so the receiver never gets
//! a later window before an earlier one unless an earlier one keeps
//! failing past the next tick). Watermark windows are never skipped: a
//! failed one is redone with its recorded bounds before a new one starts,
//! and a missed tick only makes the next window larger.
//!
//! One exporter per job at a time: two processes running the same job
//! would each take the other's `running` rows for interrupted runs. A
//! manual re-run beside a running daemon calls
//! [`run_window`](Exporter::run_window), never `catch_up`.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use ferry_core::Failure;
use ferry_store::dialect::{Bind, Dialect, Exec, Read};
use ferry_store::{Database, StoreError};
use sqlx::{Arguments, Pool};
use tokio_util::sync::CancellationToken;

use super::bulk::BulkSender;
use super::job::{ExportJob, WatermarkInitial};
use super::name::{Bound, Template, Values};
use super::runs::{RunHistory, RunRecord, RunStatus, Trigger, WindowState};
use super::write::{self, Param, PartsSpec, Query, Written};
use crate::manifest::FORMAT_VERSION;
use crate::schedule::{CatchUp, Schedule, TimeWindow};
use crate::{FileEntry, Location, Manifest, Window};

/// The window a run covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunWindow {
    /// A scheduled window, `[start, end)`; the query binds
    /// `:window_start` and `:window_end`.
    Scheduled(TimeWindow),
    /// An incremental window, `(last, next]` of the watermark column; the
    /// query binds `:last`.
    Watermark {
        /// The previous run's end (exclusive).
        last: Mark,
        /// This run's end (inclusive).
        next: Mark,
    },
}

/// A watermark value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mark {
    /// A whole number.
    Int(i64),
    /// A time.
    Time(DateTime<Utc>),
    /// Text, compared as the database's `MAX` does for plain ASCII.
    Text(String),
}

impl Mark {
    /// As written in the run history and manifest.
    pub fn text(&self) -> String {
        match self {
            Mark::Int(i) => i.to_string(),
            Mark::Time(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            Mark::Text(s) => s.clone(),
        }
    }

    fn param(&self) -> Param {
        match self {
            Mark::Int(i) => Param::Int(*i),
            Mark::Time(t) => Param::Time(*t),
            Mark::Text(s) => Param::Text(s.clone()),
        }
    }

    fn from_initial(initial: &WatermarkInitial) -> Self {
        match initial {
            WatermarkInitial::Int(i) => Mark::Int(*i),
            WatermarkInitial::Text(s) => match DateTime::parse_from_rfc3339(s) {
                Ok(t) => Mark::Time(t.with_timezone(&Utc)),
                Err(_) => Mark::Text(s.clone()),
            },
        }
    }

    /// Reads `text` as a value of the same kind as `self`.
    fn parse_like(&self, text: &str) -> Result<Self, Failure> {
        let bad = || {
            Failure::permanent(format!(
                "run history: watermark {text:?} does not read as the configured initial value's kind"
            ))
        };
        Ok(match self {
            Mark::Int(_) => Mark::Int(text.parse().map_err(|_| bad())?),
            Mark::Time(_) => Mark::Time(parse_time(text).ok_or_else(bad)?),
            Mark::Text(_) => Mark::Text(text.to_owned()),
        })
    }

    fn bound(&self) -> Bound {
        match self {
            Mark::Time(t) => Bound::Time(*t),
            other => Bound::Value(other.text()),
        }
    }
}

impl RunWindow {
    /// The window as the manifest and run history write it.
    pub fn to_manifest(&self) -> Window {
        match self {
            RunWindow::Scheduled(w) => w.to_manifest(),
            RunWindow::Watermark { last, next } => Window {
                start: last.text(),
                end: next.text(),
            },
        }
    }

    fn bounds(&self) -> (Bound, Bound) {
        match self {
            RunWindow::Scheduled(w) => (Bound::Time(w.start), Bound::Time(w.end)),
            RunWindow::Watermark { last, next } => (last.bound(), next.bound()),
        }
    }
}

/// Now, to the microsecond: what the run history keeps.
fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
        if let Ok(t) = DateTime::parse_from_str(text, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

enum Target {
    Files(Arc<dyn Location>),
    Bulk(BulkSender),
}

/// Runs one export job; see the [module docs](self).
pub struct Exporter {
    job: ExportJob,
    schedule: Schedule,
    file_name: Template,
    batch_name: Template,
    source: Database,
    history: RunHistory,
    target: Target,
    recovered: AtomicBool,
    observer: Option<Observer>,
    progress: Option<ProgressHook>,
    /// The run being made, while it is: what a shutdown records as
    /// stopped.
    in_progress: std::sync::Mutex<Option<(RunRecord, PathBuf)>>,
}

/// Called as a run's query writes rows (see [`Exporter::with_progress`]).
type ProgressHook = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How often a run in progress is logged.
const PROGRESS_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Called with every finished run (see [`Exporter::with_observer`]).
type Observer = Arc<dyn Fn(&RunRecord) + Send + Sync>;

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("job", &self.job.name)
            .field("schedule", &self.schedule.describe())
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// An exporter of `job`, its run history in `state` (the table is
    /// created when missing): checks the job, connects to its database,
    /// and opens its destination or bulk endpoint.
    pub async fn new(job: ExportJob, state: Database) -> Result<Self, Failure> {
        job.validate()?;
        let target = match (job.bulk_config(), &job.destination) {
            (Some(bulk), _) => Target::Bulk(BulkSender::new(&bulk)?),
            (None, Some(destination)) => {
                Target::Files(crate::location::open(destination).await.map_err(|mut e| {
                    e.message = format!("export job `{}`: destination: {}", job.name, e.message);
                    e
                })?)
            }
            (None, None) => {
                return Err(Failure::permanent(format!(
                    "export job `{}`: no destination",
                    job.name
                )))
            }
        };
        Self::build(job, state, target).await
    }

    /// An exporter of `job` that hands its files to `location` instead of
    /// opening `job.destination` (which may then be unset).
    pub async fn with_location(
        mut job: ExportJob,
        state: Database,
        location: Arc<dyn Location>,
    ) -> Result<Self, Failure> {
        job.bulk = None;
        Self::build(job, state, Target::Files(location)).await
    }

    async fn build(job: ExportJob, state: Database, target: Target) -> Result<Self, Failure> {
        let (schedule, file_name, batch_name) = job.parts()?;
        let options = ferry_store::ConnectOptions {
            max_connections: 2,
            lease: None,
        };
        let source = Database::connect_with(&job.database, &options)
            .await
            .map_err(|e| {
                let f = format!(
                    "export job `{}`: cannot connect to database {}",
                    job.name,
                    ferry_core::redact_url(&job.database)
                );
                if e.is_retryable() {
                    Failure::unavailable(f)
                } else {
                    Failure::permanent(f)
                }
                .with_source(e)
            })?;
        let history = RunHistory::open(state).await?;
        Ok(Self {
            job,
            schedule,
            file_name,
            batch_name,
            source,
            history,
            target,
            recovered: AtomicBool::new(false),
            observer: None,
            progress: None,
            in_progress: std::sync::Mutex::new(None),
        })
    }

    /// Calls `progress(rows, bytes)` now and then while a run's query
    /// writes its files (rows and bytes written so far in this run), for
    /// a progress bar. Runs are logged every 10 seconds whether or not.
    pub fn with_progress(mut self, progress: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// Calls `observe` with the record of every run once it is recorded
    /// as finished (succeeded or failed): for metrics. It runs on the
    /// exporter's task, so it should be quick.
    pub fn with_observer(mut self, observe: impl Fn(&RunRecord) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observe));
        self
    }

    /// The job.
    pub fn job(&self) -> &ExportJob {
        &self.job
    }

    /// The job's schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The run history.
    pub fn history(&self) -> &RunHistory {
        &self.history
    }

    /// The window a manual run of `at` covers: for a scheduled job, the
    /// window holding the time `at` (RFC 3339, or a date `YYYY-MM-DD` for
    /// its midnight UTC); for a watermark job, the recorded window whose
    /// start is `at`.
    pub async fn window_for(&self, at: &str) -> Result<RunWindow, Failure> {
        match &self.job.watermark {
            None => {
                let t = parse_time(at)
                    .or_else(|| {
                        chrono::NaiveDate::parse_from_str(at, "%Y-%m-%d")
                            .ok()
                            .and_then(|d| d.and_hms_opt(0, 0, 0))
                            .map(|t| t.and_utc())
                    })
                    .ok_or_else(|| {
                        Failure::permanent(format!(
                            "--window {at:?}: expected an RFC 3339 time or a date YYYY-MM-DD"
                        ))
                    })?;
                Ok(RunWindow::Scheduled(self.schedule.window_containing(t)?))
            }
            Some(wm) => {
                let initial = Mark::from_initial(&wm.initial);
                let states = self.history.windows(&self.job.name).await?;
                let state = states
                    .iter()
                    .find(|s| s.window.start == at)
                    .ok_or_else(|| {
                        Failure::permanent(format!(
                            "--window {at:?}: job `{}` has no recorded window starting there",
                            self.job.name
                        ))
                    })?;
                Ok(RunWindow::Watermark {
                    last: initial.parse_like(&state.window.start)?,
                    next: initial.parse_like(&state.window.end)?,
                })
            }
        }
    }

    /// Runs `window` once (with the job's retries) and records it;
    /// returns the record, `failed` with the reason when it failed. An
    /// error means the run history itself could not be written.
    pub async fn run_window(
        &self,
        window: &RunWindow,
        trigger: Trigger,
    ) -> Result<RunRecord, Failure> {
        let run_id = uuid::Uuid::now_v7().to_string();
        let mut record = RunRecord {
            run_id: run_id.clone(),
            job: self.job.name.clone(),
            window: window.to_manifest(),
            status: RunStatus::Running,
            trigger,
            manifest: None,
            files: Vec::new(),
            rows: 0,
            bytes: 0,
            attempts: 0,
            error: None,
            started_at: now_micros(),
            finished_at: None,
        };
        self.history.insert(&record).await?;
        let dir = self
            .work_dir()
            .join(format!("ferry-export-{}-{run_id}", self.job.name));
        if let Ok(mut now) = self.in_progress.lock() {
            *now = Some((record.clone(), dir.clone()));
        }
        let outcome = self.attempts(window, &dir, &mut record).await;
        if let Ok(mut now) = self.in_progress.lock() {
            *now = None;
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
        match outcome {
            Ok(()) => record.status = RunStatus::Succeeded,
            Err(e) => {
                record.status = RunStatus::Failed;
                record.error = Some(e.describe());
            }
        }
        record.finished_at = Some(now_micros());
        self.history.finish(&record).await?;
        if let Some(observe) = &self.observer {
            observe(&record);
        }
        Ok(record)
    }

    /// The database's estimate of the rows `window` exports (PostgreSQL's
    /// planner; `None` elsewhere): for a progress bar's time left.
    pub async fn estimate_rows(&self, window: &RunWindow) -> Option<u64> {
        write::estimate_rows(&self.source, &self.query(window)).await
    }

    /// Records the run a shutdown interrupted as failed (it is run again
    /// at the next start or tick) and removes its work folder; within a
    /// few seconds, else it is left `running` for the next start to find.
    async fn record_stopped(&self) {
        let stopped = self.in_progress.lock().ok().and_then(|mut now| now.take());
        let Some((mut record, dir)) = stopped else {
            return;
        };
        record.status = RunStatus::Failed;
        record.error = Some("stopped: the exporter was shut down during this run".to_owned());
        record.finished_at = Some(now_micros());
        let recorded = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.history.finish(&record),
        )
        .await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::warn!(job = %self.job.name, run = %record.run_id,
                "could not record the run stopped by the shutdown; the next start redoes it");
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tracing::info!(job = %self.job.name, window_start = %record.window.start,
            window_end = %record.window.end, "export run stopped by the shutdown; it runs again at the next start");
    }

    fn work_dir(&self) -> PathBuf {
        self.job.work_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Removes the work folders runs of this job left when killed.
    async fn remove_stale_work_dirs(&self) {
        let prefix = format!("ferry-export-{}-", self.job.name);
        let Ok(mut entries) = tokio::fs::read_dir(self.work_dir()).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name();
            let stale = name.to_str().is_some_and(|n| {
                // `<prefix><uuid>`: not another job's whose name extends
                // this one's.
                n.strip_prefix(&prefix)
                    .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok())
            });
            if stale {
                let _ = tokio::fs::remove_dir_all(entry.path()).await;
            }
        }
    }

    async fn attempts(
        &self,
        window: &RunWindow,
        dir: &Path,
        record: &mut RunRecord,
    ) -> Result<(), Failure> {
        let retry = &self.job.retry;
        let mut written: Option<Written> = None;
        let mut done: HashSet<String> = HashSet::new();
        loop {
            record.attempts += 1;
            let result = self
                .attempt(window, dir, record, &mut written, &mut done)
                .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && retry.allows_another(record.attempts) => {
                    // A destination's Retry-After is heeded up to the
                    // job's longest backoff.
                    let asked = e.retry_after.unwrap_or_default().min(retry.max_backoff);
                    let wait = retry.delay(record.attempts).max(asked);
                    tracing::debug!(
                        job = %self.job.name, window = %record.window.start,
                        attempt = record.attempts, error = %e.describe(),
                        "export attempt failed; trying again in {wait:?}"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(mut e) => {
                    e.attempts = Some(record.attempts);
                    return Err(e);
                }
            }
        }
    }

    async fn attempt(
        &self,
        window: &RunWindow,
        dir: &Path,
        record: &mut RunRecord,
        written: &mut Option<Written>,
        done: &mut HashSet<String>,
    ) -> Result<(), Failure> {
        if written.is_none() {
            let _ = tokio::fs::remove_dir_all(dir).await;
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                Failure::permanent(format!(
                    "export job `{}`: cannot make work folder {}",
                    self.job.name,
                    dir.display()
                ))
                .with_source(e)
            })?;
            let spec = PartsSpec {
                format: self.job.format,
                gzip: self.job.gzip,
                max_rows_per_file: self.job.max_rows_per_file,
            };
            let query = self.query(window);
            let job = self.job.name.clone();
            let hook = self.progress.clone();
            let started = std::time::Instant::now();
            let logged = std::sync::Mutex::new(started);
            let progress = move |rows: u64, bytes: u64| {
                if let Some(hook) = &hook {
                    hook(rows, bytes);
                }
                let due = logged.lock().is_ok_and(|mut last| {
                    let due = last.elapsed() >= PROGRESS_LOG_EVERY;
                    if due {
                        *last = std::time::Instant::now();
                    }
                    due
                });
                if due {
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    tracing::info!(
                        job = %job, rows, bytes, rows_per_second = (rows as f64 / secs).round(),
                        "export progress"
                    );
                }
            };
            let w = write::write_parts(&self.source, &query, &spec, dir, &progress).await?;
            record.rows = w.parts.iter().map(|p| p.rows).sum();
            record.bytes = w.parts.iter().map(|p| p.bytes).sum();
            *written = Some(w);
        }
        let Some(w) = written.as_ref() else {
            return Err(Failure::permanent("export: no files written"));
        };
        match &self.target {
            Target::Bulk(bulk) => {
                record.files = bulk.send(&self.job.name, &record.window, w, done).await?;
                record.bytes = record.files.iter().map(|f| f.bytes).sum();
                Ok(())
            }
            Target::Files(location) => {
                let (start, end) = window.bounds();
                let ext = self.job.extension();
                let mut files = Vec::with_capacity(w.parts.len());
                let mut names = HashSet::new();
                for part in &w.parts {
                    let name = self.file_name.render(&Values {
                        job: &self.job.name,
                        window_start: &start,
                        window_end: &end,
                        run_id: &record.run_id,
                        part: part.part,
                        ext: &ext,
                    });
                    crate::location::check_name(&name)?;
                    if !names.insert(name.clone()) {
                        return Err(Failure::permanent(format!(
                            "export job `{}`: file_name = {:?} gives two parts the name {name:?}",
                            self.job.name,
                            self.file_name.as_str()
                        )));
                    }
                    files.push((part, name));
                }
                let batch = self.batch_name.render(&Values {
                    job: &self.job.name,
                    window_start: &start,
                    window_end: &end,
                    run_id: &record.run_id,
                    part: 0,
                    ext: &ext,
                });
                let manifest_name = Manifest::file_name(&batch);
                crate::location::check_name(&manifest_name)?;
                record.files = files
                    .iter()
                    .map(|(p, name)| FileEntry {
                        name: name.clone(),
                        part: p.part,
                        rows: p.rows,
                        bytes: p.bytes,
                        sha256: p.sha256.clone(),
                    })
                    .collect();
                for (part, name) in &files {
                    if done.contains(name) {
                        continue;
                    }
                    location.put_file(&part.path, name).await?;
                    done.insert(name.clone());
                }
                let manifest = Manifest {
                    format_version: FORMAT_VERSION,
                    job: self.job.name.clone(),
                    window: record.window.clone(),
                    run_id: record.run_id.clone(),
                    format: self.job.format,
                    gzip: self.job.gzip,
                    columns: w.columns.clone(),
                    files: record.files.clone(),
                    created_at: Utc::now(),
                };
                let local = dir.join(".ferry-manifest.json");
                tokio::fs::write(&local, manifest.to_bytes())
                    .await
                    .map_err(|e| {
                        Failure::transient(format!("cannot write {}", local.display()))
                            .with_source(e)
                    })?;
                location.put_file(&local, &manifest_name).await?;
                record.manifest = Some(manifest_name);
                Ok(())
            }
        }
    }

    /// The query of `window` with its parameters.
    fn query(&self, window: &RunWindow) -> Query {
        let named = |sql: &str, params: Vec<(&str, Param)>| Query {
            params: params
                .into_iter()
                .filter(|(n, _)| names_param(sql, n))
                .map(|(n, p)| (n.to_owned(), p))
                .collect(),
            sql: sql.to_owned(),
        };
        match window {
            RunWindow::Scheduled(w) => named(
                &self.job.query,
                vec![
                    ("window_start", Param::Time(w.start)),
                    ("window_end", Param::Time(w.end)),
                ],
            ),
            RunWindow::Watermark { last, next } => {
                let column = self
                    .job
                    .watermark
                    .as_ref()
                    .map(|w| w.column.as_str())
                    .unwrap_or("id");
                let sql = format!(
                    "SELECT * FROM ({}) ferry_window WHERE ferry_window.{column} <= :next ORDER BY ferry_window.{column}",
                    self.job.query
                );
                named(&sql, vec![("last", last.param()), ("next", next.param())])
            }
        }
    }

    /// The windows due at `now` per the job's catch-up policy (failed and
    /// interrupted ones included), run in order; stops at the first that
    /// fails (the rest stay due). On its first call it marks runs left
    /// `running` by a killed exporter as failed, so they are run again.
    pub async fn catch_up(&self, now: DateTime<Utc>) -> Result<Vec<RunRecord>, Failure> {
        if !self.recovered.swap(true, Ordering::SeqCst) {
            let n = self
                .history
                .interrupt(
                    &self.job.name,
                    "interrupted: the exporter stopped during this run",
                )
                .await?;
            self.remove_stale_work_dirs().await;
            if n > 0 {
                tracing::warn!(job = %self.job.name, runs = n, "found runs interrupted by a stop; their windows run again");
            }
        }
        let states = self.history.windows(&self.job.name).await?;
        let due = match &self.job.watermark {
            None => self.due_scheduled(&states, now)?,
            Some(wm) => {
                let initial = Mark::from_initial(&wm.initial);
                let mut due = Vec::new();
                for s in states.iter().filter(|s| !s.done) {
                    due.push((
                        RunWindow::Watermark {
                            last: initial.parse_like(&s.window.start)?,
                            next: initial.parse_like(&s.window.end)?,
                        },
                        Trigger::CatchUp,
                    ));
                }
                due
            }
        };
        let mut out = Vec::new();
        for (window, trigger) in due {
            let record = self.run_window(&window, trigger).await?;
            let failed = record.status != RunStatus::Succeeded;
            out.push(record);
            if failed {
                return Ok(out);
            }
        }
        if let Some(wm) = &self.job.watermark {
            let initial = Mark::from_initial(&wm.initial);
            let last = match states.last() {
                Some(s) => initial.parse_like(&s.window.end)?,
                None => initial,
            };
            if let Some(next) = self.max_watermark(&wm.column, &last).await? {
                if next > last {
                    let window = RunWindow::Watermark { last, next };
                    out.push(self.run_window(&window, Trigger::Schedule).await?);
                }
            }
        }
        Ok(out)
    }

    fn due_scheduled(
        &self,
        states: &[WindowState],
        now: DateTime<Utc>,
    ) -> Result<Vec<(RunWindow, Trigger)>, Failure> {
        let parse = |w: &Window| -> Result<TimeWindow, Failure> {
            match (parse_time(&w.start), parse_time(&w.end)) {
                (Some(start), Some(end)) => Ok(TimeWindow { start, end }),
                _ => Err(Failure::permanent(format!(
                    "run history: window [{}, {}) of job `{}` is not two times (was the job a watermark job?)",
                    w.start, w.end, self.job.name
                ))),
            }
        };
        let mut done = BTreeSet::new();
        let mut failed = BTreeSet::new();
        for s in states {
            let w = parse(&s.window)?;
            if s.done {
                done.insert(w);
            } else {
                failed.insert(w);
            }
        }
        failed.retain(|w| !done.contains(w));
        let last_done_end = done.iter().map(|w| w.end).max();
        let latest = self.schedule.latest_complete(now)?;
        // With nothing exported yet: `start_at`, else the latest window
        // (failed windows are added below whatever this says).
        let first_start = self.job.start_at.unwrap_or(latest.start);
        let policy = self.job.catch_up;
        let mut due: BTreeSet<TimeWindow> = self
            .schedule
            .due_windows(last_done_end, now, first_start, policy)?
            .into_iter()
            .collect();
        for w in failed {
            let keep = match policy {
                CatchUp::All => w.end <= now,
                CatchUp::Latest => w == latest,
                CatchUp::None => due.contains(&w),
            };
            if keep {
                due.insert(w);
            }
        }
        Ok(due
            .into_iter()
            .filter(|w| !done.contains(w))
            .map(|w| {
                let trigger = if w == latest && now - w.end < w.length() {
                    Trigger::Schedule
                } else {
                    Trigger::CatchUp
                };
                (RunWindow::Scheduled(w), trigger)
            })
            .collect())
    }

    /// The largest value of `column` over the query past `last`, if any.
    async fn max_watermark(&self, column: &str, last: &Mark) -> Result<Option<Mark>, Failure> {
        let sql = format!(
            "SELECT COUNT(ferry_w.{column}) AS n, {{max}} AS next FROM ({}) ferry_w",
            self.job.query
        );
        let result = match &self.source {
            Database::Postgres(pool) => max_of::<sqlx::Postgres>(pool, &sql, column, last).await,
            Database::Sqlite(pool) => max_of::<sqlx::Sqlite>(pool, &sql, column, last).await,
            Database::Mysql(pool) => max_of::<sqlx::MySql>(pool, &sql, column, last).await,
        };
        result.map_err(|e| {
            let retryable = e.is_retryable();
            let f = format!(
                "export job `{}`: cannot read the watermark (largest {column} past {})",
                self.job.name,
                last.text()
            );
            if retryable {
                Failure::unavailable(f)
            } else {
                Failure::permanent(f)
            }
            .with_source(e)
        })
    }

    /// Catches up, then runs each window at its tick until `shutdown`.
    /// A run in progress when `shutdown` fires is dropped: it stays
    /// `running` in the history and is run again at the next start.
    /// Failures are logged once when runs start failing and once when
    /// they succeed again.
    pub async fn run(self, shutdown: CancellationToken) {
        let job = self.job.name.clone();
        tracing::info!(job = %job, schedule = %self.schedule.describe(), "export job started");
        let mut failing = false;
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => {
                    self.record_stopped().await;
                    break;
                }
                r = self.catch_up(Utc::now()) => r,
            };
            let outcome = match result {
                Ok(records) => {
                    for r in &records {
                        if r.status == RunStatus::Succeeded {
                            tracing::info!(
                                job = %job, window_start = %r.window.start, window_end = %r.window.end,
                                rows = r.rows, bytes = r.bytes, files = r.files.len(),
                                attempts = r.attempts, "export run succeeded"
                            );
                        }
                    }
                    match records.iter().find(|r| r.status == RunStatus::Failed) {
                        Some(r) => Err(format!(
                            "window [{}, {}): {}",
                            r.window.start,
                            r.window.end,
                            r.error.as_deref().unwrap_or("failed")
                        )),
                        None => Ok(!records.is_empty()),
                    }
                }
                Err(e) => Err(e.describe()),
            };
            match outcome {
                Err(error) if !failing => {
                    failing = true;
                    tracing::error!(job = %job, error = %error, "export run failed; it is tried again at the next tick");
                }
                Err(error) => {
                    tracing::debug!(job = %job, error = %error, "export run failed again")
                }
                Ok(ran) if failing && ran => {
                    failing = false;
                    tracing::info!(job = %job, "export runs succeed again");
                }
                Ok(_) => {}
            }
            let next = match self.schedule.next_tick(Utc::now()) {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(job = %job, error = %e.describe(), "export job stops: no next tick");
                    break;
                }
            };
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!(job = %job, "export job stopped");
    }
}

/// Whether `sql` names the parameter `:name` (not `::name`, not followed
/// by more of an identifier).
fn names_param(sql: &str, name: &str) -> bool {
    let pattern = format!(":{name}");
    sql.match_indices(&pattern).any(|(i, _)| {
        let before = sql[..i].chars().next_back();
        let after = sql[i + pattern.len()..].chars().next();
        before != Some(':') && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// `sql` with `{max}` filled and its `:last` parameters bound, run.
async fn max_of<DB: Dialect>(
    pool: &Pool<DB>,
    sql: &str,
    column: &str,
    last: &Mark,
) -> Result<Option<Mark>, StoreError> {
    let max = format!("MAX(ferry_w.{column})");
    let max = match last {
        Mark::Int(_) => DB::cast_bigint(&max),
        Mark::Time(_) => max,
        Mark::Text(_) => DB::text(&max),
    };
    let sql = sql.replace("{max}", &max);
    let mut out = String::with_capacity(sql.len());
    let mut args = DB::Arguments::default();
    let enc = |e| StoreError::Database(sqlx::Error::Encode(e));
    let mut n = 0;
    let mut rest = sql.as_str();
    while let Some(i) = rest.find(":last") {
        let after = rest[i + 5..].chars().next();
        let before = rest[..i].chars().next_back();
        out.push_str(&rest[..i]);
        if before == Some(':') || after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push_str(":last");
        } else {
            n += 1;
            out.push_str(&if DB::NUMBERED_PARAMS {
                format!("${n}")
            } else {
                "?".to_owned()
            });
            match last {
                Mark::Int(i) => args.bind_value(*i).map_err(enc)?,
                Mark::Time(t) => args.add(DB::time(*t)).map_err(enc)?,
                Mark::Text(s) => args.bind_value(s.clone()).map_err(enc)?,
            }
        }
        rest = &rest[i + 5..];
    }
    out.push_str(rest);
    let mut conn = pool.acquire().await?;
    let row = sqlx::query_with(&out, args)
        .fetch_one((*conn).executor())
        .await?;
    let count: i64 = row.read("n")?;
    if count == 0 {
        return Ok(None);
    }
    Ok(Some(match last {
        Mark::Int(_) => Mark::Int(row.read("next")?),
        Mark::Time(_) => Mark::Time(DB::read_time(&row, "next")?),
        Mark::Text(_) => Mark::Text(row.read("next")?),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The futures a daemon spawns or awaits in spawned tasks are `Send`
    /// (checked when the tests compile).
    #[allow(dead_code)]
    fn futures_are_send(e: Exporter, w: RunWindow, db: Database) {
        fn send<T: Send>(_: T) {}
        send(e.run_window(&w, Trigger::Manual));
        send(e.catch_up(Utc::now()));
        send(e.window_for("x"));
        send(crate::export::runs::runs(&db, None, 1));
        send(e.run(CancellationToken::new()));
    }

    #[test]
    fn finds_named_parameters() {
        assert!(names_param("a > :last", "last"));
        assert!(names_param("a > :last)", "last"));
        assert!(!names_param("a > :lastly", "last"));
        assert!(!names_param("a::last", "last"));
        assert!(names_param("x = :window_start", "window_start"));
    }

    #[test]
    fn marks_read_back_as_their_kind() {
        let t = Mark::Time("2026-12-07T02:00:00Z".parse().unwrap());
        assert_eq!(t.parse_like(&t.text()).unwrap(), t);
        assert_eq!(t.parse_like("2026-12-07 02:00:00+00").unwrap(), t);
        let i = Mark::Int(0);
        assert_eq!(i.parse_like("42").unwrap(), Mark::Int(42));
        assert!(i.parse_like("x").is_err());
        assert!(Mark::Int(10) > Mark::Int(9));
    }
}
