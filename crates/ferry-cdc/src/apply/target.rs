//! What differs between the target databases: how a table is described,
//! how a value is bound so that the column's type takes it, how a table is
//! emptied. The statements themselves are written once, in
//! [`super::writer`].

use std::collections::HashMap;
use std::fmt;

use ferry_store::dialect::Dialect;
use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::error::BoxDynError;

use crate::triggers::quote;

/// A target table's name: in the target's default schema (database on
/// MariaDB) unless `schema` is set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TargetName {
    pub schema: Option<String>,
    pub name: String,
}

impl TargetName {
    /// `schema.table` or `table`, as the config writes it.
    pub fn parse(text: &str) -> Self {
        match text.split_once('.') {
            Some((schema, name)) => Self {
                schema: Some(schema.to_owned()),
                name: name.to_owned(),
            },
            None => Self {
                schema: None,
                name: text.to_owned(),
            },
        }
    }

    /// The name quoted for `DB`'s SQL.
    pub fn quoted<DB: Target>(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote(DB::QUOTE, s), quote(DB::QUOTE, &self.name)),
            None => quote(DB::QUOTE, &self.name),
        }
    }
}

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A target table as its database describes it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Shape {
    /// Column → its type as the database prints it (PostgreSQL's
    /// `format_type`, MariaDB's `DATA_TYPE`, SQLite's declared type).
    pub columns: HashMap<String, String>,
    /// The primary key's columns.
    pub key: Vec<String>,
}

/// A target database.
pub(crate) trait Target: Dialect {
    /// How identifiers are quoted.
    const QUOTE: char;

    /// The type of `ferry_cdc_applied.applied_at`.
    const TIME: &'static str;

    /// The columns and key of `table`; `None` when there is no such table.
    fn describe<'a>(
        conn: &'a mut Self::Connection,
        table: &'a TargetName,
    ) -> BoxFuture<'a, Result<Option<Shape>, sqlx::Error>>;

    /// The `n`th parameter (1-based) as the value of a column of type
    /// `ty`.
    fn placeholder(n: usize, ty: &str) -> String;

    /// Appends `value` for a column of type `ty`.
    fn bind(args: &mut Self::Arguments<'_>, value: &Value, ty: &str) -> Result<(), BoxDynError>;

    /// The statement that removes every row of `table` (quoted) inside
    /// the open transaction.
    fn truncate(table: &str) -> String;
}

/// `$n` or `?`, for statements whose parameters need no cast.
pub(crate) fn param<DB: Dialect>(n: usize) -> String {
    if DB::NUMBERED_PARAMS {
        format!("${n}")
    } else {
        "?".to_owned()
    }
}

/// JSON that is no scalar (a `json` column's document) as its text.
pub(crate) fn json_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
