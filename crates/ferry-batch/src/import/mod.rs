//! The receiver: import jobs, verification, the once-only ledger.
//!
//! An [`Importer`] runs one [`ImportJob`]. Each pass
//! ([`Importer::run_once`]) lists the job's folder and takes every batch
//! whose manifest (`<batch>.manifest.json`) is there, oldest manifest name
//! first:
//!
//! 1. It fetches the manifest and reads it; a manifest that is malformed
//!    or of an unknown format version refuses the batch.
//! 2. Database targets: when the ledger already holds the batch, nothing
//!    is loaded and the batch is archived (a batch re-sent, or archived
//!    only in part before a crash).
//! 3. It fetches every data file to a private scratch folder and checks
//!    its size and SHA-256 against the manifest.
//! 4. It loads the rows in one transaction together with the batch's
//!    ledger row (`ferry_batch_imports`, in the target database), checking
//!    each file's row count against the manifest before commit — or POSTs
//!    them to an HTTP endpoint in chunks with idempotency keys.
//! 5. It archives the batch: data files to `<archive>/<batch>/`, then the
//!    manifest to `<archive>/<batch>.manifest.json`.
//!
//! A refused batch — malformed or unknown manifest, a missing file, a size
//! or checksum mismatch, a malformed row, a row count that differs from
//! the manifest, columns the table lacks — loads nothing: it is moved to
//! `<error>/` (reason in `<batch>.reason.txt`, then its files, then the
//! manifest) and the pass goes on with later batches. A failure outside
//! the batch — the location or the database unavailable, a constraint that
//! refuses a row — rolls back whatever was loaded, leaves the batch where
//! it is and ends the pass with that failure; the next poll tries again.
//!
//! # Once only
//!
//! The ledger is keyed by job and [`batch_key`]: a hash over the
//! manifest's window and its data files' SHA-256 list, not over the
//! manifest's bytes, because a sender that re-runs a window writes the
//! same files under a manifest with a new `run_id` and `created_at`. The
//! ledger row is inserted first in the transaction that loads the batch
//! and commits with it, so a batch is loaded exactly once whatever stops
//! the importer; an importer racing on the same batch (another process,
//! or the same batch in another folder) waits on that row and then loads
//! nothing.
//! HTTP targets have no ledger: they rely on the endpoint deduplicating by
//! `Idempotency-Key`, which is the same for the same chunk of the same
//! batch.

mod batch;
mod config;
mod database;
mod http;
mod ledger;
mod stream;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::Failure;
use tokio_util::sync::CancellationToken;

pub use batch::batch_key;
pub use config::{Conflict, DatabaseTarget, HttpTarget, ImportJob, ImportTarget};
pub use http::idempotency_key;
pub use ledger::{Imported, TABLE as LEDGER_TABLE};

use batch::Problem;
use database::{DatabaseLoader, Loaded};
use http::HttpLoader;

use crate::location::{base_name, Entry};
use crate::{Location, Manifest};

/// How often [`Importer::run`] applies the archive retention.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Batches loaded (and archived), in the order they were taken.
    pub imported: Vec<ImportedBatch>,
    /// Batches the ledger already held (not loaded again, archived), and
    /// batches another importer took while this one was fetching them
    /// (left to it).
    pub skipped: Vec<String>,
    /// Batches refused and moved to the error folder.
    pub refused: Vec<RefusedBatch>,
}

/// A batch loaded by a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedBatch {
    /// The batch's name.
    pub batch: String,
    /// Rows loaded (or sent).
    pub rows: u64,
}

/// A batch refused by a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedBatch {
    /// The batch's name.
    pub batch: String,
    /// Why, as written to `<batch>.reason.txt`.
    pub reason: String,
}

enum Target {
    Database(DatabaseLoader),
    Http(HttpLoader),
}

/// Runs one [`ImportJob`]; see the [module docs](self).
///
/// Passes of one importer must not overlap (`run_once` is not meant to be
/// called concurrently on the same importer); importers of the same job in
/// several processes are safe for database targets (the ledger decides).
pub struct Importer {
    job: ImportJob,
    location: Arc<dyn Location>,
    target: Target,
    last_retention: Mutex<Option<Instant>>,
    observer: Option<Observer>,
}

/// Called with each pass's report (metrics).
type Observer = Arc<dyn Fn(&ImportReport) + Send + Sync>;

impl std::fmt::Debug for Importer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Importer")
            .field("job", &self.job.name)
            .field("location", &self.location.describe())
            .finish_non_exhaustive()
    }
}

impl Importer {
    /// An importer for `job`, opening its source location
    /// ([`crate::location::open`]). Connects to nothing yet: the location
    /// and the target database are reached on the first pass.
    pub async fn new(job: ImportJob) -> Result<Self, Failure> {
        job.validate()?;
        let location = crate::location::open(&job.source).await?;
        Self::with_location(job, location)
    }

    /// An importer for `job` that reads batches from `location` instead of
    /// opening `job.source`.
    pub fn with_location(job: ImportJob, location: Arc<dyn Location>) -> Result<Self, Failure> {
        job.validate()?;
        let target = match &job.target {
            ImportTarget::Database(t) => Target::Database(DatabaseLoader::new(t.clone())),
            ImportTarget::Http(t) => Target::Http(HttpLoader::new(t.clone())?),
        };
        Ok(Self {
            job,
            location,
            target,
            last_retention: Mutex::new(None),
            observer: None,
        })
    }

    /// Calls `observe` with the report of every pass [`run`](Self::run)
    /// makes (one that ended in a failure reports what it did before it).
    pub fn with_observer(
        mut self,
        observe: impl Fn(&ImportReport) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Arc::new(observe));
        self
    }

    /// The latest `limit` batches the ledger holds for this job, newest
    /// first; `None` for an HTTP target, which has no ledger.
    pub async fn imported(&self, limit: u32) -> Result<Option<Vec<Imported>>, Failure> {
        match &self.target {
            Target::Database(db) => db.imported(&self.job.name, limit).await.map(Some),
            Target::Http(_) => Ok(None),
        }
    }

    /// The job this importer runs.
    pub fn job(&self) -> &ImportJob {
        &self.job
    }

    /// Processes every complete batch waiting now, oldest manifest name
    /// first. Refused batches are moved to the error folder and the pass
    /// goes on; a failure outside a batch (location or database
    /// unavailable) ends the pass with that failure, leaving that batch and
    /// later ones for the next pass (batches handled before it are logged).
    pub async fn run_once(&self) -> Result<ImportReport, Failure> {
        let listed = self.location.list(&self.job.folder).await?;
        let mut batches: Vec<&str> = listed
            .iter()
            .filter_map(|e| Manifest::batch_of(base_name(&e.name)))
            .collect();
        batches.sort_unstable();
        let mut report = ImportReport::default();
        for batch in batches {
            self.take(batch, &listed, &mut report).await?;
        }
        Ok(report)
    }

    /// Deletes archived batches older than `archive_retention` (by their
    /// manifest's `created_at`); returns how many. Does nothing without a
    /// retention.
    pub async fn apply_retention(&self) -> Result<usize, Failure> {
        let Some(keep) = self.job.archive_retention else {
            return Ok(0);
        };
        let deleted = batch::expire(&self.job, self.location.as_ref(), keep).await?;
        if deleted > 0 {
            tracing::info!(job = %self.job.name, deleted, "deleted archived batches past their retention");
        }
        Ok(deleted)
    }

    /// Polls every `poll_interval` until `shutdown` is cancelled, applying
    /// the archive retention once an hour. A failure is logged when it
    /// starts or changes, and its end once.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failing: Option<String> = None;
        loop {
            let pass = tokio::select! {
                _ = shutdown.cancelled() => return,
                pass = self.pass() => pass,
            };
            match pass {
                Ok(()) => {
                    if failing.take().is_some() {
                        tracing::info!(job = %self.job.name, "import job works again");
                    }
                }
                Err(f) => {
                    let text = f.describe();
                    if failing.as_deref() != Some(text.as_str()) {
                        tracing::warn!(job = %self.job.name, kind = f.kind.as_str(), error = %text, "import job failed; trying again at the next poll");
                        failing = Some(text);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.job.poll_interval) => {}
            }
        }
    }

    async fn pass(&self) -> Result<(), Failure> {
        let report = self.run_once().await?;
        if let Some(observe) = &self.observer {
            observe(&report);
        }
        let due = {
            let last = self
                .last_retention
                .lock()
                .map_err(|_| Failure::transient("retention clock poisoned"))?;
            last.is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
        };
        if due && self.job.archive_retention.is_some() {
            self.apply_retention().await?;
            if let Ok(mut last) = self.last_retention.lock() {
                *last = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// Takes one batch: loads and archives it, skips and archives it, or
    /// refuses it.
    async fn take(
        &self,
        name: &str,
        listed: &[Entry],
        report: &mut ImportReport,
    ) -> Result<(), Failure> {
        let job = &self.job;
        let location = self.location.as_ref();
        match self.load(name, listed).await {
            Ok((Loaded::Imported(rows), files)) => {
                batch::archive(job, location, name, &files, listed).await?;
                tracing::info!(job = %job.name, batch = name, rows, "imported batch");
                report.imported.push(ImportedBatch {
                    batch: name.to_owned(),
                    rows,
                });
            }
            Ok((Loaded::AlreadyImported, files)) => {
                batch::archive(job, location, name, &files, listed).await?;
                tracing::info!(job = %job.name, batch = name, "batch already imported: archived without loading");
                report.skipped.push(name.to_owned());
            }
            // A file gone while it was fetched may have been archived by
            // another importer that took the batch meanwhile: then it is
            // that one's, not refused.
            Err(Problem::Refused(_)) if batch::taken_by_another(job, location, name).await => {
                tracing::info!(job = %job.name, batch = name, "batch taken by another importer meanwhile: left to it");
                report.skipped.push(name.to_owned());
            }
            Err(Problem::Refused(reason)) => {
                batch::refuse(job, location, name, &reason, listed).await?;
                tracing::warn!(job = %job.name, batch = name, %reason, "batch refused: moved to the error folder");
                report.refused.push(RefusedBatch {
                    batch: name.to_owned(),
                    reason,
                });
            }
            Err(Problem::Retry(f)) => {
                if !report.imported.is_empty() || !report.skipped.is_empty() {
                    tracing::info!(job = %job.name, imported = report.imported.len(), skipped = report.skipped.len(), "pass ended early");
                }
                let mut f = f;
                f.message = format!("import job `{}`, batch {name}: {}", job.name, f.message);
                return Err(f);
            }
        }
        Ok(())
    }

    /// Fetches, verifies and loads one batch; returns what happened and
    /// the names of its data files.
    async fn load(&self, name: &str, listed: &[Entry]) -> Result<(Loaded, Vec<String>), Problem> {
        let location = self.location.as_ref();
        let mut batch = batch::fetch_manifest(&self.job, location, name).await?;
        let files: Vec<String> = batch
            .manifest
            .files
            .iter()
            .map(|f| f.name.clone())
            .collect();
        if let Target::Database(db) = &self.target {
            if db.contains(&self.job.name, &batch.key).await? {
                return Ok((Loaded::AlreadyImported, files));
            }
        }
        batch::fetch_files(&self.job, location, &mut batch, listed).await?;
        let loaded = match &self.target {
            Target::Database(db) => db.load(&self.job.name, &batch).await?,
            Target::Http(http) => Loaded::Imported(http.send(&self.job.name, &batch).await?),
        };
        Ok((loaded, files))
    }
}
