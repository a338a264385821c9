//! Reading a verified data file off the async runtime: its rows (or, for
//! PostgreSQL's COPY, its bytes) in bounded chunks through a small
//! channel, so memory stays bounded whatever the file's size.

use std::io::Read;
use std::path::{Path, PathBuf};

use ferry_core::{ErrorKind, Failure};
use tokio::sync::mpsc;

use super::batch::Problem;
use crate::format::RowReader;
use crate::Manifest;

/// A row: one canonical text (or NULL) per manifest column.
pub(crate) type Row = Vec<Option<String>>;

/// Chunks in flight between the reading thread and the loader.
const DEPTH: usize = 4;

/// Bytes per chunk of a raw file.
const BYTES: usize = 256 * 1024;

/// The rows of the local file `path` (called `label` in reasons), `chunk`
/// at a time. A malformed row ends the stream with
/// [`Problem::Refused`].
pub(crate) fn rows(
    path: PathBuf,
    manifest: Manifest,
    chunk: usize,
    label: String,
) -> mpsc::Receiver<Result<Vec<Row>, Problem>> {
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut reader = match open(&path, &manifest, &label) {
            Ok(r) => r,
            Err(p) => {
                let _ = tx.blocking_send(Err(p));
                return;
            }
        };
        let width = manifest.columns.len();
        let mut rows = Vec::with_capacity(chunk);
        let mut n: u64 = 0;
        loop {
            match reader.next_row() {
                Ok(Some(row)) => {
                    n += 1;
                    if row.len() != width {
                        let _ = tx.blocking_send(Err(Problem::Refused(format!(
                            "file {label}: row {n} has {} values, the manifest has {width} columns",
                            row.len()
                        ))));
                        return;
                    }
                    rows.push(row);
                    if rows.len() >= chunk {
                        let full = std::mem::replace(&mut rows, Vec::with_capacity(chunk));
                        if tx.blocking_send(Ok(full)).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => {
                    if !rows.is_empty() {
                        let _ = tx.blocking_send(Ok(rows));
                    }
                    return;
                }
                Err(f) => {
                    let _ = tx.blocking_send(Err(problem(f)));
                    return;
                }
            }
        }
    });
    rx
}

/// A reader's failure: the file's fault when permanent.
fn problem(f: Failure) -> Problem {
    match f.kind {
        ErrorKind::Permanent => Problem::Refused(f.describe()),
        _ => Problem::Retry(f),
    }
}

/// Opens the local copy `path` of batch file `label` for reading rows
/// (a CSV file's header is checked at once).
fn open(path: &Path, manifest: &Manifest, label: &str) -> Result<RowReader, Problem> {
    let file = std::fs::File::open(path).map_err(|e| {
        Problem::Retry(
            Failure::unavailable(format!("cannot read the local copy of {label}")).with_source(e),
        )
    })?;
    RowReader::new(
        file,
        label.to_owned(),
        manifest.format,
        manifest.gzip,
        &manifest.columns,
    )
    .map_err(problem)
}

/// Checks the header of the local copy `path` of CSV file `label`
/// against the manifest's columns, reading nothing else.
pub(crate) async fn check_header(
    path: PathBuf,
    manifest: Manifest,
    label: String,
) -> Result<(), Problem> {
    tokio::task::spawn_blocking(move || open(&path, &manifest, &label).map(drop))
        .await
        .map_err(|e| {
            Problem::Retry(Failure::transient("header check task failed").with_source(e))
        })?
}

/// The bytes of the local file `path`, gunzipped when `gzip`.
pub(crate) fn bytes(
    path: PathBuf,
    gzip: bool,
    label: String,
) -> mpsc::Receiver<Result<Vec<u8>, Problem>> {
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::task::spawn_blocking(move || {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(Problem::Retry(
                    Failure::unavailable(format!("cannot read the local copy of {label}"))
                        .with_source(e),
                )));
                return;
            }
        };
        let mut input: Box<dyn Read> = if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
                file,
            )))
        } else {
            Box::new(file)
        };
        loop {
            let mut buf = vec![0u8; BYTES];
            let mut filled = 0;
            // Fill the chunk: gzip hands out small reads.
            while filled < BYTES {
                match input.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let reason = if gzip {
                            format!("file {label} is not valid gzip: {e}")
                        } else {
                            format!("file {label} cannot be read: {e}")
                        };
                        let _ = tx.blocking_send(Err(Problem::Refused(reason)));
                        return;
                    }
                }
            }
            if filled == 0 {
                return;
            }
            buf.truncate(filled);
            if tx.blocking_send(Ok(buf)).is_err() || filled < BYTES {
                return;
            }
        }
    });
    rx
}
