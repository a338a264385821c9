//! The initial snapshot: every captured table's rows, read in primary key
//! order inside one consistent snapshot, then streaming from the binlog
//! position that snapshot matches.
//!
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT` on MariaDB also fixes the
//! binlog position the snapshot sees (status variables
//! `binlog_snapshot_file` and `binlog_snapshot_position`), without a global
//! read lock: every transaction committed before that position is in the
//! snapshot, every one after it is streamed. No change is missed and none
//! is read twice.
//!
//! Tables are read in chunks of `snapshot_chunk` rows by keyset
//! pagination on the primary key; each chunk ends with a checkpoint
//! holding the snapshot's binlog position, the table and the last key. A
//! capture restarted mid-snapshot opens a new snapshot and goes on after
//! that key, still streaming from the first snapshot's position
//! afterwards: rows read after the restart may already show changes that
//! the stream then delivers again (at least once, never a gap).

use chrono::{DateTime, Utc};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Params, Row as DbRow, Value};

use crate::capture::{CaptureError, Captured};
use crate::change::{Change, Op, Position, Row, Source, TableId};
use crate::filter::Filter;
use crate::mariadb::saved::{KeyValue, Saved, SnapshotProgress};
use crate::mariadb::server::{self, quote, BinlogPosition, Schema, TableInfo};
use crate::mariadb::values::Side;

/// A snapshot in progress.
pub struct Snapshot {
    opts: Opts,
    filter: Filter,
    chunk: usize,
    /// The connection holding the snapshot's transaction.
    conn: Option<Conn>,
    /// Where streaming starts once the snapshot is read.
    pub position: BinlogPosition,
    started: DateTime<Utc>,
    tables: Vec<TableId>,
    next: usize,
    after: Option<Vec<Value>>,
}

impl Snapshot {
    /// Opens a snapshot of the tables `filter` captures; with `resume`
    /// (the position and progress of a checkpoint), goes on where that
    /// one stopped.
    pub async fn begin(
        opts: Opts,
        filter: Filter,
        chunk: usize,
        resume: Option<(BinlogPosition, SnapshotProgress)>,
    ) -> Result<Self, CaptureError> {
        let mut conn = server::connect(&opts).await?;
        let position = open_transaction(&mut conn).await?;
        let tables = server::captured_tables(&mut conn, &filter).await?;
        let mut snapshot = Self {
            opts,
            filter,
            chunk,
            conn: Some(conn),
            position,
            started: Utc::now(),
            tables,
            next: 0,
            after: None,
        };
        if let Some((position, progress)) = resume {
            snapshot.position = position;
            // The table it stopped at, or the first after it (tables are
            // read in order; one dropped since is skipped).
            snapshot.next = snapshot
                .tables
                .iter()
                .position(|t| *t >= progress.table)
                .unwrap_or(snapshot.tables.len());
            if snapshot.tables.get(snapshot.next) == Some(&progress.table) {
                snapshot.after = match progress.after {
                    Some(key) => Some(
                        key.iter()
                            .map(KeyValue::to_value)
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| {
                                CaptureError::permanent(
                                    "the saved snapshot key is not readable; run `ferry cdc \
                                     drop` and re-snapshot",
                                )
                            })?,
                    ),
                    None => None,
                };
            }
        }
        tracing::info!(
            at = %snapshot.position,
            tables = snapshot.tables.len(),
            from = snapshot.next,
            "binlog capture snapshot started"
        );
        Ok(snapshot)
    }

    /// The tables the snapshot reads, in order.
    pub fn tables(&self) -> &[TableId] {
        &self.tables
    }

    /// The next chunk, at most `max` rows; empty once every table is
    /// read.
    pub async fn read(
        &mut self,
        max: usize,
        schema: &mut Schema,
    ) -> Result<Vec<Captured>, CaptureError> {
        while let Some(table) = self.tables.get(self.next).cloned() {
            let Some(info) = schema.info(&table).await? else {
                // Dropped since the listing: nothing to read.
                self.next_table();
                continue;
            };
            let limit = max.min(self.chunk).max(1);
            let rows = match self.chunk_rows(&info, limit).await {
                Ok(rows) => rows,
                Err(e) => {
                    // The snapshot's transaction is gone with its
                    // connection: the next read opens another and goes on
                    // after the last key handed out.
                    self.conn = None;
                    return Err(e);
                }
            };
            if rows.is_empty() {
                self.next_table();
                continue;
            }
            let full = rows.len() == limit;
            let label = self.position.to_string();
            let mut out = Vec::with_capacity(rows.len());
            let mut last_key = None;
            for row in rows {
                let (change, key) = row_change(&info, row, &label, self.started, &self.filter);
                last_key = Some(key);
                out.push(Captured {
                    change,
                    checkpoint: None,
                });
            }
            if full {
                self.after = last_key;
            } else {
                self.next_table();
            }
            if let Some(last) = out.last_mut() {
                last.checkpoint = Some(self.saved().checkpoint());
            }
            return Ok(out);
        }
        Ok(Vec::new())
    }

    /// Where a restart goes on from, after what was handed out so far.
    fn saved(&self) -> Saved {
        Saved {
            file: self.position.file.clone(),
            pos: self.position.pos,
            gtid: None,
            time: None,
            snapshot: self.tables.get(self.next).map(|t| SnapshotProgress {
                table: t.clone(),
                after: self
                    .after
                    .as_ref()
                    .map(|k| k.iter().map(KeyValue::from).collect()),
            }),
        }
    }

    fn next_table(&mut self) {
        self.next += 1;
        self.after = None;
    }

    async fn chunk_rows(
        &mut self,
        info: &TableInfo,
        limit: usize,
    ) -> Result<Vec<DbRow>, CaptureError> {
        if self.conn.is_none() {
            let mut conn = server::connect(&self.opts).await?;
            open_transaction(&mut conn).await?;
            self.conn = Some(conn);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Vec::new());
        };
        let (sql, params) = chunk_query(info, self.after.as_deref(), limit);
        conn.exec(sql, Params::Positional(params))
            .await
            .map_err(|e| server::failure(e, &format!("cannot read {} for the snapshot", info.id)))
    }

    /// Ends the snapshot's transaction.
    pub async fn close(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = conn.query_drop("COMMIT").await;
            let _ = conn.disconnect().await;
        }
    }
}

/// A row read by a query of `info`'s columns as a read change labelled
/// `label` (its position's, hence its id's), and its key's raw values.
pub(super) fn row_change(
    info: &TableInfo,
    row: DbRow,
    label: &str,
    time: DateTime<Utc>,
    filter: &Filter,
) -> (Change, Vec<Value>) {
    let values = row.unwrap();
    let mut after = Row::new();
    for ((name, kind), value) in info.columns.iter().zip(&values) {
        after.insert(name.clone(), kind.to_json(value, Side::Query));
    }
    let key: Row = info
        .key
        .iter()
        .map(|k| (k.clone(), after.get(k).cloned().unwrap_or_default()))
        .collect();
    let key_text = serde_json::Value::Object(key.clone()).to_string();
    let mut change = Change {
        op: Op::Read,
        key,
        before: None,
        after: Some(after),
        source: Source {
            db: info.id.schema.clone(),
            table: info.id.clone(),
            position: Position::Snapshot {
                snapshot: label.to_owned(),
                key: key_text,
            },
            tx_id: None,
            commit_time: Some(time),
        },
        tx: None,
        unchanged: vec![],
    };
    filter.strip(&mut change);
    (change, key_values(info, &values))
}

/// Starts the snapshot's transaction on `conn`; returns the binlog
/// position it matches.
async fn open_transaction(conn: &mut Conn) -> Result<BinlogPosition, CaptureError> {
    let doing = "cannot open the snapshot's transaction";
    // UTC, so that TIMESTAMP columns read as the binlog holds them.
    for statement in [
        "SET SESSION time_zone = '+00:00'",
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
    ] {
        conn.query_drop(statement)
            .await
            .map_err(|e| server::failure(e, doing))?;
    }
    let status: Vec<(String, String)> = conn
        .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
        .await
        .map_err(|e| server::failure(e, doing))?;
    let get = |name: &str| {
        status
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    match (get("Binlog_snapshot_file"), get("Binlog_snapshot_position")) {
        (Some(file), Some(pos)) if !file.is_empty() => Ok(BinlogPosition {
            file,
            pos: pos.parse().map_err(|_| {
                CaptureError::transient(format!("binlog_snapshot_position `{pos}` is not a number"))
            })?,
        }),
        _ => Err(CaptureError::permanent(
            "the server gives no binlog_snapshot_file: start mariadbd with --log-bin",
        )),
    }
}

/// The primary key's raw values in `values` (a row of `info.columns`).
fn key_values(info: &TableInfo, values: &[Value]) -> Vec<Value> {
    info.key
        .iter()
        .map(|k| {
            info.columns
                .iter()
                .position(|(n, _)| n == k)
                .and_then(|i| values.get(i).cloned())
                .unwrap_or(Value::NULL)
        })
        .collect()
}

/// The query of the chunk after `after` (from the start without), at
/// most `limit` rows in key order, with its parameters: for a key
/// `(a, b)`, `a > ? OR (a = ? AND b > ?)`, which uses the key's index.
pub(super) fn chunk_query(
    info: &TableInfo,
    after: Option<&[Value]>,
    limit: usize,
) -> (String, Vec<Value>) {
    let columns: Vec<String> = info.columns.iter().map(|(n, _)| quote(n)).collect();
    let key: Vec<String> = info.key.iter().map(|k| quote(k)).collect();
    let mut sql = format!(
        "SELECT {} FROM {}.{}",
        columns.join(", "),
        quote(&info.id.schema),
        quote(&info.id.name)
    );
    let mut params = Vec::new();
    if let Some(after) = after {
        let mut ors = Vec::new();
        for i in 0..key.len() {
            let mut ands: Vec<String> = key[..i].iter().map(|k| format!("{k} = ?")).collect();
            ands.push(format!("{} > ?", key[i]));
            params.extend(
                after[..=i.min(after.len().saturating_sub(1))]
                    .iter()
                    .cloned(),
            );
            ors.push(format!("({})", ands.join(" AND ")));
        }
        sql.push_str(&format!(" WHERE {}", ors.join(" OR ")));
    }
    sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", key.join(", ")));
    (sql, params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mariadb::values::Kind;

    fn info(key: &[&str]) -> TableInfo {
        TableInfo {
            id: TableId::new("shop", "items"),
            columns: ["a", "b", "v"]
                .iter()
                .map(|n| ((*n).to_owned(), Kind::Other))
                .collect(),
            key: key.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    #[test]
    fn chunks_page_by_the_key() {
        let (sql, params) = chunk_query(&info(&["a"]), None, 10);
        assert_eq!(
            sql,
            "SELECT `a`, `b`, `v` FROM `shop`.`items` ORDER BY `a` LIMIT 10"
        );
        assert!(params.is_empty());
        let (sql, params) =
            chunk_query(&info(&["a", "b"]), Some(&[Value::Int(1), Value::Int(2)]), 5);
        assert_eq!(
            sql,
            "SELECT `a`, `b`, `v` FROM `shop`.`items` WHERE (`a` > ?) OR (`a` = ? AND `b` > ?) \
             ORDER BY `a`, `b` LIMIT 5"
        );
        assert_eq!(params, vec![Value::Int(1), Value::Int(1), Value::Int(2)]);
    }
}
