//! Running an export query and writing its rows to local part files.
//!
//! [`write_parts`] runs a [`Query`] on PostgreSQL, MariaDB or SQLite and
//! streams its rows into `dir/part-00001`, `dir/part-00002`, … (CSV or
//! JSON Lines per [`crate::format`], optionally gzip), holding at most a
//! few hundred kilobytes of rows in memory whatever the result's size.
//! The files' bytes depend only on the values, so the same values give
//! the same files from any of the three databases.
//!
//! PostgreSQL's rows come through `COPY (…) TO STDOUT WITH (FORMAT csv)`
//! (timestamptz columns converted to UTC by the server, every value
//! brought to its canonical text as the output is parsed); MariaDB's and
//! SQLite's are read row by row and converted.

mod postgres;
mod rows;
mod sql;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ferry_core::Failure;

use crate::format::{PartWriter, RowWriter};
use crate::{Column, FileFormat};

/// An export query: SQL with `:name` placeholders and their values.
///
/// Placeholders are found outside string literals, quoted identifiers
/// and comments; `::` (PostgreSQL's cast) is not one. Every placeholder
/// must have a parameter; parameters nobody uses are allowed.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// The SQL, e.g. `SELECT * FROM orders WHERE updated_at >=
    /// :window_start AND updated_at < :window_end`.
    pub sql: String,
    /// Each placeholder's value, by name (without the `:`).
    pub params: Vec<(String, Param)>,
}

/// A value for a placeholder.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    /// SQL NULL.
    Null,
    /// A 64-bit integer.
    Int(i64),
    /// Text.
    Text(String),
    /// A point in time (PostgreSQL: `timestamptz`).
    Time(DateTime<Utc>),
}

/// How to lay out the part files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartsSpec {
    /// CSV or JSON Lines.
    pub format: FileFormat,
    /// Whether each file is gzip-compressed.
    pub gzip: bool,
    /// Rows per file at most; 0 puts every row in one file.
    pub max_rows_per_file: u64,
}

/// One written part file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenPart {
    /// Where it is: `dir/part-00001` for part 1.
    pub path: PathBuf,
    /// Its number, from 1.
    pub part: u32,
    /// Data rows in it.
    pub rows: u64,
    /// Its size in bytes as stored.
    pub bytes: u64,
    /// SHA-256 of its bytes as stored, lower-case hex.
    pub sha256: String,
}

/// What [`write_parts`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The result's columns, in file order.
    pub columns: Vec<Column>,
    /// The files, part 1 first; at least one (an empty result gives one
    /// file without rows: CSV's holds the header).
    pub parts: Vec<WrittenPart>,
}

/// Runs `query` on `db` and writes its rows to part files in `dir` (which
/// must exist; files of the same names are replaced), calling
/// `progress(rows, bytes)` now and then with the rows and stored bytes
/// written so far.
///
/// A part holds `max_rows_per_file` rows (the last may hold fewer). The
/// query runs in one transaction (PostgreSQL, MariaDB: rolled back at the
/// end, so it sees one snapshot and changes nothing it did not commit
/// itself).
///
/// The returned future is `Send`.
///
/// Errors: an unknown placeholder, a query the database refuses (its
/// message kept) or a value that cannot be written is
/// [`Permanent`](ferry_core::ErrorKind::Permanent); a lost connection is
/// `Unavailable`; a local file that cannot be written is `Transient`.
pub async fn write_parts(
    db: &ferry_store::Database,
    query: &Query,
    spec: &PartsSpec,
    dir: &Path,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<Written, Failure> {
    match db {
        ferry_store::Database::Postgres(pool) => {
            postgres::write_parts(pool, query, spec, dir, progress).await
        }
        ferry_store::Database::Mysql(pool) => {
            rows::write_mysql(pool, query, spec, dir, progress).await
        }
        ferry_store::Database::Sqlite(pool) => {
            rows::write_sqlite(pool, query, spec, dir, progress).await
        }
    }
}

/// What the database expects the query to return, for a progress bar's
/// time left: PostgreSQL's planner estimate; `None` elsewhere (MariaDB's
/// and SQLite's plans give no row count for a whole query) or when the
/// planner cannot tell. An estimate, not a count: it may be far off.
pub async fn estimate_rows(db: &ferry_store::Database, query: &Query) -> Option<u64> {
    match db {
        ferry_store::Database::Postgres(pool) => postgres::estimate_rows(pool, query).await,
        _ => None,
    }
}

/// The file name of part `part`.
fn part_path(dir: &Path, part: u32) -> PathBuf {
    dir.join(format!("part-{part:05}"))
}

fn file_failure(path: &Path, e: std::io::Error) -> Failure {
    Failure::transient(format!("cannot write part file {}", path.display())).with_source(e)
}

/// Rows into part files, a new file every `max_rows_per_file` rows.
struct Parts {
    dir: PathBuf,
    spec: PartsSpec,
    columns: Vec<Column>,
    current: Option<PartWriter>,
    done: Vec<WrittenPart>,
    rows_done: u64,
    bytes_done: u64,
}

impl Parts {
    fn new(dir: &Path, spec: &PartsSpec, columns: Vec<Column>) -> Self {
        Self {
            dir: dir.to_owned(),
            spec: *spec,
            columns,
            current: None,
            done: Vec::new(),
            rows_done: 0,
            bytes_done: 0,
        }
    }

    /// The writer the next row goes to.
    fn row(&mut self) -> Result<&mut RowWriter<crate::format::PartFile>, Failure> {
        let full = match &mut self.current {
            Some(w) => {
                self.spec.max_rows_per_file > 0 && w.rows().rows() >= self.spec.max_rows_per_file
            }
            None => true,
        };
        if full {
            self.close()?;
            self.open()?;
        }
        match &mut self.current {
            Some(w) => Ok(w.rows()),
            None => Err(Failure::transient("no part file open")),
        }
    }

    fn open(&mut self) -> Result<(), Failure> {
        let path = part_path(&self.dir, self.done.len() as u32 + 1);
        let w = PartWriter::create(&path, self.spec.format, self.spec.gzip, &self.columns)
            .map_err(|e| file_failure(&path, e))?;
        self.current = Some(w);
        Ok(())
    }

    fn close(&mut self) -> Result<(), Failure> {
        if let Some(w) = self.current.take() {
            let part = self.done.len() as u32 + 1;
            let path = part_path(&self.dir, part);
            let s = w.finish().map_err(|e| file_failure(&path, e))?;
            self.rows_done += s.rows;
            self.bytes_done += s.bytes;
            self.done.push(WrittenPart {
                path,
                part,
                rows: s.rows,
                bytes: s.bytes,
                sha256: s.sha256,
            });
        }
        Ok(())
    }

    /// Rows and stored bytes so far (the open file's bytes as far as they
    /// have reached it).
    fn progress(&mut self) -> (u64, u64) {
        match &mut self.current {
            Some(w) => (
                self.rows_done + w.rows().rows(),
                self.bytes_done + w.stored_bytes(),
            ),
            None => (self.rows_done, self.bytes_done),
        }
    }

    /// Closes the last file (writing an empty one if there is none).
    fn finish(mut self) -> Result<Written, Failure> {
        if self.current.is_none() && self.done.is_empty() {
            self.open()?;
        }
        self.close()?;
        Ok(Written {
            columns: self.columns,
            parts: self.done,
        })
    }
}

/// A row's end as a failure.
fn row_failure(e: std::io::Error, dir: &Path) -> Failure {
    if e.kind() == std::io::ErrorKind::InvalidInput {
        Failure::permanent(format!("export query: {e}"))
    } else {
        file_failure(dir, e)
    }
}

/// `write_parts`'s future is `Send` (a daemon can spawn it): this fails
/// to compile otherwise.
#[cfg(test)]
#[allow(dead_code)]
fn write_parts_is_send(db: &ferry_store::Database, q: &Query, s: &PartsSpec) {
    fn send<T: Send>(_: T) {}
    send(write_parts(db, q, s, Path::new("."), &|_, _| {}));
}
