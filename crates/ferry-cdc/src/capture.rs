//! The contract every capture mode implements.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::change::{Change, Op, TableId};

/// Why a capture could not read or acknowledge: its [kind](ferry_core::ErrorKind)
/// says whether trying again helps (a lost connection is
/// [unavailable](ferry_core::ErrorKind::Unavailable), retried with capped
/// backoff; a server that is not configured for the mode is
/// [permanent](ferry_core::ErrorKind::Permanent): the capture stops and
/// says what to change).
pub type CaptureError = ferry_core::Failure;

/// Where the source may resume: once the change that carries it, and every
/// change read before it, has been delivered, the capture may forget them
/// (confirm the LSN to the slot, store the binlog position, delete the
/// delivered rows of the change table). What it holds is the capture's own
/// business.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint(pub serde_json::Value);

/// What a log capture's first start does (PostgreSQL: when Ferry creates
/// the slot; MariaDB: when nothing is saved for the capture).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Read every captured table's rows first, as `r` changes, at a point
    /// the stream then starts from (the slot's consistent point, the binlog
    /// position the snapshot matches): none missed, none read twice.
    /// After a crash during the snapshot, PostgreSQL (14 on) reads the
    /// rest as a backfill beside the stream; MariaDB reads it from a newer
    /// state (see `docs/cdc.md`).
    #[default]
    Initial,
    /// No snapshot: stream the changes committed from now on.
    Never,
}

impl SnapshotMode {
    /// `Initial` when `snapshot`, else `Never`.
    pub fn from_flag(snapshot: bool) -> Self {
        if snapshot {
            SnapshotMode::Initial
        } else {
            SnapshotMode::Never
        }
    }
}

/// A change as read, with the checkpoint it completes, if any.
#[derive(Clone, Debug)]
pub struct Captured {
    /// The change.
    pub change: Change,
    /// Set on a change the source may resume after (the last change of a
    /// transaction, the last row of a snapshot chunk). Changes in between
    /// carry none: after a crash, the source reads them again from the
    /// previous checkpoint, with the same ids.
    pub checkpoint: Option<Checkpoint>,
}

/// How far a capture's snapshot (or backfill) got: updated by the capture
/// as it hands rows over, read by whoever shows progress (metrics, a
/// progress bar).
#[derive(Debug, Default)]
pub struct SnapshotProgress(Mutex<SnapshotState>);

/// A [`SnapshotProgress`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotState {
    /// Whether a snapshot or a backfill is being read.
    pub running: bool,
    /// The table being read.
    pub table: Option<TableId>,
    /// Its rows handed over by this process.
    pub table_rows: u64,
    /// The catalog's estimate of its rows, where known.
    pub table_total: Option<u64>,
    /// Rows handed over by snapshots and backfills since the process
    /// started.
    pub rows: u64,
}

impl SnapshotProgress {
    /// The state now.
    pub fn get(&self) -> SnapshotState {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Counts the reads (`r` changes) of `batch`; `running` says whether a
    /// snapshot or backfill goes on, `total` is the current table's
    /// estimated rows.
    pub fn note(&self, batch: &[Captured], running: bool, total: Option<u64>) {
        let Ok(mut s) = self.0.lock() else {
            return;
        };
        for c in batch.iter().filter(|c| c.change.op == Op::Read) {
            if s.table.as_ref() != Some(&c.change.source.table) {
                s.table = Some(c.change.source.table.clone());
                s.table_rows = 0;
            }
            s.table_rows += 1;
            s.rows += 1;
        }
        s.running = running;
        s.table_total = total;
        if !running {
            s.table = None;
            s.table_rows = 0;
        }
    }
}

/// A source of committed row changes.
///
/// # Contract
///
/// * [`read`](Capture::read) returns only committed changes, in commit
///   order (within a transaction, in the order they were made), never a
///   change of a transaction that rolled back.
/// * After a restart, the capture resumes after the last checkpoint it
///   was [acknowledged](Capture::acknowledge): changes after it are read
///   again, with the same [ids](Change::id). With the receiver
///   deduplicating by id, every committed change is applied once.
/// * Memory stays bounded: `read` returns at most `max` changes, whatever
///   the size of the transaction they belong to.
pub trait Capture: Send {
    /// Debezium's `source.connector` for this mode's database
    /// (`postgresql`, `mysql`, `sqlite`).
    fn connector(&self) -> &'static str;

    /// The source database's name (`source.db`).
    fn database(&self) -> &str;

    /// Reads up to `max` changes, waiting up to `wait` when there are none
    /// yet (returning none then).
    fn read(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Captured>, CaptureError>> + Send;

    /// Where the capture reports its snapshot's progress, if it snapshots.
    fn progress(&self) -> Option<Arc<SnapshotProgress>> {
        None
    }

    /// Every change read up to the one that carried `checkpoint` has been
    /// delivered (or dead-lettered): the source may forget them.
    fn acknowledge(
        &mut self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), CaptureError>> + Send;
}
