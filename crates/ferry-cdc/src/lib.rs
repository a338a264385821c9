//! Change data capture: every committed INSERT, UPDATE and DELETE of the
//! captured tables, row by row, in commit order, as one [change
//! event](Change), delivered to any Ferry sink or applied to another
//! database.
//!
//! # Modes
//!
//! * **Log, PostgreSQL**: logical replication (`pgoutput`) from a slot.
//! * **Log, MariaDB**: the row-based binary log.
//! * **Triggers** (the embedded default, and the only mode on SQLite):
//!   triggers write each change to a change table in the same
//!   transaction; a reader ships and prunes it.
//! * **Pull**: a keyset cursor on `(updated_at, primary key)`.
//!
//! Each mode implements [`Capture`]; [`encode`] turns a change into a
//! message (Ferry's compact body or Debezium's).
//!
//! # Guarantee
//!
//! At least once, in commit order per row: a change is acknowledged to
//! its source (slot, binlog position, change table) only after the sink
//! accepted it and every change before it. After a crash the source gives
//! the unacknowledged changes again with the same ids, so a receiver that
//! deduplicates by message id applies each committed change once.

pub mod apply;
pub mod backfill;
pub mod capture;
pub mod change;
pub mod encode;
pub mod filter;
pub mod json;
pub mod mariadb;
pub mod offsets;
pub mod postgres;
pub mod pull;
pub mod runner;
pub mod triggers;

pub use apply::{
    apply, checkpoint_order, ApplyConfig, ApplyError, CheckpointOrder, ColumnMapping, RefusedChange,
};
pub use capture::{
    Capture, CaptureError, Captured, Checkpoint, SnapshotMode, SnapshotProgress, SnapshotState,
};
pub use change::{Change, Op, Position, Row, Source, TableId, TxOrder};
pub use encode::{Encoder, Format};
pub use filter::Filter;
pub use pull::{PullCapture, PullConfig};
pub use runner::{ship, OnFailure, ShipConfig, ShipError, ShipStats};
pub use triggers::{TriggerCapture, TriggerConfig};
