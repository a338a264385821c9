//! On-demand backfill: a table's current rows read again, as `r` changes,
//! while the stream goes on, without ever sending a row's older state
//! after a newer change of it.
//!
//! # How (log modes: watermarks, after DBLog)
//!
//! The running capture reads the table a chunk at a time, in primary key
//! order. For each chunk it writes a *low* watermark into the database's
//! log, selects the chunk's rows, and writes a *high* watermark. Then, as
//! the stream reaches them: a change of one of the chunk's rows that
//! committed between the two watermarks drops that row from the chunk
//! (the stream carries a state at least as new); at the high watermark the
//! rows left are sent, before anything committed after it. So each row's
//! events stay in commit order, and the stream is never paused.
//!
//! A request travels the same way: `ferry cdc backfill` writes it into the
//! log (PostgreSQL: a transactional `pg_logical_emit_message` with prefix
//! [`PREFIX`]), where the capture finds it in order, whether it runs now
//! or starts later. The capture keeps its jobs and their progress in
//! `ferry_cdc_offsets` under `<capture>/backfill` ([`Backfills`]),
//! advanced as chunks are acknowledged: a crash re-reads at most the chunk
//! in flight, with the same change ids (a row's id is derived from the
//! job's label and its key).
//!
//! Trigger mode needs no watermark: a backfill chunk is copied into the
//! change table under the same lock the triggers take, so it takes its
//! place in commit order by itself.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::capture::{CaptureError, Checkpoint};
use crate::change::{Change, Op, Row, TableId};
use crate::offsets::Offsets;

/// The prefix of Ferry's logical decoding messages (requests and
/// watermarks).
pub const PREFIX: &str = "ferry_cdc";

/// How many finished jobs' ids are kept, so that a request read again
/// after a restart is not run twice.
const DONE_KEPT: usize = 64;

/// A request to backfill tables, as `ferry cdc backfill` writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The capture it is for.
    pub capture: String,
    /// Its id (a UUID): a request read twice runs once.
    pub id: String,
    /// The tables, read in this order.
    pub tables: Vec<TableId>,
}

impl Request {
    /// A new request of `tables` for `capture`.
    pub fn new(capture: &str, tables: Vec<TableId>) -> Self {
        Self {
            capture: capture.to_owned(),
            id: Uuid::now_v7().to_string(),
            tables,
        }
    }

    /// The message content that carries it.
    pub fn to_message(&self) -> String {
        json!({ "backfill": self }).to_string()
    }
}

/// A message of Ferry's, read from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A backfill request.
    Request(Request),
    /// A chunk's watermark.
    Watermark {
        /// The chunk's mark.
        mark: Uuid,
        /// High (else low).
        high: bool,
    },
}

impl Message {
    /// Parses a message's content; `None` for anything else.
    pub fn parse(content: &[u8]) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_slice(content).ok()?;
        if let Some(request) = value.get("backfill") {
            return serde_json::from_value(request.clone())
                .ok()
                .map(Message::Request);
        }
        let mark = value.get("watermark")?.as_str()?.parse().ok()?;
        let high = match value.get("edge")?.as_str()? {
            "high" => true,
            "low" => false,
            _ => return None,
        };
        Some(Message::Watermark { mark, high })
    }

    /// The content of a watermark message.
    pub fn watermark(mark: Uuid, high: bool) -> String {
        json!({ "watermark": mark.to_string(), "edge": if high { "high" } else { "low" } })
            .to_string()
    }
}

/// A backfill job: tables to read, and how far it got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The request's id (or `snapshot:<lsn>` for an initial snapshot
    /// finished by backfill after a crash).
    pub id: String,
    /// The label of its rows' positions, hence of their ids.
    pub label: String,
    /// The tables, in order.
    pub tables: Vec<TableId>,
    /// The index of the table being read.
    #[serde(default)]
    pub table: usize,
    /// The last key read from it, each column as text; `None`: from its
    /// first row.
    #[serde(default)]
    pub after: Option<Vec<String>>,
    /// Rows delivered so far.
    #[serde(default)]
    pub rows: u64,
    /// When it was requested.
    pub requested: DateTime<Utc>,
}

impl Job {
    /// The job of `request`.
    pub fn of(request: &Request) -> Self {
        Self {
            id: request.id.clone(),
            label: format!("backfill:{}", request.id),
            tables: request.tables.clone(),
            table: 0,
            after: None,
            rows: 0,
            requested: Utc::now(),
        }
    }
}

/// Where a job stands after a chunk: the table to go on with and the last
/// key read from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The job.
    pub job: String,
    /// The table to go on with (past the last: the job is done).
    pub table: usize,
    /// The last key read from it.
    pub after: Option<Vec<String>>,
    /// Rows the chunk delivered.
    pub rows: u64,
}

/// A capture's backfill jobs, first to run first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfills {
    /// Jobs not finished.
    #[serde(default)]
    pub jobs: Vec<Job>,
    /// Ids of the last jobs finished.
    #[serde(default)]
    pub done: Vec<String>,
}

impl Backfills {
    /// The `ferry_cdc_offsets` row they are kept in.
    pub fn key(capture: &str) -> String {
        format!("{capture}/backfill")
    }

    /// Loads `capture`'s jobs (none when nothing is saved).
    pub async fn load(offsets: &Offsets, capture: &str) -> Result<Self, ferry_store::StoreError> {
        Ok(offsets
            .load(&Self::key(capture))
            .await?
            .and_then(|c| serde_json::from_value(c.0).ok())
            .unwrap_or_default())
    }

    /// Saves them as `capture`'s.
    pub async fn save(
        &self,
        offsets: &Offsets,
        capture: &str,
    ) -> Result<(), ferry_store::StoreError> {
        let value = serde_json::to_value(self).unwrap_or_default();
        offsets.save(&Self::key(capture), &Checkpoint(value)).await
    }

    /// Queues `job`; `false` when a job of that id is queued or done.
    pub fn add(&mut self, job: Job) -> bool {
        if self.jobs.iter().any(|j| j.id == job.id) || self.done.contains(&job.id) {
            return false;
        }
        if job.tables.is_empty() {
            self.done.push(job.id);
        } else {
            self.jobs.push(job);
        }
        true
    }

    /// The job to run and its table, skipping a job with no table left.
    pub fn current(&self) -> Option<(&Job, &TableId)> {
        let job = self.jobs.first()?;
        Some((job, job.tables.get(job.table)?))
    }

    /// Moves the job of `cursor` on; a job past its last table is done.
    pub fn advance(&mut self, cursor: &Cursor) {
        let Some(i) = self.jobs.iter().position(|j| j.id == cursor.job) else {
            return;
        };
        let job = &mut self.jobs[i];
        job.table = cursor.table;
        job.after = cursor.after.clone();
        job.rows += cursor.rows;
        if job.table >= job.tables.len() {
            let job = self.jobs.remove(i);
            tracing::info!(job = %job.id, rows = job.rows, "cdc backfill done");
            self.done.push(job.id);
            let excess = self.done.len().saturating_sub(DONE_KEPT);
            self.done.drain(..excess);
        }
    }
}

/// A capture's jobs as read (`live`: where the next chunk starts) and as
/// acknowledged (`saved`: what is kept), and the chunk handed over and not
/// acknowledged yet, whose rows end at position `P`. One chunk is in
/// flight at a time, so the saved progress never runs ahead of what was
/// delivered.
#[derive(Debug)]
pub(crate) struct Ledger<P> {
    /// As read.
    pub live: Backfills,
    /// As acknowledged.
    pub saved: Backfills,
    handed: Option<(P, Cursor)>,
}

impl<P: PartialOrd> Ledger<P> {
    /// From the jobs saved.
    pub fn new(saved: Backfills) -> Self {
        Self {
            live: saved.clone(),
            saved,
            handed: None,
        }
    }

    /// Whether a chunk's rows are handed over and not acknowledged.
    pub fn in_flight(&self) -> bool {
        self.handed.is_some()
    }

    /// The job and table the next chunk reads, when one waits.
    pub fn next(&self) -> Option<(Job, TableId)> {
        self.live.current().map(|(j, t)| (j.clone(), t.clone()))
    }

    /// Queues `job`; `false` when known (nothing to save then).
    pub fn add(&mut self, job: Job) -> bool {
        if !self.saved.add(job.clone()) {
            return false;
        }
        self.live.add(job);
        true
    }

    /// A chunk's rows were handed over, the last at `at`.
    pub fn hand(&mut self, at: P, cursor: Cursor) {
        self.live.advance(&cursor);
        self.handed = Some((at, cursor));
    }

    /// Moves on with nothing to deliver (nothing in flight): save after.
    pub fn skip(&mut self, cursor: &Cursor) {
        self.live.advance(cursor);
        self.saved.advance(cursor);
    }

    /// Everything up to `at` was delivered; `true` when that covers the
    /// chunk in flight (its progress is then to be saved).
    pub fn acknowledge(&mut self, at: &P) -> bool {
        match self.handed.take() {
            Some((end, cursor)) if end <= *at => {
                self.saved.advance(&cursor);
                true
            }
            other => {
                self.handed = other;
                false
            }
        }
    }

    /// Saves the acknowledged jobs as `capture`'s.
    pub async fn save(&self, offsets: &Offsets, capture: &str) -> Result<(), CaptureError> {
        self.saved.save(offsets, capture).await.map_err(|e| {
            let kind = if e.is_retryable() {
                ferry_core::ErrorKind::Unavailable
            } else {
                ferry_core::ErrorKind::Transient
            };
            CaptureError::new(
                kind,
                format!("cdc capture {capture}: cannot save the backfill jobs"),
            )
            .with_source(e)
        })
    }

    /// The stream is read again from the last acknowledged position: the
    /// chunk in flight is forgotten, the jobs go on from what was saved.
    pub fn reset(&mut self) {
        self.handed = None;
        self.live = self.saved.clone();
    }
}

/// A chunk between its watermarks: the rows selected after the low one,
/// less those a change streamed between the two supersedes.
#[derive(Debug)]
pub(crate) struct Window {
    /// The chunk's mark (both watermarks carry it).
    pub mark: Uuid,
    /// The low watermark was read.
    pub low: bool,
    /// The high watermark was read.
    pub high: bool,
    table: TableId,
    /// The chunk's rows in key order; `None` once a streamed change
    /// superseded one.
    rows: Vec<Option<Change>>,
    /// Key text → index in `rows`.
    index: HashMap<String, usize>,
    /// Where the job stands once the chunk is delivered.
    cursor: Cursor,
}

impl Window {
    /// The chunk `rows` of `table` (in key order), marked `mark`.
    pub fn new(mark: Uuid, table: TableId, rows: Vec<Change>, cursor: Cursor) -> Self {
        let index = rows
            .iter()
            .enumerate()
            .map(|(i, c)| (c.key_text(), i))
            .collect();
        Self {
            mark,
            low: false,
            high: false,
            table,
            rows: rows.into_iter().map(Some).collect(),
            index,
            cursor,
        }
    }

    /// A watermark of this window read.
    pub fn watermark(&mut self, mark: Uuid, high: bool) {
        if mark == self.mark {
            if high {
                self.high = true;
            } else {
                self.low = true;
            }
        }
    }

    /// A change streamed: between the watermarks, drops the chunk's row it
    /// supersedes (by its key, and by its old key when an update moved
    /// the row; every row for a truncate).
    pub fn observe(&mut self, change: &Change) {
        if !self.low || self.high || change.source.table != self.table {
            return;
        }
        if change.op == Op::Truncate {
            self.rows.iter_mut().for_each(|r| *r = None);
            return;
        }
        let mut keys = vec![change.key_text()];
        if let Some(before) = &change.before {
            let old: Option<Row> = change
                .key
                .keys()
                .map(|k| before.get(k).map(|v| (k.clone(), v.clone())))
                .collect();
            if let Some(old) = old {
                keys.push(serde_json::Value::Object(old).to_string());
            }
        }
        for key in keys {
            if let Some(&i) = self.index.get(&key) {
                self.rows[i] = None;
            }
        }
    }

    /// The rows left, and the job's cursor after the chunk.
    pub fn into_rows(self) -> (Vec<Change>, Cursor) {
        (self.rows.into_iter().flatten().collect(), self.cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Position, Source};

    fn change(op: Op, table: &str, id: i64, before: Option<i64>) -> Change {
        let key: Row = [("id".to_owned(), json!(id))].into_iter().collect();
        Change {
            op,
            key: key.clone(),
            before: before.map(|b| [("id".to_owned(), json!(b))].into_iter().collect()),
            after: Some(key),
            source: Source {
                db: "d".into(),
                table: TableId::new("public", table),
                position: Position::ChangeId { id },
                tx_id: None,
                commit_time: None,
            },
            tx: None,
            unchanged: vec![],
        }
    }

    fn window(ids: &[i64]) -> Window {
        let rows = ids
            .iter()
            .map(|&i| change(Op::Read, "items", i, None))
            .collect();
        let cursor = Cursor {
            job: "j".into(),
            table: 0,
            after: None,
            rows: 0,
        };
        let mark = Uuid::now_v7();
        let mut w = Window::new(mark, TableId::new("public", "items"), rows, cursor);
        w.watermark(Uuid::now_v7(), false);
        assert!(!w.low, "another window's mark");
        w.watermark(mark, false);
        w
    }

    fn left(w: Window) -> Vec<i64> {
        w.into_rows()
            .0
            .iter()
            .map(|c| c.key["id"].as_i64().unwrap())
            .collect()
    }

    #[test]
    fn a_streamed_change_drops_the_row_it_supersedes() {
        let mut w = window(&[1, 2, 3, 4]);
        w.observe(&change(Op::Update, "items", 2, None));
        w.observe(&change(Op::Delete, "items", 3, None));
        w.observe(&change(Op::Update, "other", 1, None));
        w.observe(&change(Op::Create, "items", 9, None));
        // A key moved from 4 to 8: the old row is gone too.
        w.observe(&change(Op::Update, "items", 8, Some(4)));
        assert_eq!(left(w), [1]);
        let mut w = window(&[1, 2]);
        let mut t = change(Op::Truncate, "items", 0, None);
        t.key.clear();
        w.observe(&t);
        assert!(left(w).is_empty());
    }

    #[test]
    fn only_changes_between_the_watermarks_count() {
        let mark = Uuid::now_v7();
        let cursor = Cursor {
            job: "j".into(),
            table: 0,
            after: None,
            rows: 0,
        };
        let rows = vec![
            change(Op::Read, "items", 1, None),
            change(Op::Read, "items", 2, None),
        ];
        let mut w = Window::new(mark, TableId::new("public", "items"), rows, cursor);
        w.observe(&change(Op::Update, "items", 1, None));
        w.watermark(mark, false);
        w.watermark(mark, true);
        w.observe(&change(Op::Update, "items", 2, None));
        assert_eq!(left(w), [1, 2], "before the low or after the high: kept");
    }

    #[test]
    fn messages_round_trip() {
        let request = Request::new("shop", vec![TableId::new("public", "orders")]);
        assert_eq!(
            Message::parse(request.to_message().as_bytes()),
            Some(Message::Request(request))
        );
        let mark = Uuid::now_v7();
        assert_eq!(
            Message::parse(Message::watermark(mark, true).as_bytes()),
            Some(Message::Watermark { mark, high: true })
        );
        assert_eq!(Message::parse(b"{\"other\": 1}"), None);
        assert_eq!(Message::parse(b"not json"), None);
    }

    #[test]
    fn jobs_run_once_and_in_order() {
        let t = |n: &str| TableId::new("public", n);
        let mut b = Backfills::default();
        let first = Request::new("shop", vec![t("a"), t("b")]);
        assert!(b.add(Job::of(&first)));
        assert!(!b.add(Job::of(&first)), "a request read twice runs once");
        assert!(b.add(Job::of(&Request::new("shop", vec![t("c")]))));
        assert_eq!(b.current().map(|(_, t)| t.name.as_str()), Some("a"));
        b.advance(&Cursor {
            job: first.id.clone(),
            table: 0,
            after: Some(vec!["7".into()]),
            rows: 7,
        });
        assert_eq!(b.jobs[0].after, Some(vec!["7".into()]));
        b.advance(&Cursor {
            job: first.id.clone(),
            table: 2,
            after: None,
            rows: 3,
        });
        assert_eq!(b.done, vec![first.id.clone()]);
        assert!(!b.add(Job::of(&first)), "nor once it is done");
        assert_eq!(b.current().map(|(_, t)| t.name.as_str()), Some("c"));
    }
}
