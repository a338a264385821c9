//! The pull capture's configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::capture::CaptureError;
use crate::change::TableId;
use crate::filter::{glob, Filter};

/// A pull capture: rows changed since the last poll, found by their
/// `updated_at` column.
///
/// ```toml
/// name = "shop"
/// tables = { include = ["orders", "customers"] }
/// updated_at_per_table = { customers = "modified" }
/// soft_delete = { column = "deleted_at" }
/// overlap = "5s"
/// poll_interval = "1s"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullConfig {
    /// The capture's name: the key of its saved state in
    /// `ferry_cdc_offsets` and part of every change id. Two captures of
    /// one database need two names.
    pub name: String,
    /// Tables captured and columns left out. Ferry's own `ferry_*` tables
    /// never. Every captured table needs a primary key and the
    /// `updated_at` column.
    #[serde(default)]
    pub tables: Filter,
    /// The column every writer sets to the time of its change, on insert
    /// and on update (a trigger, `ON UPDATE CURRENT_TIMESTAMP`, the ORM):
    /// `timestamp`/`timestamptz` on PostgreSQL, `DATETIME`/`TIMESTAMP` on
    /// MariaDB, text such as `2024-05-01 10:00:00.123` on SQLite.
    /// Default `updated_at`.
    #[serde(default = "default_updated_at")]
    pub updated_at: String,
    /// Tables whose column has another name: `table` or `schema.table`
    /// (with `*` as in `tables`) → column.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub updated_at_per_table: BTreeMap<String, String>,
    /// A column that marks a row deleted without removing it: such a row
    /// is sent as a `d` change whose `before` is the row. Tables without
    /// the column have no soft deletes. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_delete: Option<SoftDelete>,
    /// How far behind the newest `updated_at` read each poll looks again,
    /// for transactions that commit after rows with a later `updated_at`
    /// were read (their `updated_at` is the time of the write, not of the
    /// commit). A transaction that takes longer than this from its write
    /// to its commit can be missed. Default `"5s"`.
    #[serde(default = "default_overlap", with = "humantime_serde")]
    pub overlap: Duration,
    /// How often a table is polled once everything in it was read, e.g.
    /// `"1s"` (the default).
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Whether a table's rows at the capture's first start are sent (as
    /// `r` changes, default true). With false, only rows written after the
    /// start are (the state is saved at once so that a restart keeps that
    /// start). A table first seen later is always read from its
    /// beginning.
    #[serde(default = "yes")]
    pub snapshot: bool,
    /// Rows read per query (and at most per `read`). Default 1000.
    #[serde(default = "default_chunk")]
    pub chunk_size: usize,
    /// Where the capture's state is kept (`sqlite://…`, `postgres://…` or
    /// `mysql://…`, table `ferry_cdc_offsets`). Default: the source
    /// database itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsets: Option<String>,
}

/// How a soft-deleted row is recognised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftDelete {
    /// The column, e.g. `deleted_at` or `deleted`.
    pub column: String,
    /// `not_null` (the default): deleted when the column is not null (a
    /// `deleted_at` time). `true`: deleted when it is true or a non-zero
    /// number (a boolean `deleted`; MariaDB's and SQLite's booleans are
    /// numbers).
    #[serde(default)]
    pub when: DeletedWhen,
}

/// When a row counts as soft-deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletedWhen {
    /// The column is not null.
    #[default]
    NotNull,
    /// The column is true (or a non-zero number).
    True,
}

impl SoftDelete {
    /// Whether `value` (the column's value in a row) marks the row deleted.
    pub fn deleted(&self, value: Option<&serde_json::Value>) -> bool {
        use serde_json::Value;
        match (self.when, value) {
            (_, None | Some(Value::Null)) => false,
            (DeletedWhen::NotNull, Some(_)) => true,
            (DeletedWhen::True, Some(Value::Bool(b))) => *b,
            (DeletedWhen::True, Some(Value::Number(n))) => n.as_f64() != Some(0.0),
            (DeletedWhen::True, Some(Value::String(s))) => {
                matches!(s.as_str(), "1" | "t" | "true" | "TRUE" | "True")
            }
            (DeletedWhen::True, Some(_)) => false,
        }
    }
}

fn default_updated_at() -> String {
    "updated_at".to_owned()
}

fn default_overlap() -> Duration {
    Duration::from_secs(5)
}

fn default_poll() -> Duration {
    Duration::from_secs(1)
}

fn default_chunk() -> usize {
    1000
}

fn yes() -> bool {
    true
}

impl PullConfig {
    /// A capture named `name` of every table, with every other setting at
    /// its default.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            tables: Filter::default(),
            updated_at: default_updated_at(),
            updated_at_per_table: BTreeMap::new(),
            soft_delete: None,
            overlap: default_overlap(),
            poll_interval: default_poll(),
            snapshot: true,
            chunk_size: default_chunk(),
            offsets: None,
        }
    }

    /// A permanent error naming the first setting that cannot work.
    pub fn validate(&self) -> Result<(), CaptureError> {
        if self.name.trim().is_empty() {
            return Err(CaptureError::permanent("the capture's name is empty"));
        }
        if self.chunk_size == 0 {
            return Err(CaptureError::permanent("chunk_size must be at least 1"));
        }
        if self.poll_interval.is_zero() {
            // Zero would query the tables without pause while nothing moves.
            return Err(CaptureError::permanent("poll_interval must be more than 0"));
        }
        let empty = std::iter::once(("", &self.updated_at))
            .chain(
                self.updated_at_per_table
                    .iter()
                    .map(|(t, c)| (t.as_str(), c)),
            )
            .find(|(_, c)| c.trim().is_empty());
        if let Some((table, _)) = empty {
            return Err(CaptureError::permanent(if table.is_empty() {
                "updated_at names no column".to_owned()
            } else {
                format!("updated_at_per_table: {table} names no column")
            }));
        }
        if self
            .soft_delete
            .as_ref()
            .is_some_and(|s| s.column.trim().is_empty())
        {
            return Err(CaptureError::permanent("soft_delete names no column"));
        }
        Ok(())
    }

    /// The `updated_at` column of `table`: the first entry of
    /// `updated_at_per_table` that names it (in the map's order), or
    /// `updated_at`.
    pub fn updated_at_of(&self, table: &TableId) -> &str {
        self.updated_at_per_table
            .iter()
            .find(|(pattern, _)| match pattern.split_once('.') {
                Some((s, t)) => glob(s, &table.schema) && glob(t, &table.name),
                None => glob(pattern, &table.name),
            })
            .map_or(self.updated_at.as_str(), |(_, c)| c.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_unknown_fields() {
        let c: PullConfig = serde_json::from_value(json!({"name": "shop"})).unwrap();
        assert_eq!(c, PullConfig::new("shop"));
        assert_eq!(c.overlap, Duration::from_secs(5));
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert!(c.snapshot);
        assert!(c.validate().is_ok());
        assert!(
            serde_json::from_value::<PullConfig>(json!({"name": "x", "overlapp": "1s"})).is_err()
        );
        let c: PullConfig = serde_json::from_value(json!({
            "name": "x", "overlap": "250ms", "soft_delete": {"column": "deleted", "when": "true"},
        }))
        .unwrap();
        assert_eq!(c.overlap, Duration::from_millis(250));
        assert_eq!(c.soft_delete.unwrap().when, DeletedWhen::True);
        let mut zero = PullConfig::new("x");
        zero.chunk_size = 0;
        assert!(zero.validate().is_err());
        let mut busy = PullConfig::new("x");
        busy.poll_interval = Duration::ZERO;
        assert!(busy.validate().is_err());
    }

    #[test]
    fn updated_at_per_table() {
        let mut c = PullConfig::new("x");
        c.updated_at_per_table
            .insert("public.customers".into(), "modified".into());
        c.updated_at_per_table
            .insert("legacy_*".into(), "mtime".into());
        let t = |s: &str, n: &str| TableId::new(s, n);
        assert_eq!(c.updated_at_of(&t("public", "customers")), "modified");
        assert_eq!(c.updated_at_of(&t("other", "customers")), "updated_at");
        assert_eq!(c.updated_at_of(&t("main", "legacy_orders")), "mtime");
    }

    #[test]
    fn soft_deletes() {
        let at = SoftDelete {
            column: "deleted_at".into(),
            when: DeletedWhen::NotNull,
        };
        assert!(at.deleted(Some(&json!("2024-01-01"))));
        assert!(!at.deleted(Some(&json!(null))));
        assert!(!at.deleted(None));
        let flag = SoftDelete {
            column: "deleted".into(),
            when: DeletedWhen::True,
        };
        assert!(flag.deleted(Some(&json!(true))));
        assert!(flag.deleted(Some(&json!(1))));
        assert!(!flag.deleted(Some(&json!(0))));
        assert!(!flag.deleted(Some(&json!(false))));
        assert!(!flag.deleted(Some(&json!(null))));
    }
}
