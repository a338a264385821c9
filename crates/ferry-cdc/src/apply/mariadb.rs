//! MariaDB as a target: numbers and booleans bound as such, everything
//! else as text, which MariaDB converts to the column's type (strictly,
//! under the default `STRICT_TRANS_TABLES`). Times with an offset
//! (PostgreSQL's `timestamptz`, RFC 3339 with `Z`) are given to `DATETIME`
//! and `TIMESTAMP` columns in UTC, the session's time zone.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::error::BoxDynError;
use sqlx::mysql::{MySqlArguments, MySqlConnection};
use sqlx::{Arguments, Row};

use super::target::{json_text, Shape, Target, TargetName};

impl Target for sqlx::MySql {
    const QUOTE: char = '`';
    const TIME: &'static str = "DATETIME(6)";

    fn describe<'a>(
        conn: &'a mut MySqlConnection,
        table: &'a TargetName,
    ) -> BoxFuture<'a, Result<Option<Shape>, sqlx::Error>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT CAST(COLUMN_NAME AS CHAR) AS name, CAST(DATA_TYPE AS CHAR) AS ty,
                        CAST(COLUMN_KEY = 'PRI' AS SIGNED) AS pk
                 FROM information_schema.COLUMNS
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?
                 ORDER BY ORDINAL_POSITION",
            )
            .bind(table.schema.as_deref())
            .bind(&table.name)
            .fetch_all(&mut *conn)
            .await?;
            if rows.is_empty() {
                return Ok(None);
            }
            let mut shape = Shape::default();
            for r in rows {
                let name: String = r.try_get("name")?;
                if r.try_get::<i64, _>("pk")? == 1 {
                    shape.key.push(name.clone());
                }
                shape
                    .columns
                    .insert(name, r.try_get::<String, _>("ty")?.to_ascii_lowercase());
            }
            Ok(Some(shape))
        })
    }

    fn placeholder(_n: usize, _ty: &str) -> String {
        "?".to_owned()
    }

    fn bind(args: &mut MySqlArguments, value: &Value, ty: &str) -> Result<(), BoxDynError> {
        match value {
            Value::Null => args.add(None::<String>),
            Value::Bool(b) => args.add(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => args.add(i),
                (None, Some(u), _) => args.add(u),
                (None, None, Some(f)) => args.add(f),
                _ => args.add(n.to_string()),
            },
            Value::String(s) if matches!(ty, "datetime" | "timestamp") => {
                args.add(utc_datetime(s).unwrap_or_else(|| s.clone()))
            }
            other => args.add(json_text(other)),
        }
    }

    fn truncate(table: &str) -> String {
        // TRUNCATE would commit the open transaction (it is DDL on
        // MariaDB): a DELETE is rolled back with the batch.
        format!("DELETE FROM {table}")
    }
}

/// A time with an offset (`2024-05-01T13:45:00Z`, PostgreSQL's
/// `2024-05-01 15:45:00+02`) as MariaDB's UTC `DATETIME` text; `None`
/// for text without an offset, given as it is.
fn utc_datetime(text: &str) -> Option<String> {
    let t = DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .ok()?;
    Some(
        t.with_timezone(&Utc)
            .format("%Y-%m-%d %H:%M:%S%.6f")
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::utc_datetime;

    #[test]
    fn times_with_an_offset_become_utc() {
        assert_eq!(
            utc_datetime("2024-05-01T13:45:00Z").as_deref(),
            Some("2024-05-01 13:45:00.000000")
        );
        assert_eq!(
            utc_datetime("2024-05-01 15:45:00.25+02").as_deref(),
            Some("2024-05-01 13:45:00.250000")
        );
        assert_eq!(utc_datetime("2024-05-01T13:45:00"), None);
        assert_eq!(utc_datetime("soon"), None);
    }
}
