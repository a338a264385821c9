//! Which offsets of a partition a consumer may commit.
//!
//! Kafka commits a position: "everything before this offset is handled".
//! Messages are settled in any order, so the position may only move up to
//! the lowest offset handed out and not yet acknowledged.

use std::collections::{BTreeSet, HashMap};

/// The handed-out, unacknowledged offsets of the partitions a consumer
/// owns now. A partition's tracking starts afresh (a new epoch) each time it
/// is assigned, so that a settle from before a rebalance is recognised.
#[derive(Debug, Default)]
pub(crate) struct Partitions {
    by_partition: HashMap<i32, Partition>,
    epochs: u64,
}

#[derive(Debug)]
struct Partition {
    epoch: u64,
    /// Handed out and neither acknowledged nor replaced by a redelivery.
    pending: BTreeSet<i64>,
    /// The offset after the last message handed out: where the consumer
    /// reads next. A seek back lowers it.
    next: i64,
    /// The offset after the highest message ever handed out.
    high: i64,
    /// The last position committed: at first where reading started, which
    /// is the group's committed position (or the reset position of a group
    /// that has none).
    committed: i64,
}

/// Where a handed-out message sits: its partition, offset and epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) epoch: u64,
}

impl Partitions {
    /// Forgets `partition`: it was revoked, or assigned anew.
    pub(crate) fn reset(&mut self, partition: i32) {
        self.by_partition.remove(&partition);
    }

    /// Records a message handed out to the application.
    pub(crate) fn handed_out(&mut self, partition: i32, offset: i64) -> Position {
        let epochs = &mut self.epochs;
        let state = self.by_partition.entry(partition).or_insert_with(|| {
            *epochs += 1;
            Partition {
                epoch: *epochs,
                pending: BTreeSet::new(),
                next: offset,
                high: offset,
                committed: offset,
            }
        });
        state.pending.insert(offset);
        state.next = offset + 1;
        state.high = state.high.max(offset + 1);
        Position {
            partition,
            offset,
            epoch: state.epoch,
        }
    }

    /// Records the acknowledgement of `position`. `Ok(Some(offset))` is a
    /// new position to commit, `Ok(None)` means the committed one already
    /// covers it, and `Err(())` that the partition is no longer this
    /// consumer's (or was assigned anew) since the message was handed out.
    pub(crate) fn acked(&mut self, position: Position) -> Result<Option<i64>, ()> {
        let state = self.current(position)?;
        state.pending.remove(&position.offset);
        let target = state.pending.first().copied().unwrap_or(state.high);
        Ok((target > state.committed).then_some(target))
    }

    /// The position to commit now for `position`'s partition, if the
    /// committed one does not cover every acknowledgement so far: several
    /// acknowledgements that came in while a commit was in flight go out
    /// in one commit. `Err(())` as for [`Partitions::acked`].
    pub(crate) fn commit_target(&mut self, position: Position) -> Result<Option<i64>, ()> {
        let state = self.current(position)?;
        let target = state.pending.first().copied().unwrap_or(state.high);
        Ok((target > state.committed).then_some(target))
    }

    /// Records that `offset` of the epoch of `position` was committed.
    pub(crate) fn committed(&mut self, position: Position, offset: i64) {
        if let Ok(state) = self.current(position) {
            state.committed = state.committed.max(offset);
        }
    }

    /// Whether the consumer must seek back to redeliver `position`: it did
    /// when the partition is still this consumer's and has read past the
    /// offset. The read position is moved back as if the seek were done.
    pub(crate) fn rewind(&mut self, position: Position) -> bool {
        match self.current(position) {
            Ok(state) if position.offset < state.next => {
                state.next = position.offset;
                true
            }
            _ => false,
        }
    }

    fn current(&mut self, position: Position) -> Result<&mut Partition, ()> {
        self.by_partition
            .get_mut(&position.partition)
            .filter(|state| state.epoch == position.epoch)
            .ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut p = Partitions::default();
        let m: Vec<Position> = (10..15).map(|o| p.handed_out(0, o)).collect();
        // 12 and 13 first: 10 is still pending, nothing to commit.
        assert_eq!(p.acked(m[2]), Ok(None));
        assert_eq!(p.acked(m[3]), Ok(None));
        assert_eq!(p.acked(m[0]), Ok(Some(11)));
        p.committed(m[0], 11);
        assert_eq!(p.acked(m[1]), Ok(Some(14)));
        p.committed(m[1], 14);
        assert_eq!(p.acked(m[4]), Ok(Some(15)));
    }

    #[test]
    fn a_nacked_offset_holds_the_commit_back_until_redelivered_and_acked() {
        let mut p = Partitions::default();
        let m: Vec<Position> = (0..3).map(|o| p.handed_out(0, o)).collect();
        assert!(p.rewind(m[1]));
        // Already rewound to 1: nacking 2 needs no second seek.
        assert!(!p.rewind(m[2]));
        assert_eq!(p.acked(m[0]), Ok(Some(1)));
        p.committed(m[0], 1);
        let again = p.handed_out(0, 1);
        assert_eq!(again.epoch, m[1].epoch);
        let two = p.handed_out(0, 2);
        assert_eq!(p.acked(two), Ok(None));
        assert_eq!(p.acked(again), Ok(Some(3)));
    }

    #[test]
    fn settles_from_before_a_rebalance_are_refused() {
        let mut p = Partitions::default();
        let old = p.handed_out(3, 7);
        p.reset(3);
        assert_eq!(p.acked(old), Err(()));
        assert!(!p.rewind(old));
        let new = p.handed_out(3, 7);
        assert_ne!(new.epoch, old.epoch);
        assert_eq!(p.acked(old), Err(()));
        assert_eq!(p.acked(new), Ok(Some(8)));
    }
}
