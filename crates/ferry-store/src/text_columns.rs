//! UUIDs and times read back as text: SQLite keeps them so (it has no
//! type for either), and MariaDB's UUID columns reach the client as text.
//! One reading of each for every table of Ferry's.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A UUID stored as text in `column`.
pub(crate) fn uuid(column: &str, s: &str) -> Result<Uuid, sqlx::Error> {
    s.parse().map_err(|e| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    })
}

/// A time stored as text in `column`: RFC 3339 as Ferry writes it, or
/// `YYYY-MM-DD HH:MM:SS[.fff]` from `datetime('now')` in a plain-SQL insert.
pub(crate) fn time(column: &str, s: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").map(|t| t.and_utc())
        })
        .map_err(|e| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(e),
        })
}
