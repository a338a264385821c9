//! The queries of pull mode, per database: a keyset page of a table in
//! `(updated_at, primary key)` order, each row as JSON (the trigger
//! modes' row JSON: `to_jsonb`, `JSON_OBJECT`, `json_object`) with its
//! `updated_at` as text.
//!
//! The text is one whose byte order is the database's order of the
//! values, so the capture can compare it without the database: on
//! PostgreSQL `2024-05-01T10:00:00.123456Z` (a `timestamptz`, in UTC) or
//! the same without `Z` (a `timestamp`); on MariaDB the same form as a
//! `timestamp` without zone, in the session's time zone; on SQLite the
//! stored text itself (SQLite compares text byte by byte). It goes back
//! into the queries cast to the column's type (`timestamptz`,
//! `DATETIME(6)`; as it is on SQLite).

use ferry_store::Database;
use serde_json::Value;
use sqlx::Row as _;

use super::state::ScanAt;
use crate::capture::CaptureError;
use crate::change::TableId;
use crate::triggers::{self, quote, TableInfo};

/// Runs `$sql` with `$args` on `$pool`: `(row JSON, updated_at text,
/// SQLite's type of updated_at)` per row.
macro_rules! fetch {
    ($pool:expr, $sql:expr, $args:expr, $sqlite:expr) => {{
        let mut q = sqlx::query($sql);
        for a in $args {
            q = match a {
                Arg::Text(s) => q.bind(s),
                Arg::Int(i) => q.bind(i),
                Arg::Float(f) => q.bind(f),
                Arg::Bool(b) => q.bind(b),
            };
        }
        match q.fetch_all($pool).await {
            Ok(rows) => rows
                .into_iter()
                .map(|r| {
                    let ty: Option<String> = if $sqlite {
                        r.try_get("ferry_type")?
                    } else {
                        None
                    };
                    Ok((r.try_get("ferry_row")?, r.try_get("ferry_u")?, ty))
                })
                .collect::<Result<Vec<(String, Option<String>, Option<String>)>, sqlx::Error>>(),
            Err(e) => Err(e),
        }
    }};
}

/// Which database the SQL is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

impl Dialect {
    pub fn of(db: &Database) -> Self {
        match db {
            Database::Sqlite(_) => Dialect::Sqlite,
            Database::Postgres(_) => Dialect::Postgres,
            Database::Mysql(_) => Dialect::Mysql,
        }
    }

    fn quote(self, ident: &str) -> String {
        match self {
            Dialect::Mysql => quote('`', ident),
            Dialect::Sqlite | Dialect::Postgres => quote('"', ident),
        }
    }

    fn param(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::Sqlite | Dialect::Mysql => "?".to_owned(),
        }
    }
}

/// Where a page starts.
pub(crate) enum From<'a> {
    /// At the table's first row.
    First,
    /// At the first row whose `updated_at` is at least this.
    AtLeast(&'a str),
    /// Right after this row.
    After(&'a ScanAt),
}

/// A row as read.
pub(crate) struct Fetched {
    /// The row as a JSON object.
    pub row: String,
    /// Its `updated_at`, as text.
    pub updated_at: String,
}

/// A value bound to a query.
enum Arg {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// A captured table and its queries.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub id: TableId,
    /// The primary key's columns, in order.
    pub key: Vec<String>,
    /// The `updated_at` column.
    pub updated_at: String,
    dialect: Dialect,
    /// `SELECT … FROM table AS ferry_t`, without a condition.
    select: String,
    /// `ORDER BY updated_at, key…`.
    order: String,
    /// `ferry_t.updated_at`.
    u_column: String,
    /// `ferry_t.k` for each key column.
    key_columns: Vec<String>,
    /// PostgreSQL: the type every bound value is cast to (`updated_at`'s
    /// first, then the key's).
    casts: Vec<String>,
}

impl Plan {
    /// How to read `table` with `updated_at` as its time column; a table
    /// pull mode cannot read is refused, saying what to add.
    pub fn new(
        dialect: Dialect,
        table: &TableInfo,
        updated_at: &str,
    ) -> Result<Self, CaptureError> {
        let id = &table.id;
        if table.key.is_empty() {
            return Err(CaptureError::permanent(format!(
                "table {id} has no primary key: pull mode pages and deduplicates by \
                 (updated_at, primary key); add a primary key or leave the table out \
                 (exclude = [\"{id}\"])"
            )));
        }
        let Some((_, ty)) = table.columns.iter().find(|(c, _)| c == updated_at) else {
            return Err(CaptureError::permanent(format!(
                "table {id} has no column `{updated_at}`: pull mode reads the rows whose \
                 `{updated_at}` moved; add the column (set on every insert and update) or name \
                 another one (updated_at_per_table), or leave the table out (exclude = [\"{id}\"])"
            )));
        };
        let q = |c: &str| format!("ferry_t.{}", dialect.quote(c));
        let u = q(updated_at);
        let target = match dialect {
            Dialect::Sqlite => dialect.quote(&id.name),
            Dialect::Postgres | Dialect::Mysql => {
                format!("{}.{}", dialect.quote(&id.schema), dialect.quote(&id.name))
            }
        };
        let not_a_time = || {
            CaptureError::permanent(format!(
                "column `{updated_at}` of table {id} is a {ty}: pull mode needs a time \
                 (timestamp or timestamptz on PostgreSQL, DATETIME or TIMESTAMP on MariaDB)"
            ))
        };
        let mut casts = Vec::new();
        let (row, text) = match dialect {
            Dialect::Postgres => {
                let (text, cast) = if !ty.starts_with("timestamp") {
                    return Err(not_a_time());
                } else if ty.ends_with("with time zone") && !ty.ends_with("without time zone") {
                    (
                        format!(
                            "to_char({u} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
                        ),
                        "timestamptz",
                    )
                } else {
                    (
                        format!("to_char({u}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"),
                        "timestamp",
                    )
                };
                casts.push(cast.to_owned());
                for k in &table.key {
                    let ty = table
                        .columns
                        .iter()
                        .find(|(c, _)| c == k)
                        .map_or("text", |(_, t)| t.as_str());
                    casts.push(ty.to_owned());
                }
                ("to_jsonb(ferry_t)::text".to_owned(), text)
            }
            Dialect::Mysql => {
                if !matches!(ty.as_str(), "datetime" | "timestamp") {
                    return Err(not_a_time());
                }
                (
                    format!(
                        "CAST({} AS CHAR)",
                        triggers::mariadb::row_json("ferry_t", &table.columns)
                    ),
                    format!("DATE_FORMAT({u}, '%Y-%m-%dT%H:%i:%s.%f')"),
                )
            }
            Dialect::Sqlite => (
                triggers::sqlite::row_json("ferry_t", &table.columns),
                // Anything but text is refused as it is read.
                format!("CASE WHEN typeof({u}) = 'text' THEN {u} END"),
            ),
        };
        let key_columns: Vec<String> = table.key.iter().map(|k| q(k)).collect();
        let order = std::iter::once(u.clone())
            .chain(key_columns.iter().cloned())
            .collect::<Vec<_>>()
            .join(", ");
        let mut select = format!("SELECT {row} AS ferry_row, {text} AS ferry_u");
        if dialect == Dialect::Sqlite {
            select.push_str(&format!(", typeof({u}) AS ferry_type"));
        }
        select.push_str(&format!(" FROM {target} AS ferry_t"));
        Ok(Self {
            id: id.clone(),
            key: table.key.clone(),
            updated_at: updated_at.to_owned(),
            dialect,
            select,
            order,
            u_column: u,
            key_columns,
            casts,
        })
    }

    /// Parameter `n` (1-based), cast to the type of the `i`-th compared
    /// column on PostgreSQL (0: `updated_at`) and `DATETIME(6)` for
    /// `updated_at` on MariaDB.
    fn param(&self, n: usize, i: usize) -> String {
        let p = self.dialect.param(n);
        match self.dialect {
            Dialect::Postgres => format!("CAST({p} AS {})", self.casts[i]),
            Dialect::Mysql if i == 0 => format!("CAST({p} AS DATETIME(6))"),
            Dialect::Mysql | Dialect::Sqlite => p,
        }
    }

    /// A bound key value: as text on PostgreSQL (cast there), as its JSON
    /// type elsewhere.
    fn arg(&self, value: &Value) -> Arg {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if self.dialect == Dialect::Postgres {
            return Arg::Text(text(value));
        }
        match value {
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Arg::Int(i),
                (None, Some(f)) if !n.is_u64() => Arg::Float(f),
                _ => Arg::Text(n.to_string()),
            },
            Value::Bool(b) => Arg::Bool(*b),
            other => Arg::Text(text(other)),
        }
    }

    /// The query of a page starting at `from`, and its arguments.
    fn page(&self, from: &From<'_>, limit: usize) -> Result<(String, Vec<Arg>), CaptureError> {
        let mut args = Vec::new();
        let condition = match from {
            From::First => format!("{} IS NOT NULL", self.u_column),
            From::AtLeast(at) => {
                args.push(Arg::Text((*at).to_owned()));
                format!("{} >= {}", self.u_column, self.param(1, 0))
            }
            From::After(scan) => {
                args.push(Arg::Text(scan.updated_at.clone()));
                let mut bound = vec![self.param(1, 0)];
                for (i, k) in self.key.iter().enumerate() {
                    let Some(v) = scan.key.get(k) else {
                        return Err(CaptureError::permanent(format!(
                            "the saved position of table {} lacks key column `{k}` \
                             (was the primary key changed?)",
                            self.id
                        )));
                    };
                    args.push(self.arg(v));
                    bound.push(self.param(i + 2, i + 1));
                }
                let columns = std::iter::once(self.u_column.clone())
                    .chain(self.key_columns.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("({columns}) > ({})", bound.join(", "))
            }
        };
        let n = args.len() + 1;
        args.push(Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        let sql = format!(
            "{} WHERE {condition} ORDER BY {} LIMIT {}",
            self.select,
            self.order,
            self.dialect.param(n)
        );
        Ok((sql, args))
    }

    /// Up to `limit` rows from `from` on.
    pub async fn fetch(
        &self,
        db: &Database,
        from: From<'_>,
        limit: usize,
    ) -> Result<Vec<Fetched>, CaptureError> {
        let (sql, args) = self.page(&from, limit)?;
        let rows = match db {
            Database::Postgres(p) => fetch!(p, &sql, args, false),
            Database::Mysql(p) => fetch!(p, &sql, args, false),
            Database::Sqlite(p) => fetch!(p, &sql, args, true),
        };
        rows.map_err(|e| super::db_failure(e, &self.id))?
            .into_iter()
            .map(|(row, updated_at, ty)| match updated_at {
                Some(updated_at) => Ok(Fetched { row, updated_at }),
                None => Err(CaptureError::permanent(format!(
                    "table {} has a row whose `{}` is {}: pull mode reads finite times \
                     (on SQLite, stored as text: 2024-05-01 10:00:00.123)",
                    self.id,
                    self.updated_at,
                    ty.as_deref().unwrap_or("not a finite time")
                ))),
            })
            .collect()
    }

    /// The newest `updated_at` of the table, if it has rows.
    pub async fn newest(&self, db: &Database) -> Result<Option<String>, CaptureError> {
        let sql = format!(
            "{} WHERE {} IS NOT NULL ORDER BY {} DESC LIMIT 1",
            self.select, self.u_column, self.u_column
        );
        let args = Vec::new();
        let rows = match db {
            Database::Postgres(p) => fetch!(p, &sql, args, false),
            Database::Mysql(p) => fetch!(p, &sql, args, false),
            Database::Sqlite(p) => fetch!(p, &sql, args, true),
        };
        let rows = rows.map_err(|e| super::db_failure(e, &self.id))?;
        Ok(rows.into_iter().next().and_then(|(_, u, _)| u))
    }
}
