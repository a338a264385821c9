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

/// How a handed-out offset follows the partition's previous one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sequence {
    /// The first message of the partition since it was assigned.
    First,
    /// The offset after the previous one (or a redelivery after a seek back).
    Next,
    /// Offsets `from..offset` were never handed out: legitimate where the
    /// log has gaps (transaction markers, compaction), otherwise a sign that
    /// the broker or client skipped records.
    Skipped { from: i64 },
}

/// A position to commit: `offset` for `partition`, chosen in `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Commit {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) epoch: u64,
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

    /// The positions whose acknowledgements are not committed yet, for
    /// `only` these partitions (every partition with `None`).
    pub(crate) fn uncommitted(&self, only: Option<&[i32]>) -> Vec<Commit> {
        self.by_partition
            .iter()
            .filter(|(partition, _)| only.is_none_or(|only| only.contains(partition)))
            .filter_map(|(&partition, state)| {
                let target = state.target();
                (target > state.committed).then_some(Commit {
                    partition,
                    offset: target,
                    epoch: state.epoch,
                })
            })
            .collect()
    }

    /// The consumer closes: what is left to commit, after which every
    /// partition is forgotten (later settles are refused).
    pub(crate) fn close(&mut self) -> Vec<Commit> {
        let left = self.uncommitted(None);
        self.by_partition.clear();
        left
    }

    /// Records a message handed out to the application, and says how its
    /// offset follows the one read before it.
    pub(crate) fn handed_out(&mut self, partition: i32, offset: i64) -> (Position, Sequence) {
        let epochs = &mut self.epochs;
        let mut sequence = Sequence::Next;
        let state = self.by_partition.entry(partition).or_insert_with(|| {
            *epochs += 1;
            sequence = Sequence::First;
            Partition {
                epoch: *epochs,
                pending: BTreeSet::new(),
                next: offset,
                high: offset,
                committed: offset,
            }
        });
        if offset > state.next {
            sequence = Sequence::Skipped { from: state.next };
        }
        state.pending.insert(offset);
        state.next = offset + 1;
        state.high = state.high.max(offset + 1);
        let position = Position {
            partition,
            offset,
            epoch: state.epoch,
        };
        (position, sequence)
    }

    /// Records the acknowledgement of `position`. `Ok(Some(offset))` is a
    /// new position to commit, `Ok(None)` means the committed one already
    /// covers it, and `Err(())` that the partition is no longer this
    /// consumer's (or was assigned anew) since the message was handed out.
    pub(crate) fn acked(&mut self, position: Position) -> Result<Option<i64>, ()> {
        let state = self.current(position)?;
        state.pending.remove(&position.offset);
        let target = state.target();
        Ok((target > state.committed).then_some(target))
    }

    /// The position to commit now for an acknowledgement of `position` that
    /// needs `needed` committed: `Ok(None)` when a commit made since it was
    /// [recorded](Partitions::acked) covers it already, else everything
    /// acknowledged so far, so that the acknowledgements that came in while
    /// a commit was in flight go out in one commit. `Err(())` as for
    /// [`Partitions::acked`].
    pub(crate) fn commit_target(
        &mut self,
        position: Position,
        needed: i64,
    ) -> Result<Option<i64>, ()> {
        let state = self.current(position)?;
        if state.committed >= needed {
            return Ok(None);
        }
        let target = state.target();
        Ok((target > state.committed).then_some(target))
    }

    /// Records that `commit` was committed.
    pub(crate) fn committed(&mut self, commit: Commit) {
        if let Some(state) = self
            .by_partition
            .get_mut(&commit.partition)
            .filter(|state| state.epoch == commit.epoch)
        {
            state.committed = state.committed.max(commit.offset);
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

impl Partition {
    /// Where the group's position may move: the lowest offset handed out
    /// and not acknowledged, or past the highest one handed out.
    fn target(&self) -> i64 {
        self.pending.first().copied().unwrap_or(self.high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(position: Position, offset: i64) -> Commit {
        Commit {
            partition: position.partition,
            offset,
            epoch: position.epoch,
        }
    }

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut p = Partitions::default();
        let m: Vec<Position> = (10..15).map(|o| p.handed_out(0, o).0).collect();
        // 12 and 13 first: 10 is still pending, nothing to commit.
        assert_eq!(p.acked(m[2]), Ok(None));
        assert_eq!(p.acked(m[3]), Ok(None));
        assert_eq!(p.acked(m[0]), Ok(Some(11)));
        p.committed(commit(m[0], 11));
        assert_eq!(p.acked(m[1]), Ok(Some(14)));
        p.committed(commit(m[1], 14));
        assert_eq!(p.acked(m[4]), Ok(Some(15)));
    }

    #[test]
    fn a_nacked_offset_holds_the_commit_back_until_redelivered_and_acked() {
        let mut p = Partitions::default();
        let m: Vec<Position> = (0..3).map(|o| p.handed_out(0, o).0).collect();
        assert!(p.rewind(m[1]));
        // Already rewound to 1: nacking 2 needs no second seek.
        assert!(!p.rewind(m[2]));
        assert_eq!(p.acked(m[0]), Ok(Some(1)));
        p.committed(commit(m[0], 1));
        let again = p.handed_out(0, 1).0;
        assert_eq!(again.epoch, m[1].epoch);
        let two = p.handed_out(0, 2).0;
        assert_eq!(p.acked(two), Ok(None));
        assert_eq!(p.acked(again), Ok(Some(3)));
    }

    #[test]
    fn settles_from_before_a_rebalance_are_refused() {
        let mut p = Partitions::default();
        let old = p.handed_out(3, 7).0;
        p.reset(3);
        assert_eq!(p.acked(old), Err(()));
        assert!(!p.rewind(old));
        let new = p.handed_out(3, 7).0;
        assert_ne!(new.epoch, old.epoch);
        assert_eq!(p.acked(old), Err(()));
        assert_eq!(p.acked(new), Ok(Some(8)));
    }

    #[test]
    fn one_commit_covers_the_acknowledgements_recorded_before_it() {
        let mut p = Partitions::default();
        let m: Vec<Position> = (0..4).map(|o| p.handed_out(0, o).0).collect();
        let needs: Vec<i64> = m.iter().map(|&m| p.acked(m).unwrap().unwrap()).collect();
        assert_eq!(needs, vec![1, 2, 3, 4]);
        // The first to get the commit lock commits all four…
        assert_eq!(p.commit_target(m[0], needs[0]), Ok(Some(4)));
        p.committed(commit(m[0], 4));
        // …and the other three need no commit of their own.
        for (&m, &need) in m.iter().zip(&needs).skip(1) {
            assert_eq!(p.commit_target(m, need), Ok(None));
        }
        // An ack recorded after that commit needs the next one.
        let late = p.handed_out(0, 4).0;
        let need = p.acked(late).unwrap().unwrap();
        assert_eq!(p.commit_target(late, need), Ok(Some(5)));
    }

    #[test]
    fn uncommitted_positions_and_close() {
        let mut p = Partitions::default();
        let a: Vec<Position> = (5..8).map(|o| p.handed_out(0, o).0).collect();
        let b = p.handed_out(1, 20).0;
        assert!(p.uncommitted(None).is_empty());
        p.acked(a[0]).unwrap();
        p.acked(a[2]).unwrap();
        p.acked(b).unwrap();
        let mut left = p.uncommitted(None);
        left.sort_by_key(|c| c.partition);
        // Partition 0 only up to 6: offset 6 is still out.
        assert_eq!(left, vec![commit(a[0], 6), commit(b, 21)]);
        assert_eq!(p.uncommitted(Some(&[1])), vec![commit(b, 21)]);
        p.committed(commit(b, 21));
        assert_eq!(p.uncommitted(Some(&[1])), vec![]);
        // A commit from an earlier epoch of the partition is not recorded.
        p.reset(0);
        let again = p.handed_out(0, 6).0;
        p.committed(commit(a[0], 7));
        p.acked(again).unwrap();
        assert_eq!(p.close(), vec![commit(again, 7)]);
        assert_eq!(p.acked(again), Err(()));
        assert!(p.uncommitted(None).is_empty());
    }

    #[test]
    fn says_how_each_offset_follows_the_last() {
        let mut p = Partitions::default();
        let (first, sequence) = p.handed_out(1, 40);
        assert_eq!(sequence, Sequence::First);
        assert_eq!(p.handed_out(1, 41).1, Sequence::Next);
        assert_eq!(p.handed_out(1, 45).1, Sequence::Skipped { from: 42 });
        // A seek back and the redelivery that follows it are in sequence.
        assert!(p.rewind(first));
        assert_eq!(p.handed_out(1, 40).1, Sequence::Next);
        assert_eq!(p.handed_out(1, 41).1, Sequence::Next);
    }
}
