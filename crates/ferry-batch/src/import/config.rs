//! An import job's configuration (`[[import]]`).

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::Failure;
use serde::Deserialize;

use crate::location::LocationConfig;

/// One import job: where batches arrive, where their rows go, and what
/// happens to a batch afterwards.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportJob {
    /// The job's name: part of the ledger's key (`ferry_batch_imports.job`)
    /// and of every log line about the job.
    pub name: String,
    /// The location batches arrive at (a folder, SFTP or S3).
    pub source: LocationConfig,
    /// The folder within `source` the batches arrive in; the location's
    /// root when empty (the default).
    #[serde(default)]
    pub folder: String,
    /// Where the rows go: a database table or an HTTP endpoint.
    pub target: ImportTarget,
    /// The folder, within `folder`, that imported batches are moved to:
    /// the data files to `<archive>/<batch>/`, then the manifest to
    /// `<archive>/<batch>.manifest.json`. Default `archive`.
    #[serde(default = "default_archive")]
    pub archive: String,
    /// The folder, within `folder`, that refused batches are moved to:
    /// the data files, the manifest and `<batch>.reason.txt` saying why.
    /// Default `error`.
    #[serde(default = "default_error")]
    pub error: String,
    /// How long archived batches are kept (e.g. `"30d"`), counted from the
    /// manifest's `created_at`; kept for ever when absent.
    #[serde(default, with = "humantime_serde")]
    pub archive_retention: Option<Duration>,
    /// How often [`Importer::run`](super::Importer::run) looks for new
    /// batches (e.g. `"30s"`). Default 30 seconds.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
}

/// Where an import job puts the rows of a batch.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ImportTarget {
    /// A table of a PostgreSQL, MariaDB or SQLite database; the load and
    /// the ledger row commit in one transaction.
    Database(DatabaseTarget),
    /// An HTTP endpoint that receives the rows as JSON Lines chunks, each
    /// with an `Idempotency-Key`.
    Http(HttpTarget),
}

/// A table to load batches into. Its `Debug` hides the URL's password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseTarget {
    /// The database's URL (`postgres://…`, `mysql://…` or `mariadb://…`,
    /// `sqlite://…`). The ledger `ferry_batch_imports` is kept there too.
    pub url: String,
    /// The table, as written in SQL (`orders`, `sales.orders`).
    pub table: String,
    /// File column → table column, for the columns whose names differ;
    /// every other file column goes to the table column of its own name.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// What a row does to the rows already in the table. Default `insert`.
    #[serde(default)]
    pub conflict: Conflict,
    /// The table columns that identify a row, for `conflict = "upsert"`
    /// (a primary key or unique index over exactly these columns).
    #[serde(default)]
    pub key: Vec<String>,
    /// The table column the manifest's window applies to, for
    /// `conflict = "replace_window"`.
    #[serde(default)]
    pub window_column: Option<String>,
}

/// What loading a row does to the rows already in the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    /// Insert every row; a row that breaks a constraint fails the load
    /// (nothing of the batch is kept, the batch is tried again at the
    /// next poll).
    #[default]
    Insert,
    /// Insert, or update the row with the same `key`. PostgreSQL and
    /// SQLite need a primary key or unique index over exactly the `key`
    /// columns; MariaDB's `ON DUPLICATE KEY UPDATE` updates on a conflict
    /// with any of the table's unique keys. A batch that holds one key
    /// twice is refused on PostgreSQL; MariaDB and SQLite keep its later
    /// row.
    Upsert,
    /// Delete the rows whose `window_column` is in the manifest's window
    /// `[start, end)`, then insert the batch's rows, in one transaction.
    ReplaceWindow,
}

/// An HTTP endpoint to POST batches to. Its `Debug` shows header names,
/// not their values.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTarget {
    /// The URL each chunk is POSTed to.
    pub url: String,
    /// Rows per request. Default 1000.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
    /// Extra request headers (e.g. `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How long one request may take (e.g. `"30s"`). Default 30 seconds.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Tries per chunk when the endpoint answers 5xx or 429 or cannot be
    /// reached, with backoff between them, before the batch is left for
    /// the next poll. Default 5.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
}

impl std::fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseTarget")
            .field("url", &ferry_core::redact_url(&self.url))
            .field("table", &self.table)
            .field("columns", &self.columns)
            .field("conflict", &self.conflict)
            .field("key", &self.key)
            .field("window_column", &self.window_column)
            .finish()
    }
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("url", &ferry_core::redact_url(&self.url))
            .field("chunk_rows", &self.chunk_rows)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish()
    }
}

fn default_archive() -> String {
    "archive".to_owned()
}

fn default_error() -> String {
    "error".to_owned()
}

fn default_poll() -> Duration {
    Duration::from_secs(30)
}

fn default_chunk_rows() -> usize {
    1000
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_attempts() -> u32 {
    5
}

impl ImportJob {
    /// Checks what serde cannot: names and the conflict rule's companions.
    pub fn validate(&self) -> Result<(), Failure> {
        let bad = |what: String| {
            Err(Failure::permanent(format!(
                "import job `{}`: {what}",
                self.name
            )))
        };
        if self.name.trim().is_empty() {
            return Err(Failure::permanent("import job: `name` is empty"));
        }
        for (key, folder) in [("archive", &self.archive), ("error", &self.error)] {
            if folder.is_empty() || crate::location::check_name(folder).is_err() {
                return bad(format!(
                    "`{key}` = {folder:?} is not a relative folder name"
                ));
            }
        }
        if !self.folder.is_empty() && crate::location::check_name(&self.folder).is_err() {
            return bad(format!(
                "`folder` = {:?} is not a relative folder name",
                self.folder
            ));
        }
        if self.poll_interval.is_zero() {
            return bad("`poll_interval` must be more than zero".to_owned());
        }
        match &self.target {
            ImportTarget::Database(t) => {
                if t.table.trim().is_empty() {
                    return bad("`target.database.table` is empty".to_owned());
                }
                match t.conflict {
                    Conflict::Upsert if t.key.is_empty() => {
                        return bad(
                            "`conflict = \"upsert\"` needs `key`, the table columns that identify a row"
                                .to_owned(),
                        )
                    }
                    Conflict::ReplaceWindow if t.window_column.is_none() => {
                        return bad("`conflict = \"replace_window\"` needs `window_column`, the table column the window applies to".to_owned())
                    }
                    _ => {}
                }
                ferry_store::DatabaseKind::of(&t.url).map_err(|e| {
                    Failure::permanent(format!(
                        "import job `{}`: `target.database.url` is not a database URL Ferry knows",
                        self.name
                    ))
                    .with_source(e)
                })?;
            }
            ImportTarget::Http(t) => {
                if t.chunk_rows == 0 {
                    return bad("`target.http.chunk_rows` must be at least 1".to_owned());
                }
                if t.attempts == 0 {
                    return bad("`target.http.attempts` must be at least 1".to_owned());
                }
                url::Url::parse(&t.url).map_err(|e| {
                    Failure::permanent(format!(
                        "import job `{}`: `target.http.url` is not a URL",
                        self.name
                    ))
                    .with_source(e)
                })?;
            }
        }
        Ok(())
    }

    /// `name` inside the job's folder.
    pub(crate) fn path(&self, name: &str) -> String {
        if self.folder.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.folder.trim_end_matches('/'))
        }
    }
}
