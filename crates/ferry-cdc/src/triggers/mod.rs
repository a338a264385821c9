//! Trigger mode: changes recorded by triggers, in the writing transaction.
//!
//! Ferry installs `AFTER INSERT`, `AFTER UPDATE` and `AFTER DELETE`
//! triggers on each captured table. Each writes the change (operation,
//! old row and new row as JSON, table, time, transaction where the
//! database names one) into the change table `ferry_cdc_changes` in the
//! *same transaction* as the change itself: a rolled-back change leaves no
//! row, a committed one always does. A reader ships the rows in id order
//! and deletes them once the sink has taken them.
//!
//! # Commit order
//!
//! Change ids must be handed out in commit order, or a reader that has
//! passed id 11 would never see a slower transaction's id 10. SQLite has
//! one writer at a time, so its ids are in commit order by themselves. On
//! PostgreSQL the trigger takes a transaction-level advisory lock before
//! it records (Ferry's event store does the same), on MariaDB it takes the
//! row lock of a counter: transactions that write captured tables record
//! their changes one transaction at a time, from their first captured
//! change until they commit. That is the price of this mode on a server;
//! the log modes do not have it.
//!
//! # Initial snapshot
//!
//! When the triggers of a table are installed, its current rows are
//! copied into the change table as `r` (read) changes. On SQLite and
//! PostgreSQL the copy and the triggers' creation are one transaction: no
//! change is missed and none is sent twice. MariaDB commits each
//! `CREATE TRIGGER` on its own, so the copy follows the triggers: a row
//! changed in between is sent as its change and then as a read of its
//! newer state; the last event of every row is its current state.
//!
//! # Schema changes
//!
//! PostgreSQL's trigger function records the whole row (`to_jsonb`), so a
//! column added or dropped is picked up by the next change. SQLite and
//! MariaDB triggers name their columns: the reader notices a changed
//! schema (SQLite's `schema_version`; MariaDB's column list, checked every
//! few seconds) and reinstalls the triggers; changes made between the
//! `ALTER TABLE` and the reinstall carry the columns of the old schema.
//! New tables that the filter includes are found the same way. MariaDB's
//! `TRUNCATE` fires no trigger, and SQLite has none; PostgreSQL's is sent
//! as a `t` change.

pub(crate) mod mariadb;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_store::Database;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use crate::capture::{Capture, CaptureError, Captured, Checkpoint};
use crate::change::{Change, Op, Position, Row, Source, TableId, TxOrder};
use crate::filter::Filter;
use crate::json::parse_row;

/// How a trigger-mode capture runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// The capture's name: names its triggers and its rows of the change
    /// table (letters, digits and `_`).
    pub name: String,
    /// Tables captured, columns left out.
    #[serde(default)]
    pub filter: Filter,
    /// Copy each table's rows as `r` changes when its triggers are
    /// installed (default true).
    #[serde(default = "yes")]
    pub snapshot: bool,
    /// How often the change table is read when it was empty, e.g. `"100ms"`.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
}

fn yes() -> bool {
    true
}

fn default_poll() -> Duration {
    Duration::from_millis(100)
}

impl TriggerConfig {
    /// A capture named `name` of every table, with a snapshot.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            filter: Filter::default(),
            snapshot: true,
            poll_interval: default_poll(),
        }
    }
}

/// A table as a trigger sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableInfo {
    pub id: TableId,
    /// Every column, in order, with its declared type (lowercase).
    pub columns: Vec<(String, String)>,
    /// The primary key's columns.
    pub key: Vec<String>,
}

/// A row of the change table.
struct ChangeRow {
    id: i64,
    schema: String,
    table: String,
    op: String,
    tx_id: Option<String>,
    old_row: Option<String>,
    new_row: Option<String>,
    changed_at: Option<String>,
}

/// The change table's rows (`id, schema_name, table_name, op, tx_id,
/// old_row, new_row, changed_at`, all but `id` as text) as [`ChangeRow`]s.
macro_rules! change_rows {
    ($rows:expr) => {
        $rows
            .into_iter()
            .map(|r| {
                Ok(super::ChangeRow {
                    id: r.try_get("id")?,
                    schema: r.try_get("schema_name")?,
                    table: r.try_get("table_name")?,
                    op: r.try_get("op")?,
                    tx_id: r.try_get("tx_id")?,
                    old_row: r.try_get("old_row")?,
                    new_row: r.try_get("new_row")?,
                    changed_at: r.try_get("changed_at")?,
                })
            })
            .collect()
    };
}
pub(crate) use change_rows;

/// Changes recorded by triggers, read from the change table.
pub struct TriggerCapture {
    db: Database,
    config: TriggerConfig,
    database_name: String,
    tables: HashMap<TableId, TableInfo>,
    /// Last id read.
    cursor: i64,
    /// The transaction being read: its id and the changes read of it.
    tx: Option<(String, u64)>,
    /// When the schema was last compared (MariaDB).
    checked_schema: Instant,
    /// SQLite's `schema_version` when the triggers were last installed.
    schema_version: i64,
}

impl std::fmt::Debug for TriggerCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerCapture")
            .field("name", &self.config.name)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

/// Every few seconds a server's schema is compared for new columns and
/// tables.
const SCHEMA_CHECK: Duration = Duration::from_secs(5);

impl TriggerCapture {
    /// Installs (or updates) the triggers on the captured tables of `db`
    /// and the change table, and starts reading after the last change
    /// acknowledged. A table without a primary key is refused.
    pub async fn start(db: Database, config: TriggerConfig) -> Result<Self, CaptureError> {
        check_name(&config.name)?;
        let database_name = match &db {
            Database::Sqlite(_) => "main".to_owned(),
            Database::Postgres(p) => sqlx::query_scalar("SELECT current_database()")
                .fetch_one(p)
                .await
                .map_err(unavailable)?,
            Database::Mysql(p) => sqlx::query_scalar::<_, String>("SELECT DATABASE()")
                .fetch_one(p)
                .await
                .map_err(unavailable)?,
        };
        let mut capture = Self {
            db,
            config,
            database_name,
            tables: HashMap::new(),
            cursor: 0,
            tx: None,
            checked_schema: Instant::now(),
            schema_version: 0,
        };
        capture.install().await?;
        Ok(capture)
    }

    /// The tables captured now.
    pub fn tables(&self) -> Vec<TableId> {
        let mut t: Vec<TableId> = self.tables.keys().cloned().collect();
        t.sort();
        t
    }

    /// Installs the change table and the triggers of every captured table
    /// that lacks them or whose columns changed.
    async fn install(&mut self) -> Result<(), CaptureError> {
        let found = match &self.db {
            Database::Sqlite(p) => sqlite::tables(p).await,
            Database::Postgres(p) => postgres::tables(p).await,
            Database::Mysql(p) => mariadb::tables(p).await,
        }
        .map_err(unavailable)?;
        let wanted: Vec<TableInfo> = found
            .into_iter()
            .filter(|t| self.config.filter.captures(&t.id))
            .collect();
        if let Some(t) = wanted.iter().find(|t| t.key.is_empty()) {
            return Err(CaptureError::permanent(format!(
                "table {} has no primary key: trigger mode keys each change by it; add a primary key \
                 or leave the table out (exclude = [\"{}\"])",
                t.id, t.id
            )));
        }
        let name = &self.config.name;
        let snapshot = self.config.snapshot;
        match &self.db {
            Database::Sqlite(p) => {
                self.schema_version = sqlite::install(p, name, &wanted, &self.tables, snapshot)
                    .await
                    .map_err(store_error)?;
            }
            Database::Postgres(p) => postgres::install(p, name, &wanted, &self.tables, snapshot)
                .await
                .map_err(store_error)?,
            Database::Mysql(p) => mariadb::install(p, name, &wanted, &self.tables, snapshot)
                .await
                .map_err(store_error)?,
        }
        self.tables = wanted.into_iter().map(|t| (t.id.clone(), t)).collect();
        self.checked_schema = Instant::now();
        Ok(())
    }

    /// Reinstalls the triggers when the schema changed since they were.
    async fn follow_schema(&mut self) -> Result<(), CaptureError> {
        let changed = match &self.db {
            Database::Sqlite(p) => {
                sqlite::schema_version(p).await.map_err(unavailable)? != self.schema_version
            }
            Database::Postgres(_) | Database::Mysql(_) => {
                self.checked_schema.elapsed() >= SCHEMA_CHECK
            }
        };
        if changed {
            self.install().await?;
        }
        Ok(())
    }

    async fn fetch(&self, limit: usize) -> Result<Vec<ChangeRow>, CaptureError> {
        let name = self.config.name.as_str();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match &self.db {
            Database::Sqlite(p) => sqlite::fetch(p, name, self.cursor, limit).await,
            Database::Postgres(p) => postgres::fetch(p, name, self.cursor, limit).await,
            Database::Mysql(p) => mariadb::fetch(p, name, self.cursor, limit).await,
        }
        .map_err(unavailable)
    }

    /// `row` as a change; `last_of_tx` when the next row belongs to
    /// another transaction (or there is none).
    fn change(&mut self, row: ChangeRow, last_of_tx: bool) -> Result<Captured, CaptureError> {
        let table = TableId::new(row.schema, row.table);
        let op = match row.op.as_str() {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            "t" => Op::Truncate,
            other => {
                return Err(CaptureError::permanent(format!(
                    "change {} of {table} has an unknown operation {other:?}",
                    row.id
                )))
            }
        };
        let parse = |text: Option<String>| -> Result<Option<Row>, CaptureError> {
            text.map(|t| parse_row(&t)).transpose().map_err(|e| {
                CaptureError::permanent(format!(
                    "change {} of {table} holds a row that is not a JSON object: {e}",
                    row.id
                ))
            })
        };
        let before = parse(row.old_row)?;
        let after = parse(row.new_row)?;
        let mut key = Row::new();
        if let (Some(info), false) = (self.tables.get(&table), op == Op::Truncate) {
            let from = after.as_ref().or(before.as_ref());
            for k in &info.key {
                let v = from.and_then(|r| r.get(k)).cloned().unwrap_or_default();
                key.insert(k.clone(), v);
            }
        }
        let tx = row.tx_id.clone().map(|id| {
            let order = match &self.tx {
                Some((current, n)) if *current == id => n + 1,
                _ => 1,
            };
            self.tx = if last_of_tx {
                None
            } else {
                Some((id.clone(), order))
            };
            TxOrder {
                id,
                order,
                total: last_of_tx.then_some(order),
            }
        });
        let commit_time = row
            .changed_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        Ok(Captured {
            change: Change {
                op,
                key,
                before,
                after,
                source: Source {
                    db: self.database_name.clone(),
                    table,
                    position: Position::ChangeId { id: row.id },
                    tx_id: row.tx_id,
                    commit_time,
                },
                tx,
                unchanged: vec![],
            },
            checkpoint: last_of_tx.then(|| Checkpoint(json!({ "id": row.id }))),
        })
    }

    /// Removes the capture's triggers and its rows of the change table
    /// (and the change table itself when no other capture uses it).
    pub async fn drop_capture(db: &Database, name: &str) -> Result<(), CaptureError> {
        check_name(name)?;
        match db {
            Database::Sqlite(p) => sqlite::uninstall(p, name).await,
            Database::Postgres(p) => postgres::uninstall(p, name).await,
            Database::Mysql(p) => mariadb::uninstall(p, name).await,
        }
        .map_err(store_error)
    }

    /// Backfills `table` for capture `name`: copies its current rows into
    /// the change table as `r` changes, in one transaction under the lock
    /// the triggers take, so that they sit in commit order among the
    /// changes (a row changed before the copy has its change first, one
    /// changed after has it after). The running capture ships them.
    /// Returns the rows copied.
    ///
    /// Refused (permanent) when the capture has no triggers on the table:
    /// a backfill never sends a table the capture leaves out.
    pub async fn backfill(db: &Database, name: &str, table: &TableId) -> Result<u64, CaptureError> {
        check_name(name)?;
        let (found, installed) = match db {
            Database::Sqlite(p) => {
                let installed = sqlite::installed(p, name).await.map_err(unavailable)?;
                let found = sqlite::tables(p).await.map_err(unavailable)?;
                (
                    found,
                    installed.contains(&table.name) && table.schema == "main",
                )
            }
            Database::Postgres(p) => {
                let installed = postgres::installed(p, name).await.map_err(unavailable)?;
                let found = postgres::tables(p).await.map_err(unavailable)?;
                (found, installed.contains(table))
            }
            Database::Mysql(p) => {
                let installed = mariadb::installed(p, name).await.map_err(unavailable)?;
                let found = mariadb::tables(p).await.map_err(unavailable)?;
                (found, installed.contains(&table.name))
            }
        };
        let info = found.into_iter().find(|t| t.id == *table);
        let Some(info) = info.filter(|_| installed) else {
            return Err(CaptureError::permanent(format!(
                "capture {name} has no triggers on {table}: a backfill reads only tables the \
                 capture captures (start it with the table included first)"
            )));
        };
        match db {
            Database::Sqlite(p) => sqlite::backfill(p, name, &info).await,
            Database::Postgres(p) => postgres::backfill(p, name, &info).await,
            Database::Mysql(p) => mariadb::copy_rows(p, name, &info).await,
        }
        .map_err(store_error)
    }

    /// Changes recorded and not yet acknowledged, and the age of the
    /// oldest (the capture's lag).
    pub async fn backlog(db: &Database, name: &str) -> Result<(i64, Option<f64>), CaptureError> {
        match db {
            Database::Sqlite(p) => sqlite::backlog(p, name).await,
            Database::Postgres(p) => postgres::backlog(p, name).await,
            Database::Mysql(p) => mariadb::backlog(p, name).await,
        }
        .map_err(unavailable)
    }
}

impl Capture for TriggerCapture {
    fn connector(&self) -> &'static str {
        match self.db {
            Database::Postgres(_) => "postgresql",
            Database::Mysql(_) => "mysql",
            Database::Sqlite(_) => "sqlite",
        }
    }

    fn database(&self) -> &str {
        &self.database_name
    }

    async fn read(&mut self, max: usize, wait: Duration) -> Result<Vec<Captured>, CaptureError> {
        self.follow_schema().await?;
        let max = max.max(1);
        let deadline = Instant::now() + wait;
        let mut rows = self.fetch(max + 1).await?;
        while rows.is_empty() && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(self.config.poll_interval.min(left)).await;
            rows = self.fetch(max + 1).await?;
        }
        // The row past `max` only tells whether the last one ends its
        // transaction; all of a transaction's rows commit together.
        let lookahead = if rows.len() > max { rows.pop() } else { None };
        let mut out = Vec::with_capacity(rows.len());
        let n = rows.len();
        let mut rows = rows.into_iter().peekable();
        let mut i = 0;
        while let Some(row) = rows.next() {
            i += 1;
            let next = if i == n {
                lookahead.as_ref()
            } else {
                rows.peek()
            };
            let last_of_tx = match (&row.tx_id, next) {
                (_, None) => true,
                (None, Some(_)) => true,
                (Some(a), Some(b)) => b.tx_id.as_ref() != Some(a),
            };
            self.cursor = row.id;
            let captured = self.change(row, last_of_tx)?;
            if self.config.filter.captures(&captured.change.source.table) {
                let mut captured = captured;
                self.config.filter.strip(&mut captured.change);
                out.push(captured);
            } else if let (Some(cp), Some(prev)) = (captured.checkpoint, out.last_mut()) {
                // A table left out since: its checkpoint moves to the
                // change before it.
                prev.checkpoint = Some(cp);
            }
        }
        Ok(out)
    }

    async fn acknowledge(&mut self, checkpoint: &Checkpoint) -> Result<(), CaptureError> {
        let Some(id) = checkpoint.0.get("id").and_then(serde_json::Value::as_i64) else {
            return Err(CaptureError::permanent(format!(
                "not a trigger-mode checkpoint: {}",
                checkpoint.0
            )));
        };
        let name = self.config.name.as_str();
        match &self.db {
            Database::Sqlite(p) => sqlite::prune(p, name, id).await,
            Database::Postgres(p) => postgres::prune(p, name, id).await,
            Database::Mysql(p) => mariadb::prune(p, name, id).await,
        }
        .map_err(unavailable)
    }
}

/// A capture's name goes into trigger names: letters, digits and `_`.
fn check_name(name: &str) -> Result<(), CaptureError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CaptureError::permanent(format!(
            "capture name {name:?}: use 1 to 32 letters, digits or '_' (it names the triggers)"
        )))
    }
}

/// The name of a trigger of capture `capture` on `table` for `op`
/// (`i`, `u`, `d`, `t`): short enough for MariaDB's 64 characters
/// whatever the table's name.
pub(crate) fn trigger_name(capture: &str, table: &TableId, op: &str) -> String {
    let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, table.to_string().as_bytes());
    let short: String = digest.simple().to_string().chars().take(12).collect();
    format!("ferry_cdc_{capture}_{short}_{op}")
}

/// Whether the trigger `name` is one of capture `capture`'s (and not of a
/// capture whose name merely starts the same).
pub(crate) fn is_trigger_of(name: &str, capture: &str) -> bool {
    let Some(rest) = name.strip_prefix(&format!("ferry_cdc_{capture}_")) else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 14 && b[..12].iter().all(u8::is_ascii_hexdigit) && b[12] == b'_'
}

/// A database that did not answer: retried.
fn unavailable(e: sqlx::Error) -> CaptureError {
    CaptureError::unavailable("the database did not answer").with_source(e)
}

/// A store error while installing: retried when it is a lost connection,
/// otherwise a refusal to explain.
fn store_error(e: sqlx::Error) -> CaptureError {
    match &e {
        sqlx::Error::Database(_) => {
            CaptureError::permanent("installing the capture's triggers failed").with_source(e)
        }
        _ => unavailable(e),
    }
}

/// Quotes an identifier with `q` (`"` or `` ` ``), doubling it inside.
pub(crate) fn quote(q: char, ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push(q);
    for c in ident.chars() {
        if c == q {
            out.push(q);
        }
        out.push(c);
    }
    out.push(q);
    out
}

/// A string literal with `'` doubled.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_trigger_names_short() {
        assert!(check_name("orders_1").is_ok());
        assert!(check_name("bad-name").is_err());
        assert!(check_name("").is_err());
        let long = "t".repeat(200);
        let n = trigger_name(&"c".repeat(32), &TableId::new("s", long), "u");
        assert!(n.len() <= 64, "{n}");
        let t = trigger_name("a", &TableId::new("s", "x"), "d");
        assert!(is_trigger_of(&t, "a"));
        assert!(!is_trigger_of(&t, "a_b"));
        assert!(!is_trigger_of(
            &trigger_name("a_b", &TableId::new("s", "x"), "d"),
            "a"
        ));
        assert_ne!(
            trigger_name("c", &TableId::new("s", "a"), "i"),
            trigger_name("c", &TableId::new("s", "b"), "i")
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote('"', r#"we"ird"#), r#""we""ird""#);
        assert_eq!(quote('`', "a`b"), "`a``b`");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
