//! An export job's configuration: an `[[export]]` table.
//!
//! ```toml
//! [[export]]
//! name = "orders"
//! database = "postgres://ferry@db/shop"
//! query = "SELECT id, total, created_at FROM orders WHERE created_at >= :window_start AND created_at < :window_end ORDER BY id"
//! schedule = "0 2 * * *"
//! timezone = "Europe/Berlin"
//! format = "csv"
//! gzip = true
//! file_name = "orders-{window_start:%Y%m%d}-{part:03}.{ext}"
//!
//! [export.destination]
//! url = "sftp://ferry@partner.example/incoming"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_core::{Failure, RetryPolicy};
use serde::{Deserialize, Serialize};

use super::bulk::BulkConfig;
use super::name::{Template, DEFAULT_BATCH_NAME, DEFAULT_FILE_NAME};
use crate::location::LocationConfig;
use crate::schedule::{CatchUp, Schedule};
use crate::FileFormat;

/// One export job.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportJob {
    /// The job's name: in file names, the manifest and the run history.
    /// Letters, digits, `-`, `_` and `.` only.
    pub name: String,
    /// The database the query runs on: `postgres://…`, `mysql://…`
    /// (MariaDB) or `sqlite://…`.
    pub database: String,
    /// The query. Scheduled windows bind `:window_start` and
    /// `:window_end` (times, the window is `[start, end)`); watermark
    /// windows bind `:last` (see [`watermark`](Self::watermark)). Write an
    /// `ORDER BY` so that a re-run writes the same bytes.
    pub query: String,
    /// A cron expression (5 fields, or 6 with seconds first) for when
    /// windows end, read in [`timezone`](Self::timezone). Exactly one of
    /// `schedule` and `every`.
    #[serde(default)]
    pub schedule: Option<String>,
    /// The IANA time zone of `schedule` (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// A fixed period instead of `schedule`, e.g. `"15m"`: windows end at
    /// the multiples of the period since the Unix epoch.
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// Incremental windows instead of time windows: each run exports the
    /// rows past the previous run's end value of a column.
    #[serde(default)]
    pub watermark: Option<WatermarkConfig>,
    /// The start of the first scheduled window ever exported; without it
    /// a job with no run history starts with the latest complete window.
    #[serde(default)]
    pub start_at: Option<DateTime<Utc>>,
    /// Which missed windows are run: `all` (default), `latest` or `none`
    /// ([`CatchUp`]).
    #[serde(default)]
    pub catch_up: CatchUp,
    /// `csv` (default) or `jsonl`.
    #[serde(default = "default_format")]
    pub format: FileFormat,
    /// Whether data files are gzip-compressed (`.gz` is added to `{ext}`).
    #[serde(default)]
    pub gzip: bool,
    /// The data files' name template ([`super::name`]); default
    /// `{job}-{window_start:%Y%m%dT%H%M%SZ}-{part:03}.{ext}`.
    #[serde(default = "default_file_name")]
    pub file_name: String,
    /// The batch's name template; the manifest is
    /// `<batch>.manifest.json`. Default `{job}-{window_start:%Y%m%dT%H%M%SZ}`.
    #[serde(default = "default_batch_name")]
    pub batch_name: String,
    /// Rows per data file at most (default 1,000,000); more rows make more
    /// parts. 0 writes every row to one file (then `file_name` needs no
    /// `{part}`).
    #[serde(default = "default_max_rows")]
    pub max_rows_per_file: u64,
    /// Where the files go: a folder, SFTP or S3 ([`LocationConfig`]); or
    /// an `http://` / `https://` URL, which sends the rows as
    /// [bulk](super::bulk) chunks with the default bulk settings. At most
    /// one of `destination` and `bulk`.
    #[serde(default)]
    pub destination: Option<LocationConfig>,
    /// An HTTP endpoint the rows are POSTed to as JSON Lines chunks,
    /// instead of files at a destination, with its settings.
    #[serde(default)]
    pub bulk: Option<BulkConfig>,
    /// Attempts and backoff for a run's transfers (and for a query that
    /// fails in a way worth retrying); a run that exhausts them is
    /// recorded failed and tried again at the next tick or start.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Where the part files are written before they are sent (a folder of
    /// its own per run, removed afterwards); default the system's temp
    /// directory.
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
}

/// Incremental windows over a column (`id`, `updated_at`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WatermarkConfig {
    /// The column of the query's result whose values grow: each run
    /// exports `(last, next]`, `next` being the column's largest value
    /// past `last` when the run starts.
    pub column: String,
    /// `:last` of the first run: a number, an RFC 3339 time, or text.
    pub initial: WatermarkInitial,
}

/// The first value of a watermark, as configured.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum WatermarkInitial {
    /// A whole number (an id).
    Int(i64),
    /// A time (when it reads as RFC 3339) or text.
    Text(String),
}

fn default_format() -> FileFormat {
    FileFormat::Csv
}
fn default_file_name() -> String {
    DEFAULT_FILE_NAME.to_owned()
}
fn default_batch_name() -> String {
    DEFAULT_BATCH_NAME.to_owned()
}
fn default_max_rows() -> u64 {
    1_000_000
}

impl ExportJob {
    /// A job with the defaults: `name`, `database`, `query`, a schedule
    /// ticking `every`, and a destination to set.
    pub fn new(name: &str, database: &str, query: &str, every: Duration) -> Self {
        Self {
            name: name.to_owned(),
            database: database.to_owned(),
            query: query.to_owned(),
            schedule: None,
            timezone: None,
            every: Some(every),
            watermark: None,
            start_at: None,
            catch_up: CatchUp::All,
            format: default_format(),
            gzip: false,
            file_name: default_file_name(),
            batch_name: default_batch_name(),
            max_rows_per_file: default_max_rows(),
            destination: None,
            bulk: None,
            retry: RetryPolicy::default(),
            work_dir: None,
        }
    }

    /// Checks everything that can be checked without connecting: the
    /// name, schedule, templates, retry policy and the choice of
    /// destination. Errors are permanent and name the job and the key.
    pub fn validate(&self) -> Result<(), Failure> {
        self.parts()?;
        let named = |e: Failure| {
            let mut e = e;
            e.message = format!("export job `{}`: {}", self.name, e.message);
            e
        };
        match (&self.destination, &self.bulk_config()) {
            (Some(_), None) => {}
            (_, Some(bulk)) if self.destination.is_none() || self.bulk.is_none() => {
                bulk.validate(self).map_err(named)?
            }
            _ => {
                return Err(named(Failure::permanent(
                    "set exactly one of `destination` (a folder, SFTP or S3) and `bulk` (an HTTP endpoint)",
                )))
            }
        }
        Ok(())
    }

    /// The schedule and the two templates, checked (everything but the
    /// choice of destination).
    pub(crate) fn parts(&self) -> Result<(Schedule, Template, Template), Failure> {
        let job = &self.name;
        let named = |e: Failure| {
            let mut e = e;
            e.message = format!("export job `{job}`: {}", e.message);
            e
        };
        if job.is_empty()
            || !job
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(Failure::permanent(format!(
                "export job name = {job:?}: use letters, digits, `-`, `_` and `.` only"
            )));
        }
        let schedule = match (&self.schedule, self.every) {
            (Some(cron), None) => Schedule::cron(cron, self.timezone.as_deref()).map_err(named)?,
            (None, Some(every)) => {
                if self.timezone.is_some() {
                    return Err(named(Failure::permanent(
                        "timezone is for `schedule` (cron); `every` ticks in UTC",
                    )));
                }
                Schedule::every(every).map_err(named)?
            }
            _ => {
                return Err(named(Failure::permanent(
                    "set exactly one of `schedule` (a cron expression) and `every` (a period such as \"15m\")",
                )))
            }
        };
        let file_name = Template::parse("file_name", &self.file_name).map_err(named)?;
        let batch_name = Template::parse("batch_name", &self.batch_name).map_err(named)?;
        if batch_name.has_part() {
            return Err(named(Failure::permanent(format!(
                "batch_name = {:?}: a batch has many parts, {{part}} belongs in file_name",
                self.batch_name
            ))));
        }
        if self.max_rows_per_file != 0 && !file_name.has_part() {
            // Several parts would share one name.
            return Err(named(Failure::permanent(format!(
                "file_name = {:?} has no {{part}}, but a run with more than max_rows_per_file = {} rows writes several files (set max_rows_per_file = 0 for one file)",
                self.file_name, self.max_rows_per_file
            ))));
        }
        self.retry
            .validate()
            .map_err(|e| named(Failure::permanent(format!("retry: {e}")).with_source(e)))?;
        if let Some(w) = &self.watermark {
            let ident = !w.column.is_empty()
                && !w.column.starts_with(|c: char| c.is_ascii_digit())
                && w.column
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ident {
                return Err(named(Failure::permanent(format!(
                    "watermark.column = {:?}: a column name of the query's result (letters, digits, _)",
                    w.column
                ))));
            }
        }
        Ok((schedule, file_name, batch_name))
    }

    /// The bulk endpoint the rows go to: `bulk`, or a `destination`
    /// whose URL is `http://` or `https://` (with the default settings).
    pub fn bulk_config(&self) -> Option<BulkConfig> {
        if let Some(bulk) = &self.bulk {
            return Some(bulk.clone());
        }
        let url = self.destination.as_ref()?.url.trim();
        let scheme = url.split_once("://")?.0.to_ascii_lowercase();
        matches!(scheme.as_str(), "http" | "https").then(|| BulkConfig::new(url))
    }

    /// `{ext}`: `csv` or `jsonl`, with `.gz` when gzip.
    pub fn extension(&self) -> String {
        let ext = self.format.extension();
        if self.gzip {
            format!("{ext}.gz")
        } else {
            ext.to_owned()
        }
    }
}
