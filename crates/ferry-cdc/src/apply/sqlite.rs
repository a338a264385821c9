//! SQLite as a target: numbers bound as numbers, booleans as 0 and 1,
//! everything else as text; the column's affinity does the rest.

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::error::BoxDynError;
use sqlx::sqlite::{SqliteArguments, SqliteConnection};
use sqlx::{Arguments, Row};

use super::target::{json_text, Shape, Target, TargetName};

impl Target for sqlx::Sqlite {
    const QUOTE: char = '"';
    const TIME: &'static str = "TEXT";

    fn describe<'a>(
        conn: &'a mut SqliteConnection,
        table: &'a TargetName,
    ) -> BoxFuture<'a, Result<Option<Shape>, sqlx::Error>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT name, type AS ty, pk FROM pragma_table_info(?, ?) ORDER BY cid",
            )
            .bind(&table.name)
            .bind(table.schema.as_deref().unwrap_or("main"))
            .fetch_all(&mut *conn)
            .await?;
            if rows.is_empty() {
                return Ok(None);
            }
            let mut shape = Shape::default();
            let mut key: Vec<(i64, String)> = Vec::new();
            for r in rows {
                let name: String = r.try_get("name")?;
                let pk: i64 = r.try_get("pk")?;
                if pk > 0 {
                    key.push((pk, name.clone()));
                }
                shape.columns.insert(name, r.try_get("ty")?);
            }
            key.sort();
            shape.key = key.into_iter().map(|(_, c)| c).collect();
            Ok(Some(shape))
        })
    }

    fn placeholder(_n: usize, _ty: &str) -> String {
        "?".to_owned()
    }

    fn bind(args: &mut SqliteArguments<'_>, value: &Value, _ty: &str) -> Result<(), BoxDynError> {
        match value {
            Value::Null => args.add(None::<String>),
            Value::Bool(b) => args.add(i64::from(*b)),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => args.add(i),
                // Above i64 (an unsigned 64-bit value): its digits, exact.
                (None, _) if n.is_u64() => args.add(n.to_string()),
                (None, Some(f)) => args.add(f),
                (None, None) => args.add(n.to_string()),
            },
            other => args.add(json_text(other)),
        }
    }

    fn truncate(table: &str) -> String {
        format!("DELETE FROM {table}")
    }
}
