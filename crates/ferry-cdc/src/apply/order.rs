//! The order of checkpoints, so that a restarted apply can tell which
//! replayed transactions its target already holds.

use std::cmp::Ordering;

use crate::capture::Checkpoint;

/// Where a [`Checkpoint`] sits in its capture's stream, for comparing two
/// checkpoints of one capture.
///
/// Only checkpoints of the same kind compare. Two chunks of one initial
/// snapshot (PostgreSQL's, MariaDB's) do not compare either: they hold the
/// same position, and their order is the table and key the snapshot pages
/// by, which a chunk read again after a restart (from a fresh snapshot)
/// does not keep. A snapshot chunk is before every streamed transaction
/// from its position on.
#[derive(Clone, Debug)]
pub enum CheckpointOrder {
    /// Trigger mode: the id of the change table's row (`{"id": n}`).
    ChangeId(i64),
    /// PostgreSQL log mode: the end LSN of the commit record (`{"lsn": n}`),
    /// or a chunk of the initial snapshot read at the slot's consistent
    /// point (`{"snapshot": {"lsn": "0/16B3748", …}, "chunk": n, …}`).
    Lsn {
        /// The LSN.
        lsn: u64,
        /// A snapshot chunk.
        snapshot: bool,
    },
    /// MariaDB binlog mode: the file's numeric suffix and the offset in
    /// it (`{"file": "mariadb-bin.000004", "pos": 1234, …}`).
    Binlog {
        /// The file's name before its suffix (`mariadb-bin`): files of
        /// another base name do not compare.
        base: String,
        /// The file's numeric suffix (`000004` is 4).
        file: u64,
        /// The offset in the file.
        pos: u64,
        /// A chunk of the initial snapshot (`snapshot` set), which reads
        /// the tables as they were at `file`/`pos`.
        snapshot: bool,
    },
}

impl CheckpointOrder {
    /// Whether `self` and `other` are of the same capture mode.
    pub fn same_kind(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

impl PartialEq for CheckpointOrder {
    fn eq(&self, other: &Self) -> bool {
        self.partial_cmp(other) == Some(Ordering::Equal)
    }
}

impl PartialOrd for CheckpointOrder {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        use CheckpointOrder::*;
        match (self, other) {
            (ChangeId(a), ChangeId(b)) => Some(a.cmp(b)),
            (
                Lsn {
                    lsn: a,
                    snapshot: s1,
                },
                Lsn {
                    lsn: b,
                    snapshot: s2,
                },
            ) => then_snapshot(a.cmp(b), *s1, *s2),
            (
                Binlog {
                    base: b1,
                    file: f1,
                    pos: p1,
                    snapshot: s1,
                },
                Binlog {
                    base: b2,
                    file: f2,
                    pos: p2,
                    snapshot: s2,
                },
            ) => {
                if b1 != b2 {
                    return None;
                }
                then_snapshot((f1, p1).cmp(&(f2, p2)), *s1, *s2)
            }
            _ => None,
        }
    }
}

/// At the same position, a snapshot chunk comes before the stream, and two
/// chunks do not compare.
fn then_snapshot(position: Ordering, a: bool, b: bool) -> Option<Ordering> {
    match (position, a, b) {
        (Ordering::Equal, true, true) => None,
        (Ordering::Equal, true, false) => Some(Ordering::Less),
        (Ordering::Equal, false, true) => Some(Ordering::Greater),
        (o, _, _) => Some(o),
    }
}

/// The order of `checkpoint` if it is one of the shapes Ferry's captures
/// write: trigger mode's `{"id": n}`, PostgreSQL log mode's `{"lsn": n, …}`
/// (its snapshot chunks' `{"snapshot": {"lsn": "0/16B3748", …}, …}`) and
/// MariaDB's `{"file": …, "pos": …, …}` (the file named with a numeric
/// suffix, as the server names its binary logs; with `snapshot` for a
/// snapshot chunk). `None` for anything else (pull mode's state).
pub fn checkpoint_order(checkpoint: &Checkpoint) -> Option<CheckpointOrder> {
    let v = &checkpoint.0;
    if let Some(id) = v.get("id").and_then(serde_json::Value::as_i64) {
        return Some(CheckpointOrder::ChangeId(id));
    }
    if let Some(lsn) = v.get("lsn").and_then(serde_json::Value::as_u64) {
        return Some(CheckpointOrder::Lsn {
            lsn,
            snapshot: false,
        });
    }
    if let Some(lsn) = v
        .get("snapshot")
        .and_then(|s| s.get("lsn"))
        .and_then(serde_json::Value::as_str)
    {
        return Some(CheckpointOrder::Lsn {
            lsn: parse_lsn(lsn)?,
            snapshot: true,
        });
    }
    let name = v.get("file")?.as_str()?;
    let pos = v.get("pos")?.as_u64()?;
    let (base, suffix) = name.rsplit_once('.')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(CheckpointOrder::Binlog {
        base: base.to_owned(),
        file: suffix.parse().ok()?,
        pos,
        snapshot: v.get("snapshot").is_some_and(|s| !s.is_null()),
    })
}

/// An LSN as PostgreSQL writes it (`16/B374D848`).
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn order(v: serde_json::Value) -> CheckpointOrder {
        checkpoint_order(&Checkpoint(v)).unwrap()
    }

    #[test]
    fn trigger_ids_and_lsns_compare_as_numbers() {
        assert!(order(json!({"id": 9})) < order(json!({"id": 10})));
        assert!(order(json!({"id": 10})) == order(json!({"id": 10})));
        assert!(order(json!({"lsn": 5000, "time": "x"})) > order(json!({"lsn": 4999})));
        // Kinds do not mix.
        assert_eq!(
            order(json!({"id": 1})).partial_cmp(&order(json!({"lsn": 1}))),
            None
        );
        assert!(!order(json!({"id": 1})).same_kind(&order(json!({"lsn": 1}))));
    }

    #[test]
    fn binlog_positions_compare_by_file_number_then_offset() {
        let at = |file: &str, pos: u64| order(json!({"file": file, "pos": pos, "gtid": "0-1-5"}));
        // The suffix as a number: .000010 after .000009, whatever its width.
        assert!(at("mariadb-bin.000009", 90_000) < at("mariadb-bin.000010", 4));
        assert!(at("mariadb-bin.999999", 4) < at("mariadb-bin.1000000", 4));
        assert!(at("mariadb-bin.000004", 330) < at("mariadb-bin.000004", 1234));
        assert!(at("mariadb-bin.000004", 330) == at("mariadb-bin.000004", 330));
        assert_eq!(
            at("a.000001", 4).partial_cmp(&at("b.000001", 4)),
            None,
            "another server's files"
        );
        assert!(checkpoint_order(&Checkpoint(json!({"file": "nosuffix", "pos": 4}))).is_none());
        assert!(checkpoint_order(&Checkpoint(json!({"file": "a.0001x", "pos": 4}))).is_none());
    }

    #[test]
    fn snapshot_chunks_precede_the_stream_and_do_not_compare_among_themselves() {
        let chunk = |key: i64| {
            order(json!({"file": "mariadb-bin.000004", "pos": 330,
                "snapshot": {"table": {"schema": "shop", "name": "orders"}, "after": [{"int": key}]}}))
        };
        let streamed = |pos: u64| order(json!({"file": "mariadb-bin.000004", "pos": pos}));
        assert_eq!(chunk(1).partial_cmp(&chunk(2)), None);
        assert!(chunk(1) != chunk(1));
        assert!(chunk(1000) < streamed(331));
        assert!(chunk(1000) < streamed(330));
        assert!(streamed(329) < chunk(1));
    }

    #[test]
    fn postgres_snapshot_chunks_precede_the_stream_from_their_consistent_point() {
        let chunk = |n: u64| {
            order(
                json!({"snapshot": {"lsn": "16/B374D848", "table": {"schema": "public", "name": "t"},
                "after": ["7"]}, "done": false, "chunk": n}),
            )
        };
        let streamed = |lsn: u64| order(json!({ "lsn": lsn }));
        assert_eq!(chunk(1).partial_cmp(&chunk(2)), None);
        assert!(chunk(9) < streamed(0x16_B374_D849));
        assert!(chunk(9) < streamed(0x16_B374_D848));
        assert!(streamed(0x16_B374_D847) < chunk(1));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("16"), None);
    }

    #[test]
    fn other_shapes_have_no_order() {
        assert!(checkpoint_order(&Checkpoint(json!({"mode": "pull", "tables": {}}))).is_none());
        assert!(checkpoint_order(&Checkpoint(json!({"offset": 3}))).is_none());
        assert!(checkpoint_order(&Checkpoint(json!("x"))).is_none());
        assert!(checkpoint_order(&Checkpoint(json!({"id": "7"}))).is_none());
    }
}
