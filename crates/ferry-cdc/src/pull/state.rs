//! What a pull capture remembers between polls and across restarts: per
//! table, the newest `updated_at` read, the pass under way, and the row
//! versions read within the overlap window.
//!
//! Every comparison made here is on `updated_at` *text* whose byte order
//! is the database's order of the values (see [`super::query`]): on
//! PostgreSQL and MariaDB the capture reads a fixed-width ISO 8601 form,
//! on SQLite the stored text itself, which SQLite compares byte by byte
//! too. So what the state keeps and what the database returns agree on
//! which rows lie in the window.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::capture::{CaptureError, Checkpoint};
use crate::change::{Row, TableId};

/// Where a pass stands: the next chunk reads the rows after this one, in
/// `(updated_at, primary key)` order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ScanAt {
    /// The last row's `updated_at` text.
    pub updated_at: String,
    /// The last row's primary key values.
    pub key: Row,
}

/// One table's progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TableState {
    /// The newest `updated_at` read: the window reaches `overlap` behind
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<String>,
    /// The pass under way, if any; without one the next poll starts a
    /// pass at the window's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanAt>,
    /// The table's first pass is under way: its rows are sent as reads.
    #[serde(default)]
    pub snapshot: bool,
    /// Row versions read that the window may give again: `(updated_at,
    /// key as JSON text)`, only those with `updated_at` within the window.
    #[serde(default)]
    pub seen: BTreeSet<(String, String)>,
}

impl TableState {
    /// A table met for the first time: read from its beginning, as
    /// reads when `snapshot`.
    pub fn fresh(snapshot: bool) -> Self {
        Self {
            snapshot,
            ..Self::default()
        }
    }

    /// Where the next pass starts: `overlap` before the newest
    /// `updated_at` read (`None`: from the table's first row).
    pub fn window_start(&self, overlap: Duration) -> Option<Result<String, String>> {
        self.high
            .as_ref()
            .map(|h| step_back(h, overlap).ok_or_else(|| h.clone()))
    }

    /// Notes `updated_at` as read.
    pub fn observe(&mut self, updated_at: &str) {
        if self.high.as_deref().is_none_or(|h| h < updated_at) {
            self.high = Some(updated_at.to_owned());
        }
    }

    /// Forgets the row versions no pass will read again: those older than
    /// the window's start.
    pub fn prune(&mut self, overlap: Duration) {
        if let Some(Ok(start)) = self.window_start(overlap) {
            self.seen = self.seen.split_off(&(start, String::new()));
        }
    }
}

/// The whole capture's state, as its checkpoints carry it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct State {
    /// By table.
    pub tables: BTreeMap<TableId, TableState>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedTable {
    schema: String,
    name: String,
    #[serde(flatten)]
    state: TableState,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    mode: String,
    tables: Vec<SavedTable>,
}

const MODE: &str = "pull";

impl State {
    /// As a checkpoint.
    pub fn checkpoint(&self) -> Checkpoint {
        let tables: Vec<serde_json::Value> = self
            .tables
            .iter()
            .map(|(id, state)| {
                serde_json::to_value(SavedTable {
                    schema: id.schema.clone(),
                    name: id.name.clone(),
                    state: state.clone(),
                })
                .expect("a table's state is JSON")
            })
            .collect();
        Checkpoint(json!({ "mode": MODE, "tables": tables }))
    }

    /// From a checkpoint this mode wrote.
    pub fn parse(checkpoint: &Checkpoint) -> Result<Self, CaptureError> {
        let saved: Saved = serde_json::from_value(checkpoint.0.clone())
            .ok()
            .filter(|s: &Saved| s.mode == MODE)
            .ok_or_else(|| {
                CaptureError::permanent(format!("not a pull-mode checkpoint: {}", checkpoint.0))
            })?;
        Ok(Self {
            tables: saved
                .tables
                .into_iter()
                .map(|t| (TableId::new(t.schema, t.name), t.state))
                .collect(),
        })
    }
}

/// `text`, a time written `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS[.f…]]` (or
/// with `T`) and any zone suffix, moved back by `by` and written the same
/// way (same separator, same digits, same suffix). Rounded down where the
/// form has fewer digits than the step: the result never lies after the
/// exact one, and a later time never gives an earlier result, so a window
/// start computed this way only grows as the newest time does.
pub(crate) fn step_back(text: &str, by: Duration) -> Option<String> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .filter(|s| s.iter().all(u8::is_ascii_digit))
            .map(|_| &text[r])
    };
    let num = |r: std::ops::Range<usize>| digits(r).and_then(|s| s.parse::<u32>().ok());
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let year = digits(0..4)?.parse::<i32>().ok()?;
    let date = NaiveDate::from_ymd_opt(year, num(5..7)?, num(8..10)?)?;
    let by = chrono::Duration::from_std(by).ok()?;
    if b.len() == 10 {
        let back = date.and_time(NaiveTime::MIN).checked_sub_signed(by)?;
        return Some(back.format("%Y-%m-%d").to_string()).filter(|s| s.len() == 10);
    }
    let sep = *b.get(10)?;
    if !(sep == b' ' || sep == b'T') || b.get(13) != Some(&b':') {
        return None;
    }
    let (hour, minute) = (num(11..13)?, num(14..16)?);
    let mut at = 16;
    let second = if b.get(at) == Some(&b':') {
        at += 3;
        Some(num(17..19)?)
    } else {
        None
    };
    let mut fraction = "";
    if second.is_some() && b.get(at) == Some(&b'.') {
        let n = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if n == 0 {
            return None;
        }
        fraction = &text[at + 1..at + 1 + n];
        at += 1 + n;
    }
    let suffix = &text[at..];
    if suffix.starts_with(|c: char| c.is_ascii_digit() || c == ':' || c == '.') {
        return None;
    }
    let nanos: u32 = format!("{fraction:0<9}")[..9].parse().ok()?;
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second.unwrap_or(0), nanos)?;
    let back: NaiveDateTime = date.and_time(time).checked_sub_signed(by)?;
    let mut out = back
        .format(&format!("%Y-%m-%d{}%H:%M", sep as char))
        .to_string();
    if second.is_some() {
        out.push_str(&back.format(":%S").to_string());
    }
    if !fraction.is_empty() {
        let nanos = format!("{:09}", back.nanosecond());
        let mut f: String = nanos.chars().take(fraction.len()).collect();
        while f.len() < fraction.len() {
            f.push('0');
        }
        out.push('.');
        out.push_str(&f);
    }
    if back.format("%Y").to_string().len() != 4 {
        return None;
    }
    out.push_str(suffix);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn back(text: &str, ms: u64) -> Option<String> {
        step_back(text, Duration::from_millis(ms))
    }

    #[test]
    fn steps_back_keeping_the_form() {
        assert_eq!(
            back("2024-05-01T10:00:03.250000Z", 5000).as_deref(),
            Some("2024-05-01T09:59:58.250000Z")
        );
        assert_eq!(
            back("2024-05-01T10:00:03.250000", 5000).as_deref(),
            Some("2024-05-01T09:59:58.250000")
        );
        assert_eq!(
            back("2024-05-01 00:00:01", 5000).as_deref(),
            Some("2024-04-30 23:59:56")
        );
        assert_eq!(
            back("2024-05-01 10:00:00.123", 1).as_deref(),
            Some("2024-05-01 10:00:00.122")
        );
        // Fewer digits than the step: rounded down.
        assert_eq!(
            back("2024-05-01 10:00:00", 1500).as_deref(),
            Some("2024-05-01 09:59:58")
        );
        assert_eq!(
            back("2024-05-01 10:00", 1000).as_deref(),
            Some("2024-05-01 09:59")
        );
        assert_eq!(back("2024-05-01", 1).as_deref(), Some("2024-04-30"));
        assert_eq!(
            back("2024-05-01 10:00:00+02:00", 60_000).as_deref(),
            Some("2024-05-01 09:59:00+02:00")
        );
        assert_eq!(
            back("2024-05-01 10:00:00", 0).as_deref(),
            Some("2024-05-01 10:00:00")
        );
    }

    #[test]
    fn refuses_what_is_not_a_time() {
        for bad in [
            "",
            "1714557600",
            "yesterday",
            "2024-13-01",
            "2024-05-01X10:00",
            "2024-05-01 10:00:00.",
            "0000-01-01 00:00:00",
        ] {
            assert_eq!(back(bad, 1000), None, "{bad}");
        }
    }

    #[test]
    fn stepping_back_keeps_the_order() {
        let times = [
            "2024-05-01 09:59:59.999",
            "2024-05-01 10:00:00.000",
            "2024-05-01 10:00:00.001",
            "2024-05-01 10:00:04.999",
            "2024-05-01 10:00:05.000",
        ];
        for w in times.windows(2) {
            assert!(back(w[0], 4321) <= back(w[1], 4321));
        }
    }

    #[test]
    fn prunes_to_the_window_and_round_trips() {
        let mut t = TableState::fresh(false);
        for (u, k) in [
            ("2024-05-01 10:00:00", "{\"id\":1}"),
            ("2024-05-01 10:00:06", "{\"id\":2}"),
            ("2024-05-01 10:00:09", "{\"id\":3}"),
        ] {
            t.observe(u);
            t.seen.insert((u.into(), k.into()));
        }
        t.observe("2024-05-01 10:00:08");
        assert_eq!(t.high.as_deref(), Some("2024-05-01 10:00:09"));
        t.prune(Duration::from_secs(3));
        let left: Vec<&str> = t.seen.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(left, ["{\"id\":2}", "{\"id\":3}"]);

        let mut state = State::default();
        state.tables.insert(TableId::new("main", "orders"), t);
        let cp = state.checkpoint();
        assert_eq!(State::parse(&cp).unwrap(), state);
        assert!(State::parse(&Checkpoint(json!({"id": 5}))).is_err());
    }
}
