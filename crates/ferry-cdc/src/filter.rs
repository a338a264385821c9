//! Which tables and columns leave the database.

use serde::{Deserialize, Serialize};

use crate::change::{Change, TableId};

/// Tables captured and columns left out.
///
/// A table is named `table` or `schema.table`; `*` matches any run of
/// characters (`public.*`, `*.audit_*`). Ferry's own tables
/// (`ferry_*`) are never captured.
///
/// What an unqualified `table` (and the `table` of `table.column`) means
/// depends on the source:
///
/// * **MariaDB/MySQL**, whose schemas are databases and whose binlog is
///   the whole server's: when the source URL names a database, that
///   database ([`scoped`](Filter::scoped) qualifies the patterns when the
///   capture is built). `db.table` names another database, `*.table` the
///   table in every database. Without a database in the URL, an
///   unqualified name matches the table in every database.
/// * **PostgreSQL**: a connection (and its slot) sees one database only;
///   an unqualified name matches the table in any schema of it.
/// * **SQLite**: one schema, `main`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Tables to capture; empty captures every table.
    #[serde(default)]
    pub include: Vec<String>,
    /// Tables never captured, even when `include` names them.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Columns that never leave (personal data): `table.column` or
    /// `schema.table.column`, with `*` as above.
    #[serde(default)]
    pub exclude_columns: Vec<String>,
}

impl Filter {
    /// Whether changes of `table` are captured.
    pub fn captures(&self, table: &TableId) -> bool {
        if table.name.starts_with("ferry_") {
            return false;
        }
        let named = |patterns: &[String]| patterns.iter().any(|p| table_matches(p, table));
        (self.include.is_empty() || named(&self.include)) && !named(&self.exclude)
    }

    /// Whether `column` of `table` is left out.
    pub fn drops_column(&self, table: &TableId, column: &str) -> bool {
        self.exclude_columns
            .iter()
            .any(|p| match p.rsplit_once('.') {
                Some((t, c)) => glob(c, column) && table_matches(t, table),
                None => false,
            })
    }

    /// The filter with every unqualified table pattern of `include`,
    /// `exclude` and `exclude_columns` qualified with `schema` (`orders`
    /// becomes `shop.orders`, `orders.email` becomes `shop.orders.email`);
    /// qualified patterns (`other.orders`, `*.orders`) stay as they are.
    /// `schema` empty leaves the filter as it is.
    pub fn scoped(&self, schema: &str) -> Filter {
        if schema.is_empty() {
            return self.clone();
        }
        let table = |p: &String| {
            if p.contains('.') {
                p.clone()
            } else {
                format!("{schema}.{p}")
            }
        };
        // `table.column` has one dot; `schema.table.column` two.
        let column = |p: &String| {
            if p.matches('.').count() == 1 {
                format!("{schema}.{p}")
            } else {
                p.clone()
            }
        };
        Filter {
            include: self.include.iter().map(table).collect(),
            exclude: self.exclude.iter().map(table).collect(),
            exclude_columns: self.exclude_columns.iter().map(column).collect(),
        }
    }

    /// `change` without its excluded columns (from the key too).
    pub fn strip(&self, change: &mut Change) {
        if self.exclude_columns.is_empty() {
            return;
        }
        let Change {
            key,
            before,
            after,
            source,
            unchanged,
            ..
        } = change;
        let keep = |c: &String| !self.drops_column(&source.table, c);
        for row in [before, after].into_iter().flatten() {
            row.retain(|c, _| keep(c));
        }
        key.retain(|c, _| keep(c));
        unchanged.retain(keep);
    }
}

/// `pattern` (`table` or `schema.table`) names `table`.
fn table_matches(pattern: &str, table: &TableId) -> bool {
    match pattern.split_once('.') {
        Some((s, t)) => glob(s, &table.schema) && glob(t, &table.name),
        None => glob(pattern, &table.name),
    }
}

/// `*` matches any run of characters; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, n: &str) -> TableId {
        TableId::new(s, n)
    }

    #[test]
    fn include_exclude_and_own_tables() {
        let f = Filter {
            include: vec!["public.*".into(), "shop.orders".into()],
            exclude: vec!["*.audit_*".into()],
            exclude_columns: vec![],
        };
        assert!(f.captures(&t("public", "users")));
        assert!(f.captures(&t("shop", "orders")));
        assert!(!f.captures(&t("shop", "items")));
        assert!(!f.captures(&t("public", "audit_log")));
        assert!(!f.captures(&t("public", "ferry_outbox")));
        assert!(Filter::default().captures(&t("x", "y")));
    }

    #[test]
    fn columns_are_dropped_by_table_and_name() {
        let f = Filter {
            exclude_columns: vec!["users.email".into(), "public.*.ssn".into()],
            ..Filter::default()
        };
        assert!(f.drops_column(&t("public", "users"), "email"));
        assert!(f.drops_column(&t("public", "people"), "ssn"));
        assert!(!f.drops_column(&t("public", "users"), "name"));
        assert!(!f.drops_column(&t("other", "people"), "ssn"));
    }

    #[test]
    fn scoped_qualifies_only_unqualified_patterns() {
        let f = Filter {
            include: vec!["orders".into(), "other.orders".into(), "*.items".into()],
            exclude: vec!["audit_*".into(), "x.y".into()],
            exclude_columns: vec!["orders.email".into(), "*.ssn".into(), "o.t.c".into()],
        }
        .scoped("shop");
        assert_eq!(f.include, ["shop.orders", "other.orders", "*.items"]);
        assert_eq!(f.exclude, ["shop.audit_*", "x.y"]);
        assert_eq!(
            f.exclude_columns,
            ["shop.orders.email", "shop.*.ssn", "o.t.c"]
        );
        assert!(f.captures(&t("shop", "orders")));
        assert!(!f.captures(&t("tenant2", "orders")));
        assert!(f.captures(&t("other", "orders")));
        assert!(f.captures(&t("tenant2", "items")));
        assert!(!f.captures(&t("shop", "audit_log")));
        assert!(f.drops_column(&t("shop", "orders"), "email"));
        assert!(!f.drops_column(&t("other", "orders"), "email"));
        assert!(f.drops_column(&t("shop", "people"), "ssn"));
        assert!(!f.drops_column(&t("tenant2", "people"), "ssn"));
        // Unqualified names match every schema until scoped.
        let bare = Filter {
            include: vec!["orders".into()],
            ..Filter::default()
        };
        assert!(bare.captures(&t("tenant2", "orders")));
        assert_eq!(bare.scoped(""), bare);
    }

    #[test]
    fn globs() {
        assert!(glob("a*c", "abc"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "a-b-c"));
        assert!(!glob("a*c", "ab"));
        assert!(!glob("abc", "abcd"));
    }
}
