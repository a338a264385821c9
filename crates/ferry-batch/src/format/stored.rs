//! The bytes as stored: optional gzip, counted and hashed.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

use super::RowWriter;
use crate::{Column, FileFormat};

/// Counts and SHA-256-hashes every byte written through it.
pub struct StoredWriter<W: Write> {
    inner: W,
    bytes: u64,
    sha256: Sha256,
}

impl<W: Write> StoredWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            bytes: 0,
            sha256: Sha256::new(),
        }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Flushes, and returns the inner writer, the byte count and the
    /// SHA-256 in lower-case hex.
    pub fn finish(mut self) -> io::Result<(W, u64, String)> {
        self.inner.flush()?;
        Ok((self.inner, self.bytes, hex::encode(self.sha256.finalize())))
    }
}

impl<W: Write> Write for StoredWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha256.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Plain bytes or gzip (level 1: fast, and the same bytes for the same
/// input on every run, the header carrying no time or name).
pub enum Compressed<W: Write> {
    /// As is.
    Plain(W),
    /// Gzip-compressed.
    Gzip(GzEncoder<W>),
}

impl<W: Write> Compressed<W> {
    /// Gzip when `gzip`, else plain.
    pub fn new(inner: W, gzip: bool) -> Self {
        if gzip {
            Compressed::Gzip(GzEncoder::new(inner, flate2::Compression::fast()))
        } else {
            Compressed::Plain(inner)
        }
    }

    /// Ends the stream (gzip's trailer) and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressed::Plain(w) => Ok(w),
            Compressed::Gzip(g) => g.finish(),
        }
    }
}

impl<W: Write> Write for Compressed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressed::Plain(w) => w.write(buf),
            Compressed::Gzip(g) => g.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Compressed::Plain(w) => w.write_all(buf),
            Compressed::Gzip(g) => g.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressed::Plain(w) => w.flush(),
            Compressed::Gzip(g) => g.flush(),
        }
    }
}

/// What a finished data file holds: its manifest entry's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartSummary {
    /// Data rows (CSV: not counting the header).
    pub rows: u64,
    /// Size in bytes as stored.
    pub bytes: u64,
    /// SHA-256 of the bytes as stored, lower-case hex.
    pub sha256: String,
}

/// What a [`PartWriter`]'s rows are written to.
pub type PartFile = Compressed<StoredWriter<File>>;

/// A batch data file being written: rows, optional gzip, counted and
/// hashed, into a file.
pub struct PartWriter {
    rows: RowWriter<PartFile>,
}

impl PartWriter {
    /// Creates (or truncates) the file at `path` and writes CSV's header.
    pub fn create(
        path: &Path,
        format: FileFormat,
        gzip: bool,
        columns: &[Column],
    ) -> io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self {
            rows: RowWriter::new(
                format,
                columns,
                Compressed::new(StoredWriter::new(file), gzip),
            ),
        })
    }

    /// The rows being written.
    pub fn rows(&mut self) -> &mut RowWriter<PartFile> {
        &mut self.rows
    }

    /// Bytes stored so far (not counting what is still buffered).
    pub fn stored_bytes(&self) -> u64 {
        match self.rows.get_ref() {
            Compressed::Plain(w) => w.bytes(),
            Compressed::Gzip(g) => g.get_ref().bytes(),
        }
    }

    /// Writes out everything, syncs the file to disk and says what it holds.
    pub fn finish(self) -> io::Result<PartSummary> {
        let rows = self.rows.rows();
        let stored = self.rows.finish()?.finish()?;
        let (file, bytes, sha256) = stored.finish()?;
        file.sync_all()?;
        Ok(PartSummary {
            rows,
            bytes,
            sha256,
        })
    }
}
