//! A window over an ordered stream whose position may only advance over
//! what is settled: the forwarder's stored events, a CDC pipeline's changes.
//!
//! The caller reads items past its position and [pushes](Window::push)
//! them. Each round it asks the window which entries may go now
//! ([`Window::round`]), hands them to [`deliver`](crate::deliver) and
//! [applies](Window::apply) the result. A message waiting for a retry
//! holds back its key only; the other keys go on, and the caller keeps
//! reading while the window is not [full](Window::is_full). The caller's
//! position may then move to the end of the [settled
//! prefix](Window::pop_settled): never past an entry that is neither
//! delivered nor settled by the caller (skipped, dead-lettered).

use std::collections::{HashSet, VecDeque};

use chrono::Utc;
use ferry_core::{ErrorKind, Message};
use tokio::time::Instant;

use crate::{BatchResult, Item, Outcome};

/// Entries read past a stream's position and not yet all settled, in the
/// stream's order.
///
/// An entry is *settled* once the sink took it or the caller
/// [settled](Window::settle) it after giving it up. Indices (as in
/// [`Window::get`], [`Attempt`]) count from the front of the window: they
/// stay valid until the next [`Window::pop_settled`].
#[derive(Debug)]
pub struct Window<T> {
    entries: VecDeque<Entry<T>>,
    capacity: usize,
    /// How many entries were popped so far: a [`Round`] is only good for
    /// the window as it was when it was made.
    popped: u64,
}

/// One item of the stream in a [`Window`], with its message and what the
/// delivery made of it so far.
#[derive(Clone, Debug)]
pub struct Entry<T> {
    /// The caller's item (a stored event, a change).
    pub item: T,
    /// The message that carries it to the sink.
    pub message: Message,
    /// Its position in the caller's stream.
    pub seq: i64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not before this: a retry's backoff.
    pub due: Option<Instant>,
    done: bool,
}

impl<T> Entry<T> {
    /// Whether it is settled: delivered, or settled by the caller.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

impl<T> Item for &Entry<T> {
    fn message(&self) -> Result<&Message, &str> {
        Ok(&self.message)
    }
    fn attempts(&self) -> u32 {
        self.attempts
    }
    fn seq(&self) -> i64 {
        self.seq
    }
}

/// The entries that may go in one round ([`Window::round`]): indices into
/// the window, in its order.
#[derive(Clone, Debug)]
pub struct Round {
    indices: Vec<usize>,
    next_due: Option<Instant>,
    popped: u64,
}

impl Round {
    /// Whether nothing may go now.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// How many entries go in this round.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// The earliest due time among the entries held back for a retry that
    /// the round looked at (it stops looking when it is full): when to
    /// look again if the round is empty.
    pub fn next_due(&self) -> Option<Instant> {
        self.next_due
    }
}

/// What became of one entry of a round ([`Window::apply`]). Entries the
/// engine did not attempt (held back, the sink down, out of time) are not
/// listed: they are left exactly as they were.
#[derive(Clone, Debug, PartialEq)]
pub enum Attempt {
    /// The sink took it: it is settled.
    Delivered {
        /// Its index in the window.
        index: usize,
    },
    /// It failed and is held back, with the rest of its key, until its
    /// retry is due.
    Retrying(Failure),
    /// It failed for good (a permanent error, or its attempts are spent).
    /// The caller records it somewhere (a dead letter, a failure table) and
    /// [settles](Window::settle) it, or stops at it. Left unsettled, it
    /// goes out again in the next round.
    GivenUp(Failure),
}

/// A failed attempt at an entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// Its index in the window.
    pub index: usize,
    /// Its failed attempts, this one included.
    pub attempts: u32,
    /// The sink's error, as the engine describes it.
    pub error: String,
    /// The error's kind; [`ErrorKind::Transient`] when the sink gave no
    /// result for the message or did not answer within the budget.
    pub kind: ErrorKind,
}

impl<T> Window<T> {
    /// An empty window that reports itself [full](Window::is_full) at
    /// `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity,
            popped: 0,
        }
    }

    /// Adds the next item of the stream, at position `seq`, carried by
    /// `message`. It is taken even past the capacity (a page read goes in
    /// whole); check [`Window::is_full`] before reading more.
    pub fn push(&mut self, seq: i64, item: T, message: Message) {
        self.entries.push_back(Entry {
            item,
            message,
            seq,
            attempts: 0,
            due: None,
            done: false,
        });
    }

    /// How many entries it holds, settled ones included (those behind an
    /// unsettled one).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether it holds its capacity or more: read no further until the
    /// settled prefix is popped.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
    }

    /// Whether every entry is settled (true when empty).
    pub fn all_settled(&self) -> bool {
        self.entries.iter().all(|e| e.done)
    }

    /// The entry at `index`.
    ///
    /// # Panics
    ///
    /// If there is none.
    pub fn get(&self, index: usize) -> &Entry<T> {
        &self.entries[index]
    }

    /// The entries that may go `now`, at most `limit` of them: per key, the
    /// first unsettled entry and those after it, up to the first that
    /// waits for a retry (which holds back the rest of its key; an entry
    /// without a key is a key of its own). While the sink is down
    /// (`probing`), one entry per key: a probe (see
    /// [`probe_limit`](crate::probe_limit) for the limit).
    pub fn round(&self, now: Instant, limit: usize, probing: bool) -> Round {
        let mut held: HashSet<&str> = HashSet::new();
        let mut next_due: Option<Instant> = None;
        let mut indices = Vec::new();
        for (i, e) in self.entries.iter().enumerate().filter(|(_, e)| !e.done) {
            if indices.len() >= limit {
                break;
            }
            let key = e.message.key.as_deref();
            if key.is_some_and(|k| held.contains(k)) {
                continue;
            }
            if let Some(due) = e.due.filter(|due| *due > now) {
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
                if let Some(k) = key {
                    held.insert(k);
                }
                continue;
            }
            if probing {
                if let Some(k) = key {
                    held.insert(k);
                }
            }
            indices.push(i);
        }
        Round {
            indices,
            next_due,
            popped: self.popped,
        }
    }

    /// The round's entries, in its order: hand them to
    /// [`deliver`](crate::deliver).
    ///
    /// # Panics
    ///
    /// If entries were popped since the round was made.
    pub fn entries(&self, round: &Round) -> Vec<&Entry<T>> {
        self.check(round);
        round.indices.iter().map(|&i| &self.entries[i]).collect()
    }

    /// Applies the engine's `result` for `round` (its outcomes in the
    /// round's order): a delivered entry is settled; a failed one counts
    /// an attempt and, when it is to be retried, is due at the engine's
    /// `retry_at`. Returns what the caller acts on (logs, counts, gives
    /// up), in the round's order. The result's other fields (the sink
    /// unavailable, answering) are the caller's to read first.
    ///
    /// # Panics
    ///
    /// If entries were popped since the round was made.
    pub fn apply(&mut self, round: &Round, result: BatchResult) -> Vec<Attempt> {
        self.check(round);
        let mut attempts = Vec::new();
        let outcomes = round.indices.iter().zip(result.outcomes).zip(result.kinds);
        for ((&index, outcome), kind) in outcomes {
            let e = &mut self.entries[index];
            match outcome {
                Outcome::Released => {}
                Outcome::Delivered => {
                    e.done = true;
                    attempts.push(Attempt::Delivered { index });
                }
                Outcome::Failed { error, retry_at } => {
                    e.attempts += 1;
                    let failure = Failure {
                        index,
                        attempts: e.attempts,
                        error,
                        kind: kind.unwrap_or(ErrorKind::Transient),
                    };
                    match retry_at {
                        Some(at) => {
                            let wait = (at - Utc::now()).to_std().unwrap_or_default();
                            e.due = Some(Instant::now() + wait);
                            attempts.push(Attempt::Retrying(failure));
                        }
                        None => attempts.push(Attempt::GivenUp(failure)),
                    }
                }
            }
        }
        attempts
    }

    /// Settles the entry at `index`: the caller skipped or dead-lettered
    /// it after giving it up.
    ///
    /// # Panics
    ///
    /// If there is none.
    pub fn settle(&mut self, index: usize) {
        self.entries[index].done = true;
    }

    /// Removes the settled prefix, yielding its entries in order: the
    /// caller's position may move to the last one's. Stops at the first
    /// unsettled entry. Indices shift by the number popped.
    pub fn pop_settled(&mut self) -> impl Iterator<Item = Entry<T>> + '_ {
        std::iter::from_fn(move || {
            if !self.entries.front()?.done {
                return None;
            }
            self.popped += 1;
            self.entries.pop_front()
        })
    }

    fn check(&self, round: &Round) {
        assert_eq!(
            round.popped, self.popped,
            "a round is applied to the window it was made from, nothing popped in between"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::DateTime;

    use super::*;

    /// A window of `items` (payload, key), at positions 1, 2, …, each
    /// item its payload.
    fn window(items: &[(&'static str, Option<&str>)]) -> Window<&'static str> {
        let mut w = Window::new(10);
        for (n, (payload, key)) in items.iter().enumerate() {
            let mut m = Message::event("t", *payload);
            m.key = key.map(str::to_owned);
            w.push(n as i64 + 1, *payload, m);
        }
        w
    }

    /// The items of a round.
    fn names<'a>(w: &'a Window<&'static str>, round: &Round) -> Vec<&'a str> {
        w.entries(round).iter().map(|e| e.item).collect()
    }

    /// An engine result of `outcomes`, kinds as the engine sets them.
    fn result(outcomes: Vec<Outcome>) -> BatchResult {
        let kinds = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Failed { retry_at: None, .. } => Some(ErrorKind::Permanent),
                Outcome::Failed { .. } => Some(ErrorKind::Transient),
                _ => None,
            })
            .collect();
        BatchResult {
            outcomes,
            unavailable: None,
            over_budget: false,
            sink_answered: true,
            kinds,
        }
    }

    fn retry_in(d: Duration) -> Outcome {
        Outcome::Failed {
            error: "503".into(),
            retry_at: Some(Utc::now() + chrono::Duration::from_std(d).unwrap()),
        }
    }

    fn given_up() -> Outcome {
        Outcome::Failed {
            error: "400".into(),
            retry_at: None,
        }
    }

    const STREAM: &[(&str, Option<&str>)] = &[
        ("a1", Some("a")),
        ("b1", Some("b")),
        ("a2", Some("a")),
        ("n", None),
        ("b2", Some("b")),
        ("a3", Some("a")),
    ];

    #[test]
    fn a_retry_holds_back_its_key_only() {
        let mut w = window(STREAM);
        let now = Instant::now();
        let round = w.round(now, 100, false);
        assert_eq!(
            names(&w, &round),
            STREAM.iter().map(|s| s.0).collect::<Vec<_>>()
        );
        // a1 fails and waits; the engine releases the rest of a.
        let mut outcomes = vec![Outcome::Delivered; 6];
        outcomes[0] = retry_in(Duration::from_secs(60));
        outcomes[2] = Outcome::Released;
        outcomes[5] = Outcome::Released;
        let attempts = w.apply(&round, result(outcomes));
        assert_eq!(
            attempts[0],
            Attempt::Retrying(Failure {
                index: 0,
                attempts: 1,
                error: "503".into(),
                kind: ErrorKind::Transient,
            })
        );
        assert_eq!(
            attempts[1..],
            [1, 3, 4].map(|index| Attempt::Delivered { index })
        );
        assert_eq!(w.get(0).attempts, 1);
        assert!(w
            .get(0)
            .due
            .is_some_and(|due| due > now + Duration::from_secs(50)));

        // Nothing of a may go before a1 is due; the other keys went.
        let round = w.round(Instant::now(), 100, false);
        assert!(round.is_empty());
        assert_eq!(round.next_due(), w.get(0).due);
        w.push(7, "b3", keyed("b3", "b"));
        w.push(8, "a4", keyed("a4", "a"));
        let round = w.round(Instant::now(), 100, false);
        assert_eq!(names(&w, &round), ["b3"]);

        // Once due, a1 goes again with the rest of its key.
        let later = Instant::now() + Duration::from_secs(61);
        let round = w.round(later, 100, false);
        assert_eq!(names(&w, &round), ["a1", "a2", "a3", "b3", "a4"]);
        assert_eq!(round.next_due(), None);
    }

    fn keyed(payload: &'static str, key: &str) -> Message {
        let mut m = Message::event("t", payload);
        m.key = Some(key.to_owned());
        m
    }

    #[test]
    fn a_retry_without_a_key_holds_back_nothing_else() {
        let mut w = window(&[("x", None), ("y", None)]);
        let round = w.round(Instant::now(), 100, false);
        w.apply(
            &round,
            result(vec![retry_in(Duration::from_secs(60)), Outcome::Delivered]),
        );
        w.push(3, "z", Message::event("t", "z"));
        let round = w.round(Instant::now(), 100, false);
        assert_eq!(names(&w, &round), ["z"]);
    }

    #[test]
    fn a_round_takes_at_most_its_limit() {
        let w = window(STREAM);
        let round = w.round(Instant::now(), 3, false);
        assert_eq!(names(&w, &round), ["a1", "b1", "a2"]);
        assert_eq!(round.len(), 3);
        assert!(w.round(Instant::now(), 0, false).is_empty());
    }

    #[test]
    fn probing_takes_one_per_key_up_to_the_limit() {
        let w = window(STREAM);
        let now = Instant::now();
        assert_eq!(names(&w, &w.round(now, 16, true)), ["a1", "b1", "n"]);
        assert_eq!(names(&w, &w.round(now, 2, true)), ["a1", "b1"]);
        assert_eq!(names(&w, &w.round(now, 1, true)), ["a1"]);
    }

    #[test]
    fn probing_skips_a_key_waiting_for_its_retry() {
        let mut w = window(STREAM);
        let round = w.round(Instant::now(), 1, true);
        w.apply(&round, result(vec![retry_in(Duration::from_secs(60))]));
        let round = w.round(Instant::now(), 16, true);
        assert_eq!(names(&w, &round), ["b1", "n"]);
        assert!(round.next_due().is_some());
    }

    #[test]
    fn released_entries_are_left_as_they_were() {
        let mut w = window(STREAM);
        let round = w.round(Instant::now(), 100, false);
        let attempts = w.apply(&round, result(vec![Outcome::Released; 6]));
        assert!(attempts.is_empty());
        assert!((0..6).all(|i| w.get(i).attempts == 0 && w.get(i).due.is_none()));
        assert_eq!(w.round(Instant::now(), 100, false).len(), 6);
    }

    #[test]
    fn the_settled_prefix_pops_in_order_and_stops_at_the_first_unsettled() {
        let mut w = window(STREAM);
        let round = w.round(Instant::now(), 100, false);
        let mut outcomes = vec![Outcome::Delivered; 6];
        outcomes[2] = given_up();
        outcomes[5] = given_up();
        let attempts = w.apply(&round, result(outcomes));
        let gave_up: Vec<_> = attempts
            .iter()
            .filter_map(|a| match a {
                Attempt::GivenUp(f) => Some((f.index, f.attempts, f.kind)),
                _ => None,
            })
            .collect();
        assert_eq!(
            gave_up,
            [(2, 1, ErrorKind::Permanent), (5, 1, ErrorKind::Permanent)]
        );
        assert!(!w.all_settled());

        let popped: Vec<_> = w.pop_settled().map(|e| (e.seq, e.item)).collect();
        assert_eq!(popped, [(1, "a1"), (2, "b1")], "stops at a2, given up");
        assert_eq!(w.len(), 4);
        assert_eq!(w.get(0).item, "a2");
        assert!(w.get(1).is_done(), "n is settled behind a2");

        // The caller skips a2 (now at 0): the prefix up to a3 goes.
        w.settle(0);
        let popped: Vec<_> = w.pop_settled().map(|e| e.item).collect();
        assert_eq!(popped, ["a2", "n", "b2"]);
        assert!(!w.all_settled());
        w.settle(0);
        assert!(w.all_settled());
        assert_eq!(w.pop_settled().count(), 1);
        assert!(w.is_empty() && w.all_settled());
    }

    #[test]
    fn a_given_up_entry_left_unsettled_goes_again() {
        let mut w = window(&[("x", Some("k")), ("y", Some("k"))]);
        let round = w.round(Instant::now(), 100, false);
        w.apply(&round, result(vec![given_up(), Outcome::Delivered]));
        let round = w.round(Instant::now(), 100, false);
        assert_eq!(names(&w, &round), ["x"]);
        assert_eq!(w.get(0).attempts, 1);
    }

    #[test]
    fn a_missing_kind_is_transient() {
        let mut w = window(&[("x", None)]);
        let round = w.round(Instant::now(), 100, false);
        let mut r = result(vec![retry_in(Duration::ZERO)]);
        r.kinds = vec![None];
        let attempts = w.apply(&round, r);
        assert!(matches!(&attempts[..], [Attempt::Retrying(f)] if f.kind == ErrorKind::Transient));
    }

    #[test]
    fn a_past_retry_time_is_due_at_once() {
        let mut w = window(&[("x", None)]);
        let round = w.round(Instant::now(), 100, false);
        let past = Outcome::Failed {
            error: "503".into(),
            retry_at: Some(DateTime::<Utc>::MIN_UTC),
        };
        w.apply(&round, result(vec![past]));
        assert_eq!(names(&w, &w.round(Instant::now(), 100, false)), ["x"]);
    }

    #[test]
    fn full_at_its_capacity_yet_taking_a_whole_page() {
        let mut w = Window::new(2);
        assert!(!w.is_full() && w.is_empty() && w.all_settled());
        for seq in 1..=3 {
            w.push(seq, seq, Message::event("t", "x"));
        }
        assert!(w.is_full());
        assert_eq!(w.len(), 3, "a page read goes in whole");
        let round = w.round(Instant::now(), 100, false);
        w.apply(&round, result(vec![Outcome::Delivered; 3]));
        assert_eq!(
            w.pop_settled().map(|e| e.item).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(!w.is_full());
    }

    #[test]
    #[should_panic(expected = "nothing popped in between")]
    fn a_round_is_stale_once_entries_are_popped() {
        let mut w = window(STREAM);
        let first = w.round(Instant::now(), 1, false);
        w.apply(&first, result(vec![Outcome::Delivered]));
        let second = w.round(Instant::now(), 100, false);
        assert_eq!(w.pop_settled().count(), 1);
        w.apply(&second, result(vec![Outcome::Delivered; 5]));
    }
}
