//! The batch hand-off in the daemon: `[[export]]` and `[[import]]` tables
//! (run by `ferry run`), and the `ferry export`, `ferry import` and `ferry
//! batch` commands.
//!
//! Each table is one job of `ferry_batch` (its fields are documented
//! there: [`ExportJob`], [`ImportJob`]); a job that cannot start because a
//! database or location is unreachable is retried with backoff (logged when
//! it goes down and when it is back), a job whose settings are wrong stops
//! the daemon with the reason. An export job's run history
//! (`ferry_batch_runs`) is kept in `[batch] state` when set, else in the
//! job's own database.
//!
//! ```toml
//! [batch]
//! state = "sqlite://ferry-batch.db"   # optional
//!
//! [[export]]
//! name = "orders"
//! database = "postgres://ferry@db/shop"
//! query = "SELECT * FROM orders WHERE updated_at >= :window_start AND updated_at < :window_end"
//! schedule = "0 2 * * *"
//! timezone = "Europe/Berlin"
//! [export.destination]
//! url = "sftp://ferry@files.example.com/incoming"
//! private_key = "/etc/ferry/id_ed25519"
//! known_hosts = "/etc/ferry/known_hosts"
//!
//! [[import]]
//! name = "orders"
//! source = { url = "/srv/incoming" }
//! [import.target.database]
//! url = "mysql://ferry@warehouse/dw"
//! table = "orders"
//! ```

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_batch::export::{ExportJob, Exporter, RunRecord, RunStatus, Trigger};
use ferry_batch::import::{ImportJob, ImportReport, Importer};
use ferry_core::{ErrorKind, Failure};
use ferry_relay::{CancellationToken, Health, SinkBackoff};
use ferry_store::{redact, ConnectOptions, Database};
use serde::Deserialize;

use crate::config::FerryConfig;
use crate::output::outln;
use crate::startup::line_of;

/// `[batch]`: settings shared by the file's batch jobs.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// The database that keeps every export job's run history
    /// (`ferry_batch_runs`: SQLite, PostgreSQL or MariaDB); default: each
    /// job's own `database` (which must then be writable).
    #[serde(default)]
    pub state: Option<String>,
}

/// Checks the `[[export]]` and `[[import]]` tables of a file whose text is
/// `text`: unique names, and what each job's own check finds. The error
/// starts with the line of the job's table.
pub fn check(
    text: &str,
    batch: Option<&BatchConfig>,
    exports: &[toml::Spanned<ExportJob>],
    imports: &[toml::Spanned<ImportJob>],
) -> Result<(), String> {
    if let Some(state) = batch.and_then(|b| b.state.as_deref()) {
        ferry_store::DatabaseKind::of(state)
            .map_err(|e| format!("[batch]: key `state`: {}", ferry_core::error_chain(&e)))?;
    }
    let mut seen = std::collections::HashMap::new();
    for job in exports {
        let line = line_of(text, job.span().start);
        let name = &job.get_ref().name;
        if let Some(first) = seen.insert(("export", name.clone()), line) {
            return Err(format!(
                "line {line}: key `export.name`: export `{name}` is defined twice (first at line {first})"
            ));
        }
        job.get_ref()
            .validate()
            .map_err(|e| format!("line {line}: export `{name}`: {}", e.describe()))?;
        if let Some(destination) = &job.get_ref().destination {
            destination.check().map_err(|e| {
                format!(
                    "line {line}: export `{name}`: key `destination`: {}",
                    e.describe()
                )
            })?;
        }
    }
    for job in imports {
        let line = line_of(text, job.span().start);
        let name = &job.get_ref().name;
        if let Some(first) = seen.insert(("import", name.clone()), line) {
            return Err(format!(
                "line {line}: key `import.name`: import `{name}` is defined twice (first at line {first})"
            ));
        }
        job.get_ref()
            .validate()
            .map_err(|e| format!("line {line}: import `{name}`: {}", e.describe()))?;
        job.get_ref().source.check().map_err(|e| {
            format!(
                "line {line}: import `{name}`: key `source`: {}",
                e.describe()
            )
        })?;
    }
    Ok(())
}

/// An export job's counters for `/metrics`, updated after each run.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Runs that succeeded.
    pub succeeded: AtomicU64,
    /// Runs that failed (after their retries).
    pub failed: AtomicU64,
    /// Rows exported by successful runs.
    pub rows: AtomicU64,
    /// Bytes handed over by successful runs.
    pub bytes: AtomicU64,
    /// The last run's duration, in milliseconds (-1 before the first).
    pub last_duration_ms: AtomicI64,
    /// When the last successful run finished, Unix milliseconds (-1
    /// before the first).
    pub last_success_ms: AtomicI64,
    /// The window of the last run, `start .. end`, and how it ended (for
    /// the console).
    pub last_window: std::sync::Mutex<Option<(String, RunStatus)>>,
}

impl ExportStats {
    fn new() -> Arc<Self> {
        let stats = Self::default();
        stats.last_duration_ms.store(-1, Ordering::Relaxed);
        stats.last_success_ms.store(-1, Ordering::Relaxed);
        Arc::new(stats)
    }

    fn observe(&self, r: &RunRecord) {
        let Some(finished) = r.finished_at else {
            return;
        };
        self.last_duration_ms.store(
            (finished - r.started_at).num_milliseconds(),
            Ordering::Relaxed,
        );
        *self.last_window.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((format!("{} .. {}", r.window.start, r.window.end), r.status));
        match r.status {
            RunStatus::Succeeded => {
                self.succeeded.fetch_add(1, Ordering::Relaxed);
                self.rows.fetch_add(r.rows, Ordering::Relaxed);
                self.bytes.fetch_add(r.bytes, Ordering::Relaxed);
                self.last_success_ms
                    .store(finished.timestamp_millis(), Ordering::Relaxed);
            }
            RunStatus::Failed => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
            RunStatus::Running => {}
        }
    }

    /// Seconds since the last successful run finished, if there was one.
    pub fn since_success(&self) -> Option<f64> {
        let at = self.last_success_ms.load(Ordering::Relaxed);
        (at >= 0).then(|| (chrono::Utc::now().timestamp_millis() - at).max(0) as f64 / 1000.0)
    }

    /// The last run's window and whether it succeeded, if there was one.
    pub fn last_window(&self) -> Option<(String, RunStatus)> {
        self.last_window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The last run's duration in seconds, if there was one.
    pub fn last_duration(&self) -> Option<f64> {
        let ms = self.last_duration_ms.load(Ordering::Relaxed);
        (ms >= 0).then(|| ms as f64 / 1000.0)
    }
}

/// An import job's counters for `/metrics`, updated after each pass.
#[derive(Debug, Default)]
pub struct ImportStats {
    /// Batches loaded.
    pub imported: AtomicU64,
    /// Batches found already imported (re-sent), archived without loading.
    pub skipped: AtomicU64,
    /// Batches refused (moved to the error folder).
    pub refused: AtomicU64,
    /// Rows loaded.
    pub rows: AtomicU64,
    /// When the last pass that did not fail ended, Unix milliseconds (-1
    /// before the first).
    pub last_pass_ms: AtomicI64,
}

impl ImportStats {
    fn new() -> Arc<Self> {
        let stats = Self::default();
        stats.last_pass_ms.store(-1, Ordering::Relaxed);
        Arc::new(stats)
    }

    fn observe(&self, report: &ImportReport) {
        self.imported
            .fetch_add(report.imported.len() as u64, Ordering::Relaxed);
        self.skipped
            .fetch_add(report.skipped.len() as u64, Ordering::Relaxed);
        self.refused
            .fetch_add(report.refused.len() as u64, Ordering::Relaxed);
        self.rows.fetch_add(
            report.imported.iter().map(|b| b.rows).sum(),
            Ordering::Relaxed,
        );
        self.last_pass_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Seconds since the last pass that did not fail, if there was one.
    pub fn since_pass(&self) -> Option<f64> {
        let at = self.last_pass_ms.load(Ordering::Relaxed);
        (at >= 0).then(|| (chrono::Utc::now().timestamp_millis() - at).max(0) as f64 / 1000.0)
    }
}

/// The database an export job's run history lives in.
fn state_url<'a>(config: &'a FerryConfig, job: &'a ExportJob) -> &'a str {
    config
        .batch
        .as_ref()
        .and_then(|b| b.state.as_deref())
        .unwrap_or(&job.database)
}

/// Opens `job`'s exporter: its state database, its source, its
/// destination. An unreachable one is a retryable failure.
async fn exporter(job: &ExportJob, state_url: &str) -> Result<Exporter, Failure> {
    let options = ConnectOptions {
        max_connections: 2,
        lease: None,
    };
    let state = Database::connect_with(state_url, &options)
        .await
        .map_err(|e| {
            let message = format!(
                "export `{}`: cannot open the run history's database {}",
                job.name,
                redact(state_url)
            );
            if e.is_retryable() {
                Failure::unavailable(message)
            } else {
                Failure::permanent(message)
            }
            .with_source(e)
        })?;
    Exporter::new(job.clone(), state).await
}

/// Runs `job` on its schedule until `shutdown`; retries starting it while
/// what it needs is unreachable.
pub async fn run_export(
    job: ExportJob,
    state_url: String,
    stats: Arc<ExportStats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let name = job.name.clone();
    let Some(exporter) = start(&name, "export", &shutdown, || exporter(&job, &state_url)).await?
    else {
        return Ok(());
    };
    exporter
        .with_observer(move |r| stats.observe(r))
        .run(shutdown)
        .await;
    Ok(())
}

/// Runs `job`'s importer until `shutdown`.
pub async fn run_import(
    job: ImportJob,
    stats: Arc<ImportStats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let name = job.name.clone();
    let Some(importer) = start(&name, "import", &shutdown, || Importer::new(job.clone())).await?
    else {
        return Ok(());
    };
    importer
        .with_observer(move |r| stats.observe(r))
        .run(shutdown)
        .await;
    Ok(())
}

/// Calls `open` until it succeeds, retrying with backoff while it fails
/// with a retryable error (logged once when it starts failing and once
/// when it succeeds); a permanent error ends the daemon. `None` when shut
/// down first.
async fn start<T, F, Fut>(
    name: &str,
    kind: &'static str,
    shutdown: &CancellationToken,
    mut open: F,
) -> anyhow::Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let health =
        Health::new(kind, name, &SinkBackoff::default()).with_words("cannot start", "started");
    loop {
        match open().await {
            Ok(t) => {
                health.succeeded();
                return Ok(Some(t));
            }
            Err(e) if e.kind != ErrorKind::Permanent => {
                health.failed(&e.describe());
                tokio::select! {
                    _ = tokio::time::sleep(health.pause_left().unwrap_or(Duration::from_secs(1))) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
            }
            Err(e) => anyhow::bail!("{kind} `{name}`: {}", e.describe()),
        }
    }
}

/// `ferry export run JOB`: runs the window holding `window` (a time or a
/// date; for a watermark job, the start of a recorded window), or else
/// what is due now per the job's catch-up policy, once, and prints each
/// run. Fails when a run failed.
pub async fn export_run(
    config: &FerryConfig,
    name: &str,
    window: Option<&str>,
) -> anyhow::Result<()> {
    let job = find(&config.exports, name, "export")?;
    let exporter = exporter(job, state_url(config, job))
        .await
        .map_err(|e| anyhow::anyhow!("export `{name}`: {}", e.describe()))?;
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| progress_bar(name));
    let exporter = match &bar {
        Some(bar) => {
            let bar = bar.clone();
            exporter.with_progress(move |rows, bytes| {
                bar.set_position(rows);
                bar.set_message(format!("{:.1} MB", bytes as f64 / 1e6));
            })
        }
        None => exporter,
    };
    let records = match window {
        Some(at) => {
            let window = exporter
                .window_for(at)
                .await
                .map_err(|e| anyhow::anyhow!("export `{name}`: {}", e.describe()))?;
            if let Some(bar) = &bar {
                if let Some(rows) = exporter.estimate_rows(&window).await.filter(|r| *r > 0) {
                    bar.set_length(rows);
                    bar.set_style(estimated_style());
                }
            }
            vec![exporter
                .run_window(&window, Trigger::Manual)
                .await
                .map_err(|e| anyhow::anyhow!("export `{name}`: {}", e.describe()))?]
        }
        None => exporter
            .catch_up(chrono::Utc::now())
            .await
            .map_err(|e| anyhow::anyhow!("export `{name}`: {}", e.describe()))?,
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if records.is_empty() {
        outln!("export `{name}`: nothing due");
    }
    for r in &records {
        outln!("{}", describe_run(r));
    }
    if let Some(failed) = records.iter().find(|r| r.status == RunStatus::Failed) {
        anyhow::bail!(
            "export `{name}`: window [{}, {}) failed: {}",
            failed.window.start,
            failed.window.end,
            failed.error.as_deref().unwrap_or("unknown error")
        );
    }
    Ok(())
}

/// A terminal's progress line for an export run: rows, bytes, rate,
/// time so far; with the database's estimate of the rows (PostgreSQL, one
/// window), a bar and the time left ([`estimated_style`]).
fn progress_bar(job: &str) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} export {prefix}: {pos} rows, {msg}, {rate}, {elapsed}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
    .with_key(
        "rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} rows/s", state.per_sec());
        },
    );
    let bar = indicatif::ProgressBar::new_spinner().with_style(style);
    bar.set_prefix(job.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The progress bar against the planner's estimate of the rows: the
/// time left is as good as the estimate.
fn estimated_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "export {prefix} [{bar:25}] {pos}/~{len} rows, {msg}, {rate}, {elapsed}, ~{eta} left",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .with_key(
        "rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} rows/s", state.per_sec());
        },
    )
    .progress_chars("=> ")
}

/// `ferry import run JOB`: processes every complete batch waiting now and
/// prints what became of each.
pub async fn import_run(config: &FerryConfig, name: &str) -> anyhow::Result<()> {
    let job = find(&config.imports, name, "import")?;
    let importer = Importer::new(job.clone())
        .await
        .map_err(|e| anyhow::anyhow!("import `{name}`: {}", e.describe()))?;
    let report = importer
        .run_once()
        .await
        .map_err(|e| anyhow::anyhow!("import `{name}`: {}", e.describe()))?;
    for b in &report.imported {
        outln!("imported {} ({} rows)", b.batch, b.rows);
    }
    for b in &report.skipped {
        outln!("skipped {b} (already imported; archived)");
    }
    for b in &report.refused {
        outln!("refused {}: {}", b.batch, b.reason);
    }
    if report.imported.is_empty() && report.skipped.is_empty() && report.refused.is_empty() {
        outln!("import `{name}`: no complete batch waiting");
    }
    Ok(())
}

/// `ferry batch status`: the latest export runs of every export job, and
/// the latest batches every import job's ledger holds (or `job`'s),
/// newest first.
pub async fn status(config: &FerryConfig, job: Option<&str>, limit: u32) -> anyhow::Result<()> {
    let mut shown = 0;
    for export in config.exports.iter().map(|j| j.get_ref()) {
        if job.is_some_and(|j| j != export.name) {
            continue;
        }
        shown += 1;
        let url = state_url(config, export);
        let db = Database::connect(url)
            .await
            .with_context(|| format!("export `{}`: run history {}", export.name, redact(url)))?;
        let runs = ferry_batch::export::runs(&db, Some(&export.name), limit)
            .await
            .map_err(|e| anyhow::anyhow!("export `{}`: {}", export.name, e.describe()))?;
        outln!("export {} ({} run(s) shown)", export.name, runs.len());
        for r in &runs {
            outln!("  {}", describe_run(r));
        }
        db.close().await;
    }
    for import in config.imports.iter().map(|j| j.get_ref()) {
        if job.is_some_and(|j| j != import.name) {
            continue;
        }
        shown += 1;
        let importer = Importer::new(import.clone())
            .await
            .map_err(|e| anyhow::anyhow!("import `{}`: {}", import.name, e.describe()))?;
        match importer
            .imported(limit)
            .await
            .map_err(|e| anyhow::anyhow!("import `{}`: {}", import.name, e.describe()))?
        {
            Some(batches) => {
                outln!("import {} ({} batch(es) shown)", import.name, batches.len());
                for b in &batches {
                    outln!(
                        "  [{}, {}) {}: {} rows, imported {}",
                        b.window.start,
                        b.window.end,
                        b.batch,
                        b.rows,
                        b.imported_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    );
                }
            }
            None => outln!(
                "import {}: an HTTP target keeps no ledger (see the endpoint's own records)",
                import.name
            ),
        }
    }
    if shown == 0 {
        anyhow::bail!(
            "no [[export]] or [[import]] job{} in the file",
            job.map(|j| format!(" named `{j}`")).unwrap_or_default()
        );
    }
    Ok(())
}

fn describe_run(r: &RunRecord) -> String {
    let took = r
        .finished_at
        .map(|f| {
            format!(
                " in {:.1} s",
                (f - r.started_at).num_milliseconds() as f64 / 1000.0
            )
        })
        .unwrap_or_default();
    let mut line = format!(
        "[{}, {}) {} ({}, {} attempt(s)){took}: {} file(s), {} rows, {} bytes",
        r.window.start,
        r.window.end,
        r.status.as_str(),
        r.trigger.as_str(),
        r.attempts,
        r.files.len(),
        r.rows,
        r.bytes,
    );
    if let Some(error) = &r.error {
        line.push_str(&format!(" — {error}"));
    }
    line
}

fn find<'a, T: Named>(
    jobs: &'a [toml::Spanned<T>],
    name: &str,
    kind: &str,
) -> anyhow::Result<&'a T> {
    jobs.iter()
        .map(|j| j.get_ref())
        .find(|j| j.name() == name)
        .with_context(|| {
            let names: Vec<&str> = jobs.iter().map(|j| j.get_ref().name()).collect();
            format!(
                "no [[{kind}]] named `{name}` in the file (it has: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )
        })
}

trait Named {
    fn name(&self) -> &str;
}

impl Named for ExportJob {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for ImportJob {
    fn name(&self) -> &str {
        &self.name
    }
}

/// The jobs of the file, to spawn with `ferry run`; their counters
/// shown on `metrics`.
pub fn spawn_all(
    config: &FerryConfig,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    metrics: &crate::metrics::Metrics,
    shutdown: &CancellationToken,
) {
    for job in config.exports.iter().map(|j| j.get_ref()) {
        let state = state_url(config, job).to_owned();
        let stats = ExportStats::new();
        metrics.add_export(&job.name, stats.clone());
        tasks.spawn(run_export(job.clone(), state, stats, shutdown.clone()));
    }
    for job in config.imports.iter().map(|j| j.get_ref()) {
        let stats = ImportStats::new();
        metrics.add_import(&job.name, stats.clone());
        tasks.spawn(run_import(job.clone(), stats, shutdown.clone()));
    }
}
