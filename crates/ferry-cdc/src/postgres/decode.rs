//! pgoutput messages (protocol 1, text tuples) to changes, one
//! transaction at a time and never a whole one in memory.
//!
//! The server sends a transaction only once it committed, Begin to
//! Commit with nothing else in between, so changes can be handed over as
//! they arrive: one is held back so that the transaction's last change
//! can carry its total and its checkpoint when the Commit comes.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use pg_walstream::{ColumnInfo, TupleData};
use serde_json::{json, Value};

use super::value;
use crate::capture::{CaptureError, Captured, Checkpoint};
use crate::change::{Change, Op, Position, Row, Source, TableId, TxOrder};
use crate::filter::Filter;

/// `pg_class.relreplident` of `REPLICA IDENTITY FULL`.
pub const IDENTITY_FULL: u8 = b'f';

/// The relation cache and the transaction being read.
pub struct Decoder {
    db: String,
    filter: Filter,
    relations: HashMap<u32, Relation>,
    tx: Option<Transaction>,
}

/// A table as its last Relation message described it.
#[derive(Debug)]
struct Relation {
    table: TableId,
    captured: bool,
    columns: Vec<Column>,
    /// The key's columns (indexes into `columns`): the primary key, or the
    /// replica identity's columns when there is none.
    key: Vec<usize>,
}

#[derive(Debug)]
struct Column {
    name: String,
    type_oid: u32,
    /// Part of the replica identity (pgoutput's flag): the columns a
    /// `K` old tuple holds.
    identity: bool,
}

/// The transaction between its Begin and its Commit.
#[derive(Debug)]
struct Transaction {
    xid: u32,
    /// The commit record's LSN, as the Begin gives it.
    commit_lsn: u64,
    commit_time: DateTime<Utc>,
    /// Changes numbered so far, the held one included.
    order: u64,
    /// The last change, handed over once the next one (or the Commit)
    /// arrives.
    held: Option<Change>,
    /// The LSN of the last decoded change, and how many changes before it
    /// had the same one (rows of one multi-row record).
    last_lsn: Option<u64>,
    same_lsn: u64,
}

/// An answer from the server that pgoutput never sends: the connection is
/// read again from the last acknowledged position.
fn unexpected(what: impl Into<String>) -> CaptureError {
    CaptureError::transient(format!("pgoutput: {}", what.into()))
}

/// The type of a Relation message's column list.
pub type Columns<'a> = &'a [ColumnInfo];

impl Decoder {
    /// A decoder for database `db` keeping the changes `filter` captures.
    pub fn new(db: String, filter: Filter) -> Self {
        Self {
            db,
            filter,
            relations: HashMap::new(),
            tx: None,
        }
    }

    /// Forgets the relations and the transaction being read: a new
    /// connection sends them again from the last acknowledged transaction.
    pub fn reset(&mut self) {
        self.relations.clear();
        self.tx = None;
    }

    /// Whether a transaction is being read (Begin seen, Commit not yet).
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether changes of `table` are captured.
    pub fn captures(&self, table: &TableId) -> bool {
        self.filter.captures(table)
    }

    /// A Begin.
    pub fn begin(
        &mut self,
        xid: u32,
        commit_lsn: u64,
        commit_time: DateTime<Utc>,
    ) -> Result<(), CaptureError> {
        if self.tx.is_some() {
            return Err(unexpected("begin inside a transaction"));
        }
        self.tx = Some(Transaction {
            xid,
            commit_lsn,
            commit_time,
            order: 0,
            held: None,
            last_lsn: None,
            same_lsn: 0,
        });
        Ok(())
    }

    /// A Relation: replaces what was known of relation `id`, so that a
    /// column added or dropped is read from the next change on.
    /// `primary_key` names the primary key's columns when the caller looked
    /// them up (needed with `REPLICA IDENTITY FULL`, where pgoutput flags
    /// every column).
    pub fn relation(
        &mut self,
        id: u32,
        table: TableId,
        columns: Columns<'_>,
        primary_key: Option<&[String]>,
    ) {
        let columns: Vec<Column> = columns
            .iter()
            .map(|c| Column {
                name: c.name.to_string(),
                type_oid: c.type_id,
                identity: c.is_key(),
            })
            .collect();
        let key = match primary_key {
            Some(pk) if !pk.is_empty() => pk
                .iter()
                .filter_map(|name| columns.iter().position(|c| &c.name == name))
                .collect(),
            _ => (0..columns.len())
                .filter(|&i| columns[i].identity)
                .collect(),
        };
        let captured = self.filter.captures(&table);
        self.relations.insert(
            id,
            Relation {
                table,
                captured,
                columns,
                key,
            },
        );
    }

    /// An Insert.
    pub fn insert(
        &mut self,
        lsn: u64,
        relation: u32,
        new: &TupleData,
        out: &mut VecDeque<Captured>,
    ) -> Result<(), CaptureError> {
        let lsn = self.change_lsn(lsn)?;
        let rel = self.relation_of(relation)?;
        if !rel.captured {
            return Ok(());
        }
        let mut unchanged = Vec::new();
        let after = row(rel, new, None, false, &mut unchanged)?;
        let key = key_of(rel, &after);
        let change = self.change(Op::Create, relation, lsn, key, None, Some(after), unchanged)?;
        self.hand_over(change, out)
    }

    /// An Update: `old` is the old row (`O`, replica identity full) or its
    /// key (`K`, when the key changed).
    pub fn update(
        &mut self,
        lsn: u64,
        relation: u32,
        old: Option<(char, &TupleData)>,
        new: &TupleData,
        out: &mut VecDeque<Captured>,
    ) -> Result<(), CaptureError> {
        let lsn = self.change_lsn(lsn)?;
        let rel = self.relation_of(relation)?;
        if !rel.captured {
            return Ok(());
        }
        let full_old = old.filter(|(kind, _)| *kind == 'O').map(|(_, t)| t);
        let before = match old {
            Some((kind, t)) => Some(row(rel, t, None, kind == 'K', &mut Vec::new())?),
            None => None,
        };
        let mut unchanged = Vec::new();
        let after = row(rel, new, full_old, false, &mut unchanged)?;
        let key = key_of(rel, &after);
        let change = self.change(
            Op::Update,
            relation,
            lsn,
            key,
            before,
            Some(after),
            unchanged,
        )?;
        self.hand_over(change, out)
    }

    /// A Delete: `old` is the old row (`O`) or its key (`K`).
    pub fn delete(
        &mut self,
        lsn: u64,
        relation: u32,
        kind: char,
        old: &TupleData,
        out: &mut VecDeque<Captured>,
    ) -> Result<(), CaptureError> {
        let lsn = self.change_lsn(lsn)?;
        let rel = self.relation_of(relation)?;
        if !rel.captured {
            return Ok(());
        }
        let before = row(rel, old, None, kind == 'K', &mut Vec::new())?;
        let key = key_of(rel, &before);
        let change = self.change(
            Op::Delete,
            relation,
            lsn,
            key,
            Some(before),
            None,
            Vec::new(),
        )?;
        self.hand_over(change, out)
    }

    /// A Truncate: one change per captured table.
    pub fn truncate(
        &mut self,
        lsn: u64,
        relations: &[u32],
        out: &mut VecDeque<Captured>,
    ) -> Result<(), CaptureError> {
        for &relation in relations {
            let lsn = self.change_lsn(lsn)?;
            if !self.relation_of(relation)?.captured {
                continue;
            }
            let change = self.change(
                Op::Truncate,
                relation,
                lsn,
                Row::new(),
                None,
                None,
                Vec::new(),
            )?;
            self.hand_over(change, out)?;
        }
        Ok(())
    }

    /// A Commit: the held change, the transaction's last, goes out with the
    /// total and the checkpoint `{"lsn": end_lsn}`. Returns whether the
    /// transaction had any captured change.
    pub fn commit(
        &mut self,
        commit_lsn: u64,
        end_lsn: u64,
        out: &mut VecDeque<Captured>,
    ) -> Result<bool, CaptureError> {
        let tx = self
            .tx
            .take()
            .ok_or_else(|| unexpected("commit outside a transaction"))?;
        if tx.commit_lsn != commit_lsn {
            return Err(unexpected(format!(
                "commit at {commit_lsn} for a transaction begun to commit at {}",
                tx.commit_lsn
            )));
        }
        let Some(mut last) = tx.held else {
            return Ok(false);
        };
        if let Some(order) = last.tx.as_mut() {
            order.total = Some(tx.order);
        }
        out.push_back(Captured {
            change: last,
            checkpoint: Some(Checkpoint(json!({ "lsn": end_lsn }))),
        });
        Ok(true)
    }

    /// The change's position LSN: its record's LSN, plus how many changes
    /// of the same record came before it. Rows of one multi-row record (a
    /// `COPY`'s page of rows, a `TRUNCATE` of several tables) share its
    /// LSN; the record holds more bytes than rows, so `lsn + n` stays
    /// inside it, never another record's LSN, and the position (hence the
    /// change id) stays unique and the same on every read.
    fn change_lsn(&mut self, lsn: u64) -> Result<u64, CaptureError> {
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| unexpected("change outside a transaction"))?;
        if tx.last_lsn == Some(lsn) {
            tx.same_lsn += 1;
        } else {
            tx.last_lsn = Some(lsn);
            tx.same_lsn = 0;
        }
        Ok(lsn.saturating_add(tx.same_lsn))
    }

    fn relation_of(&self, id: u32) -> Result<&Relation, CaptureError> {
        self.relations
            .get(&id)
            .ok_or_else(|| unexpected(format!("change of relation {id} before its description")))
    }

    #[allow(clippy::too_many_arguments)]
    fn change(
        &self,
        op: Op,
        relation: u32,
        lsn: u64,
        key: Row,
        before: Option<Row>,
        after: Option<Row>,
        unchanged: Vec<String>,
    ) -> Result<Change, CaptureError> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| unexpected("change outside a transaction"))?;
        let table = self.relation_of(relation)?.table.clone();
        let mut change = Change {
            op,
            key,
            before,
            after,
            source: Source {
                db: self.db.clone(),
                table,
                position: Position::Lsn {
                    commit_lsn: tx.commit_lsn,
                    lsn,
                },
                tx_id: Some(tx.xid.to_string()),
                commit_time: Some(tx.commit_time),
            },
            tx: Some(TxOrder {
                id: tx.xid.to_string(),
                order: 0,
                total: None,
            }),
            unchanged,
        };
        self.filter.strip(&mut change);
        Ok(change)
    }

    /// Numbers `change`, holds it, and hands over the one it replaces.
    fn hand_over(
        &mut self,
        mut change: Change,
        out: &mut VecDeque<Captured>,
    ) -> Result<(), CaptureError> {
        let tx = self
            .tx
            .as_mut()
            .ok_or_else(|| unexpected("change outside a transaction"))?;
        tx.order += 1;
        if let Some(order) = change.tx.as_mut() {
            order.order = tx.order;
        }
        if let Some(previous) = tx.held.replace(change) {
            out.push_back(Captured {
                change: previous,
                checkpoint: None,
            });
        }
        Ok(())
    }
}

/// A tuple as a row. With `identity_only` (a `K` old tuple), only the
/// replica identity's columns, the others being sent as nulls. An
/// unchanged TOASTed value (`u`) is taken from `old` (a full old row) when
/// there is one, else left out of the row and named in `unchanged`.
fn row(
    rel: &Relation,
    tuple: &TupleData,
    old: Option<&TupleData>,
    identity_only: bool,
    unchanged: &mut Vec<String>,
) -> Result<Row, CaptureError> {
    if tuple.columns.len() != rel.columns.len() {
        return Err(unexpected(format!(
            "a row of {} with {} columns where its description has {}",
            rel.table,
            tuple.columns.len(),
            rel.columns.len()
        )));
    }
    let mut row = Row::new();
    for (i, (data, column)) in tuple.columns.iter().zip(&rel.columns).enumerate() {
        if identity_only && !column.identity {
            continue;
        }
        let data = if data.is_unchanged() {
            match old
                .and_then(|o| o.columns.get(i))
                .filter(|o| !o.is_unchanged())
            {
                Some(previous) => previous,
                None => {
                    unchanged.push(column.name.clone());
                    continue;
                }
            }
        } else {
            data
        };
        let value = match data.data_type {
            b'n' => Value::Null,
            b't' => {
                let text = std::str::from_utf8(data.as_bytes()).map_err(|_| {
                    unexpected(format!("{}.{} is not UTF-8", rel.table, column.name))
                })?;
                value::from_text(column.type_oid, text)
            }
            other => {
                return Err(unexpected(format!(
                    "{}.{} sent as {:?}, not text",
                    rel.table, column.name, other as char
                )))
            }
        };
        row.insert(column.name.clone(), value);
    }
    Ok(row)
}

/// The key's columns of `row`.
fn key_of(rel: &Relation, row: &Row) -> Row {
    rel.key
        .iter()
        .filter_map(|&i| {
            let name = &rel.columns[i].name;
            row.get(name).map(|v| (name.clone(), v.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pg_walstream::ColumnData;

    fn col(name: &str, type_oid: u32, key: bool) -> ColumnInfo {
        ColumnInfo::new(u8::from(key), name.into(), type_oid, -1)
    }

    fn text(s: &str) -> ColumnData {
        ColumnData::text(s.as_bytes().to_vec())
    }

    fn decoder() -> Decoder {
        let mut d = Decoder::new("shop".into(), Filter::default());
        d.relation(
            1,
            TableId::new("public", "t"),
            &[col("id", 23, true), col("body", 25, false)],
            None,
        );
        d
    }

    #[test]
    fn holds_the_last_change_for_the_total_and_the_checkpoint() {
        let mut d = decoder();
        let mut out = VecDeque::new();
        d.begin(7, 500, Utc::now()).unwrap();
        for (lsn, id) in [(100, "1"), (200, "2")] {
            let t = TupleData::new(vec![text(id), text("x")]);
            d.insert(lsn, 1, &t, &mut out).unwrap();
        }
        assert_eq!(out.len(), 1, "the second change is held");
        assert!(d.commit(500, 520, &mut out).unwrap());
        let last = &out[1];
        assert_eq!(last.change.tx.as_ref().unwrap().total, Some(2));
        assert_eq!(last.checkpoint, Some(Checkpoint(json!({"lsn": 520}))));
        assert_eq!(out[0].checkpoint, None);
        assert_eq!(
            last.change.key,
            json!({"id": 2}).as_object().unwrap().clone()
        );
    }

    #[test]
    fn rows_of_one_record_get_distinct_positions() {
        let mut d = decoder();
        let mut out = VecDeque::new();
        d.begin(7, 500, Utc::now()).unwrap();
        for id in ["1", "2", "3"] {
            let t = TupleData::new(vec![text(id), text("x")]);
            d.insert(100, 1, &t, &mut out).unwrap();
        }
        d.commit(500, 520, &mut out).unwrap();
        let lsns: Vec<_> = out
            .iter()
            .map(|c| match c.change.source.position {
                Position::Lsn { lsn, .. } => lsn,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(lsns, [100, 101, 102]);
    }

    #[test]
    fn unchanged_toast_is_left_out_or_taken_from_the_old_row() {
        let mut d = decoder();
        let mut out = VecDeque::new();
        d.begin(7, 500, Utc::now()).unwrap();
        let new = TupleData::new(vec![text("1"), ColumnData::unchanged()]);
        d.update(100, 1, None, &new, &mut out).unwrap();
        let old = TupleData::new(vec![text("1"), text("long")]);
        d.update(200, 1, Some(('O', &old)), &new, &mut out).unwrap();
        d.commit(500, 520, &mut out).unwrap();
        let first = &out[0].change;
        assert_eq!(first.unchanged, ["body"]);
        assert!(!first.after.as_ref().unwrap().contains_key("body"));
        let second = &out[1].change;
        assert!(second.unchanged.is_empty());
        assert_eq!(second.after.as_ref().unwrap()["body"], "long");
        assert_eq!(second.before.as_ref().unwrap()["body"], "long");
    }

    #[test]
    fn a_key_only_old_tuple_gives_the_key_alone() {
        let mut d = decoder();
        let mut out = VecDeque::new();
        d.begin(7, 500, Utc::now()).unwrap();
        let old = TupleData::new(vec![text("1"), ColumnData::null()]);
        d.delete(100, 1, 'K', &old, &mut out).unwrap();
        d.commit(500, 520, &mut out).unwrap();
        let c = &out[0].change;
        assert_eq!(c.before, json!({"id": 1}).as_object().cloned());
        assert_eq!(c.key, json!({"id": 1}).as_object().unwrap().clone());
    }

    #[test]
    fn what_pgoutput_never_sends_is_an_error_not_a_panic() {
        let mut d = decoder();
        let mut out = VecDeque::new();
        let t = TupleData::new(vec![text("1")]);
        assert!(
            d.insert(1, 1, &t, &mut out).is_err(),
            "outside a transaction"
        );
        d.begin(7, 500, Utc::now()).unwrap();
        assert!(d.insert(1, 1, &t, &mut out).is_err(), "column count");
        assert!(d.insert(1, 9, &t, &mut out).is_err(), "unknown relation");
        assert!(d.commit(499, 520, &mut out).is_err(), "another commit");
        assert!(d.commit(500, 520, &mut out).is_err(), "no transaction");
    }

    #[test]
    fn tables_left_out_produce_nothing() {
        let mut d = Decoder::new("shop".into(), Filter::default());
        d.relation(
            2,
            TableId::new("public", "ferry_outbox"),
            &[col("id", 23, true)],
            None,
        );
        let mut out = VecDeque::new();
        d.begin(7, 500, Utc::now()).unwrap();
        d.insert(1, 2, &TupleData::new(vec![text("1")]), &mut out)
            .unwrap();
        assert!(!d.commit(500, 520, &mut out).unwrap());
        assert!(out.is_empty());
    }
}
