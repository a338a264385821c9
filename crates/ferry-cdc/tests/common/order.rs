//! Checks of a row-keyed stream as a receiver that deduplicates by id
//! sees it: every row's states in order, reads never bringing back an
//! older state or a deleted row.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};

use ferry_cdc::{Captured, Op};
use serde_json::Value;

/// The integer `id` key of a change.
pub fn id(c: &Captured) -> i64 {
    c.change.key["id"].as_i64().expect("an integer id")
}

/// The changes of `batches`, in order, each id once (as a receiver that
/// deduplicates by id applies them).
pub fn received_once<const N: usize>(capture: &str, batches: [Vec<Captured>; N]) -> Vec<Captured> {
    let mut seen = HashSet::new();
    batches
        .into_iter()
        .flatten()
        .filter(|c| seen.insert(c.change.id(capture)))
        .collect()
}

/// Checks each row's events, whose `n` column only ever grows: states
/// never go back and a read never brings back a deleted row. Returns the
/// reads per row.
pub fn assert_rows_in_order(changes: &[Captured]) -> HashMap<i64, usize> {
    let mut last_n: HashMap<i64, i64> = HashMap::new();
    let mut deleted: HashMap<i64, bool> = HashMap::new();
    let mut reads: HashMap<i64, usize> = HashMap::new();
    for c in changes {
        let row = id(c);
        match c.change.op {
            Op::Delete => {
                deleted.insert(row, true);
            }
            op => {
                if op == Op::Read {
                    *reads.entry(row).or_default() += 1;
                    assert!(
                        !deleted.get(&row).copied().unwrap_or(false),
                        "row {row} read back after its delete"
                    );
                } else {
                    deleted.insert(row, false);
                }
                let n = c.change.after.as_ref().unwrap()["n"].as_i64().unwrap();
                let before = last_n.insert(row, n).unwrap_or(i64::MIN);
                assert!(
                    n >= before,
                    "row {row}: {op:?} with n = {n} after a state with n = {before}"
                );
            }
        }
    }
    reads
}

/// Applies the events in order: the rows a receiver ends with.
pub fn state_of(changes: &[Captured]) -> BTreeMap<i64, Value> {
    let mut state = BTreeMap::new();
    for c in changes {
        match c.change.op {
            Op::Delete => {
                state.remove(&id(c));
            }
            _ => {
                state.insert(id(c), Value::Object(c.change.after.clone().unwrap()));
            }
        }
    }
    state
}
