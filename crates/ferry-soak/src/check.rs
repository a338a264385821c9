//! The end-of-run checker: from what the databases and receivers hold,
//! whether every committed message was applied exactly once, nothing from
//! a rolled-back transaction appears, per-key order held where the path
//! promises it, dead letters are exactly the poison messages, and nothing
//! is left pending. A pure function over [`Observed`], so it is unit
//! tested on doctored data sets.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use uuid::Uuid;

/// A message a producer committed (a row of its business table).
#[derive(Clone, Debug)]
pub struct Produced {
    /// Message id.
    pub id: Uuid,
    /// Ordering key.
    pub key: String,
    /// Position in its key, increasing in production order.
    pub n: i64,
    /// The consumer refuses it for good: it must be dead-lettered.
    pub poison: bool,
}

/// An effect row: one application of a message by its consumer.
#[derive(Clone, Debug)]
pub struct Effect {
    /// Message id.
    pub id: Uuid,
    /// Ordering key.
    pub key: String,
    /// Position in its key.
    pub n: i64,
}

/// Everything observed on one path (producer → relay → sink → consumer).
#[derive(Clone, Debug, Default)]
pub struct PathData {
    /// Its name.
    pub name: String,
    /// Whether the path promises per-key order of application.
    pub ordered: bool,
    /// Committed messages, from the producer's business table.
    pub committed: Vec<Produced>,
    /// Effect rows, in the order they were applied.
    pub effects: Vec<Effect>,
    /// Ids dead-lettered on this path (outbox `dead` rows or consumer dead
    /// letters).
    pub dead: Vec<Uuid>,
    /// Ids still in the outbox, any status (retention 0: delivered rows are
    /// deleted, so these are pending or dead).
    pub outbox_left: Vec<Uuid>,
    /// Outbox rows still pending.
    pub pending: u64,
    /// Messages the consumer's broker still holds for the group (waiting
    /// plus unacknowledged), where there is a consumer.
    pub lag: Option<u64>,
}

/// Everything the checker looks at.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Per path.
    pub paths: Vec<PathData>,
    /// Ids of transactions the producers rolled back on purpose, or whose
    /// commit failed: the ones not in a business table must appear nowhere.
    pub not_committed: Vec<Uuid>,
}

/// One path's figures.
#[derive(Clone, Debug, Default)]
pub struct PathReport {
    /// Path name.
    pub name: String,
    /// Committed messages.
    pub messages: usize,
    /// Of which poison.
    pub poison: usize,
    /// Effect rows.
    pub effects: usize,
    /// Ids applied more than once.
    pub duplicates: Vec<Uuid>,
    /// Committed, not poison, never applied.
    pub missing: Vec<Uuid>,
    /// Applied but never committed (or poison).
    pub unexpected: Vec<Uuid>,
    /// Effects applied after a later message of their key.
    pub out_of_order: Vec<Uuid>,
    /// Whether out-of-order counts as a violation here.
    pub ordered: bool,
    /// Dead letters that are not poison.
    pub unexpected_dead: Vec<Uuid>,
    /// Poison messages not dead-lettered.
    pub missing_dead: Vec<Uuid>,
    /// Outbox rows left pending.
    pub pending: u64,
    /// Broker lag left.
    pub lag: Option<u64>,
}

/// The whole verdict.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Per path.
    pub paths: Vec<PathReport>,
    /// Ids of uncommitted transactions found somewhere, with where.
    pub rolled_back_seen: Vec<(Uuid, String)>,
}

/// Checks `observed`.
pub fn check(observed: &Observed) -> Report {
    let committed_anywhere: HashSet<Uuid> = observed
        .paths
        .iter()
        .flat_map(|p| p.committed.iter().map(|m| m.id))
        .collect();
    let not_committed: HashSet<Uuid> = observed
        .not_committed
        .iter()
        .copied()
        .filter(|id| !committed_anywhere.contains(id))
        .collect();
    let mut report = Report::default();
    for path in &observed.paths {
        report.paths.push(check_path(path));
        let places = [
            (
                "effects",
                path.effects.iter().map(|e| e.id).collect::<Vec<_>>(),
            ),
            ("dead letters", path.dead.clone()),
            ("outbox or event store", path.outbox_left.clone()),
        ];
        for (place, ids) in places {
            for id in ids {
                if not_committed.contains(&id) {
                    report
                        .rolled_back_seen
                        .push((id, format!("{} {place}", path.name)));
                }
            }
        }
    }
    report
}

fn check_path(path: &PathData) -> PathReport {
    let by_id: HashMap<Uuid, &Produced> = path.committed.iter().map(|m| (m.id, m)).collect();
    let mut applied: HashMap<Uuid, usize> = HashMap::new();
    let mut r = PathReport {
        name: path.name.clone(),
        messages: path.committed.len(),
        poison: path.committed.iter().filter(|m| m.poison).count(),
        effects: path.effects.len(),
        ordered: path.ordered,
        pending: path.pending,
        lag: path.lag,
        ..Default::default()
    };
    let mut last_n: HashMap<&str, i64> = HashMap::new();
    for e in &path.effects {
        let count = applied.entry(e.id).or_default();
        *count += 1;
        if *count == 2 {
            r.duplicates.push(e.id);
        }
        if *count > 1 {
            continue;
        }
        match by_id.get(&e.id) {
            Some(m) if !m.poison && m.key == e.key && m.n == e.n => {}
            _ => r.unexpected.push(e.id),
        }
        let last = last_n.entry(e.key.as_str()).or_insert(i64::MIN);
        if e.n < *last {
            r.out_of_order.push(e.id);
        } else {
            *last = e.n;
        }
    }
    let dead: HashSet<Uuid> = path.dead.iter().copied().collect();
    for m in &path.committed {
        if m.poison {
            if !dead.contains(&m.id) {
                r.missing_dead.push(m.id);
            }
        } else if !applied.contains_key(&m.id) {
            r.missing.push(m.id);
        }
    }
    for id in &path.dead {
        if !by_id.get(id).is_some_and(|m| m.poison) {
            r.unexpected_dead.push(*id);
        }
    }
    r
}

impl PathReport {
    /// Whether this path broke a promise.
    pub fn violated(&self) -> bool {
        !self.duplicates.is_empty()
            || !self.missing.is_empty()
            || !self.unexpected.is_empty()
            || (self.ordered && !self.out_of_order.is_empty())
            || !self.unexpected_dead.is_empty()
            || !self.missing_dead.is_empty()
            || self.pending > 0
            || self.lag.is_some_and(|l| l > 0)
    }
}

impl Report {
    /// Whether anything broke a promise.
    pub fn violated(&self) -> bool {
        !self.rolled_back_seen.is_empty() || self.paths.iter().any(PathReport::violated)
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<8} {:>9} {:>7} {:>9} {:>5} {:>7} {:>5} {:>12} {:>8} {:>9} {:>7} {:>5}",
            "path",
            "messages",
            "poison",
            "effects",
            "dupl",
            "missing",
            "unexp",
            "out-of-order",
            "dead!",
            "poison-!d",
            "pending",
            "lag"
        );
        for p in &self.paths {
            let ooo = if p.ordered {
                p.out_of_order.len().to_string()
            } else {
                format!("({})", p.out_of_order.len())
            };
            let _ = writeln!(
                s,
                "{:<8} {:>9} {:>7} {:>9} {:>5} {:>7} {:>5} {:>12} {:>8} {:>9} {:>7} {:>5}",
                p.name,
                p.messages,
                p.poison,
                p.effects,
                p.duplicates.len(),
                p.missing.len(),
                p.unexpected.len(),
                ooo,
                p.unexpected_dead.len(),
                p.missing_dead.len(),
                p.pending,
                p.lag.map_or("-".to_owned(), |l| l.to_string()),
            );
        }
        let _ = writeln!(
            s,
            "(out-of-order in parentheses: the path does not promise per-key order; dead! = dead letters that are not poison; poison-!d = poison not dead-lettered)"
        );
        s
    }

    /// The first `first` ids of each violation that names messages, with
    /// what it is (`nats: applied more than once`…), in the order
    /// [`Report::violations`] names them.
    pub fn violating_ids(&self, first: usize) -> Vec<(String, Uuid)> {
        let mut v = Vec::new();
        for p in &self.paths {
            let mut lists: Vec<(&str, &[Uuid])> = vec![
                ("applied more than once", &p.duplicates),
                ("committed but never applied", &p.missing),
                ("applied but not committed (or poison)", &p.unexpected),
            ];
            if p.ordered {
                lists.push(("applied after a later message of its key", &p.out_of_order));
            }
            lists.push(("dead-lettered but not poison", &p.unexpected_dead));
            lists.push(("poison but not dead-lettered", &p.missing_dead));
            for (what, ids) in lists {
                for id in ids.iter().take(first) {
                    v.push((format!("{}: {what}", p.name), *id));
                }
            }
        }
        for (id, place) in self.rolled_back_seen.iter().take(first) {
            v.push((format!("uncommitted, found in {place}"), *id));
        }
        v
    }

    /// Each violation, naming the first `first` ids of each.
    pub fn violations(&self, first: usize) -> Vec<String> {
        let mut v = Vec::new();
        let ids = |list: &[Uuid]| {
            let shown: Vec<String> = list.iter().take(first).map(Uuid::to_string).collect();
            let more = list.len().saturating_sub(first);
            if more > 0 {
                format!("{} (+{more} more)", shown.join(", "))
            } else {
                shown.join(", ")
            }
        };
        for p in &self.paths {
            let n = &p.name;
            let mut add = |what: &str, list: &[Uuid]| {
                if !list.is_empty() {
                    v.push(format!("{n}: {} {what}: {}", list.len(), ids(list)));
                }
            };
            add("applied more than once", &p.duplicates);
            add("committed but never applied", &p.missing);
            add("applied but not committed (or poison)", &p.unexpected);
            if p.ordered {
                add(
                    "applied after a later message of their key",
                    &p.out_of_order,
                );
            }
            add("dead-lettered but not poison", &p.unexpected_dead);
            add("poison but not dead-lettered", &p.missing_dead);
            if p.pending > 0 {
                v.push(format!(
                    "{n}: {} outbox rows still pending (event paths: events the reader's offset is behind the head; triggers: change rows not pruned; batch: batches not archived)",
                    p.pending
                ));
            }
            if let Some(l) = p.lag.filter(|l| *l > 0) {
                v.push(format!(
                    "{n}: the broker still holds {l} messages for the consumer"
                ));
            }
        }
        for (id, place) in self.rolled_back_seen.iter().take(first) {
            v.push(format!("uncommitted message {id} found in {place}"));
        }
        if self.rolled_back_seen.len() > first {
            v.push(format!(
                "(+{} more uncommitted messages found)",
                self.rolled_back_seen.len() - first
            ));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> (Observed, Vec<Uuid>) {
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
        let committed: Vec<Produced> = ids[..5]
            .iter()
            .enumerate()
            .map(|(i, id)| Produced {
                id: *id,
                key: format!("k{}", i % 2),
                n: i as i64,
                poison: i == 4,
            })
            .collect();
        let effects = committed
            .iter()
            .filter(|m| !m.poison)
            .map(|m| Effect {
                id: m.id,
                key: m.key.clone(),
                n: m.n,
            })
            .collect();
        let path = PathData {
            name: "p".into(),
            ordered: true,
            committed,
            effects,
            dead: vec![ids[4]],
            lag: Some(0),
            ..Default::default()
        };
        (
            Observed {
                paths: vec![path],
                not_committed: vec![ids[5]],
            },
            ids,
        )
    }

    #[test]
    fn a_clean_run_passes() {
        let (o, _) = clean();
        let r = check(&o);
        assert!(!r.violated(), "{:?}", r.violations(5));
    }

    #[test]
    fn a_deleted_effect_is_missing() {
        let (mut o, ids) = clean();
        o.paths[0].effects.remove(1);
        let r = check(&o);
        assert!(r.violated());
        assert_eq!(r.paths[0].missing, vec![ids[1]]);
    }

    #[test]
    fn a_repeated_effect_is_a_duplicate() {
        let (mut o, ids) = clean();
        let again = o.paths[0].effects[2].clone();
        o.paths[0].effects.push(again);
        let r = check(&o);
        assert_eq!(r.paths[0].duplicates, vec![ids[2]]);
        assert!(r.violated());
    }

    #[test]
    fn order_breaks_only_where_promised() {
        let (mut o, ids) = clean();
        // k0 holds n = 0, 2: apply 2 before 0.
        o.paths[0].effects.swap(0, 2);
        let r = check(&o);
        assert_eq!(r.paths[0].out_of_order, vec![ids[0]]);
        assert!(r.violated());
        o.paths[0].ordered = false;
        assert!(!check(&o).violated());
    }

    #[test]
    fn rolled_back_ids_must_appear_nowhere() {
        let (mut o, ids) = clean();
        o.paths[0].outbox_left.push(ids[5]);
        let r = check(&o);
        assert_eq!(r.rolled_back_seen.len(), 1);
        assert!(r.violated());
    }

    #[test]
    fn dead_letters_are_exactly_the_poison() {
        let (mut o, ids) = clean();
        o.paths[0].dead = vec![ids[3]];
        let r = check(&o);
        assert_eq!(r.paths[0].unexpected_dead, vec![ids[3]]);
        assert_eq!(r.paths[0].missing_dead, vec![ids[4]]);
        assert_eq!(r.violations(1).len(), 2, "{:?}", r.violations(1));
    }

    #[test]
    fn violating_ids_name_each_violation_up_to_first() {
        let (mut o, ids) = clean();
        o.paths[0].effects.clear();
        o.paths[0].outbox_left.push(ids[5]);
        let r = check(&o);
        let named = r.violating_ids(2);
        assert_eq!(
            named,
            vec![
                ("p: committed but never applied".to_owned(), ids[0]),
                ("p: committed but never applied".to_owned(), ids[1]),
                (
                    "uncommitted, found in p outbox or event store".to_owned(),
                    ids[5]
                ),
            ]
        );
        assert!(check(&clean().0).violating_ids(10).is_empty());
    }

    #[test]
    fn pending_rows_and_lag_fail() {
        let (mut o, _) = clean();
        o.paths[0].pending = 1;
        assert!(check(&o).violated());
        let (mut o, _) = clean();
        o.paths[0].lag = Some(3);
        assert!(check(&o).violated());
    }
}
