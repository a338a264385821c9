//! What the initial snapshot keeps between runs, and the checkpoints its
//! chunks carry.
//!
//! The slot keeps the stream's position; the snapshot's lives in the
//! capture's row of `ferry_cdc_offsets` ([`Offsets`](crate::offsets::Offsets),
//! in the captured database), as one [`Saved`] state:
//!
//! * `creating`: written before Ferry creates the slot, so that a crash
//!   between the creation and the first progress still finds a snapshot to
//!   read (the slot exists, its exported snapshot is gone: read afresh);
//! * `reading`: the [`Progress`], moved on as chunks are acknowledged;
//! * `done`: every row was delivered; a restart only streams.
//!
//! Each state names its slot: a row left by a slot since dropped and made
//! again by hand is not taken for the new slot's.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::capture::Checkpoint;
use crate::change::TableId;

/// Where a snapshot goes on from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The slot's consistent point, as PostgreSQL writes an LSN: the label
    /// of every row's position (hence of its id), the same after a
    /// restart.
    pub lsn: String,
    /// The table to go on with (tables are read in name order, those before
    /// it are read); `None`: from the first.
    pub table: Option<TableId>,
    /// The key of the last row read from `table` (each column as the text
    /// PostgreSQL prints, in the key's index order); `None`: from its
    /// first row.
    pub after: Option<Vec<String>>,
}

/// The snapshot's state as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "snapshot", rename_all = "snake_case")]
pub enum Saved {
    /// The slot is being created; nothing read yet.
    Creating {
        /// The slot.
        slot: String,
    },
    /// Being read.
    Reading {
        /// The slot.
        slot: String,
        /// Where to go on.
        #[serde(flatten)]
        progress: Progress,
    },
    /// Read and delivered.
    Done {
        /// The slot.
        slot: String,
        /// The consistent point it was read at.
        lsn: String,
    },
}

impl Saved {
    /// The slot the state belongs to.
    pub fn slot(&self) -> &str {
        match self {
            Saved::Creating { slot } | Saved::Reading { slot, .. } | Saved::Done { slot, .. } => {
                slot
            }
        }
    }

    /// As the offsets row holds it.
    pub fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint(serde_json::to_value(self).unwrap_or_default())
    }

    /// From the offsets row; `None` when the row is not a snapshot state
    /// (written by something else).
    pub fn from_checkpoint(checkpoint: &Checkpoint) -> Option<Self> {
        serde_json::from_value(checkpoint.0.clone()).ok()
    }
}

/// The checkpoint a snapshot chunk carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkCheckpoint {
    /// Where a restart goes on once this chunk is delivered.
    pub progress: Progress,
    /// Nothing is left to read after this chunk.
    pub done: bool,
    /// The chunk's number among those this capture handed out (1 on):
    /// acknowledgements never go back, and one not handed out is refused.
    pub chunk: u64,
}

impl ChunkCheckpoint {
    /// As a [`Checkpoint`]: `{"snapshot": {…progress}, "done": …, "chunk": n}`.
    pub fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint(json!({
            "snapshot": self.progress,
            "done": self.done,
            "chunk": self.chunk,
        }))
    }

    /// A snapshot chunk's checkpoint, or `None` for any other.
    pub fn parse(checkpoint: &Checkpoint) -> Option<Self> {
        let value = &checkpoint.0;
        Some(Self {
            progress: serde_json::from_value(value.get("snapshot")?.clone()).ok()?,
            done: value.get("done")?.as_bool()?,
            chunk: value.get("chunk")?.as_u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> Progress {
        Progress {
            lsn: "0/16B3748".into(),
            table: Some(TableId::new("public", "orders")),
            after: Some(vec!["42".into(), "it's".into()]),
        }
    }

    #[test]
    fn saved_states_round_trip_and_name_their_slot() {
        for saved in [
            Saved::Creating {
                slot: "ferry_a".into(),
            },
            Saved::Reading {
                slot: "ferry_a".into(),
                progress: progress(),
            },
            Saved::Done {
                slot: "ferry_a".into(),
                lsn: "0/1".into(),
            },
        ] {
            let checkpoint = saved.to_checkpoint();
            assert_eq!(Saved::from_checkpoint(&checkpoint), Some(saved.clone()));
            assert_eq!(saved.slot(), "ferry_a");
        }
        assert_eq!(
            Saved::Creating {
                slot: "ferry_a".into()
            }
            .to_checkpoint()
            .0,
            json!({"snapshot": "creating", "slot": "ferry_a"})
        );
        assert_eq!(Saved::from_checkpoint(&Checkpoint(json!({"lsn": 5}))), None);
    }

    #[test]
    fn chunk_checkpoints_are_told_from_stream_ones() {
        let c = ChunkCheckpoint {
            progress: progress(),
            done: false,
            chunk: 3,
        };
        assert_eq!(ChunkCheckpoint::parse(&c.to_checkpoint()), Some(c));
        assert_eq!(ChunkCheckpoint::parse(&Checkpoint(json!({"lsn": 7}))), None);
    }
}
