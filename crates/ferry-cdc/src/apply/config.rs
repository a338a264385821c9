//! How changes are applied: which target table and columns each source
//! table's changes go to, and how much goes in one target transaction.

use std::collections::BTreeMap;

use ferry_delivery::SinkBackoff;
use serde::{Deserialize, Serialize};

use crate::change::TableId;

/// How a capture's changes are applied to a target database.
///
/// ```toml
/// capture = "shop"
/// batch_size = 500
///
/// [tables]
/// "public.orders" = "orders_copy"      # a table of the target's default schema
/// "public.users" = "archive.users"     # schema.table (PostgreSQL), database.table (MariaDB)
///
/// [columns."public.orders"]
/// rename = { total = "amount" }
/// drop = ["internal_note"]
/// ```
///
/// Source tables are named `schema.table` as the capture names them
/// (`main.orders` on SQLite, `database.orders` on MariaDB), or by their
/// name alone. From PostgreSQL or SQLite, the name alone matches that
/// table in any schema. From MariaDB, whose schemas are databases, it
/// names the table of the capture's database (the one its URL names) only,
/// as the capture's own table patterns do: a table of another database
/// (captured with `other.orders` or `*.orders`) is mapped by
/// `other.orders`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfig {
    /// The capture's name: its row of the target's `ferry_cdc_applied`,
    /// which holds the position the target has applied up to, and the
    /// name in logs.
    pub capture: String,
    /// Target table per source table. By default a source table's changes
    /// go to the table of the same name in the target's default schema
    /// (PostgreSQL's `current_schema()`, MariaDB's database, SQLite's
    /// `main`); from PostgreSQL to PostgreSQL, to the same schema and name.
    /// A dot separates the schema from the name.
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
    /// Columns renamed or left out, per source table. By default every
    /// column goes to the target column of the same name.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnMapping>,
    /// Changes written in one target transaction, at least: the
    /// transaction commits at the first end of a source transaction once
    /// this many are written (or when the capture has nothing more at
    /// hand). A source transaction is never split: it commits whole, with
    /// its checkpoint.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Pause while the target (or the source) is unreachable.
    #[serde(default)]
    pub backoff: SinkBackoff,
}

/// Columns of one source table renamed or left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMapping {
    /// Source column → target column.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Source columns not written to the target (a key column cannot be
    /// left out).
    #[serde(default)]
    pub drop: Vec<String>,
}

fn default_batch_size() -> usize {
    500
}

impl ApplyConfig {
    /// Every table to the table of the same name, 500 changes a
    /// transaction, for the capture `capture`.
    pub fn new(capture: impl Into<String>) -> Self {
        Self {
            capture: capture.into(),
            tables: BTreeMap::new(),
            columns: BTreeMap::new(),
            batch_size: default_batch_size(),
            backoff: SinkBackoff::default(),
        }
    }

    /// Refuses what cannot work: an empty capture name or batch, empty
    /// names, a column both renamed and left out, two columns renamed to
    /// the same target column.
    pub fn validate(&self) -> Result<(), String> {
        if self.capture.is_empty() || self.capture.len() > 255 {
            return Err("capture: give the capture's name (1 to 255 characters)".into());
        }
        if self.batch_size == 0 {
            return Err("batch_size: at least 1".into());
        }
        for (source, target) in &self.tables {
            if source.is_empty() || target.is_empty() || target.split('.').any(str::is_empty) {
                return Err(format!(
                    "tables: {source:?} = {target:?}: name both tables (`schema.table` or `table`)"
                ));
            }
        }
        for (table, mapping) in &self.columns {
            for dropped in &mapping.drop {
                if mapping.rename.contains_key(dropped) {
                    return Err(format!(
                        "columns.{table:?}: {dropped:?} is both renamed and dropped"
                    ));
                }
            }
            let mut targets = std::collections::BTreeSet::new();
            for (from, to) in &mapping.rename {
                if from.is_empty() || to.is_empty() {
                    return Err(format!("columns.{table:?}.rename: empty column name"));
                }
                if !targets.insert(to) {
                    return Err(format!(
                        "columns.{table:?}.rename: two columns renamed to {to:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The mapping with every source table named by its name alone
    /// (`orders`) named `schema.orders` instead, unless `schema.orders`
    /// is named too (then that one holds). `schema` empty leaves it as it
    /// is. For a MariaDB source, where a bare name means the capture's
    /// database.
    pub fn scoped(&self, schema: &str) -> ApplyConfig {
        fn qualify<V: Clone>(map: &BTreeMap<String, V>, schema: &str) -> BTreeMap<String, V> {
            let mut out: BTreeMap<String, V> = map
                .iter()
                .filter(|(k, _)| k.contains('.'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in map.iter().filter(|(k, _)| !k.contains('.')) {
                out.entry(format!("{schema}.{k}"))
                    .or_insert_with(|| v.clone());
            }
            out
        }
        if schema.is_empty() {
            return self.clone();
        }
        ApplyConfig {
            tables: qualify(&self.tables, schema),
            columns: qualify(&self.columns, schema),
            ..self.clone()
        }
    }

    /// The target table named for `table`, if any: by `schema.table`,
    /// else by the name alone.
    pub(crate) fn table_for(&self, table: &TableId) -> Option<&str> {
        self.tables
            .get(&table.to_string())
            .or_else(|| self.tables.get(&table.name))
            .map(String::as_str)
    }

    /// The column mapping of `table` (none when the config has none).
    pub(crate) fn columns_for(&self, table: &TableId) -> Option<&ColumnMapping> {
        self.columns
            .get(&table.to_string())
            .or_else(|| self.columns.get(&table.name))
    }
}

impl ColumnMapping {
    /// The target column of source column `column`; `None` when dropped.
    pub(crate) fn target<'a>(&'a self, column: &'a str) -> Option<&'a str> {
        if self.drop.iter().any(|d| d == column) {
            return None;
        }
        Some(self.rename.get(column).map_or(column, String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_with_defaults() {
        let c: ApplyConfig = parse(
            r#"{"capture": "shop", "tables": {"public.orders": "orders_copy"},
                "columns": {"orders": {"rename": {"total": "amount"}, "drop": ["note"]}}}"#,
        );
        assert_eq!(c.batch_size, 500);
        c.validate().unwrap();
        let orders = TableId::new("public", "orders");
        assert_eq!(c.table_for(&orders), Some("orders_copy"));
        assert_eq!(c.table_for(&TableId::new("public", "users")), None);
        let m = c.columns_for(&orders).unwrap();
        assert_eq!(m.target("total"), Some("amount"));
        assert_eq!(m.target("note"), None);
        assert_eq!(m.target("id"), Some("id"));
    }

    #[test]
    fn unknown_fields_and_contradictions_are_refused() {
        assert!(serde_json::from_str::<ApplyConfig>(r#"{"capture": "a", "batch": 3}"#).is_err());
        let mut c = ApplyConfig::new("a");
        c.columns.insert(
            "t".into(),
            ColumnMapping {
                rename: [("x".to_owned(), "y".to_owned())].into(),
                drop: vec!["x".into()],
            },
        );
        assert!(c
            .validate()
            .unwrap_err()
            .contains("both renamed and dropped"));
        let mut c = ApplyConfig::new("a");
        c.batch_size = 0;
        assert!(c.validate().is_err());
        let mut c = ApplyConfig::new("a");
        c.tables.insert("t".into(), "s.".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn scoped_names_bare_source_tables_in_the_schema() {
        let c = parse(
            r#"{"capture": "shop", "tables": {"orders": "orders_copy", "items": "a",
                "shop.items": "b", "other.orders": "other_orders"},
                "columns": {"orders": {"drop": ["email"]}}}"#,
        )
        .scoped("shop");
        let table = |s: &str, n: &str| c.table_for(&TableId::new(s, n));
        assert_eq!(table("shop", "orders"), Some("orders_copy"));
        assert_eq!(table("tenant2", "orders"), None);
        assert_eq!(table("other", "orders"), Some("other_orders"));
        assert_eq!(table("shop", "items"), Some("b"));
        assert!(c.columns_for(&TableId::new("shop", "orders")).is_some());
        assert!(c.columns_for(&TableId::new("tenant2", "orders")).is_none());
        // Unscoped, a bare name matches every schema.
        let bare = parse(r#"{"capture": "shop", "tables": {"orders": "orders_copy"}}"#);
        assert_eq!(
            bare.table_for(&TableId::new("tenant2", "orders")),
            Some("orders_copy")
        );
        assert_eq!(bare.scoped(""), bare);
    }

    fn parse(json: &str) -> ApplyConfig {
        serde_json::from_str(json).unwrap()
    }
}
