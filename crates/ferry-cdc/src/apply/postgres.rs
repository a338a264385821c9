//! PostgreSQL as a target: every value is bound as text and cast to the
//! column's type (`CAST($1 AS numeric(12,2))`), so that PostgreSQL's own
//! input functions read it, as they would a literal.

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgConnection};
use sqlx::{Arguments, Row};

use super::target::{json_text, Shape, Target, TargetName};

impl Target for sqlx::Postgres {
    const QUOTE: char = '"';
    const TIME: &'static str = "TIMESTAMPTZ";

    fn describe<'a>(
        conn: &'a mut PgConnection,
        table: &'a TargetName,
    ) -> BoxFuture<'a, Result<Option<Shape>, sqlx::Error>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS ty,
                        COALESCE(a.attnum = ANY(i.indkey), false) AS pk
                 FROM pg_attribute a
                 LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum",
            )
            .bind(table.quoted::<sqlx::Postgres>())
            .fetch_all(&mut *conn)
            .await?;
            if rows.is_empty() {
                return Ok(None);
            }
            let mut shape = Shape::default();
            for r in rows {
                let name: String = r.try_get("name")?;
                if r.try_get::<bool, _>("pk")? {
                    shape.key.push(name.clone());
                }
                shape.columns.insert(name, r.try_get("ty")?);
            }
            Ok(Some(shape))
        })
    }

    fn placeholder(n: usize, ty: &str) -> String {
        format!("CAST(${n} AS {ty})")
    }

    fn bind(args: &mut PgArguments, value: &Value, ty: &str) -> Result<(), BoxDynError> {
        let text = match value {
            Value::Null => None,
            // A boolean into an integer column (MariaDB's booleans are
            // integers anyway): 1 or 0.
            Value::Bool(b) if is_integer(ty) => Some(if *b { "1" } else { "0" }.to_owned()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            other => Some(json_text(other)),
        };
        args.add(text)
    }

    fn truncate(table: &str) -> String {
        // Transactional on PostgreSQL: rolled back with the batch.
        format!("TRUNCATE TABLE {table}")
    }
}

fn is_integer(ty: &str) -> bool {
    matches!(ty, "smallint" | "integer" | "bigint")
}
