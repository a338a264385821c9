//! Ferry's batch hand-off.
//!
//! The sender ([`export`]) runs a query for a window of time (or past a
//! watermark), writes the rows to CSV or JSON Lines files (optionally
//! gzip), puts them at a [`Location`] — a folder, SFTP or S3 — each under a
//! temporary name renamed when complete, and writes the batch's
//! [`Manifest`] last. The receiver ([`import`]) takes a batch only when its
//! manifest is there, checks every file against it, loads the rows into a
//! table in one transaction together with a ledger row that makes the
//! load happen once, and moves the batch to `archive/` (or to `error/`
//! with the reason).

pub mod export;
pub mod format;
pub mod import;
pub mod location;
pub mod manifest;
pub mod schedule;

pub use location::{Entry, Location};
pub use manifest::{Column, FileEntry, FileFormat, Manifest, ValueKind, Window};
